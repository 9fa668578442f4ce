"""Parallel checks: serial against two local workers and a 2-worker Dask cluster.

The loss costs about 5 ms of CPU per evaluation (element-wise NumPy work on one core: the
sines of a 2,000 × width outer product, the width calibrated at the start) over 1,000
parameters, so a full central check is 2,000 evaluations, about 10 s serially on an idle
machine. Figures are wall-clock seconds of full checks, serial and parallel taking turns,
the best of 2 each (goal: speed-up ≥ 1.6× for both ``n_jobs=2`` and Dask):

- ``n_jobs=2``: nbgradcheck's own pool, started by the first check and kept for the next;
- a ``ProcessPoolExecutor(2)`` and a Dask ``LocalCluster`` of 2 single-threaded worker
  processes, started (and warmed up with a small check) before, with
  MALLOC_TRIM_THRESHOLD_ unset in the Dask workers (``--dask-trim`` adds a row with
  Dask's default 65536, which slows every NumPy allocation over 128 KiB;
  ``--workers 1 2`` a scaling row); the cluster is started inside
  ``parallel.environment_kept()``, and every check is asserted to leave ``os.environ``
  as it was;
- the CPU seconds the parallel check used (calling process and workers) against the
  serial check's: the work it adds, which other processes' load does not change much;
- the per-chunk overhead: a loss costing tens of microseconds, checked with one element
  per task, divided by the number of tasks (what the calling process spends per task).

The calling process gets the malloc thresholds the workers get (see
``parallel.keep_freed_memory``), so that a loss evaluation costs the same everywhere.
Results are asserted bit-identical to the serial check's. Other processes loading the
machine cut the speed-up: each line shows the load average, and the "hardware ceiling"
(two plain processes evaluating the loss against one, no nbgradcheck) shows what the
cores allow at that moment.

Run: python benchmarks/bench_parallel.py            (about 2 minutes on an idle machine)
     python benchmarks/bench_parallel.py --quick    (400 parameters, for a smoke test)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import os
import time
from collections.abc import Callable
from typing import Any

# One BLAS thread everywhere: each process then uses one core, serial or not.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402

import nbgradcheck as ng  # noqa: E402
from nbgradcheck.parallel import executor as parallel  # noqa: E402

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
    return all(
        np.array_equal(a.numeric, b.numeric) and np.array_equal(a.noise, b.noise)
        for a, b in zip(first.tensors, second.tensors)
    )


def seconds_per_evaluation(
    loss: Callable, params: dict, repeat: int = 20, clock: Callable[[], float] = time.process_time
) -> float:
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


def dask_cluster(workers: int, trim_memory: bool = False) -> tuple[Any, Any]:
    """A LocalCluster of single-threaded worker processes. Dask starts its workers with
    MALLOC_TRIM_THRESHOLD_=65536, which makes glibc map and unmap every array over 128 KiB
    (this loss allocates 2.4 MB per evaluation); ``trim_memory=False`` unsets it."""
    import dask
    from distributed import Client, LocalCluster

    environ = {} if trim_memory else {"MALLOC_TRIM_THRESHOLD_": None}
    settings = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in environ.items()}
    before = dict(os.environ)
    with dask.config.set(settings), parallel.environment_kept():
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
    assert dict(os.environ) == before, "the cluster changed this process's environment"
    return cluster, Client(cluster)


def dask_worker_pids(client: Any) -> list[int]:
    return list(client.run(os.getpid).values())


def warm(executor: Any) -> None:
    """Every worker started, and nbgradcheck imported there by one small check."""
    if hasattr(executor, "_max_workers"):  # a pool starts a process per task it waits on
        list(executor.map(abs, range(2 * executor._max_workers)))
    loss, params, grads = sine_problem(8, width=4)
    ng.check(loss, params, grads, mode="full", progress=False, executor=executor)


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds each of the processes ``pids`` has used so far."""
    import psutil  # a dependency of distributed

    return {pid: sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids}


class Timings:
    """Each parallel check is timed right after a serial one, so that both see the same
    load from other processes; the speed-up is their ratio. The CPU seconds of the
    workers (when their process ids are known) and of the calling process show the work
    the parallel check did against the serial one's, whatever the load."""

    def __init__(self, loss: Callable, params: dict, grads: dict) -> None:
        self.problem = loss, params, grads

    def compare(
        self,
        label: str,
        worker_pids: Callable[[], list[int]] | None = None,
        repeats: int = 2,
        **options: Any,
    ) -> None:
        """Serial and parallel checks taking turns, ``repeats`` times; best of each."""
        serial_s = seconds = serial_cpu = used = float("inf")
        before = dict(os.environ)
        for _ in range(repeats):
            cpu = time.process_time()
            elapsed, serial = timed_check(*self.problem)
            serial_cpu = min(serial_cpu, time.process_time() - cpu)
            serial_s = min(serial_s, elapsed)
            pids = worker_pids() if worker_pids else []
            cpu, workers = time.process_time(), cpu_seconds(pids)
            elapsed, result = timed_check(*self.problem, **options)
            after = cpu_seconds(worker_pids() if worker_pids else [])
            spent = time.process_time() - cpu + sum(after[p] - workers.get(p, 0.0) for p in after)
            seconds, used = min(seconds, elapsed), min(used, spent)
            assert same_numbers(serial, result), f"{label}: results differ from the serial check"
        assert dict(os.environ) == before, f"{label}: the check changed os.environ"
        work = f"CPU {used / serial_cpu:4.2f}× serial's" if worker_pids else " " * 20
        print(
            f"{label:<40}{seconds:7.1f} s   serial {serial_s:5.1f} s   speed-up "
            f"{serial_s / seconds:4.2f}×   {work}   (load {os.getloadavg()[0]:.1f})",
            flush=True,
        )


