"""The check loop: verdicts, methods, sampling, kinks, randomness, float32, interruption."""

from __future__ import annotations

import random
import signal
import warnings

import numpy as np
import pytest
from conftest import frozen

import nbgradcheck as ng
from nbgradcheck.demo import course_network, forward


def test_correct_network_passes_with_every_tensor_correct(net):
    before = frozen(net.parameters)
    result = ng.check(net.loss, net.parameters, net.gradients, mode="full")
    assert result.passed and result.verdict == "correct"
    assert result.difference < 1e-7
    assert list(result.table.index) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert (result.table["verdict"] == "correct").all()
    assert result.n_checked == result.n_parameters == 47
    assert frozen(net.parameters) == before


def test_planted_bugs_are_flagged_on_exactly_their_tensors(buggy_net):
    result = ng.check(buggy_net.loss, buggy_net.parameters, buggy_net.gradients, mode="full")
    assert not result.passed and result.verdict == "wrong"
    assert sorted(result.failing) == ["W2", "b1"]
    # dW2 = 2 × true gradient: the relative difference of a factor c is |c − 1| / (|c| + 1)
    assert result.tensor("W2").difference == pytest.approx(1 / 3, rel=1e-6)
    assert result.tensor("b1").difference == pytest.approx(3 / 5, rel=1e-6)
    assert result.table.loc["W1", "verdict"] == "correct"


def test_verdict_is_worst_tensor_even_when_global_difference_is_small():
    rng = np.random.default_rng(1)
    params = {"W": rng.normal(size=(200, 50)), "b": rng.normal(size=2)}
    scale = {"W": 100.0, "b": 0.001}

    def loss(p):
        return sum(scale[k] * np.sum(p[k] ** 2) for k in p)

    grads = {"W": 2 * scale["W"] * params["W"], "b": -2 * scale["b"] * params["b"]}
    result = ng.check(loss, params, grads, mode="full")
    assert result.difference < 1e-5  # the global norm hides the bias
    assert result.failing == ["b"] and result.verdict == "wrong" and not result.passed


def test_closure_loss_list_params_and_tuple_return():
    net = course_network()
    params = [net.parameters[k] for k in ("W1", "b1", "W2", "b2", "W3", "b3")]
    grads = net.gradients(net.parameters)
    grad_list = [grads["d" + k] for k in ("W1", "b1", "W2", "b2", "W3", "b3")]

    def loss():  # a closure: sees the in-place perturbation through net.parameters
        return forward(net.X, net.Y, net.parameters)

    result = ng.check(loss, params, grad_list, mode="full")
    assert result.passed and result.names == ["p0", "p1", "p2", "p3", "p4", "p5"]


def test_single_array_params_and_zero_dimensional_arrays():
    theta = np.array([0.3, -1.2, 2.0])
    result = ng.check(lambda t: np.sum(np.sin(t)), theta, np.cos(theta))
    assert result.passed and result.names == ["theta"]
    scalar = np.array(1.5)
    result = ng.check(lambda p: p["s"] ** 3, {"s": scalar}, {"s": np.array(3 * 1.5**2)})
    assert result.passed and result.table.loc["s", "worst_index"] == ()


def test_gradients_callable_with_or_without_argument(net):
    with_argument = ng.check(net.loss, net.parameters, net.gradients)
    without = ng.check(net.loss, net.parameters, lambda: net.gradients(net.parameters))
    assert with_argument.passed and without.passed
    assert with_argument.difference == without.difference


def test_ignored_gradient_keys_are_reported_in_notes(net):
    result = ng.check(net.loss, net.parameters, net.gradients)
    assert any("ignored gradient keys" in n and "dZ1" in n for n in result.notes)


def test_non_contiguous_parameters_are_perturbed_in_place_and_restored():
    base = np.asfortranarray(np.arange(12.0).reshape(3, 4) / 7)
    view = np.arange(20.0)[::2] / 3  # a strided copy is contiguous; make a real view:
    strided = np.zeros(20)
    strided[::2] = view
    params = {"F": base, "S": strided[::2]}
    before = frozen(params)

    def loss():
        return float(np.sum(params["F"] ** 2) + np.sum(np.exp(params["S"])))

    grads = {"F": 2 * base, "S": np.exp(strided[::2])}
    result = ng.check(loss, params, grads, mode="full")
    assert result.passed, result
    assert frozen(params) == before and not params["S"].flags.c_contiguous


