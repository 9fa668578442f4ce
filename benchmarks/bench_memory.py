"""Peak memory of a full check of 1,000,000 float64 parameters, against the parameters' bytes.

tracemalloc follows every NumPy allocation. The loss costs O(1) (it reads three elements),
so that the check's own memory is what shows. Printed for a correct gradient (the goal's
case) and for one with two wrong elements (refinement and the diagnosis then run over the
tensor): the peak during the check and what the returned result keeps, as multiples of
the parameters' 8 MB. Goal: peak ≤ 3× the parameters.

What a full check must hold at its peak (see benchmarks/README.md, "Memory"): the snapshot
the parameters are restored from (1×, also the result's ``values``), the result's own copy
of the analytic gradient (1×: a result must not change when the user's arrays do) and the
numeric gradient (1×); kink flags (⅛×) and block-sized temporaries come on top.

Run: python benchmarks/bench_memory.py        (about 1 minute)
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


def measure(theta: np.ndarray, grad: np.ndarray) -> tuple[object, float, float, float]:
    """(result, seconds, peak bytes, kept bytes) of a full check."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    result = ng.check(loss, theta, grad, mode="full", progress=False)
    seconds = time.perf_counter() - started
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, seconds, peak - before, kept - before


def main() -> None:
    theta = np.random.default_rng(0).standard_normal(SIZE)
    grad = np.zeros(SIZE)
    grad[0], grad[1], grad[-1] = theta[1], theta[0], 2 * theta[-1]
    wrong = grad.copy()
    wrong[0], wrong[-1] = -wrong[0], 2 * wrong[-1]
    ng.check(loss, theta[:100].copy(), np.zeros(100), mode="full", progress=False)  # imports
    size = theta.nbytes
    print(f"full check of {SIZE:,} float64 parameters ({size / 1e6:.0f} MB) ({load()}):")
    for label, gradient, passes in (("correct gradient", grad, True), ("2 wrong", wrong, False)):
        result, seconds, peak, kept = measure(theta, gradient)
        assert result.passed == passes and result.n_checked == SIZE
        print(
            f"  {label:16} {seconds:3.0f} s | peak {peak / 1e6:4.0f} MB = {peak / size:4.1f}× "
            f"the parameters | kept by the result {kept / 1e6:3.0f} MB = {kept / size:3.1f}×"
        )


if __name__ == "__main__":
    main()
