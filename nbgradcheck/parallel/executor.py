"""Parallel and distributed gradient checks: the loss evaluations of a check on workers.

``check(loss, params, grads, executor=client)`` (or ``n_jobs=4``) evaluates the loss in
worker processes instead of the calling one. Anything with ``submit(fn, *args)``
returning a future will do:

- ``n_jobs=k``: a local ``ProcessPoolExecutor`` of k processes, kept for the next check
  with ``n_jobs=k`` (``-1``: one per core; :func:`shutdown_workers` stops them);
- your own ``concurrent.futures.ProcessPoolExecutor`` (or loky's);
- a Dask ``distributed.Client`` (of a ``LocalCluster``, or ``Client("tcp://host:8786")``
  for a real cluster), or its ``client.get_executor()``;
- Ray, through a few lines::

      @ray.remote
      def call(fn, *args):
          return fn(*args)

      class RayExecutor:
          def submit(self, fn, *args):
              return call.remote(fn, *args).future()  # a concurrent.futures.Future

How it works. The loss and the parameters are pickled together with cloudpickle, once
per check, so a closure over the same arrays as ``params`` still shares them in the
worker. The payload travels once per worker: broadcast by ``client.scatter`` on Dask,
and with the first tasks on any other executor, ``n_jobs`` pools included (a worker
that has not received it answers so, and gets the task again with the payload). Each
tensor's planned elements are cut into chunks of 0.1 to 2 s of work (whole batched calls
for an adapter that batches), all submitted at once; a worker rebuilds the parameter set
over its own copy and runs the engine's own loop on its chunk. The calling process
records the loss values in plan order, so the result is bit-identical to the serial
check (kinks, refinement, errors naming the element included), and the user's arrays
are never perturbed. Ctrl-C keeps the chunks finished so far and cancels the others.

Workers must be able to import nbgradcheck and the modules the loss uses. A loss checked
with ``seed=`` needs one thread per worker process (Dask: ``threads_per_worker=1``): the
global random generators it re-seeds are per process. Worker processes raise glibc's
malloc thresholds (:func:`keep_freed_memory`): ``n_jobs`` workers always, others unless
MALLOC_* variables are set, as Dask does by default: unset it, for NumPy losses
allocating large arrays, with
``dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})``
before creating the cluster. Starting a Dask ``LocalCluster`` writes its workers'
variables (MALLOC_TRIM_THRESHOLD_, PYTHONHASHSEED) into the calling process's
``os.environ``, where every process started later inherits them;
:func:`environment_kept` puts the environment back afterwards.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import inspect
import math
import multiprocessing
import os
import pickle
import queue
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from nbgradcheck.adapters.registry import parameter_set
from nbgradcheck.core.evaluate import (
    BATCH_ELEMENTS,
    ELEMENT_NOTE,
    GroupPoints,
    InProcessEvaluator,
    Outputs,
    Tick,
    add_element_note,
    in_flight,
    takes_argument,
)
from nbgradcheck.errors import GradCheckError, UnpicklableLossError

if TYPE_CHECKING:
    from nbgradcheck.core.engine import CheckSetup
    from nbgradcheck.core.plan import TensorPlan
    from nbgradcheck.core.schemes import Scheme

# One task holds between this many seconds of loss evaluations: enough to amortize a
# task's overhead (a millisecond or so), little enough to keep the workers balanced.
MIN_CHUNK_SECONDS = 0.1
MAX_CHUNK_SECONDS = 2.0
# Within those bounds, the check is cut into about this many tasks per worker.
CHUNKS_PER_WORKER = 4
# A worker thread keeps the unpickled loss and parameters of this many recent checks.
CACHED_CHECKS = 2
# n_jobs pools kept for the next check, by size (see local_pool).
_pools: dict[int, concurrent.futures.ProcessPoolExecutor] = {}
# How the engine's note naming the perturbed element starts (engine.run_tensor).
# glibc's malloc in a fresh process gives freed arrays over 128 KiB (and the top of the
# heap beyond twice that) back to the system at once, so a NumPy loss allocating
# megabytes page-faults through every evaluation, up to twice as slowly as in a process
# that has run for a while. Worker processes keep freed memory up to these sizes instead.
MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 64 * 2**20
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)


# -- the calling process: setting up --------------------------------------------------------


@contextlib.contextmanager
def parallel_evaluator(
    executor: Any, n_jobs: int | None, loss: Callable[..., Any], params: Any, seed: int | None
) -> Iterator[ExecutorEvaluator | None]:
    """The evaluator that runs on ``executor`` (or ``n_jobs`` local processes) during the
    check, closed afterwards; ``None`` when both are ``None`` (a serial check)."""
    if executor is None and n_jobs is None:
        yield None
        return
    validate_workers(executor, n_jobs)
    connection = connect(executor, n_jobs, uuid.uuid4().hex, pickled_loss(loss, params))
    runner = ExecutorEvaluator(connection, seed)
    try:
        yield runner
    except BaseException:
        runner.stopped = True
        raise
    finally:
        runner.close()


def validate_workers(executor: Any, n_jobs: Any) -> None:
    if executor is not None and n_jobs is not None:
        raise GradCheckError("pass executor= or n_jobs=, not both")
    if n_jobs is not None:
        number = not isinstance(n_jobs, bool) and isinstance(n_jobs, (int, np.integer))
        if not number or not (n_jobs >= 1 or n_jobs == -1):
            raise GradCheckError(
                f"n_jobs must be a positive number of processes (or -1: one per core); "
                f"got {n_jobs!r}"
            )
    elif not callable(getattr(executor, "submit", None)):
        raise GradCheckError(
            f"executor must have a submit(fn, *args) method returning a future (a "
            f"concurrent.futures executor or a Dask Client), not {type(executor).__name__}"
        )


def import_cloudpickle() -> Any:
    try:
        import cloudpickle
    except ImportError as error:
        raise GradCheckError(
            "executor= and n_jobs= need cloudpickle to send the loss to other processes: "
            "pip install cloudpickle"
        ) from error
    return cloudpickle


def pickled_loss(loss: Callable[..., Any], params: Any) -> bytes:
    """``(loss, params)`` pickled together (after the settings they need to unpickle),
    or an error naming what cannot be pickled."""
    cloudpickle = import_cloudpickle()
    try:
        data = cloudpickle.dumps((loss, params), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        raise UnpicklableLossError(unpicklable_message(loss, params, error)) from error
    return pickle.dumps((framework_settings(), data), protocol=pickle.HIGHEST_PROTOCOL)


def framework_settings() -> dict[str, Any]:
    """Process-wide switches the loss was written under, which do not travel with it:
    JAX's float64 mode (float64 arrays unpickled without it become float32); and the
    calling process, which is no worker (a thread pool runs the tasks there)."""
    settings: dict[str, Any] = {"caller": os.getpid()}
    jax = sys.modules.get("jax")
    if jax is not None:
        settings["jax_enable_x64"] = bool(jax.config.read("jax_enable_x64"))
    return settings


def apply_settings(settings: dict[str, Any]) -> None:
    """In a worker: the calling process's switches (see :func:`framework_settings`)."""
    if settings.get("caller") != os.getpid():
        keep_freed_memory()
    if "jax_enable_x64" in settings:
        import jax

        jax.config.update("jax_enable_x64", settings["jax_enable_x64"])


