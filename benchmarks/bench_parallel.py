"""Parallel checks: serial against two local workers, Dask's scaling, the cost of a chunk.

The loss costs about 5 ms of CPU per evaluation (element-wise NumPy work on one core: the
sines of a 2,000 × width outer product, the width calibrated at the start) over 2,000
parameters, so a full central check is 4,000 evaluations, about 20 s serially on an idle
machine. Figures are wall-clock seconds of one full check each:

- serial;
- ``n_jobs=2`` (the pool is started by the check, so its start-up is included);
- a ``ProcessPoolExecutor(2)`` and Dask ``LocalCluster``s of 1 and 2 single-threaded
  worker processes, started (and warmed up with a small check) before the timed run;
- the per-chunk overhead: a loss costing about a microsecond, checked with one element
  per task, divided by the number of tasks (what the calling process spends per task).

Every parallel result is compared with the serial one (bit-identical numbers). Other
processes loading the machine slow the parallel runs most: compare with `uptime`.

Run: python benchmarks/bench_parallel.py            (about 2 minutes)
     python benchmarks/bench_parallel.py --quick    (400 parameters, for a smoke test)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import time
from collections.abc import Callable
from typing import Any

# One BLAS thread everywhere: each process then uses one core, serial or not.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402

import nbgradcheck as ng  # noqa: E402
from nbgradcheck import parallel  # noqa: E402

TARGET_SECONDS = 5e-3  # CPU time of one loss evaluation


def sine_problem(n_parameters: int, width: int) -> tuple[Callable, dict, dict]:
    """J = Σ_k Σ_j sin(θ_k w_j) and its exact gradient."""
    rng = np.random.default_rng(0)
    params = {"theta": rng.normal(size=n_parameters)}
    w = rng.uniform(0.5, 1.5, width)

    def loss(p: dict) -> float:
        return float(np.sum(np.sin(np.multiply.outer(p["theta"], w))))

    grads = {"theta": np.cos(np.multiply.outer(params["theta"], w)) @ w}
    return loss, params, grads


def timed_check(loss: Callable, params: dict, grads: dict, **options: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = ng.check(loss, params, grads, mode="full", progress=False, **options)
    return time.perf_counter() - started, result


def same_numbers(first: Any, second: Any) -> bool:
    return all(np.array_equal(a.numeric, b.numeric) and np.array_equal(a.loss_plus, b.loss_plus)
               for a, b in zip(first.tensors, second.tensors))


def seconds_per_evaluation(loss: Callable, params: dict, repeat: int = 20,
                           clock: Callable[[], float] = time.process_time) -> float:
    started = clock()
    for _ in range(repeat):
        loss(params)
    return (clock() - started) / repeat


def calibrated_width(n_parameters: int) -> int:
    """The width that makes one evaluation cost TARGET_SECONDS of CPU (best of 3)."""
    probe = 100
    loss, params, _ = sine_problem(n_parameters, probe)
    seconds = min(seconds_per_evaluation(loss, params) for _ in range(3))
    return max(1, round(probe * TARGET_SECONDS / seconds))


def dask_cluster(workers: int) -> tuple[Any, Any]:
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    return cluster, Client(cluster)


def warm(executor: Any) -> None:
    """One small check: workers started, nbgradcheck imported there."""
    loss, params, grads = sine_problem(8, width=4)
    ng.check(loss, params, grads, mode="full", progress=False, executor=executor)


def run_speedups(n_parameters: int, workers: list[int]) -> None:
    width = calibrated_width(2000)
    loss, params, grads = sine_problem(n_parameters, width)
    cpu = seconds_per_evaluation(loss, params)
    wall = seconds_per_evaluation(loss, params, clock=time.perf_counter)
    print(f"loss: {cpu * 1e3:.1f} ms CPU ({wall * 1e3:.1f} ms wall) per evaluation (width "
          f"{width}), {n_parameters:,} parameters, {2 * n_parameters + 2:,} evaluations")
    serial_s, serial = timed_check(loss, params, grads)
    print(f"{'serial':<34}{serial_s:8.1f} s{'':19}(load {os.getloadavg()[0]:.1f})")

    def report(label: str, seconds: float, result: Any) -> None:
        assert same_numbers(serial, result), f"{label}: results differ from the serial check"
        print(f"{label:<34}{seconds:8.1f} s   speed-up {serial_s / seconds:4.2f}×   "
              f"(load {os.getloadavg()[0]:.1f})")

    report("n_jobs=2 (pool start-up included)", *timed_check(loss, params, grads, n_jobs=2))
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=parallel.process_context()) as pool:
        warm(pool)
        report("ProcessPoolExecutor(2)", *timed_check(loss, params, grads, executor=pool))
    for count in workers:
        cluster, client = dask_cluster(count)
        try:
            warm(client)
            report(f"Dask LocalCluster, {count} worker{'s' * (count > 1)}",
                   *timed_check(loss, params, grads, executor=client))
        finally:
            client.close()
            cluster.close()


def run_chunk_overhead(n_parameters: int) -> None:
    """Seconds the calling process spends per task, with tasks of one cheap element."""
    loss, params, grads = sine_problem(n_parameters, width=1)
    serial_s, _ = timed_check(loss, params, grads)
    one_element = parallel.elements_per_chunk
    parallel.elements_per_chunk = lambda *args: 1
    try:
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=parallel.process_context()) \
                as pool:
            warm(pool)
            pool_s, _ = timed_check(loss, params, grads, executor=pool)
        cluster, client = dask_cluster(2)
        try:
            warm(client)
            dask_s, _ = timed_check(loss, params, grads, executor=client)
        finally:
            client.close()
            cluster.close()
    finally:
        parallel.elements_per_chunk = one_element
    print(f"per-chunk overhead ({n_parameters:,} one-element tasks, loss "
          f"{serial_s / (2 * n_parameters) * 1e6:.0f} µs): ProcessPoolExecutor "
          f"{pool_s / n_parameters * 1e3:.2f} ms, Dask {dask_s / n_parameters * 1e3:.2f} ms "
          f"(tasks hold {parallel.MIN_CHUNK_SECONDS}–{parallel.MAX_CHUNK_SECONDS} s of work)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400 parameters")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="Dask LocalCluster sizes for the scaling curve")
    arguments = parser.parse_args()
    n_parameters = 400 if arguments.quick else 2000
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the start")
    run_speedups(n_parameters, arguments.workers)
    run_chunk_overhead(200 if arguments.quick else 1000)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
