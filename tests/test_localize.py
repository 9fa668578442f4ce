"""Fast mode: directional screening, localization by group testing, auto mode, restoring."""

from __future__ import annotations

import signal

import numpy as np
import pytest
from conftest import frozen

import nbgradcheck as ng
from nbgradcheck.adapters.base import ParameterAdapter
from nbgradcheck.adapters.numpy import ParameterSet
from nbgradcheck.core import localize
from nbgradcheck.core.plan import AUTO_FULL_EVALUATIONS, choose_mode
from nbgradcheck.core.schemes import CENTRAL, COMPLEX, FORWARD
from nbgradcheck.demo import course_network

SHAPES = {"W1": (60, 100), "W2": (100, 40), "W3": (40, 40), "b": (2000,)}


class Quadratic:
    """J = Σ ½dθ² + cθ + 0.1·cos θ + ½(w·θ)² over several tensors, with its exact gradient."""

    def __init__(self, shapes=SHAPES, seed=0, order="C"):
        rng = np.random.default_rng(seed)
        total = sum(int(np.prod(s)) for s in shapes.values())
        self.params = {
            n: np.asarray(rng.standard_normal(s), order=order) for n, s in shapes.items()
        }
        self.d = {n: rng.uniform(0.5, 2.0, s) for n, s in shapes.items()}
        self.c = {n: rng.standard_normal(s) for n, s in shapes.items()}
        self.w = {n: rng.standard_normal(s) / np.sqrt(total) for n, s in shapes.items()}
        self.calls = 0

    def loss(self, p):
        self.calls += 1
        value = sum(
            float(np.sum((0.5 * self.d[n] * t + self.c[n]) * t + 0.1 * np.cos(t)))
            for n, t in p.items()
        )
        return value + 0.5 * self.shared(p) ** 2

    def gradients(self, p):
        shared = self.shared(p)
        return {
            n: self.d[n] * t + self.c[n] - 0.1 * np.sin(t) + shared * self.w[n]
            for n, t in p.items()
        }

    def shared(self, p):
        return sum(float(np.sum(self.w[n] * t)) for n, t in p.items())


def wrong_found(result):
    """{tensor: {multi-index}} of the elements checked one by one and found wrong."""
    return {
        t.name: {t.multi_index(i) for i in t.indices[t.element_failing & ~t.kink]}
        for t in result.tensors
    }


def plant(grads, name, flat_indices):
    flat = grads[name].reshape(-1)
    flat[flat_indices] += 0.5 * (1 + np.abs(flat[flat_indices]))
    shape = grads[name].shape
    return {tuple(int(i) for i in np.unravel_index(k, shape)) for k in flat_indices}


def test_one_wrong_element_is_found_and_only_it():
    model = Quadratic()
    grads = model.gradients(model.params)
    planted = plant(grads, "W2", [1234])
    before = frozen(model.params)
    result = ng.check(model.loss, model.params, grads, mode="fast", seed=0)
    assert result.mode == "fast" and result.failing == ["W2"]
    assert wrong_found(result) == {"W1": set(), "W2": planted, "W3": set(), "b": set()}
    n = sum(p.size for p in model.params.values())
    assert result.n_evaluations < 2 * n / 20
    row = result.elements("W2", sort_by="abs_error").iloc[0]
    true = model.gradients(model.params)["W2"].reshape(-1)[1234]
    assert row["index"] == (30, 34)
    assert row["numeric"] == pytest.approx(true, rel=1e-4)
    assert row["analytic"] == grads["W2"][30, 34]
    assert np.isnan(result.numeric["W1"]).all() and result.tensor("W1").verdict == "correct"
    assert result.diagnoses["W2"].kind == "partial"
    assert result.diagnoses["W2"].elements == [(30, 34)]
    assert frozen(model.params) == before


def test_several_scattered_wrong_elements_are_all_found():
    model = Quadratic(seed=1)
    grads = model.gradients(model.params)
    planted = plant(grads, "W1", [7, 1500, 1501, 3333, 5999])
    result = ng.check(model.loss, model.params, grads, mode="fast", seed=1)
    assert result.failing == ["W1"]
    assert wrong_found(result)["W1"] == planted
    assert result.tensor("W1").directional.status == "localized"


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_errors_that_cancel_in_pairs_are_still_found(seed):
    """e and −e: half of all sign vectors see nothing, in every group holding both."""
    model = Quadratic(seed=seed)
    grads = model.gradients(model.params)
    grads["b"][[100, 101]] += [1.0, -1.0]
    grads["W1"].reshape(-1)[[500, 3000]] += [1.0, -1.0]
    result = ng.check(model.loss, model.params, grads, mode="fast", seed=seed, progress=False)
    assert wrong_found(result)["b"] == {(100,), (101,)}
    assert wrong_found(result)["W1"] == {(5, 0), (30, 0)}


