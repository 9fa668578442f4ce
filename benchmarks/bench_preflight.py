"""preflight on planted bugs: which check catches each one, and how long it takes (issue 17).

The models are the small classifiers of ``tests/test_preflight_zoo.py`` (20 features,
10 classes, a batch of 64): a PyTorch 20-64-64-10 ReLU MLP (about 6,000 parameters) and a
NumPy 20-32-10 one with hand-written gradients, each correct or with one bug planted for
one check. Every row runs ``preflight`` with its defaults (100 overfitting steps); the
table shows each check's status (✓ pass, ⚠ warn, ✗ fail, – skip), whether the check the
bug was planted for failed, and the wall-clock time: the median of ``--repeats`` runs after
one warm-up run, with the seconds of the slowest check.

Run::

    python benchmarks/bench_preflight.py               # markdown table on stdout
    python benchmarks/bench_preflight.py --repeats 1   # quicker
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch.nn.functional as F
from test_preflight_zoo import (
    CLASSES,
    NUMPY_BUGS,
    TORCH_BUGS,
    numpy_batch,
    numpy_model,
    torch_batch,
    torch_model,
)

import nbgradcheck as ng
from nbgradcheck.api.preflight_rules import CHECK_NAMES

MARKS = {"pass": "✓", "warn": "⚠", "fail": "✗", "skip": "–"}


def torch_run(bug: str | None) -> ng.PreflightReport:
    X, y = torch_batch()
    return ng.preflight(torch_model(bug), F.cross_entropy, X, y)


def numpy_run(bug: str | None) -> ng.PreflightReport:
    loss, params, grads = numpy_model(bug)
    X, y = numpy_batch()
    return ng.preflight(loss, params, X, y, grads=grads, classes=CLASSES)


def timed(run, bug: str | None, repeats: int) -> tuple[ng.PreflightReport, float]:
    run(bug)  # warm-up: first calls compile kernels and fill caches
    times, report = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        report = run(bug)
        times.append(time.perf_counter() - started)
    return report, statistics.median(times)


def row(framework: str, bug: str | None, planted: str | None, repeats: int) -> str:
    run = torch_run if framework == "PyTorch" else numpy_run
    report, seconds = timed(run, bug, repeats)
    marks = [MARKS[report.status(name)] for name in CHECK_NAMES]
    if planted is None:
        caught = "no false alarm" if report.ok else f"FALSE ALARM: {', '.join(report.failed)}"
    else:
        caught = "yes" if report.status(planted) == "fail" else "MISSED"
    slowest = report.checks["seconds"].idxmax()
    slow = f"{slowest} {report.checks.loc[slowest, 'seconds']:.2f}"
    cells = [framework, bug or "none (correct)", planted or "–", *marks, caught]
    return "| " + " | ".join([*cells, f"{seconds:.2f}", slow]) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row")
    options = parser.parse_args()
    header = ["model", "planted bug", "planted for", *CHECK_NAMES, "caught", "s", "slowest (s)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for bug, planted in TORCH_BUGS.items():
        print(row("PyTorch", bug, planted, options.repeats), flush=True)
    for bug, planted in NUMPY_BUGS.items():
        print(row("NumPy", bug, planted, options.repeats), flush=True)


if __name__ == "__main__":
    main()
