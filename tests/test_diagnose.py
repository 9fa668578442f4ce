"""Diagnoses: each kind of mistake on planted bugs, and none on correct models."""

from __future__ import annotations

import re

import numpy as np
import pytest

import nbgradcheck as ng
from nbgradcheck.core.diagnose import (
    Diagnosis,
    Evidence,
    diagnose_result,
    format_factor,
    ratios,
    significant_factor,
    supported,
)
from nbgradcheck.demo import course_network

M = 8  # examples


def planted(bug=None, dims=(4, 5, 5, 1), l2=0.0, dtype=np.float64, seed=1):
    """(loss, params, grads) of a course network whose backward pass ``bug`` edits."""
    net = course_network(dims, m=M, seed=seed, dtype=dtype)

    def loss(p):
        weights = sum(float(np.sum(p[k] ** 2)) for k in p if k.startswith("W"))
        return net.loss(p) + l2 / (2 * M) * weights

    def grads(p):
        g = net.gradients(p)
        if bug is not None:
            bug(g)
        return g

    return loss, net.parameters, grads


def only(result, name):
    """The one failing tensor's diagnosis."""
    assert result.failing == [name]
    diagnosis = result.diagnoses[name]
    assert diagnosis.is_bug and diagnosis.name == name
    return diagnosis


def test_stray_factor_two():
    result = ng.check(*planted(lambda g: g.update(dW2=2 * g["dW2"])))
    diagnosis = only(result, "W2")
    assert diagnosis.kind == "scale" and diagnosis.factor == pytest.approx(2.0, rel=1e-6)
    assert diagnosis.label == "scale 2.0" and "stray factor 2" in diagnosis.sentence
    assert result.table.loc["W2", "diagnosis"] == "scale 2.0"
    assert result.diagnosis.kind == "scale" and result.diagnosis.sentence.startswith("W2: ")


def test_missing_one_over_m():
    diagnosis = only(ng.check(*planted(lambda g: g.update(db1=M * g["db1"]))), "b1")
    assert diagnosis.kind == "scale" and diagnosis.factor == pytest.approx(M, rel=1e-6)
    # the factor is named, 1/m offered as a cause without claiming to know the batch size
    assert "a missing 1/m" in diagnosis.sentence and f"holds {M} examples" in diagnosis.sentence


def test_extra_one_over_m():
    diagnosis = only(ng.check(*planted(lambda g: g.update(dW1=g["dW1"] / M))), "W1")
    assert diagnosis.factor == pytest.approx(1 / M, rel=1e-6) and "extra 1/m" in diagnosis.sentence


def test_sign_flip():
    diagnosis = only(ng.check(*planted(lambda g: g.update(dW3=-g["dW3"]))), "W3")
    assert diagnosis.kind == "sign" and diagnosis.factor == -1.0


def test_transposed_square_gradient():
    diagnosis = only(ng.check(*planted(lambda g: g.update(dW2=g["dW2"].T.copy()))), "W2")
    assert diagnosis.kind == "transpose" and diagnosis.factor == 1.0
    assert "numericᵀ" in diagnosis.sentence


def test_gradient_computed_transposed_and_reshaped():
    bug = lambda g: g.update(dW1=g["dW1"].T.reshape(5, 4))  # noqa: E731
    diagnosis = only(ng.check(*planted(bug, dims=(4, 5, 3, 1))), "W1")
    assert diagnosis.kind == "transpose" and "reshaped to (5, 4)" in diagnosis.sentence


def test_missing_l2_term_with_lambda_estimated():
    result = ng.check(*planted(l2=0.7))
    assert result.failing == ["W1", "W2", "W3"]
    for name in result.failing:
        diagnosis = result.diagnoses[name]
        assert diagnosis.kind == "missing_l2"
        assert diagnosis.l2_lambda == pytest.approx(0.7 / M, rel=1e-6)
    assert result.diagnosis.kind == "missing_l2"
    assert result.diagnosis.l2_lambda == pytest.approx(0.7 / M, rel=1e-6)


def test_l2_term_in_backprop_but_not_in_the_cost():
    def bug(g):
        g["dW2"] = g["dW2"] + 0.3 * params["W2"]

    loss, params, grads = planted(bug)
    diagnosis = only(ng.check(loss, params, grads), "W2")
    assert diagnosis.kind == "extra_l2" and diagnosis.l2_lambda == pytest.approx(-0.3, rel=1e-6)


def test_zero_gradient():
    diagnosis = only(ng.check(*planted(lambda g: g.update(dW2=np.zeros((5, 5))))), "W2")
    assert diagnosis.kind == "zero" and "not connected" in diagnosis.sentence