def run_speedups(n_parameters: int, workers: list[int], dask_trim: bool) -> None:
    width = calibrated_width(n_parameters)
    loss, params, grads = sine_problem(n_parameters, width)
    cpu = seconds_per_evaluation(loss, params)
    wall = seconds_per_evaluation(loss, params, clock=time.perf_counter)
    print(
        f"loss: {cpu * 1e3:.1f} ms CPU ({wall * 1e3:.1f} ms wall) per evaluation (width "
        f"{width}), {n_parameters:,} parameters, {2 * n_parameters + 2:,} evaluations"
    )
    print(
        f"hardware ceiling now: two processes evaluate the loss "
        f"{hardware_ceiling((n_parameters, width)):.2f}× as fast as one"
    )
    timings = Timings(loss, params, grads)
    timings.compare("n_jobs=2", n_jobs=2)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=parallel.process_context()) as pool:
        warm(pool)
        timings.compare("ProcessPoolExecutor(2)", lambda: list(pool._processes), executor=pool)
    rows = [(count, False) for count in workers] + [(max(workers), True)] * dask_trim
    for count, trim_memory in rows:
        cluster, client = dask_cluster(count, trim_memory)
        try:
            warm(client)
            label = f"Dask LocalCluster, {count} worker{'s' * (count > 1)}"
            timings.compare(
                label + (" (Dask's malloc trim)" if trim_memory else ""),
                functools.partial(dask_worker_pids, client),
                executor=client,
            )
        finally:
            client.close()
            cluster.close()


def loss_loop(problem: tuple[int, int], repeat: int = 200) -> float:
    """Seconds for ``repeat`` evaluations of the sine loss (in a worker process)."""
    loss, params, _ = sine_problem(*problem)
    started = time.perf_counter()
    for _ in range(repeat):
        loss(params)
    return time.perf_counter() - started


def hardware_ceiling(problem: tuple[int, int]) -> float:
    """How much more loss throughput two processes get than one, right now: the most any
    two-worker check can gain on this machine under its current load."""
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=parallel.process_context()) as pool:
        list(pool.map(loss_loop, [problem] * 2, [5] * 2))  # start both
        alone = pool.submit(loss_loop, problem).result()
        together = max(pool.map(loss_loop, [problem] * 2))
    return 2 * alone / together


def run_chunk_overhead(n_parameters: int) -> None:
    """Seconds the calling process spends per task, with tasks of one cheap element."""
    loss, params, grads = sine_problem(n_parameters, width=1)
    serial_s, _ = timed_check(loss, params, grads)
    one_element = parallel.elements_per_chunk
    parallel.elements_per_chunk = lambda *args: 1
    try:
        with concurrent.futures.ProcessPoolExecutor(
            2, mp_context=parallel.process_context()
        ) as pool:
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
    print(
        f"per-chunk overhead ({n_parameters:,} one-element tasks, loss "
        f"{serial_s / (2 * n_parameters) * 1e6:.0f} µs): ProcessPoolExecutor "
        f"{pool_s / n_parameters * 1e3:.2f} ms, Dask {dask_s / n_parameters * 1e3:.2f} ms "
        f"(tasks hold {parallel.MIN_CHUNK_SECONDS}–{parallel.MAX_CHUNK_SECONDS} s of work)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400 parameters")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[2],
        help="Dask LocalCluster sizes (a scaling curve: --workers 1 2)",
    )
    parser.add_argument("--dask-trim", action="store_true", help="Dask's malloc default too")
    arguments = parser.parse_args()
    parallel.keep_freed_memory()  # the malloc thresholds the workers get, here too
    n_parameters = 400 if arguments.quick else 1000
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the start")
    run_speedups(n_parameters, arguments.workers, arguments.dask_trim)
    run_chunk_overhead(200 if arguments.quick else 1000)
    print(f"hardware ceiling at the end: {hardware_ceiling((2000, 100)):.2f}×")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    parallel.shutdown_workers()


if __name__ == "__main__":
    main()
