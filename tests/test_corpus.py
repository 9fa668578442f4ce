"""Verdicts on real hand-written backprop (issue 14): the corpus in tests/corpus, every
model unmodified and with one planted bug at a time, checked in every mode and dtype.

The goals: no false alarm on correct code; for every planted bug exactly the wrong
tensors fail, the flagged elements are exactly the wrong ones (where the model was built
so that they are known), and the diagnosis states the cause; no line of the report names
its tensor twice or quotes a round-off floor above 1.

The first tests check the corpus itself, without nbgradcheck: its correct gradients are
right, each bug changes exactly the gradients it declares and never the loss, no kink is
near by accident, and the float32 twins compute in float32.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from corpus import BUGS, CASES, CORRECT, DTYPES, MODES, Case, case, run
from corpus.judge import Outcome, judge

ROOT = Path(__file__).resolve().parents[1]


def gradient(grads: dict, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The gradient of ``name`` (keys ``W1`` or ``dW1``), as float64 in the parameter's shape."""
    value = grads[name] if name in grads else grads["d" + name]
    return np.asarray(value, dtype=np.float64).reshape(shape)


def seeded(subject: Case, function, params):
    """``function(params)`` after re-seeding NumPy as the check does for a random loss."""
    if subject.seed is not None:
        np.random.seed(subject.seed)
    return function(params)


def left_differences(subject: Case, model, step: float = 1e-6) -> dict[str, np.ndarray]:
    """(J(θ) − J(θ − h)) / h for every element: the slope from the left, which is what the
    corpus's ReLUs (mask out > 0) and max pooling (first maximum) give at a kink."""
    at_start = seeded(subject, model.loss, model.params)
    slopes = {}
    for name, array in model.params.items():
        slope = np.zeros(array.shape)
        for index in np.ndindex(array.shape):
            saved = array[index]
            array[index] = saved - step
            slope[index] = (at_start - seeded(subject, model.loss, model.params)) / step
            array[index] = saved
        slopes[name] = slope
    return slopes


# -- the corpus itself ----------------------------------------------------------------------


@pytest.mark.parametrize("subject", CORRECT, ids=lambda c: c.name)
def test_correct_gradients_match_finite_differences(subject):
    model = subject.build("float64")
    numeric = left_differences(subject, model)
    analytic = seeded(subject, model.grads, model.params)
    for name, slope in numeric.items():
        exact = gradient(analytic, name, slope.shape)
        scale = np.linalg.norm(slope) + np.linalg.norm(exact)
        assert np.linalg.norm(slope - exact) <= 1e-5 * scale + 1e-8, name


def changed_elements(subject: Case) -> dict[str, list[tuple[int, ...]]]:
    """Elements whose gradient the planted bug changes, by tensor."""
    correct, buggy = case(subject.model).build(), subject.build()
    right = seeded(subject, correct.grads, correct.params)
    wrong = seeded(subject, buggy.grads, buggy.params)
    shapes = {name: array.shape for name, array in correct.params.items()}
    scale = max(np.max(np.abs(gradient(right, n, s))) for n, s in shapes.items())
    changed = {}
    for name, shape in shapes.items():
        differs = np.abs(gradient(right, name, shape) - gradient(wrong, name, shape)) > 1e-9 * scale
        if differs.any():
            changed[name] = sorted(tuple(int(i) for i in index) for index in np.argwhere(differs))
    return changed


@pytest.mark.parametrize("subject", BUGS, ids=lambda c: c.name)
def test_planted_bug_changes_exactly_the_declared_gradients(subject):
    correct, buggy = case(subject.model).build(), subject.build()
    assert seeded(subject, buggy.loss, buggy.params) == seeded(
        subject, correct.loss, correct.params
    )
    changed = changed_elements(subject)
    assert sorted(changed) == sorted(subject.expect.failing)
    for name, elements in (subject.expect.elements or {}).items():
        assert changed[name] == sorted(elements), name


@pytest.mark.parametrize("subject", CORRECT, ids=lambda c: c.name)
def test_no_kink_is_near_by_accident(subject):
    model = subject.build("float64")
    for distances in model.kink_distances(model.params):
        near = (distances != 0) & (np.abs(distances) < model.kink_margin)
        assert not near.any(), distances[near]


@pytest.mark.parametrize("subject", CASES, ids=lambda c: c.name)
def test_float32_twin_computes_in_float32_with_the_same_bug(subject):
    model = subject.build("float64")
    twin = model.float32()
    assert all(array.dtype == np.float32 for array in twin.params.values())
    assert all(array.dtype == np.float64 for array in model.params.values())
    reference = seeded(subject, model.grads, model.params)
    grads = seeded(subject, twin.grads, twin.params)
    assert isinstance(seeded(subject, twin.loss, twin.params), float)
    for name, array in twin.params.items():
        value = grads[name] if name in grads else grads["d" + name]
        assert value.dtype == np.float32, name
        expected = gradient(reference, name, array.shape)
        atol = 1e-4 * max(1.0, np.max(np.abs(expected)))
        np.testing.assert_allclose(value.reshape(array.shape), expected, rtol=1e-3, atol=atol)


# -- the runner -----------------------------------------------------------------------------


def test_runner_prints_the_table_and_each_mismatch(capsys):
    code = run.main(["--case", "mlp", "--mode", "full", "--dtype", "float64"])
    out = capsys.readouterr().out
    header, _, row = out.splitlines()[:3]
    assert header.split("  ")[0] == "mode" and "false alarms" in header
    assert row.split()[:3] == ["full", "float64", "5"]
    mismatches = int(out.split(" mismatches")[0].split()[-1])
    assert code == (1 if mismatches else 0)
    assert out.count("$ python -m tests.corpus.run --case mlp") == mismatches


def test_runner_runs_as_a_script():
    script = ROOT / "tests" / "corpus" / "run.py"
    command = [sys.executable, str(script), "--case", "softmax", "--mode", "full"]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode in (0, 1), finished.stderr
    assert "full  float64  3" in finished.stdout and "full  float32  3" in finished.stdout


# -- the verdicts -----------------------------------------------------------------------------


def explained(outcome: Outcome) -> str:
    """Everything needed to act on a failure: what is wrong, how to rerun, the report."""
    faults = sorted({kind for kind, _ in outcome.wording})
    lines = [*outcome.problems, *(f"wording: {kind}" for kind in faults)]
    return "\n".join([*lines, f"rerun: {outcome.command}", outcome.report])


CHECKS = [(mode, dtype, subject) for mode in MODES for dtype in DTYPES for subject in CASES]


@pytest.mark.parametrize(
    ("mode", "dtype", "subject"), CHECKS, ids=[f"{m}-{d}-{c.name}" for m, d, c in CHECKS]
)
def test_verdict(mode, dtype, subject):
    outcome = judge(subject, mode, dtype)
    message = explained(outcome)
    assert outcome.error is None, message
    if subject.is_bug:
        assert outcome.named, message
        assert outcome.elements in (None, True), message
    else:
        assert not outcome.false_alarm, message
    assert outcome.diagnosed, message
    assert outcome.wording_clean, message