def test_only_some_rows_wrong_named_with_how():
    def bug(g):
        g["dW1"][[1, 3]] *= 2

    diagnosis = only(ng.check(*planted(bug)), "W1")
    assert diagnosis.kind == "partial" and diagnosis.rows == [1, 3]
    assert "scaled by 2.0 there" in diagnosis.sentence and diagnosis.label == "rows 1, 3"


def test_only_one_column_wrong():
    def bug(g):
        g["dW1"][:, 2] = 0

    diagnosis = only(ng.check(*planted(bug)), "W1")
    assert diagnosis.columns == [2] and "analytic gradient is 0" in diagnosis.sentence


def test_only_some_elements_wrong():
    def bug(g):
        g["dW2"][0, 3] += 0.5
        g["dW2"][4, 1] -= 0.2

    diagnosis = only(ng.check(*planted(bug)), "W2")
    assert diagnosis.kind == "partial" and diagnosis.elements == [(0, 3), (4, 1)]
    assert "[0, 3] (analytic" in diagnosis.sentence and "W2" not in diagnosis.sentence


def test_no_simple_pattern_lists_the_worst_elements():
    def bug(g):
        g["dW1"] += np.random.default_rng(0).normal(size=g["dW1"].shape)

    diagnosis = only(ng.check(*planted(bug)), "W1")
    assert diagnosis.kind == "none_found" and len(diagnosis.elements) == 20
    assert diagnosis.label == "no simple pattern"


def test_correct_models_get_no_diagnosis():
    for seed in range(3):
        result = ng.check(*planted(seed=seed))
        assert result.passed and result.diagnoses == {}
        assert result.diagnosis.kind == "ok" and not result.diagnosis.is_bug
        assert (result.table["diagnosis"] == "").all()


def test_kink_crossing_is_not_a_bug():
    theta = np.array([1e-7, 0.5, -2.0, 3.0])
    result = ng.check(lambda t: float(np.sum(np.abs(t))), theta, np.sign(theta))
    assert result.passed
    diagnosis = result.diagnoses["theta"]
    assert diagnosis.kind == "kink" and not diagnosis.is_bug
    assert result.diagnosis.kind == "ok"


def test_float32_round_off_is_not_a_bug():
    result = ng.check(*planted(dtype=np.float32))
    # passing within the round-off floor: the verdict says it all, no diagnosis line
    assert result.passed and any(t.difference > t.tol for t in result.tensors)
    assert result.diagnoses == {} and (result.table["diagnosis"] == "").all()
    assert "round-off" not in result.summary()
    failing = ng.check(*planted(dtype=np.float32), eps=1e-5)  # far too small for float32
    assert failing.failing
    assert all(failing.diagnoses[name].kind == "noise" for name in failing.failing)
    assert failing.diagnosis.kind == "noise" and not failing.diagnosis.is_bug


def ratio_noise(tensor, factor):
    """The float32 noise in the ratios analytic / numeric whose median is ``factor`` (the
    elements checked one by one, else fast mode's directions): the robust standard
    deviation of one ratio, plus two standard errors of their median."""
    evidence = Evidence.of_elements(tensor)
    values = ratios(evidence.analytic, evidence.numeric, evidence.noise)
    if not values.size or np.median(values) != factor:
        evidence = Evidence.of_directions(tensor.directional)
        values = ratios(evidence.analytic, evidence.numeric, evidence.noise)
    assert np.median(values) == factor
    deviation = 1.4826 * np.median(np.abs(values - factor))
    return deviation * (1 + 2 * 1.253 / np.sqrt(values.size))


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_a_small_scale_shows_through_float32_noise(mode):
    net = course_network((32, 64, 32, 1), m=16, seed=0, dtype=np.float32)

    def grads(p):
        g = net.gradients(p)
        g["dW1"] = 1.05 * g["dW1"]
        return g

    result = ng.check(net.loss, net.parameters, grads, mode=mode, seed=0, progress=False)
    diagnosis = only(result, "W1")
    assert diagnosis.kind == "scale"
    # recovered within what the float32 noise in the measured ratios allows, and further
    # from 1 than that noise: the scale shows through it
    noise = ratio_noise(result.tensor("W1"), diagnosis.factor)
    assert abs(diagnosis.factor - 1.05) <= noise < abs(diagnosis.factor - 1)


def test_random_loss_is_named():
    loss, params, grads = planted()
    calls = {"n": 0}

    def data_loader_loss(p):  # deterministic for the two evaluations before the check
        calls["n"] += 1
        jitter = 0.0 if calls["n"] <= 2 else 1e-9 * np.random.default_rng(calls["n"]).normal()
        return loss(p) + jitter

    result = ng.check(data_loader_loss, params, grads)
    assert result.failing
    assert {d.kind for d in result.diagnoses.values()} == {"random"}
    assert result.diagnosis.kind == "random" and "seed=0" in result.diagnosis.sentence


