"""Peak memory of a full check of 1,000,000 float64 parameters, against the parameters' bytes.

tracemalloc follows every NumPy allocation. The loss costs O(1) (it reads three elements),
so that the check's own memory is what shows: the snapshot the parameters are restored
from, the plan (indices, values, θ±ε, steps), the recorded losses, the per-element
measurements of the result and the temporaries of computing them. Printed: the peak
during the check and what the returned result keeps (the per-element arrays of the
report: indices, values, numeric, step, J(θ±ε), noise, kink, the derived errors), as
multiples of the parameters' 8 MB; the difference is the check's transient overhead.
Goal: peak ≤ 3× the parameters.

Run: python benchmarks/bench_memory.py        (about 30 seconds)
"""

from __future__ import annotations

import time
import tracemalloc

from timing import load, one_thread

one_thread()

import numpy as np  # noqa: E402

import nbgradcheck as ng  # noqa: E402

SIZE = 1_000_000


def loss(p: np.ndarray) -> float:
    return float(p[0] * p[1] + p[-1] ** 2)


def main() -> None:
    theta = np.random.default_rng(0).standard_normal(SIZE)
    grad = np.zeros(SIZE)
    grad[0], grad[1], grad[-1] = theta[1], theta[0], 2 * theta[-1]
    ng.check(loss, theta[:100].copy(), np.zeros(100), mode="full", progress=False)  # imports
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    result = ng.check(loss, theta, grad, mode="full", progress=False)
    seconds = time.perf_counter() - started
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.passed and result.n_checked == SIZE
    size = theta.nbytes
    peak, kept = peak - before, kept - before
    print(
        f"full check of {SIZE:,} float64 parameters ({size / 1e6:.0f} MB), {seconds:.0f} s "
        f"({load()}):\n"
        f"  peak during the check {peak / 1e6:6.0f} MB = {peak / size:4.1f}× the parameters\n"
        f"  kept by the result    {kept / 1e6:6.0f} MB = {kept / size:4.1f}×\n"
        f"  transient overhead    {(peak - kept) / 1e6:6.0f} MB = {(peak - kept) / size:4.1f}×"
    )


if __name__ == "__main__":
    main()