@pytest.mark.parametrize("method", ["forward", "backward"])
def test_one_sided_methods_pass_correct_and_catch_bugs(method, net, buggy_net):
    good = ng.check(net.loss, net.parameters, net.gradients, method=method, mode="full")
    bad = ng.check(
        buggy_net.loss, buggy_net.parameters, buggy_net.gradients, method=method, mode="full"
    )
    assert good.passed and good.method == method
    assert good.n_evaluations == 2 + 47
    assert sorted(bad.failing) == ["W2", "b1"]


def test_central_is_second_order_and_one_sided_first_order():
    """f(θ) = θ³ at θ = 1 with ε = 0.01: central 3.0001, forward 3.0301 (true 3)."""
    theta = np.array([1.0])
    central = ng.check(lambda t: t[0] ** 3, theta, np.array([3.0]), eps=0.01, tol=1e-2)
    forward_ = ng.check(
        lambda t: t[0] ** 3, theta, np.array([3.0]), eps=0.01, method="forward", tol=1e-2
    )
    assert central.numeric["theta"][0] == pytest.approx(3.0001, abs=1e-12)
    assert forward_.numeric["theta"][0] == pytest.approx(3.0301, abs=1e-12)


def test_complex_step_reaches_machine_precision(net, buggy_net):
    good = ng.check(net.loss, net.parameters, net.gradients, method="complex")
    assert good.passed and good.difference < 1e-13 and good.eps == 1e-20
    assert good.n_evaluations == 2 + 47
    bad = ng.check(buggy_net.loss, buggy_net.parameters, buggy_net.gradients, method="complex")
    assert sorted(bad.failing) == ["W2", "b1"]
    assert all(np.isrealobj(v) for v in net.parameters.values())


def test_complex_step_needs_the_parameters_as_argument(net):
    with pytest.raises(ng.GradCheckError, match=r"complex.*argument"):
        ng.check(lambda: net.loss(net.parameters), net.parameters, net.gradients, method="complex")


def test_complex_step_through_a_real_cast_is_an_error(net):
    with pytest.raises(ng.LossError, match="drops the imaginary part"):
        ng.check(
            lambda p: float(np.real(net.loss(p))), net.parameters, net.gradients, method="complex"
        )


def test_auto_eps_scales_with_magnitude():
    theta = np.array([1e-3, 1.0, 1e4])
    result = ng.check(lambda t: np.sum(t**2), theta, 2 * theta, eps="auto")
    steps = result.tensor("theta").step
    assert result.passed and result.eps == "auto"
    assert steps[0] == pytest.approx(steps[1], rel=1e-6)  # max(1, |θ|) below 1
    assert steps[2] / steps[1] == pytest.approx(1e4, rel=1e-3)


def test_sample_mode_checks_every_tensor_spread_and_reproducibly():
    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(100, 100)), "b": rng.normal(size=5)}
    grads = {k: 2 * v for k, v in params.items()}

    def loss(p):
        return sum(float(np.sum(v**2)) for v in p.values())

    first = ng.check(loss, params, grads, mode="sample", sample=20, seed=3)
    again = ng.check(loss, params, grads, mode="sample", sample=20, seed=3)
    assert first.table["checked"].to_dict() == {"W": 20, "b": 5}
    indices = first.tensor("W").indices
    assert np.array_equal(indices, again.tensor("W").indices)
    # one element from each of 20 equal strata of the 10,000 flat positions
    assert np.array_equal(indices // 500, np.arange(20))
    assert np.isnan(first.numeric["W"]).sum() == 10_000 - 20
    assert np.isnan(first.analytic["W"]).sum() == 10_000 - 20
    assert first.n_evaluations == 2 + 2 * 25


def test_randomness_is_detected_and_seed_checks_the_dropout_gradient():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=30), rng.normal(size=30)
    params = {"w": w}

    def dropout_loss(p):
        mask = np.random.rand(30) > 0.5
        return float(np.sum((p["w"] * x * mask / 0.5) ** 2))

    def dropout_grads(p):
        mask = np.random.rand(30) > 0.5
        return {"w": 2 * p["w"] * (x * mask / 0.5) ** 2}

    with pytest.raises(ng.RandomLossError, match="seed="):
        ng.check(dropout_loss, params, dropout_grads)
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    python_state = random.getstate()
    result = ng.check(dropout_loss, params, dropout_grads, seed=7)
    assert result.passed
    assert np.array_equal(np.random.get_state()[1], state)  # the user's RNG untouched
    assert random.getstate() == python_state


def test_randomness_the_seed_cannot_reach_is_explained():
    generator = np.random.default_rng(0)
    theta = np.ones(3)
    with pytest.raises(ng.RandomLossError, match="generator"):
        ng.check(lambda t: float(np.sum(t * generator.random(3))), theta, np.ones(3), seed=0)