def test_a_factor_shared_by_every_tensor_is_named_once():
    def bug(g):
        for key in ("dW1", "db1", "dW2", "db2", "dW3", "db3"):
            g[key] = 0.5 * g[key]

    result = ng.check(*planted(bug))
    assert result.diagnosis.kind == "scale" and result.diagnosis.factor == pytest.approx(0.5)
    sentence = result.diagnosis.sentence
    assert "W1, b1, W2, b2, W3 and b3 are off by the same factor 0.5" in sentence
    # the error enters at the top layer, which every layer below inherits it from
    assert "layer 3 (dZ3)" in sentence


def test_several_bugs_are_listed():
    def bug(g):
        g["dW2"] = 2 * g["dW2"]
        g["dW3"] = -g["dW3"]

    result = ng.check(*planted(bug))
    assert result.diagnosis.kind == "several"
    assert "W2: scale 2.0" in result.diagnosis.sentence
    assert "W3: sign flip" in result.diagnosis.sentence


def affine_problem(db):
    """A square affine layer with squared error (5 examples, 5 outputs) whose bias
    gradient ``db(dout)`` computes."""
    rng = np.random.default_rng(4)
    x, target = rng.normal(size=(5, 3)), rng.normal(size=(5, 5))
    params = {"W": rng.normal(size=(3, 5)), "b": rng.normal(size=5)}

    def loss(p):
        return float(0.5 * np.sum((x @ p["W"] + p["b"] - target) ** 2) / 5)

    def grads(p):
        dout = (x @ p["W"] + p["b"] - target) / 5
        return {"W": x.T @ dout, "b": db(dout)}

    return loss, params, grads


@pytest.mark.parametrize(
    "db",
    [
        lambda dout: dout.sum(axis=1),  # per example where per output belongs
        lambda dout: np.full(5, dout.sum() / 5),  # the mean in every element
        lambda dout: np.full(5, dout.sum()),  # the total in every element
    ],
    ids=["other axis", "mean broadcast", "total broadcast"],
)
@pytest.mark.parametrize("mode", ["full", "fast"])
def test_a_sum_over_the_wrong_axis(db, mode):
    result = ng.check(*affine_problem(db), mode=mode, seed=0, progress=False)
    diagnosis = only(result, "b")
    assert diagnosis.kind == "axis" and diagnosis.label == "wrong axis"
    assert "axis" in diagnosis.sentence and diagnosis.factor is None


def test_a_total_kept_by_a_few_wrong_elements_is_not_an_axis():
    def db(dout):
        wrong = dout.sum(axis=0)
        wrong[[1, 3]] = wrong[[3, 1]]  # two elements swapped: the total is kept
        return wrong

    diagnosis = only(ng.check(*affine_problem(db)), "b")
    assert diagnosis.kind == "partial" and sorted(diagnosis.elements) == [(1,), (3,)]


def test_a_mostly_zero_gradient_is_not_a_scale_of_zero():
    def bug(g):
        keep = np.zeros(g["dW1"].size, dtype=bool)
        keep[::3] = True  # a third of the elements keep a tenth of their gradient
        g["dW1"] = np.where(keep.reshape(g["dW1"].shape), 0.1 * g["dW1"], 0.0)

    diagnosis = only(ng.check(*planted(bug)), "W1")
    assert diagnosis.kind == "none_found" and diagnosis.factor is None
    assert "terms missing from a sum" in diagnosis.sentence


def test_scattered_ratios_are_not_a_scale():
    def evidence(ratios):
        numeric = np.linspace(1.0, 2.0, ratios.size)
        noise = np.full(ratios.size, 1e-6)
        indices, failing = np.arange(ratios.size), np.ones(ratios.size, dtype=bool)
        return Evidence(indices, numeric, ratios * numeric, numeric, noise, failing)

    scattered = np.array([-1.83, -1.55, -0.52, -0.11, -0.11, 0.16, 0.2, 0.22, 0.28, 0.41, 0.43])
    assert not significant_factor(evidence(scattered), float(np.median(scattered)))
    clustered = 1.05 + 0.01 * np.sin(np.arange(20))  # float32 noise round a scale of 1.05
    assert significant_factor(evidence(clustered), float(np.median(clustered)))