def unpicklable_message(loss: Callable[..., Any], params: Any, error: Exception) -> str:
    reason = f"{type(error).__name__}: {error}"
    if not picklable(params):
        return (
            f"the parameters cannot be pickled to send them to the workers ({reason}); "
            f"pass arrays or tensors, or check without executor=/n_jobs="
        )
    culprits = unpicklable_captures(loss)
    named = "; ".join(f"it refers to {name}, a {type(value).__name__}" for name, value in culprits)
    return (
        f"the loss cannot be pickled to send it to the workers ({reason})"
        f"{'; ' + named if named else ''}. Define the loss at module level (or in the "
        f"notebook) and do not let it capture objects that cannot be pickled (open files, "
        f"locks, generators, connections): create them inside the loss, or check without "
        f"executor=/n_jobs="
    )


def picklable(value: Any) -> bool:
    try:
        import_cloudpickle().dumps(value)
    except Exception:
        return False
    return True


def unpicklable_captures(function: Any, prefix: str = "", depth: int = 3) -> list[tuple[str, Any]]:
    """The objects ``function`` refers to that cannot be pickled, as (name, object) pairs;
    ``helper.log`` names one captured by a function the loss uses."""
    found = []
    for name, value in captured(function).items():
        if picklable(value):
            continue
        inner = unpicklable_captures(value, f"{prefix}{name}.", depth - 1) if depth > 1 else []
        found += inner or [(prefix + name, value)]
    return found