def test_kink_crossing_is_marked_and_not_a_failure():
    theta = np.array([4e-7, 1.0, -2.0])  # the first element sits within ε of |θ|'s kink

    def loss(t):
        return float(np.sum(np.abs(t)))

    result = ng.check(loss, theta, np.sign(theta), eps=1e-6)
    tensor = result.tensor("theta")
    assert result.passed and tensor.kink.tolist() == [True, False, False]
    assert result.kinks["index"].tolist() == [(0,)]
    assert any("kink" in note for note in result.notes)
    assert result.table.loc["theta", "kinks"] == 1


def test_bug_next_to_a_kink_is_still_a_failure():
    theta = np.array([4e-7, 1.0, -2.0])
    wrong = np.sign(theta) * np.array([1.0, 2.0, 1.0])  # element 1 is wrong and smooth
    result = ng.check(lambda t: float(np.sum(np.abs(t))), theta, wrong, eps=1e-6)
    assert not result.passed
    assert result.tensor("theta").kink.tolist() == [True, False, False]


def test_float32_correct_network_passes_and_says_why():
    failures = []
    for seed in range(6):
        net = course_network((20, 30, 10, 1), m=16, seed=seed, dtype=np.float32)
        result = ng.check(net.loss, net.parameters, net.gradients, mode="full")
        failures += [seed] if not result.passed else []
    assert failures == []
    assert result.eps == "auto"
    assert any("not float64" in note for note in result.notes)


def test_float32_planted_bug_is_found():
    net = course_network((20, 30, 10, 1), m=16, seed=3, dtype=np.float32, bugs=("scale_dW2",))
    result = ng.check(net.loss, net.parameters, net.gradients, mode="full")
    assert result.failing == ["W2"]


def test_refinement_rescues_a_step_that_crossed_kinks_on_both_sides():
    theta = np.array([0.0, 1.0, -2.0])

    def loss(t):  # kinks at t = 0.003 and t = −0.005: a step of 0.01 crosses both
        return float(np.sum(np.maximum(t - 0.003, 0) + np.maximum(t + 0.005, 0)))

    analytic = (theta > 0.003).astype(float) + (theta > -0.005)
    result = ng.check(loss, theta, analytic, eps=1e-2, mode="full")
    tensor = result.tensor("theta")
    assert result.passed and not tensor.kink.any()
    assert tensor.step[0] == pytest.approx(2e-2 / 8) and tensor.step[1] == pytest.approx(2e-2)
    assert result.n_evaluations == 2 + 2 * 3 + 2
    assert tensor.refined == 1
    assert any("re-estimated with a smaller step (1 in theta)" in n for n in result.notes)


def test_interrupt_returns_a_partial_result_and_restores(net):
    before = frozen(net.parameters)
    calls = {"n": 0}

    def loss(p):
        calls["n"] += 1
        if calls["n"] == 40:
            signal.raise_signal(signal.SIGINT)  # a real Ctrl-C
        return net.loss(p)

    with pytest.warns(RuntimeWarning, match="INCOMPLETE"):
        result = ng.check(loss, net.parameters, net.gradients, mode="full")
    assert not result.complete and not result.passed
    assert result.summary().startswith("Gradient check INCOMPLETE")
    assert frozen(net.parameters) == before
    assert 0 < result.n_checked < 47
    assert result.n_evaluations == 39  # the 40th never returned
    assert "INCOMPLETE" in repr(result)
    assert np.isnan(result.numeric["b3"]).all()


def test_user_exception_propagates_unchanged_with_parameters_restored(net):
    before = frozen(net.parameters)
    error = ZeroDivisionError("boom")
    calls = {"n": 0}

    def loss(p):
        calls["n"] += 1
        if calls["n"] == 10:
            raise error
        return net.loss(p)

    with pytest.raises(ZeroDivisionError) as raised:
        ng.check(loss, net.parameters, net.gradients)
    assert raised.value is error
    # calls 1-2 are the start; W1[0, 3] is the 4th element: its θ−ε evaluation is call 10
    assert any("W1[0, 3]" in note for note in getattr(raised.value, "__notes__", []))
    assert frozen(net.parameters) == before


