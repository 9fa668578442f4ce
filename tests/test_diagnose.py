"""Diagnoses: each kind of mistake on planted bugs, and none on correct models."""

from __future__ import annotations

import numpy as np
import pytest

import nbgradcheck as ng
from nbgradcheck.core.diagnose import (
    Diagnosis,
    Evidence,
    diagnose_result,
    format_factor,
    ratios,
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
    assert "a missing 1/m if m = " in diagnosis.sentence and f"m = {M}" in diagnosis.sentence


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
    assert "W2[0, 3]" in diagnosis.sentence


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
    assert result.passed and result.diagnoses
    assert {d.kind for d in result.diagnoses.values()} == {"noise"}
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
    assert "W1, b1, W2, b2, W3, b3 are all scaled by 0.5" in result.diagnosis.sentence


def test_several_bugs_are_listed():
    def bug(g):
        g["dW2"] = 2 * g["dW2"]
        g["dW3"] = -g["dW3"]

    result = ng.check(*planted(bug))
    assert result.diagnosis.kind == "several"
    assert "W2: scale 2.0" in result.diagnosis.sentence
    assert "W3: sign flip" in result.diagnosis.sentence


def test_summary_explains_each_failing_tensor():
    result = ng.check(*planted(lambda g: g.update(dW2=2 * g["dW2"])))
    assert "W2: analytic ≈ 2.0 × numeric for W2" in result.summary()


def test_labels_and_formatting():
    assert format_factor(2.0) == "2.0" and format_factor(0.25) == "0.25"
    assert format_factor(-1.0) == "-1.0" and format_factor(1 / 3) == "0.333"
    assert Diagnosis("partial", "", rows=[1, 2, 3, 4, 5, 6]).label == "rows 1, 2, 3, 4, 5 (+1)"
    assert Diagnosis("partial", "", elements=[(0, 1)]).label == "element [0, 1]"
    assert diagnose_result({}).kind == "ok"