def test_a_scale_seen_along_directions_needs_the_elements_to_agree():
    def evidence(analytic, numeric):
        count = len(numeric)
        noise, failing = np.full(count, 1e-9), np.ones(count, dtype=bool)
        numeric, analytic = np.array(numeric), np.array(analytic)
        return Evidence(np.arange(count), numeric, analytic, np.ones(count), noise, failing)

    scale = Diagnosis("scale", "", factor=2.0)
    assert supported(scale, evidence([2.0, -4.0], [1.0, -2.0]))
    assert not supported(scale, evidence([2.0, -0.5], [1.0, -2.0]))  # one element disagrees
    assert supported(scale, evidence([1e-12], [0.0]))  # nothing measurable: no objection


def test_a_sign_flip_shared_by_a_layer_is_one_cause():
    result = ng.check(*planted(lambda g: g.update(dW2=-g["dW2"], db2=-g["db2"])))
    assert result.failing == ["W2", "b2"]
    diagnosis = result.diagnosis
    assert diagnosis.kind == "sign" and diagnosis.factor == -1.0
    assert diagnosis.sentence.startswith("W2 and b2 both have the wrong sign")
    assert "layer 2 (dZ2), not in dW2 or db2" in diagnosis.sentence


def test_a_factor_shared_by_a_layer_names_the_layer():
    result = ng.check(*planted(lambda g: g.update(dW2=3 * g["dW2"], db2=3 * g["db2"])))
    diagnosis = result.diagnosis
    assert diagnosis.kind == "scale" and diagnosis.factor == pytest.approx(3.0)
    assert diagnosis.sentence.startswith("W2 and b2 are off by the same factor 3.0")
    assert "flowing into layer 2 (dZ2), not in dW2 or db2" in diagnosis.sentence
    assert "?" not in diagnosis.sentence


def test_the_same_units_wrong_in_weights_and_bias_are_one_mask():
    def bug(g):
        g["dW1"][[1, 3]] = 0  # units (rows of W1) 1 and 3 masked out
        g["db1"][[1, 3]] = 0

    result = ng.check(*planted(bug))
    assert result.diagnoses["W1"].rows == [1, 3] and result.diagnoses["b1"].units == [1, 3]
    diagnosis = result.diagnosis
    assert diagnosis.kind == "mask" and diagnosis.units == [1, 3]
    assert diagnosis.label == "units 1, 3" and "mask" in diagnosis.sentence
    assert diagnosis.sentence.startswith("units 1, 3 of layer 1 are wrong in W1 (rows 1, 3)")


def test_different_units_wrong_are_not_one_mask():
    def bug(g):
        g["dW1"][[1, 3]] = 0
        g["db1"][[0, 2]] = 0

    assert ng.check(*planted(bug)).diagnosis.kind == "several"


BUGS = {
    "scale": lambda g: g.update(dW2=2 * g["dW2"]),
    "sign": lambda g: g.update(db3=-g["db3"]),
    "transpose": lambda g: g.update(dW2=g["dW2"].T.copy()),
    "zero": lambda g: g.update(dW2=0 * g["dW2"]),
    "rows": lambda g: g["dW1"].__setitem__([1, 3], 0),
    "missing L2": None,  # the cost's L2 term, none in the gradients
    "noise": lambda g: g.update(dW1=g["dW1"] + np.random.default_rng(0).normal(size=(5, 4))),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_a_line_of_the_summary_names_its_tensor_once(bug):
    result = ng.check(*planted(BUGS[bug], l2=0.7 if bug == "missing L2" else 0.0))
    lines = result.summary().splitlines()
    for name in result.failing:
        (line,) = [line for line in lines if line.startswith(f"{name}: ")]
        assert not re.search(rf"\b{name}\b", line[len(name) + 2 :]), line


def test_kinks_say_not_a_bug_once():
    theta = np.array([1e-7, 0.5, -2.0, 3.0])
    result = ng.check(lambda t: float(np.sum(np.abs(t))), theta, np.sign(theta))
    sentence = result.diagnosis.sentence
    assert sentence.startswith("no bug found; theta: 1 element crossed a kink")
    assert "not a bug" not in sentence


def test_summary_explains_each_failing_tensor():
    result = ng.check(*planted(lambda g: g.update(dW2=2 * g["dW2"])))
    assert "\nW2: analytic ≈ 2.0 × numeric: a stray factor 2" in result.summary()


def test_labels_and_formatting():
    assert format_factor(2.0) == "2.0" and format_factor(0.25) == "0.25"
    assert format_factor(-1.0) == "-1.0" and format_factor(1 / 3) == "0.333"
    assert Diagnosis("partial", "", rows=[1, 2, 3, 4, 5, 6]).label == "rows 1, 2, 3, 4, 5 (+1)"
    assert Diagnosis("partial", "", elements=[(0, 1)]).label == "element [0, 1]"
    assert diagnose_result({}).kind == "ok"