def captured(function: Any) -> dict[str, Any]:
    """What a function (closure cells and globals), bound method or callable object uses."""
    target = getattr(function, "__func__", function)
    named: dict[str, Any] = {}
    if inspect.isfunction(target):
        with contextlib.suppress(Exception):
            closure = inspect.getclosurevars(target)
            named = {**closure.globals, **closure.nonlocals}
    elif not inspect.ismodule(function) and not isinstance(function, type):
        named = dict(getattr(function, "__dict__", {}))
    owner = getattr(function, "__self__", None)
    if owner is not None and not inspect.ismodule(owner):
        named["self"] = owner
    return named


@dataclass
class Connection:
    """Where the tasks go, and how the pickled loss reaches the workers."""

    executor: Any  # submit(fn, *args) -> future
    token: str  # names this check's payload in the workers
    data: bytes  # the pickled (loss, params)
    workers: int
    attached: Any = None  # sent with every task (Dask: the scattered payload)
    first_wave: int = 0  # tasks carrying the payload before any worker can have it
    close: Callable[[bool], None] = lambda stop: None  # stop: interrupted or failed

    def payload(self, number: int) -> Any:
        """What task ``number`` carries: the payload, a reference to it, or nothing."""
        if self.attached is not None:
            return self.attached
        return self.data if number < self.first_wave else None


def connect(executor: Any, n_jobs: int | None, token: str, data: bytes) -> Connection:
    if n_jobs is not None:
        return local_pool(n_jobs, token, data)
    client = dask_client(executor)
    if client is not None:
        return dask_connection(client, executor, token, data)
    workers = worker_count(executor)
    return Connection(executor, token, data, workers, first_wave=workers)


def local_pool(n_jobs: int, token: str, data: bytes) -> Connection:
    """``n_jobs`` local processes, kept for the next check with as many (the payload
    travels with the first tasks); stopped when a check is interrupted or fails."""
    workers = (os.cpu_count() or 1) if n_jobs == -1 else int(n_jobs)
    pool = reusable_pool(workers)

    def close(stop: bool) -> None:
        if stop:
            _pools.pop(workers, None)
            stop_pool(pool)

    return Connection(pool, token, data, workers, first_wave=workers, close=close)


def reusable_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """The pool of ``workers`` processes started by an earlier check, or a new one."""
    pool = _pools.get(workers)
    if pool is None or getattr(pool, "_broken", False) or getattr(pool, "_shutdown_thread", False):
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=process_context(), initializer=prepare_worker
        )
        _pools[workers] = pool
    return pool


@contextlib.contextmanager
def environment_kept() -> Iterator[None]:
    """Restore ``os.environ`` as it was on entry (Dask's LocalCluster writes into it)::

    with environment_kept():
        cluster = LocalCluster(n_workers=2, threads_per_worker=1)
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update(saved)


def shutdown_workers() -> None:
    """Stop the worker processes that ``n_jobs=`` checks keep for the next check (they
    stop by themselves when Python exits)."""
    while _pools:
        _pools.popitem()[1].shutdown(wait=True, cancel_futures=True)


def prepare_worker() -> None:
    """Pool initializer of nbgradcheck's own worker processes: keep freed memory (even
    when MALLOC_* variables were inherited, e.g. written by a Dask LocalCluster started in
    the calling process)."""
    keep_freed_memory(force=True)


def process_context() -> multiprocessing.context.BaseContext:
    """Where it exists, the forkserver context with this module preloaded: the first pool
    starts the server (an import of nbgradcheck), later ones fork workers in milliseconds.
    Elsewhere, spawn. Never fork: the calling process may run threads."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    from multiprocessing import forkserver

    preload = list(getattr(forkserver._forkserver, "_preload_modules", ["__main__"]))
    if __name__ not in preload:
        context.set_forkserver_preload([*preload, __name__])
    return context


