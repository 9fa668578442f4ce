"""Shared by the benchmarks: best-of-repeats timing, the machine's load, one BLAS thread.

Other engineers' test runs share this 2-core machine, so every figure is the minimum of
several repeats (the run least disturbed), and ratios compare runs made in one process,
interleaved. The load average printed with each table says how busy the machine was.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def one_thread() -> None:
    """One BLAS/OpenMP thread: CPU time then measures this process's work only, and both
    sides of every comparison run alike. Call before importing NumPy or torch."""
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")


def best_time(
    function: Callable[[], Any], repeats: int, clock: Callable[[], float] = time.process_time
) -> tuple[float, Any]:
    """(the shortest of ``repeats`` runs, the last run's value)."""
    best, value = float("inf"), None
    for _ in range(repeats):
        started = clock()
        value = function()
        best = min(best, clock() - started)
    return best, value


def interleaved(
    functions: dict[str, Callable[[], Any]],
    repeats: int,
    clock: Callable[[], float] = time.process_time,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Best time of each function over ``repeats`` rounds, the functions taking turns
    within a round, so that a burst of load from other processes hits all of them."""
    best = dict.fromkeys(functions, float("inf"))
    values: dict[str, Any] = {}
    for _ in range(repeats):
        for name, function in functions.items():
            started = clock()
            values[name] = function()
            best[name] = min(best[name], clock() - started)
    return best, values


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} cores"