def test_n_evaluations_counts_every_loss_call():
    model = Quadratic(seed=3)
    grads = model.gradients(model.params)
    plant(grads, "W3", [5, 900])
    result = ng.check(model.loss, model.params, grads, mode="fast", seed=3)
    assert result.n_evaluations == model.calls
    per_tensor = [t.directional.evaluations for t in result.tensors]
    assert per_tensor[0] == per_tensor[3] == 2 * localize.DIRECTIONS  # W1, b pass
    assert sum(per_tensor) + 2 + 1 == model.calls  # + J twice before, once after


@pytest.mark.parametrize("method", ["forward", "backward"])
def test_one_sided_methods_localize_too(method):
    model = Quadratic(seed=4)
    grads = model.gradients(model.params)
    planted = plant(grads, "b", [1999])
    result = ng.check(
        model.loss, model.params, grads, mode="fast", method=method, seed=4, eps=1e-7, tol=1e-4
    )
    assert result.failing == ["b"] and wrong_found(result)["b"] == planted
    assert result.n_evaluations == model.calls


def test_correct_models_pass_across_seeds():
    for seed in range(4):
        model = Quadratic(seed=10 + seed)
        result = ng.check(
            model.loss, model.params, model.gradients(model.params), mode="fast", seed=seed
        )
        assert result.passed, result
        assert result.diagnoses == {}
        assert all(len(t.directional.tests) == localize.DIRECTIONS for t in result.tensors)
    for seed, dtype in [(0, np.float64), (1, np.float64), (2, np.float32), (3, np.float32)]:
        net = course_network((32, 64, 32, 1), m=16, seed=seed, dtype=dtype)
        result = ng.check(net.loss, net.parameters, net.gradients, mode="fast", seed=seed)
        assert result.passed, result
        assert not any(d.is_bug for d in result.diagnoses.values())


def test_a_scaled_tensor_is_flagged_as_dense_and_diagnosed_cheaply():
    model = Quadratic(seed=5)
    grads = model.gradients(model.params)
    grads["W1"] = 2 * grads["W1"]
    result = ng.check(model.loss, model.params, grads, mode="fast", seed=5)
    assert result.failing == ["W1"]
    assert result.tensor("W1").directional.status == "dense"
    assert result.diagnoses["W1"].label == "scale 2.0"
    assert result.table.loc["W1", "diagnosis"] == "scale 2.0"
    assert result.n_evaluations <= 200


@pytest.mark.parametrize(
    "bug, name, kind",
    [
        (lambda g: g.update(W3=g["W3"].T.copy()), "W3", "transpose"),
        (lambda g: g.update(W2=g["W2"].T.reshape(100, 40)), "W2", "transpose"),
        (lambda g: g.update(b=-g["b"]), "b", "sign"),
        (lambda g: g.update(W1=np.zeros((60, 100))), "W1", "zero"),
    ],
)
def test_dense_bugs_are_diagnosed_in_fast_mode(bug, name, kind):
    model = Quadratic(seed=6)
    grads = model.gradients(model.params)
    bug(grads)
    result = ng.check(model.loss, model.params, grads, mode="fast", seed=6)
    assert result.failing == [name]
    assert result.diagnoses[name].kind == kind


def test_missing_l2_is_diagnosed_in_fast_mode_with_lambda():
    model = Quadratic(seed=7)

    def loss(p):
        return model.loss(p) + 0.05 * float(np.sum(p["W2"] ** 2))

    result = ng.check(loss, model.params, model.gradients(model.params), mode="fast", seed=7)
    assert result.failing == ["W2"]
    diagnosis = result.diagnoses["W2"]
    assert diagnosis.kind == "missing_l2"
    assert diagnosis.l2_lambda == pytest.approx(0.1, rel=1e-4)


def test_small_tensors_are_checked_one_by_one_in_fast_mode():
    model = Quadratic({"W": (50, 60), "b": (10,)}, seed=8)
    grads = model.gradients(model.params)
    planted = plant(grads, "b", [3])
    result = ng.check(model.loss, model.params, grads, mode="fast", seed=8)
    tensor = result.tensor("b")
    assert tensor.directional.status == "checked one by one"
    assert tensor.indices.tolist() == list(range(10))
    assert wrong_found(result)["b"] == planted and result.failing == ["b"]


