"""Cost of the progress bar: the same check of 1e5 cheap loss evaluations, bar on and off.

Two losses over 50 000 parameters (central differences: 2 evaluations per element):

- ``dot``: J = θ·c, a cheap but real loss (one pass over θ, ~10 µs);
- ``one element``: J = θ₀, about the cheapest loss there is (~1 µs), so the check's
  own per-element work, and any per-element cost of the bar, dominate.

Runs alternate on/off in one process; the figure is the best CPU time (time.process_time)
of each. The bar is drawn to stderr as it would be in a terminal. Target: on/off ≤ 1.05.

Run: python benchmarks/bench_progress.py            (about 30 s)
     python benchmarks/bench_progress.py --quick    (fewer repeats)
"""

from __future__ import annotations

import argparse
import os
import time

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402

import nbgradcheck as ng  # noqa: E402

ELEMENTS = 50_000  # × 2 evaluations (central) = 1e5 evaluations


def dot_problem() -> tuple:
    rng = np.random.default_rng(0)
    theta, weights = rng.normal(size=ELEMENTS), rng.normal(size=ELEMENTS)
    return (lambda: float(theta @ weights)), theta, weights


def one_element_problem() -> tuple:
    theta = np.random.default_rng(1).normal(size=ELEMENTS)
    gradient = np.zeros(ELEMENTS)
    gradient[0] = 1.0
    return (lambda: float(theta[0])), theta, gradient


def cpu_seconds(problem: tuple, progress: bool) -> float:
    loss, theta, gradient = problem
    started = time.process_time()
    result = ng.check(loss, theta, gradient, progress=progress)
    elapsed = time.process_time() - started
    assert result.passed and result.n_evaluations >= 2 * ELEMENTS
    return elapsed


def compare(name: str, problem: tuple, repeats: int) -> float:
    times: dict[bool, list[float]] = {False: [], True: []}
    for progress in (False, True):  # warm-up (imports tqdm)
        cpu_seconds(problem, progress)
    for _ in range(repeats):
        for progress in (False, True):
            times[progress].append(cpu_seconds(problem, progress))
    off, on = min(times[False]), min(times[True])
    print(
        f"{name:<12} off {off:7.3f} s   on {on:7.3f} s   on/off {on / off:6.3f}   "
        f"({repeats} runs each, best CPU time; {2 * ELEMENTS:.0e} evaluations)",
        flush=True,
    )
    return on / off


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 runs each instead of 5")
    repeats = 2 if parser.parse_args().quick else 5
    ratios = [
        compare("dot", dot_problem(), repeats),
        compare("one element", one_element_problem(), repeats),
    ]
    verdict = "within" if max(ratios) <= 1.05 else "OVER"
    print(f"progress bar overhead: worst on/off {max(ratios):.3f}, {verdict} the 5% target")


if __name__ == "__main__":
    main()