def stop_pool(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Shut a pool of our own down now: queued chunks cancelled, running ones killed."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)


def dask_client(executor: Any) -> Any:
    """The Dask Client behind ``executor`` (a Client or its get_executor()), else None."""
    if not (type(executor).__module__ or "").startswith("distributed"):
        return None
    if callable(getattr(executor, "scatter", None)):
        return executor
    return getattr(executor, "_client", None)


def dask_connection(client: Any, executor: Any, token: str, data: bytes) -> Connection:
    """Tasks through Dask's executor; the payload broadcast to every worker once."""
    submitter = client.get_executor(pure=False) if executor is client else executor
    scattered = client.scatter(data, broadcast=True, hash=False)
    workers = max(1, sum(client.nthreads().values()))
    return Connection(
        submitter, token, data, workers, attached=scattered, close=lambda stop: scattered.release()
    )


def worker_count(executor: Any) -> int:
    """The executor's number of workers when it tells (``_max_workers``), else the cores."""
    count = getattr(executor, "_max_workers", None)
    return count if isinstance(count, int) and count > 0 else os.cpu_count() or 1


# -- the calling process: chunks in, loss values out ----------------------------------------


@dataclass
class ChunkTask:
    """What one task evaluates: a slice of one tensor's plan."""

    token: str
    plan: TensorPlan
    scheme: Scheme
    seed: int | None
    batched: bool  # through the adapter's batched_losses, as the serial check would
    tick_chunk: int  # the serial loop's progress chunk: batched calls are cut the same way

    @property
    def size(self) -> int:
        return self.plan.count

    def outputs(self) -> Outputs:
        return Outputs.for_plan(self.scheme)

    def run(self, copy: WorkerCopy, outputs: Outputs) -> None:
        copy.run_plan(self, outputs)

    @staticmethod
    def values(outputs: Outputs) -> tuple[np.ndarray, np.ndarray]:
        return outputs.recorded(0), outputs.recorded(1)


@dataclass
class GroupTask:
    """Directional tests of several groups of one tensor (fast mode's localization)."""

    token: str
    position: int
    points: list[GroupPoints]  # (indices, up, down) per group
    scheme: Scheme
    seed: int | None

    @property
    def size(self) -> int:
        return len(self.points)

    def outputs(self) -> list:
        return []

    def run(self, copy: WorkerCopy, outputs: list) -> None:
        copy.run_groups(self, outputs)

    @staticmethod
    def values(outputs: list) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(outputs, dtype=float), np.empty(0)


def no_values() -> np.ndarray:
    return np.empty(0)


@dataclass
class ChunkOutcome:
    """The loss values of a chunk, in order, and the error that stopped it, if any."""

    plus: np.ndarray = field(default_factory=no_values)
    minus: np.ndarray = field(default_factory=no_values)
    error: BaseException | None = None
    remote_traceback: str = ""
    missing: bool = False  # the worker had not received the loss: send the task again


@dataclass
class Job:
    task: ChunkTask | GroupTask
    future: Any

    @property
    def size(self) -> int:
        return self.task.size


class RemoteTraceback(Exception):
    """The traceback of an error raised in a worker, attached as the error's cause."""

    def __str__(self) -> str:
        return str(self.args[0])


class ExecutorEvaluator:
    """The evaluation interface on workers: cuts plans into chunks, submits them, and puts
    the loss values back in plan order (see :class:`nbgradcheck.core.evaluate.Evaluator`).

    Requests too small to repay a round trip (a single directional test) are evaluated in
    this process by ``local``, the check's in-process evaluator.
    """

    def __init__(self, connection: Connection, seed: int | None) -> None:
        self.connection = connection
        self.seed = seed
        self.local: InProcessEvaluator | None = None
        self.setup: CheckSetup | None = None
        self.expected: list[TensorPlan] = []  # plans to submit at the first request
        self.prefetched: dict[int, list[Job]] = {}  # the jobs of each plan, by id(plan)
        self.jobs: list[Job] = []
        self.chunk_elements = 0
        self.stopped = False
        # with payloads sent on demand: unfinished futures, and those finished since
        self.watched: dict[Any, Job] = {}
        self.finished: queue.SimpleQueue = queue.SimpleQueue()

    @property
    def workers(self) -> int:
        return self.connection.workers

    def taking_over(self, setup: CheckSetup) -> ExecutorEvaluator:
        """Evaluate for ``setup`` from now on, keeping its in-process evaluator."""
        self.setup, self.local = setup, setup.local
        return self

    def seconds_per_element(self, scheme: Scheme) -> float:
        return self.setup.seconds_per_evaluation * scheme.evaluations_per_element

    def prefetch(self, plans: list[TensorPlan], scheme: Scheme, chunk: int) -> None:
        """The plans the check will ask for, in order: the first request submits all of
        their chunks, so that no worker waits between tensors."""
        total = sum(plan.count for plan in plans)
        self.chunk_elements = elements_per_chunk(
            total, self.seconds_per_element(scheme), self.workers, self.slice_unit(chunk)
        )
        self.expected = [(plan, scheme, chunk) for plan in plans]

    def slice_unit(self, chunk: int) -> int:
        """Tasks start at multiples of this: the serial check's progress chunk, or for an
        adapter evaluating in batches, its batched call (so each batch holds the same
        elements in the workers as serially: batched arithmetic may round differently
        for a different batch)."""
        return max(chunk, BATCH_ELEMENTS) if self.setup.params.can_batch else chunk

    def element_losses(
        self, plan: TensorPlan, scheme: Scheme, outputs: Outputs, tick: Tick, chunk: int
    ) -> None:
        """Record J at the plan's points in ``outputs``, exactly as the serial loop does."""
        try:
            for expected in self.expected:  # here, where Ctrl-C means "interrupted"
                self.prefetched[id(expected[0])] = self.submit_plan(*expected)
            self.expected = []
            jobs = self.prefetched.pop(id(plan), None)
            if jobs is None:  # not submitted up front (refinement, fast mode's checks)
                jobs = self.submit_plan(plan, scheme, chunk)
        except KeyboardInterrupt:
            self.stop()
            raise
        try:
            self.collect(jobs, outputs, tick)
        except (GradCheckError, KeyboardInterrupt):  # LossError, a dead worker: no culprit
            raise
        except Exception as error:
            add_element_note(error, in_flight(plan, scheme, outputs))
            raise

    def submit_plan(self, plan: TensorPlan, scheme: Scheme, chunk: int) -> list[Job]:
        seconds = self.seconds_per_element(scheme)
        size = self.chunk_elements or elements_per_chunk(
            plan.count, seconds, self.workers, self.slice_unit(chunk)
        )
        batched = self.setup.params.can_batch
        return [
            self.submit_task(
                ChunkTask(
                    self.connection.token,
                    plan.slice(start, start + size),
                    scheme,
                    self.seed,
                    batched,
                    chunk,
                )
            )
            for start in range(0, plan.count, size)
        ]

    def group_losses(self, position: int, groups: list[GroupPoints], scheme: Scheme) -> list[float]:
        """J at the directional-test points of several groups of one tensor, on the workers
        (a single group in this process); in the order the in-process evaluator gives."""
        if len(groups) < 2:
            return self.local.group_losses(position, groups, scheme)
        size = elements_per_chunk(len(groups), self.seconds_per_element(scheme), self.workers, 1)
        jobs = [
            self.submit_task(
                GroupTask(
                    self.connection.token, position, groups[start : start + size], scheme, self.seed
                )
            )
            for start in range(0, len(groups), size)
        ]
        values: list = []
        try:
            for job in jobs:
                outcome = self.outcome(job)
                values.extend(outcome.plus.tolist())
                if outcome.error is not None:
                    raise_error(outcome)
        except KeyboardInterrupt:
            self.stop()
            raise
        return values

    def submit_task(self, task: ChunkTask | GroupTask) -> Job:
        payload = self.connection.payload(len(self.jobs))
        job = Job(task, self.submit(task, payload))
        self.jobs.append(job)
        if self.connection.first_wave:
            self.watch(job)
        return job

    def submit(self, task: ChunkTask | GroupTask, payload: Any) -> Any:
        """The executor's future for ``task``; a clear error when it refuses the task."""
        try:
            return self.connection.executor.submit(evaluate_chunk, task, payload)
        except Exception as error:
            raise GradCheckError(
                f"the executor's submit() failed ({type(error).__name__}: {error}); the "
                f"parameters were restored"
            ) from error

    # -- collecting -----------------------------------------------------------------------
    def collect(self, jobs: list[Job], outputs: Outputs, tick: Tick) -> None:
        recorded = 0
        try:
            for job in jobs:
                record(self.outcome(job), outputs)
                recorded += 1
                tick(job.size)
        except KeyboardInterrupt:
            self.keep_finished(jobs[recorded:], outputs)
            self.stop()
            raise

    def outcome(self, job: Job) -> ChunkOutcome:
        """The job's outcome, once it ran on a worker that had the loss."""
        while True:
            if self.connection.first_wave:
                self.wait_for(job)
            try:
                outcome = job.future.result()
            except concurrent.futures.process.BrokenProcessPool as error:
                raise GradCheckError(
                    "a worker process died while evaluating the loss (killed, out of memory, "
                    "or a crash in native code); the parameters were restored"
                ) from error
            if not outcome.missing:
                return outcome
            self.resend(job)

    def wait_for(self, job: Job) -> None:
        """Block until ``job`` is done, meanwhile resending (with the payload) any task
        that reached a worker without it, so that no worker idles on a task behind ours."""
        while not job.future.done():
            future = self.finished.get()
            other = self.watched.pop(future, None)
            if other is not None and future_outcome(future).missing:
                self.resend(other)

    def resend(self, job: Job) -> None:
        self.watched.pop(job.future, None)
        job.future = self.submit(job.task, self.connection.data)
        self.watch(job)

    def watch(self, job: Job) -> None:
        self.watched[job.future] = job
        job.future.add_done_callback(self.finished.put)

    def keep_finished(self, jobs: list[Job], outputs: Outputs) -> None:
        """After Ctrl-C: also keep the chunks already finished right after those recorded."""
        for job in jobs:
            outcome = future_outcome(job.future) if job.future.done() else None
            if outcome is None or outcome.missing or outcome.error is not None:
                return
            record(outcome, outputs)

    def stop(self) -> None:
        """Cancel every chunk not started (and, with n_jobs, kill the running ones)."""
        self.stopped = True
        for job in self.jobs:
            job.future.cancel()

    def close(self) -> None:
        for job in self.jobs:
            job.future.cancel()
        self.jobs, self.prefetched, self.watched = [], {}, {}
        self.connection.close(self.stopped)


def record(outcome: ChunkOutcome, outputs: Outputs) -> None:
    """Append a chunk's loss values; raise the error that stopped it in the worker."""
    outputs.extend(0, outcome.plus)
    outputs.extend(1, outcome.minus)
    if outcome.error is not None:
        raise_error(outcome)


def raise_error(outcome: ChunkOutcome) -> None:
    """Raise the error a worker met, with the worker's traceback as its cause."""
    error = outcome.error
    if outcome.remote_traceback:
        error.__cause__ = RemoteTraceback(outcome.remote_traceback)
    raise error


def future_outcome(future: Any) -> ChunkOutcome:
    """The outcome of a finished future; an empty one when it was cancelled or failed."""
    if future.cancelled() or future.exception() is not None:
        return ChunkOutcome(error=RuntimeError("no outcome"))
    return future.result()


def elements_per_chunk(
    total: int, seconds_per_element: float, workers: int, tick_chunk: int
) -> int:
    """Elements per task: about CHUNKS_PER_WORKER tasks per worker, each lasting from
    MIN_CHUNK_SECONDS to MAX_CHUNK_SECONDS, and a multiple of the progress chunk (so a
    batched adapter is called on the same slices as in the serial check)."""
    seconds = max(seconds_per_element, 1e-9)
    balanced = total / (CHUNKS_PER_WORKER * max(workers, 1)) * seconds
    chunk_seconds = min(max(balanced, MIN_CHUNK_SECONDS), MAX_CHUNK_SECONDS)
    return max(1, math.ceil(chunk_seconds / seconds / tick_chunk)) * tick_chunk


# -- the workers ----------------------------------------------------------------------------

_thread_copies = threading.local()  # each worker thread perturbs its own copy
# How many times this process unpickled a check's loss and parameters (for tests).
payload_loads = 0
# True once keep_freed_memory raised this process's malloc thresholds.
malloc_tuned = False


def evaluate_chunk(task: ChunkTask | GroupTask, payload: bytes | None) -> ChunkOutcome:
    """In a worker: J at the task's points, and the error that stopped it, if any."""
    try:
        copy = worker_copy(task.token, payload)
    except Exception as error:
        return ChunkOutcome(
            error=UnpicklableLossError(load_message(error)), remote_traceback=traceback.format_exc()
        )
    if copy is None:
        return ChunkOutcome(missing=True)
    outputs = task.outputs()
    try:
        task.run(copy, outputs)
    except Exception as error:
        drop_element_note(error)
        return ChunkOutcome(*task.values(outputs), shippable(error), traceback.format_exc())
    return ChunkOutcome(*task.values(outputs))


@dataclass
class WorkerCopy:
    """A worker thread's own loss and parameters, unpickled once per check."""

    loss: Callable[..., Any]
    params: Any  # the engine's parameter set over this copy's arrays
    pass_argument: bool
    snapshot: Any = None  # the copy as unpickled: a loss changing it is caught per task

    def evaluator(self, seed: int | None, batch: bool) -> InProcessEvaluator:
        """The check's own in-process evaluator over this copy (it restores every element
        it perturbs)."""
        return InProcessEvaluator(self.params, self.loss, self.pass_argument, seed, batch=batch)

    def run_plan(self, task: ChunkTask, outputs: Outputs) -> None:
        evaluator = self.evaluator(task.seed, task.batched)
        with self.unmodified():
            evaluator.element_losses(task.plan, task.scheme, outputs, ignore_tick, task.tick_chunk)

    def run_groups(self, task: GroupTask, out: list) -> None:
        """J with each group at its two points in turn, as fast mode's tests evaluate it."""
        evaluator = self.evaluator(task.seed, batch=False)
        with self.unmodified():
            out.extend(evaluator.group_losses(task.position, task.points, task.scheme))

    @contextlib.contextmanager
    def unmodified(self) -> Iterator[None]:
        """After a task: the same check as in the calling process, on this copy (a loss
        that changes its parameters is an error there too; the copy is put back)."""
        try:
            yield
        finally:
            if self.snapshot is not None:
                self.params.ensure_unmodified(self.snapshot, "the loss")


def worker_copy(token: str, payload: bytes | None) -> WorkerCopy | None:
    """This thread's copy for the check ``token``; None when the payload has not come."""
    copies = thread_copies()
    if token in copies:
        return copies[token]
    data = payload
    if data is None:
        return None
    global payload_loads
    payload_loads += 1
    settings, pickled = pickle.loads(data)
    apply_settings(settings)
    loss, params = pickle.loads(pickled)
    parameters = parameter_set(params)
    parameters.rng_state()  # the set-up the check brackets itself with (dropout off, ...)
    copies[token] = WorkerCopy(loss, parameters, takes_argument(loss), parameters.snapshot())
    while len(copies) > CACHED_CHECKS:
        copies.pop(next(iter(copies)))
    return copies[token]


def keep_freed_memory(force: bool = False) -> None:
    """Raise glibc's malloc thresholds in a worker process (see MMAP_THRESHOLD_BYTES),
    unless MALLOC_* variables already set them (Dask's workers get MALLOC_TRIM_THRESHOLD_)
    and ``force`` is False."""
    if sys.platform != "linux":
        return
    if not force and any(name.startswith("MALLOC_") for name in os.environ):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    global malloc_tuned
    malloc_tuned = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    malloc_tuned &= bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def thread_copies() -> dict[str, WorkerCopy]:
    if not hasattr(_thread_copies, "copies"):
        _thread_copies.copies = {}
    return _thread_copies.copies


def ignore_tick(count: int) -> None:
    pass


def load_message(error: Exception) -> str:
    return (
        f"a worker could not unpickle the loss ({type(error).__name__}: {error}): install "
        f"nbgradcheck and the modules the loss uses on the workers, or, for a module of "
        f"your own, call cloudpickle.register_pickle_by_value(module) before the check"
    )


def drop_element_note(error: Exception) -> None:
    """Remove the note the engine's loop added in the worker: the calling process adds
    it again from the whole tensor's outputs, so it names the element as serially."""
    notes = getattr(error, "__notes__", None)
    if notes and notes[-1].startswith(ELEMENT_NOTE):
        notes.pop()


def shippable(error: Exception) -> Exception:
    """``error`` if it pickles back to the caller, else a RuntimeError saying what it was."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        substitute = RuntimeError(f"{type(error).__name__}: {error}")
        for note in getattr(error, "__notes__", []):
            substitute.add_note(note)
        return substitute
    return error