def test_auto_mode_is_decided_from_the_sizes_never_from_a_clock():
    notes = []
    big, small = [(1000, 1000)], [(5, 4), (5,)]
    assert choose_mode("auto", CENTRAL, big, 1, notes) == "fast"
    assert "mode='auto' chose fast" in notes[0] and "2,000,000" in notes[0]
    assert "about" not in notes[0]  # no timing estimate in the report
    assert choose_mode("auto", CENTRAL, small, 1, []) == "full"
    assert choose_mode("auto", COMPLEX, big, 1, []) == "full"  # no real steps: always full
    assert choose_mode("full", CENTRAL, big, 1, []) == "full"
    budget = AUTO_FULL_EVALUATIONS
    assert choose_mode("auto", CENTRAL, [(budget // 2,)], 1, []) == "full"
    assert choose_mode("auto", CENTRAL, [(budget // 2 + 1,)], 1, []) == "fast"
    assert choose_mode("auto", FORWARD, [(budget // 2 + 1,)], 1, []) == "full"  # n, not 2n


def test_auto_mode_end_to_end():
    net = course_network()
    assert ng.check(net.loss, net.parameters, net.gradients).mode == "full"
    model = Quadratic({"W": (100, 100), "b": (100,)}, seed=9)

    # 2n = 20,200 evaluations: more than a full check's budget, however fast the loss
    result = ng.check(model.loss, model.params, model.gradients(model.params), seed=9)
    assert result.mode == "fast" and result.passed
    assert any("mode='auto' chose fast" in note for note in result.notes)
    assert result.rerun["mode"] == "auto"


def test_parameters_are_restored_bit_for_bit_also_when_not_contiguous():
    model = Quadratic(seed=11, order="F")
    grads = model.gradients(model.params)
    plant(grads, "W1", [17])
    grads["W2"] = 2 * grads["W2"]
    before = frozen(model.params)
    result = ng.check(model.loss, model.params, grads, mode="fast", seed=11)
    assert sorted(result.failing) == ["W1", "W2"]
    assert not model.params["W1"].flags.c_contiguous
    assert frozen(model.params) == before


@pytest.mark.parametrize("at_call", [40, 150])
def test_ctrl_c_returns_a_partial_result_and_restores(at_call):
    model = Quadratic(seed=12)
    grads = model.gradients(model.params)
    plant(grads, "W1", [4321])
    before = frozen(model.params)

    def loss(p):
        if model.calls + 1 == at_call:
            model.calls += 1
            signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, inside a group perturbation
        return model.loss(p)

    with pytest.warns(RuntimeWarning, match="INCOMPLETE"):
        result = ng.check(loss, model.params, grads, mode="fast", seed=12)
    assert not result.complete and not result.passed
    assert frozen(model.params) == before
    assert result.n_evaluations == at_call - 1
    assert result.tensor("b").directional.status == "not tested"


def test_an_exception_in_the_loss_restores_and_names_the_group():
    model = Quadratic(seed=13)
    before = frozen(model.params)

    def loss(p):
        if model.calls == 20:
            raise ValueError("boom")
        return model.loss(p)

    with pytest.raises(ValueError, match="boom") as raised:
        ng.check(loss, model.params, model.gradients(model.params), mode="fast")
    assert frozen(model.params) == before
    assert "elements of W1 were perturbed" in " ".join(getattr(raised.value, "__notes__", []))


def test_group_setter_falls_back_to_the_element_setter():
    array = np.arange(6.0)

    class OneByOne(ParameterSet):  # an adapter without a vectorized group setter
        group_setter = ParameterAdapter.group_setter

    params = OneByOne.from_user({"a": array})
    set_group = params.group_setter(0)
    set_group(np.array([1, 4]), np.array([10.0, 40.0]))
    assert array.tolist() == [0, 10, 2, 3, 40, 5]


def test_fast_mode_rejects_complex_steps():
    model = Quadratic(seed=14)
    with pytest.raises(ng.GradCheckError, match="mode='fast' needs real steps"):
        ng.check(
            model.loss, model.params, model.gradients(model.params), mode="fast", method="complex"
        )


def test_summary_and_table_describe_fast_mode():
    model = Quadratic(seed=15)
    grads = model.gradients(model.params)
    plant(grads, "W3", [77])
    result = ng.check(model.loss, model.params, grads, mode="fast", seed=15)
    summary = result.summary()
    assert "fast: 13600 elements in directional tests" in summary
    assert "\nW3: only 1 element is wrong" in summary and "[1, 37] (analytic" in summary
    assert result.table.loc["W3", "diagnosis"] == "element [1, 37]"
    assert result.table.loc["W1", "checked"] == 0 and result.table.loc["W1", "diagnosis"] == ""