def test_nan_loss_names_the_perturbed_element():
    theta = np.array([0.5, 1e-7, 2.0])

    def loss(t):
        return float(np.sum(np.log(t)))

    before = frozen(theta)
    with pytest.raises(ng.NonFiniteLossError, match=r"theta\[1\].*−ε"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ng.check(loss, theta, 1 / theta, eps=1e-6)
    assert frozen(theta) == before


def test_nan_loss_at_the_start_is_reported():
    with pytest.raises(ng.NonFiniteLossError, match="unperturbed"):
        ng.check(lambda t: float("nan"), np.ones(2), np.ones(2))
    with pytest.raises(ng.NonFiniteLossError, match="inf"):
        ng.check(lambda t: np.inf, np.ones(2), np.ones(2))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.ones(3), r"shape \(3,\).*scalar"),
        (None, "return"),
        ("0.5", "str"),
        (1 + 2j, "complex"),
        ((), "empty tuple"),
    ],
)
def test_losses_that_are_not_real_scalars_are_rejected(value, message):
    with pytest.raises(ng.LossError, match=message):
        ng.check(lambda t: value, np.ones(2), np.ones(2))


def test_size_one_array_losses_are_accepted(net):
    result = ng.check(lambda p: np.array([[net.loss(p)]]), net.parameters, net.gradients)
    assert result.passed


def test_loss_that_changes_the_parameters_is_caught_and_undone():
    theta = np.array([1.0, 2.0])
    before = frozen(theta)

    def loss(t):
        t *= 0.5  # an update step inside the loss
        return float(np.sum(t))

    with pytest.raises(ng.ParametersModifiedError, match="theta"):
        ng.check(loss, theta, np.ones(2))
    assert frozen(theta) == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "centered"}, "method must be one of"),
        ({"mode": "everything"}, "mode must be one of"),
        ({"eps": -1.0}, "eps must be"),
        ({"eps": "big"}, "eps must be"),
        ({"tol": 0}, "tol must be"),
        ({"sample": 5}, "needs mode='sample'"),
        ({"mode": "sample", "sample": 0}, "positive integer"),
    ],
)
def test_bad_options_are_rejected(kwargs, message, quadratic):
    params, loss, grads = quadratic
    with pytest.raises(ng.GradCheckError, match=message):
        ng.check(loss, params, grads, **kwargs)


def test_loss_must_be_callable(quadratic):
    params, _, grads = quadratic
    with pytest.raises(ng.GradCheckError, match="callable"):
        ng.check(3.0, params, grads)


def test_step_too_small_for_the_dtype_is_explained():
    theta = np.array([1000.0], dtype=np.float32)
    with pytest.raises(ng.GradCheckError, match=r"theta\[0\].*float32.*eps='auto'"):
        ng.check(lambda t: float(t[0] ** 2), theta, 2 * theta.astype(float), eps=1e-6)


def test_result_views(buggy_net):
    result = ng.check(buggy_net.loss, buggy_net.parameters, buggy_net.gradients)
    columns = {"shape", "size", "checked", "difference", "max_abs_error", "worst_index", "verdict"}
    assert columns <= set(result.table.columns)
    elements = result.elements("W2", sort_by="abs_error")
    assert list(elements.columns[:5]) == ["index", "analytic", "numeric", "abs_error", "rel_error"]
    assert elements["abs_error"].is_monotonic_decreasing
    assert elements.loc[0, "index"] == result.table.loc["W2", "worst_index"]
    assert np.allclose(elements["analytic"], 2 * elements["numeric"], rtol=1e-5)
    assert result.numeric["W2"].shape == (3, 5)
    text = repr(result)
    assert "FAILED" in text and "W2" in text and "wrong" in text
    with pytest.raises(KeyError, match="no parameter 'W9'"):
        result.elements("W9")
    with pytest.raises(ValueError, match="sort_by"):
        result.elements("W2", sort_by="size")


def test_recheck_reruns_with_changed_arguments(net):
    result = ng.check(net.loss, net.parameters, net.gradients)
    again = result.recheck(method="forward", eps=1e-7)
    assert again.method == "forward" and again.eps == 1e-7 and again.passed


def test_evaluation_count_for_a_full_central_check(net):
    result = ng.check(net.loss, net.parameters, net.gradients, mode="full")
    assert result.n_evaluations == 2 + 2 * 47


def test_a_true_zero_gradient_with_round_off_in_the_analytic_one_passes():
    params = {"W": np.array([1.0, -2.0, 0.5]), "b": np.array([0.3, 0.7])}

    def loss(p):
        return float(np.sum(p["W"] ** 2))  # b does not matter: its gradient is 0

    grads = {"W": 2 * params["W"], "b": np.array([1e-18, -3e-19])}
    result = ng.check(loss, params, grads, mode="full")
    assert result.passed and result.table.loc["b", "verdict"] == "ok"
    wrong = ng.check(loss, params, {"W": 2 * params["W"], "b": np.array([1e-3, 0.0])}, mode="full")
    assert wrong.failing == ["b"]
