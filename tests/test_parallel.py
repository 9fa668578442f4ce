"""Parallel checks: a Dask LocalCluster, a ProcessPoolExecutor, threads and n_jobs give
exactly the serial check's numbers, errors and partial results."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import sys
import threading

import numpy as np
import pytest
from conftest import frozen

import nbgradcheck as ng
from nbgradcheck.core.plan import AUTO_FULL_EVALUATIONS, choose_mode
from nbgradcheck.core.result import ELEMENT_ARRAYS
from nbgradcheck.core.schemes import CENTRAL
from nbgradcheck.demo import course_network
from nbgradcheck.errors import GradCheckError, NonFiniteLossError, UnpicklableLossError
from nbgradcheck.parallel import executor as parallel

cloudpickle = pytest.importorskip("cloudpickle")

# Losses defined in this module travel by value, so workers need not import it.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TENSOR_FIELDS = ELEMENT_ARRAYS  # every per-element array of a tensor's measurements


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    before = dict(os.environ)
    with parallel.environment_kept():  # Dask writes its workers' variables into it
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
    assert dict(os.environ) == before
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def process_pool():
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=parallel.process_context()) as pool:
        yield pool


@pytest.fixture(params=["dask", "process_pool"])
def executor(request):
    return request.getfixturevalue("dask_client" if request.param == "dask" else request.param)


@pytest.fixture
def small_chunks(monkeypatch):
    """Four elements per task, so that every test spans many chunks and both workers."""
    monkeypatch.setattr(parallel, "elements_per_chunk", lambda *args: 4)


def assert_same_result(serial, parallel_result):
    assert parallel_result.summary() == serial.summary()
    assert parallel_result.n_evaluations == serial.n_evaluations
    assert parallel_result.complete == serial.complete
    assert untimed(parallel_result.notes) == untimed(serial.notes)
    for mine, theirs in zip(parallel_result.tensors, serial.tensors, strict=True):
        assert mine.verdict == theirs.verdict
        for name in TENSOR_FIELDS:
            assert np.array_equal(getattr(mine, name), getattr(theirs, name), equal_nan=True), (
                f"{mine.name}.{name}"
            )


def untimed(notes):
    return [re.sub(r"in [\d.]+ s\b", "in (time) s", note) for note in notes]


def curved_and_kinked():
    """A tensor whose large step fails by truncation until refined, a tensor with elements
    sitting on ReLU kinks, and a tensor with a wrong gradient element."""
    rng = np.random.default_rng(3)
    params = {
        "curved": rng.uniform(-1, 1, 12),
        "kinked": rng.uniform(-1, 1, (3, 4)),
        "wrong": rng.normal(size=(2, 5)),
    }
    params["kinked"][0, :3] = [2e-3, -3e-3, 1e-3]  # within eps=1e-2 of the kink at 0

    def loss(p):
        return float(
            np.sum(np.exp(2 * p["curved"]))
            + np.sum(np.maximum(p["kinked"], 0))
            + 0.5 * np.sum(p["wrong"] ** 2)
        )

    grads = {
        "curved": 2 * np.exp(2 * params["curved"]),
        "kinked": (params["kinked"] > 0).astype(float),
        "wrong": params["wrong"].copy(),
    }
    grads["wrong"][1, 2] += 0.5
    return loss, params, grads


def test_full_check_with_kinks_refinement_and_a_bug_is_bit_identical(executor, small_chunks):
    loss, params, grads = curved_and_kinked()
    serial = ng.check(loss, params, grads, eps=1e-2, mode="full")
    assert serial.kinks.shape[0] > 0 and serial.failing == ["wrong"]
    before = frozen(params)
    result = ng.check(loss, params, grads, eps=1e-2, mode="full", executor=executor)
    assert_same_result(serial, result)
    assert frozen(params) == before


def test_course_network_with_planted_bugs_is_bit_identical(executor):
    net = course_network(bugs=("scale_dW2", "db1_4_over_m"))
    serial = ng.check(net.loss, net.parameters, net.gradients, mode="full")
    assert_same_result(
        serial, ng.check(net.loss, net.parameters, net.gradients, mode="full", executor=executor)
    )


def smooth_problem():
    """J = Σ ½aθ² + sin θ over two tensors, complex-safe (for method='complex')."""
    rng = np.random.default_rng(5)
    params = {"W": rng.normal(size=(3, 5)), "b": rng.normal(size=4)}
    scale = {name: rng.uniform(0.5, 2, array.shape) for name, array in params.items()}

    def loss(p):
        return sum(np.sum(0.5 * scale[k] * p[k] ** 2 + np.sin(p[k])) for k in p)

    grads = {k: scale[k] * v + np.cos(v) for k, v in params.items()}
    return loss, params, grads


@pytest.mark.parametrize("method", ["forward", "backward", "complex"])
def test_other_methods_are_bit_identical(process_pool, small_chunks, method):
    loss, params, grads = smooth_problem()
    serial = ng.check(loss, params, grads, method=method, mode="full")
    assert_same_result(
        serial, ng.check(loss, params, grads, method=method, mode="full", executor=process_pool)
    )


def test_sampled_check_of_a_seeded_dropout_loss_is_bit_identical(dask_client, small_chunks):
    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(6, 8)), "v": rng.normal(size=6)}
    X = rng.normal(size=(8, 20))

    def loss(p):
        mask = np.random.random((6, 20)) > 0.3
        return float(p["v"] @ np.tanh(p["W"] @ X * mask) @ np.ones(20))

    def grads(p):
        mask = np.random.random((6, 20)) > 0.3
        hidden = np.tanh(p["W"] @ X * mask)
        back = p["v"][:, None] * (1 - hidden**2) * mask
        return {"W": back @ X.T, "v": hidden.sum(axis=1)}

    options = dict(mode="sample", sample=20, seed=7)
    serial = ng.check(loss, params, grads, **options)
    assert serial.passed
    assert_same_result(serial, ng.check(loss, params, grads, executor=dask_client, **options))


def test_n_jobs_and_a_thread_pool_give_the_serial_result(small_chunks):
    net = course_network(bugs=("scale_dW2",))
    serial = ng.check(net.loss, net.parameters, net.gradients, mode="full")
    assert_same_result(
        serial, ng.check(net.loss, net.parameters, net.gradients, mode="full", n_jobs=2)
    )
    with concurrent.futures.ThreadPoolExecutor(2) as threads:  # payload sent on demand
        assert_same_result(
            serial, ng.check(net.loss, net.parameters, net.gradients, mode="full", executor=threads)
        )


def test_dask_workers_unpickle_the_loss_once_per_check(dask_client, small_chunks):
    net = course_network()
    before = dask_client.run(lambda: parallel.payload_loads)
    ng.check(net.loss, net.parameters, net.gradients, mode="full", executor=dask_client)
    after = dask_client.run(lambda: parallel.payload_loads)
    loads = [after[worker] - before[worker] for worker in before]
    assert sum(loads) >= 1 and max(loads) == 1  # 12 chunks, one unpickling per worker


# -- errors -------------------------------------------------------------------------------


def raising_loss(bad_index: int, side: str):
    """J = Σθ², raising when element ``bad_index`` of W is moved to the given side."""
    params = {"W": np.linspace(1.0, 2.0, 24).reshape(4, 6)}
    start = params["W"].reshape(-1)[bad_index]

    def loss(p):
        value = p["W"].reshape(-1)[bad_index]
        if (value > start) if side == "+" else (value < start):
            raise ZeroDivisionError(f"boom at {bad_index}")
        return float(np.sum(p["W"] ** 2))

    return loss, params, {"W": 2 * params["W"]}


@pytest.mark.parametrize("side", ["+", "-"])
def test_an_error_in_a_worker_is_raised_with_the_element_named(executor, small_chunks, side):
    loss, params, grads = raising_loss(13, side)
    with pytest.raises(ZeroDivisionError) as serial:
        ng.check(loss, params, grads, mode="full")
    before = frozen(params)
    with pytest.raises(ZeroDivisionError, match="boom at 13") as remote:
        ng.check(loss, params, grads, mode="full", executor=executor)
    assert remote.value.__notes__ == serial.value.__notes__
    assert side == "-" or "W[2, 1]" in remote.value.__notes__[0]
    assert "boom at 13" in str(remote.value.__cause__)  # the worker's traceback
    assert frozen(params) == before


def test_the_first_failing_element_in_plan_order_is_reported(process_pool, small_chunks):
    params = {"W": np.linspace(1.0, 2.0, 40)}

    def loss(p):
        moved = np.flatnonzero(p["W"] != np.linspace(1.0, 2.0, 40))
        if moved.size and moved[0] in (9, 33):
            raise ValueError(f"element {moved[0]}")
        return float(np.sum(p["W"] ** 2))

    with pytest.raises(ValueError, match="element 9"):
        ng.check(loss, params, {"W": 2 * params["W"]}, mode="full", executor=process_pool)


def test_a_nan_loss_names_the_element_like_the_serial_check(executor, small_chunks):
    params = {"b": np.array([0.5, 0.2, 2e-7, 0.9, 0.3, 0.7])}

    def loss(p):
        with np.errstate(invalid="ignore"):
            return float(np.sum(np.log(p["b"] - 1e-7)))

    with pytest.raises(NonFiniteLossError) as serial:
        ng.check(loss, params, {"b": 1 / params["b"]}, mode="full", eps=1e-6)
    with pytest.raises(NonFiniteLossError) as remote:
        ng.check(loss, params, {"b": 1 / params["b"]}, mode="full", eps=1e-6, executor=executor)
    assert str(remote.value) == str(serial.value) and "b[2]" in str(remote.value)


def test_a_loss_capturing_an_open_file_gets_a_clear_error(process_pool, tmp_path, quadratic):
    params, quadratic_loss, grads = quadratic
    log_file = open(tmp_path / "log.txt", "w")  # noqa: SIM115

    def loss(p):
        log_file.write("called\n")
        return quadratic_loss(p)

    before = frozen(params)
    with pytest.raises(UnpicklableLossError, match="log_file, a TextIOWrapper") as error:
        ng.check(loss, params, grads, executor=process_pool)
    assert "module level" in str(error.value)
    assert frozen(params) == before
    log_file.close()


def test_a_loss_workers_cannot_import_gets_a_clear_error(dask_client, tmp_path, monkeypatch):
    (tmp_path / "only_here.py").write_text("def square(x):\n    return x * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the workers' sys.path lacks it
    import only_here

    params = {"W": np.ones(3)}
    with pytest.raises(UnpicklableLossError, match=r"could not unpickle.*only_here"):
        ng.check(
            lambda p: float(np.sum(only_here.square(p["W"]))),
            params,
            {"W": 2 * params["W"]},
            executor=dask_client,
        )


@pytest.mark.parametrize(
    "arguments",
    [
        dict(n_jobs=0),
        dict(n_jobs=True),
        dict(n_jobs=2.0),
        dict(executor=object()),
        dict(executor=object(), n_jobs=2),
    ],
)
def test_bad_executor_arguments_are_refused(arguments, quadratic):
    params, loss, grads = quadratic
    with pytest.raises(GradCheckError, match=r"executor|n_jobs"):
        ng.check(loss, params, grads, **arguments)


# -- interruption -------------------------------------------------------------------------


def interrupting_loss(trigger: int):
    """J = Σθ²; moving element ``trigger`` sends Ctrl-C, once, to the process that started
    the check (from a worker: while it waits for results)."""
    params = {"W": np.linspace(1.0, 2.0, 64).reshape(8, 8)}
    start, caller, sent = params["W"].reshape(-1)[trigger], os.getpid(), []

    def loss(p):
        if p["W"].reshape(-1)[trigger] != start and not sent:
            sent.append(True)
            os.kill(caller, signal.SIGINT)
            threading.Event().wait(0.5)  # in the caller, Ctrl-C lands here
        return float(np.sum(p["W"] ** 2))

    return loss, params, {"W": 2 * params["W"]}


@pytest.mark.parametrize("where", ["dask_client", "process_pool", "n_jobs"])
def test_ctrl_c_while_waiting_gives_the_partial_result(request, small_chunks, where):
    with pytest.warns(RuntimeWarning, match="INCOMPLETE"):
        serial = ng.check(*interrupting_loss(trigger=30), mode="full")
    loss, params, grads = interrupting_loss(trigger=30)
    before = frozen(params)
    options = dict(n_jobs=2) if where == "n_jobs" else dict(executor=request.getfixturevalue(where))
    with pytest.warns(RuntimeWarning, match="INCOMPLETE"):
        result = ng.check(loss, params, grads, mode="full", **options)
    assert not result.complete and not serial.complete
    assert frozen(params) == before
    checked = result.tensors[0].evaluated
    assert checked.sum() <= 30 and not checked[checked.argmin() :].any()  # a prefix
    expected = serial.tensors[0]
    assert np.array_equal(result.tensors[0].numeric[checked], expected.numeric[checked])
    if where != "n_jobs":  # the executor survives and runs the next check
        loss, params, grads = smooth_problem()
        assert ng.check(loss, params, grads, mode="full", executor=options["executor"]).passed


# -- frameworks and sizing ----------------------------------------------------------------


@pytest.mark.parametrize("vectorize", [True, False])
def test_a_torch_module_and_closure_are_bit_identical(dask_client, vectorize):
    torch = pytest.importorskip("torch")
    from nbgradcheck.adapters.torch import TorchParameters

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)
    ).double()
    X, y = torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 1, dtype=torch.float64)

    def closure():
        return torch.nn.functional.mse_loss(model(X), y)

    params = TorchParameters(model, vectorize=vectorize)
    serial = ng.check(closure, params, None, mode="full")
    assert serial.passed
    assert_same_result(serial, ng.check(closure, params, None, mode="full", executor=dask_client))


def test_jax_in_float64_mode_is_bit_identical(process_pool):
    jax = pytest.importorskip("jax")
    saved = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)  # the workers must compute in float64 too
    try:
        rng = np.random.default_rng(2)
        params = {"W": jax.numpy.asarray(rng.normal(size=(4, 3))), "b": jax.numpy.zeros(3)}
        X = jax.numpy.asarray(rng.normal(size=(5, 4)))

        def loss(p):
            return jax.numpy.sum(jax.numpy.tanh(X @ p["W"] + p["b"]) ** 2)

        serial = ng.check(loss, params, None, mode="full")
        assert serial.passed
        assert_same_result(serial, ng.check(loss, params, None, mode="full", executor=process_pool))
    finally:
        jax.config.update("jax_enable_x64", saved)


def test_chunks_hold_whole_progress_ticks_and_balance_the_workers():
    slow = parallel.elements_per_chunk(2000, 0.01, 2, 10)  # 20 s of work on 2 workers
    assert slow == 200  # 2 s per chunk: 10 chunks
    assert parallel.elements_per_chunk(400, 0.01, 2, 10) == 50  # 4 chunks per worker
    assert parallel.elements_per_chunk(40, 0.01, 2, 10) == 10  # at least 0.1 s
    assert parallel.elements_per_chunk(10**6, 1e-6, 8, 1024) % 1024 == 0


@pytest.mark.parametrize("bad_index", [3, 4, 7])
def test_the_element_note_matches_the_serial_one_at_chunk_edges(
    process_pool, small_chunks, bad_index
):
    loss, params, grads = raising_loss(bad_index, "-")
    with pytest.raises(ZeroDivisionError) as serial:
        ng.check(loss, params, grads, mode="full")
    with pytest.raises(ZeroDivisionError) as remote:
        ng.check(loss, params, grads, mode="full", executor=process_pool)
    assert remote.value.__notes__ == serial.value.__notes__


def one_wrong_element(size: int = 3000):
    rng = np.random.default_rng(11)
    params = {"W": rng.normal(size=(size // 50, 50)), "b": rng.normal(size=20)}
    scale = {k: rng.uniform(0.5, 2, v.shape) for k, v in params.items()}

    def loss(p):
        return float(sum(np.sum(0.5 * scale[k] * p[k] ** 2 + np.cos(p[k])) for k in p))

    grads = {k: scale[k] * v - np.sin(v) for k, v in params.items()}
    grads["W"][17, 33] *= 1.5
    return loss, params, grads


def test_fast_mode_localizes_with_group_tests_on_the_workers(executor, monkeypatch):
    loss, params, grads = one_wrong_element()
    serial = ng.check(loss, params, grads, mode="fast", seed=0)
    assert serial.failing == ["W"]
    batches, group_losses = [], parallel.ExecutorEvaluator.group_losses

    def counted(runner, position, points, *args):
        batches.append(len(points))
        return group_losses(runner, position, points, *args)

    monkeypatch.setattr(parallel.ExecutorEvaluator, "group_losses", counted)
    result = ng.check(loss, params, grads, mode="fast", seed=0, executor=executor)
    assert batches and max(batches) >= 2  # halves tested side by side
    assert_same_result(serial, result)
    for mine, theirs in zip(result.tensors, serial.tensors):
        mine, theirs = mine.directional, theirs.directional
        assert (mine.status, mine.group_tests, mine.evaluations) == (
            theirs.status,
            theirs.group_tests,
            theirs.evaluations,
        )
        assert np.array_equal(mine.numeric, theirs.numeric)


def test_auto_mode_counts_the_workers_when_choosing_a_full_check():
    shapes = [(AUTO_FULL_EVALUATIONS // 2 + 1,)]  # over the budget serially, not on two workers
    assert choose_mode("auto", CENTRAL, shapes, 1, []) == "fast"
    assert choose_mode("auto", CENTRAL, shapes, 2, []) == "full"


def test_malloc_thresholds_are_raised_in_workers_only(monkeypatch, quadratic):
    calls = []
    monkeypatch.setattr(parallel, "keep_freed_memory", lambda **_: calls.append(os.getpid()))
    params, loss, grads = quadratic
    with concurrent.futures.ThreadPoolExecutor(2) as threads:  # tasks in this process
        ng.check(loss, params, grads, mode="full", executor=threads)
    assert calls == []
    parallel.apply_settings({"caller": os.getpid() + 1})  # as in another process
    assert calls == [os.getpid()]


def worker_state() -> tuple[int, bool]:
    return os.getpid(), parallel.malloc_tuned


def test_n_jobs_workers_are_reused_tune_malloc_and_leave_the_environment_alone(quadratic):
    """Even with MALLOC_TRIM_THRESHOLD_ inherited (as a Dask LocalCluster started in this
    process leaves it), nbgradcheck's own workers keep freed memory; os.environ is left
    as it was; a second check runs on the same processes."""
    params, loss, grads = quadratic
    parallel.shutdown_workers()
    os.environ["MALLOC_TRIM_THRESHOLD_"] = "65536"
    try:
        before = dict(os.environ)
        serial = ng.check(loss, params, grads, mode="full")
        first = ng.check(loss, params, grads, mode="full", n_jobs=2)
        pool = parallel._pools[2]
        states = {pool.submit(worker_state).result() for _ in range(8)}
        second = ng.check(loss, params, grads, mode="full", n_jobs=2)
        assert {pool.submit(worker_state).result() for _ in range(8)} <= states
        assert parallel._pools[2] is pool
        assert dict(os.environ) == before
    finally:
        del os.environ["MALLOC_TRIM_THRESHOLD_"]
        parallel.shutdown_workers()
    assert all(tuned for _, tuned in states)
    assert_same_result(serial, first)
    assert_same_result(serial, second)
    assert not parallel._pools


def test_a_check_on_a_dask_cluster_leaves_the_environment_alone(dask_client, quadratic):
    params, loss, grads = quadratic
    before = dict(os.environ)
    ng.check(loss, params, grads, mode="full", executor=dask_client)
    assert dict(os.environ) == before
