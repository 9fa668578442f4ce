"""The verdict rules: one rule per question for every mode, verdicts that agree with
``passed`` and diagnoses that agree with both, computed once when the check ends."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

import nbgradcheck as ng
from nbgradcheck.core import result as core_result
from nbgradcheck.core.verdict import (
    DIRECTIONAL_FLOOR,
    ELEMENT_FLOOR,
    VERDICT_ORDER,
    Measurements,
    agreeing_verdict,
    judge,
    verdict_for,
)
from nbgradcheck.demo import course_network
from nbgradcheck.views.inspector import inspect

MODES = ["full", "sample", "fast"]
UNUSED = "the loss does not depend on it (numeric and analytic gradients are both zero)"


# -- the zero rule ------------------------------------------------------------------------------


def unused_bias_problem(analytic_b1):
    """W matters; b1 (40 elements: fast mode tests it along directions) does not."""
    rng = np.random.default_rng(3)
    params = {"W": rng.normal(size=(6, 7)), "b1": rng.normal(size=40)}

    def loss(p):
        return float(np.sum(p["W"] ** 2))

    return loss, params, {"W": 2 * params["W"], "b1": analytic_b1}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("analytic", ["zero", "round-off"])
def test_a_zero_gradient_passes_in_every_mode_with_one_plain_warning(mode, analytic):
    values = (
        np.zeros(40) if analytic == "zero" else 1e-18 * np.random.default_rng(0).normal(size=40)
    )
    loss, params, grads = unused_bias_problem(values)
    result = ng.check(loss, params, grads, mode=mode, seed=0)
    b1 = result.tensor("b1")
    assert result.passed and b1.passed and b1.unused
    assert b1.verdict == "ok" and b1.difference == 0.0
    assert result.diagnoses["b1"].kind == "unused" and not result.diagnoses["b1"].is_bug
    assert result.diagnoses["b1"].sentence == UNUSED
    assert f"b1: {UNUSED}" in result.summary().splitlines()
    assert result.table.loc["b1", "diagnosis"] == "loss does not depend on it"
    assert "round-off" not in repr(result)


def test_a_zero_analytic_gradient_against_a_real_one_still_fails():
    loss, params, _ = unused_bias_problem(np.zeros(40))
    grads = {"W": np.zeros((6, 7)), "b1": np.zeros(40)}
    for mode in MODES:
        result = ng.check(loss, params, grads, mode=mode, seed=0)
        assert result.failing == ["W"], mode
        assert (
            result.diagnoses["W"].kind == "zero"
            and "not connected" in result.diagnoses["W"].sentence
        )


# -- the rules themselves -----------------------------------------------------------------------


def test_verdict_scale_and_floor_excuse():
    assert [verdict_for(d) for d in (1e-8, 1e-6, 1e-4, 1e-2)] == [
        "correct",
        "ok",
        "suspicious",
        "wrong",
    ]
    assert verdict_for(float("nan")) == "empty"
    assert verdict_for(5e-3, excuse=ELEMENT_FLOOR.excuse(6e-3)) == "ok"
    assert verdict_for(5e-2, excuse=ELEMENT_FLOOR.excuse(1.0)) == "wrong"  # capped at 1e-2
    assert verdict_for(5e-2, excuse=DIRECTIONAL_FLOOR.excuse(1.0)) == "ok"  # capped at 0.1


def test_the_verdict_always_agrees_with_passed():
    for verdict in VERDICT_ORDER[1:]:
        assert agreeing_verdict(verdict, True) in ("correct", "ok", "suspicious")
        assert agreeing_verdict(verdict, False) in ("suspicious", "wrong")
    values = np.array([1.0, 2.0])
    tiny = Measurements(values * (1 + 5e-8), values, np.zeros(2))
    failing = judge([tiny], tol=1e-9)
    assert not failing.passed and failing.verdict == "suspicious"  # 'correct' on the scale
    large = Measurements(values * 1.5, values, np.zeros(2))
    passing = judge([large], tol=0.5)
    assert passing.passed and passing.verdict == "suspicious"  # 'wrong' on the scale


def test_judging_several_sets_takes_the_worst_and_needs_all_to_pass():
    values = np.linspace(1, 2, 5)
    good = Measurements(values, values, np.full(5, 1e-12), DIRECTIONAL_FLOOR)
    bad = Measurements(values * 2, values, np.full(5, 1e-12))
    empty = Measurements(np.empty(0), np.empty(0), np.empty(0))
    verdict = judge([good, bad, empty], tol=1e-5)
    assert not verdict.passed and verdict.verdict == "wrong"
    assert verdict.difference == pytest.approx(1 / 3)
    assert judge([empty], tol=1e-5).verdict == "empty" and judge([], tol=1e-5).passed


# -- no message contradicts the verdict beside it --------------------------------------------------


def zero_dW2(g):
    g["dW2"] = np.zeros_like(g["dW2"])


def scale_dW1(g):
    g["dW1"] = 1.5 * g["dW1"]


def one_element(g):
    g["dW1"][2, 3] += 0.3


GRID_BUGS = {"none": None, "zero dW2": zero_dW2, "scale dW1": scale_dW1, "element": one_element}


def grid_problem(bug, dtype):
    net = course_network((6, 5, 3, 1), m=4, seed=2, dtype=dtype)

    def grads(p):
        g = net.gradients(p)
        if bug is not None:
            bug(g)
        return g

    return net.loss, net.parameters, grads


def assert_consistent(result):
    for tensor in result.tensors:
        d = tensor.diagnosis
        where = f"{tensor.name}: {tensor.verdict}, {d.kind}: {d.sentence}"
        if tensor.passed:
            assert tensor.verdict in ("correct", "ok", "suspicious", "empty"), where
            assert not d.is_bug and not d.failing, where
        else:
            assert tensor.verdict in ("suspicious", "wrong"), where
            assert d.failing and d.kind not in ("ok", "kink", "unused"), where
            assert "not a bug" not in d.sentence and "(not a bug)" not in d.label, where
    if result.failing:
        assert "no bug found" not in result.diagnosis.sentence
        assert "(not a bug)" not in result.diagnosis.label
    else:
        assert not result.diagnosis.is_bug


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bug", list(GRID_BUGS))
def test_no_diagnosis_contradicts_its_verdict(bug, dtype, mode):
    problem = grid_problem(GRID_BUGS[bug], dtype)
    for eps in (None, 1e-5, 1e-2):  # the default, one far too small for float32, one large
        try:
            result = ng.check(*problem, mode=mode, eps=eps, seed=1, tol=1e-5)
        except ng.GradCheckError:  # the step rounds away in float32
            continue
        assert_consistent(result)
        if bug != "none" and dtype == np.float64:
            assert result.failing


# -- computed once -------------------------------------------------------------------------------


def counting(monkeypatch, name):
    calls = []
    original = getattr(core_result, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(core_result, name, counted)
    return calls


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_verdicts_and_diagnoses_are_computed_once_when_the_check_ends(monkeypatch, mode):
    diagnosed = counting(monkeypatch, "diagnose")
    concluded = counting(monkeypatch, "diagnose_result")
    judged = counting(monkeypatch, "judge")
    net = course_network((6, 5, 3, 1), m=4, bugs=("scale_dW2",))
    result = ng.check(net.loss, net.parameters, net.gradients, mode=mode, seed=0)
    assert len(diagnosed) == len(result.tensors) and len(concluded) == 1
    diagnosed.clear(), concluded.clear(), judged.clear()
    for _ in range(2):
        repr(result), result.summary(), result._repr_mimebundle_(), result.styled_table()
        result.table, result.worst(), result.to_frame(), result.to_dict(), result.heatmap()
        result.diagnoses, result.diagnosis, [t.diagnosis for t in result.tensors]
        inspect(result).scale.value = "abs"
    assert diagnosed == [] and concluded == [] and judged == []


def test_a_frozen_result_cannot_be_changed():
    net = course_network()
    result = ng.check(net.loss, net.parameters, net.gradients)
    tensor = result.tensor("W1")
    with pytest.raises(ValueError, match="read-only"):
        tensor.numeric[0] = 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        tensor.tol = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.complete = False
    assert net.parameters["W1"].flags.writeable  # the user's arrays stay writeable


# -- layers ----------------------------------------------------------------------------------------


def test_the_core_result_imports_numpy_only():
    code = (
        "import sys, nbgradcheck.core.result, nbgradcheck.core.serialize, "
        "nbgradcheck.core.verdict, nbgradcheck.api.result; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'pandas', 'matplotlib', 'IPython', 'ipywidgets'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
