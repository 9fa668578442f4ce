"""A full check's memory stays near what it must hold (tracemalloc: deterministic bytes).

What a full check of n float64 elements must hold at its peak: the snapshot the
parameters are restored from (n·8 bytes, also the result's ``values``), the result's copy
of the analytic gradient and the numeric gradient: 3× the parameters, plus kink flags and
block-sized temporaries. Losses, points, steps, indices, round-off floors and per-element
errors are never held for the whole tensor (benchmarks/bench_memory.py measures 10⁶).
"""

from __future__ import annotations

import tracemalloc

import numpy as np

import nbgradcheck as ng

SIZE = 2**18
# Temporaries of one block (points, losses, kink tests: core.plan.PLAN_BLOCK elements),
# independent of the tensor's size.
BLOCK_BYTES = 2 * 2**20


def loss(p: np.ndarray) -> float:
    return float(p[0] * p[1] + p[-1] ** 2)


def test_a_full_check_peaks_near_three_times_the_parameters():
    theta = np.random.default_rng(0).standard_normal(SIZE)
    grad = np.zeros(SIZE)
    grad[0], grad[1], grad[-1] = theta[1], theta[0], 2 * theta[-1]
    ng.check(loss, theta[:64].copy(), np.zeros(64), mode="full", progress=False)  # imports
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = ng.check(loss, theta, grad, mode="full", progress=False)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.passed and result.n_checked == SIZE
    per_element = 3 * theta.itemsize + 1  # values, analytic, numeric; a kink flag
    assert kept - before <= per_element * SIZE + BLOCK_BYTES / 4
    assert peak - before <= per_element * SIZE + BLOCK_BYTES
    # the numbers derived on demand are the ones a stored array would hold
    tensor = result.tensor("theta")
    np.testing.assert_array_equal(tensor.indices, np.arange(SIZE))
    assert np.all(tensor.step > 0) and np.all(tensor.noise >= 0)
