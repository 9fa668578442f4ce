"""Run ``nbgradcheck.check`` on one corpus case and hold the report against the case's
expectations: a false alarm, the failing tensors, the flagged elements, the diagnosis."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import nbgradcheck

from .cases import Case

# A diagnosed factor or L2 coefficient is right within this relative difference.
FACTOR_RTOL = 0.02


@dataclass
class Outcome:
    """What one check said about one case, measured against what it should have said.

    ``named``, ``elements`` and ``diagnosed`` are None where the case declares nothing to
    compare (a correct model names no bug; elements only where the model was built so
    that the wrong ones are known)."""

    case: Case
    mode: str
    dtype: str
    seed: int | None = None
    result: Any = None
    error: str | None = None
    false_alarm: bool | None = None
    named: bool | None = None
    elements: bool | None = None
    diagnosed: bool = False
    problems: list[str] = field(default_factory=list)
    wording: list[tuple[str, str]] = field(default_factory=list)  # (kind, text)

    @property
    def wording_clean(self) -> bool:
        """No wording that repeats itself or frightens (see :data:`WORDING_FAULTS`)."""
        return not any(kind in WORDING_FAULTS for kind, _ in self.wording)

    @property
    def command(self) -> str:
        seed = f" --seed {self.seed}" if self.seed is not None and self.case.seed is None else ""
        return (
            f"python -m tests.corpus.run --case {self.case.name} --mode {self.mode} "
            f"--dtype {self.dtype}{seed} -v"
        )

    @property
    def ok(self) -> bool:
        return not self.problems and self.wording_clean

    @property
    def report(self) -> str:
        """The text a user reads: summary, whole-check diagnosis, per-tensor ones, notes."""
        return report_text(self.result) if self.result is not None else f"raised {self.error}"


def judge(case: Case, mode: str, dtype: str, seed: int | None = None) -> Outcome:
    """Check ``case`` in ``mode`` with ``dtype`` parameters and judge the report.

    ``seed`` is passed to the check (it fixes fast mode's random directions) unless the
    case has its own (a random loss); None leaves the check's choices random, as a user's
    check is by default."""
    seed = case.seed if case.seed is not None else seed
    outcome = Outcome(case, mode, dtype, seed)
    model = case.build(dtype)
    try:
        outcome.result = nbgradcheck.check(
            model.loss, model.params, model.grads, mode=mode, seed=seed, progress=False
        )
    except Exception as error:  # a refusal is judged like any other wrong report
        outcome.error = f"{type(error).__name__}: {error}"
    if case.is_bug:
        judge_bug(outcome)
    else:
        judge_correct(outcome)
    if outcome.result is not None:
        outcome.wording = wording_issues(outcome.result)
    return outcome


def judge_correct(outcome: Outcome) -> None:
    result = outcome.result
    if result is None:
        outcome.false_alarm = True
        outcome.problems.append(f"false alarm: the check raised {outcome.error}")
        return
    outcome.false_alarm = not result.passed
    if outcome.false_alarm:
        outcome.problems.append(f"false alarm: failing {', '.join(result.failing) or '-'}")
    wrong = contradictions(result) + claimed_bugs(result) + missing_words(outcome)
    outcome.problems += wrong
    outcome.diagnosed = not wrong and not outcome.false_alarm


def judge_bug(outcome: Outcome) -> None:
    expect, result = outcome.case.expect, outcome.result
    if result is None:
        outcome.named = False
        outcome.elements = False if expect.elements is not None else None
        outcome.problems.append(f"not named: the check raised {outcome.error}")
        return
    failing = sorted(result.failing)
    outcome.named = failing == sorted(expect.failing)
    if not outcome.named:
        outcome.problems.append(f"failing {failing or '[]'}, expected {sorted(expect.failing)}")
    if expect.elements is not None:
        wrong_elements = element_problems(result, expect.elements)
        outcome.elements = not wrong_elements
        outcome.problems += wrong_elements
    wrong = diagnosis_problems(outcome) + contradictions(result) + missing_words(outcome)
    outcome.problems += wrong
    outcome.diagnosed = not wrong


def flagged_elements(result: Any, name: str) -> set[tuple[int, ...]]:
    """Elements of tensor ``name`` the check found wrong one by one (kinks excused)."""
    tensor = result.tensor(name)
    wrong = tensor.element_failing & ~tensor.kink
    return {tensor.multi_index(flat) for flat in tensor.indices[wrong]}


def element_problems(result: Any, expected: dict[str, tuple]) -> list[str]:
    problems = []
    for name, elements in expected.items():
        flagged, wanted = flagged_elements(result, name), set(elements)
        if flagged != wanted:
            missed = sorted(wanted - flagged)
            extra = sorted(flagged - wanted)
            problems.append(
                f"{name}: flagged {len(flagged)} elements, expected {len(wanted)}"
                + (f"; missed {missed}" if missed else "")
                + (f"; flagged but right {extra}" if extra else "")
            )
    return problems


def diagnosis_problems(outcome: Outcome) -> list[str]:
    """Each expected failing tensor's diagnosis: its kind, factor and L2 coefficient."""
    expect, diagnoses = outcome.case.expect, outcome.result.diagnoses
    problems = []
    for name in expect.failing:
        diagnosis = diagnoses.get(name)
        if diagnosis is None:
            problems.append(f"{name}: no diagnosis")
            continue
        kinds = expect.kinds or None
        if (kinds and diagnosis.kind not in kinds) or (not kinds and not diagnosis.is_bug):
            wanted = " or ".join(kinds) if kinds else "a bug"
            problems.append(f"{name}: diagnosed {diagnosis.kind!r}, expected {wanted}")
        for label, wanted, got in (
            ("factor", expect.factor, getattr(diagnosis, "factor", None)),
            ("L2 coefficient", expect.l2, getattr(diagnosis, "l2_lambda", None)),
        ):
            if wanted is not None and (got is None or not np.isclose(got, wanted, FACTOR_RTOL)):
                problems.append(f"{name}: {label} {got}, expected {wanted:g}")
    overall = outcome.result.diagnosis
    if expect.overall and overall.kind not in expect.overall:
        problems.append(
            f"whole-check diagnosis {overall.kind!r}, expected {' or '.join(expect.overall)}: "
            f"one cause behind {', '.join(expect.failing)}"
        )
    return problems


def contradictions(result: Any) -> list[str]:
    """A diagnosis that contradicts the verdict beside it."""
    problems = []
    failing = set(result.failing)
    for name, diagnosis in result.diagnoses.items():
        if name in failing and not diagnosis.is_bug:
            problems.append(
                f"{name} fails but its diagnosis says {diagnosis.kind!r} ({diagnosis.label})"
            )
        if name not in failing and diagnosis.is_bug:
            problems.append(f"{name} passes but its diagnosis names a bug ({diagnosis.label})")
    return problems


def claimed_bugs(result: Any) -> list[str]:
    overall = result.diagnosis
    return [f"whole-check diagnosis names a bug: {overall.sentence}"] if overall.is_bug else []


def missing_words(outcome: Outcome) -> list[str]:
    text = outcome.report
    return [
        f"the report does not say {pattern!r}"
        for pattern in outcome.case.expect.words
        if not re.search(pattern, text, re.IGNORECASE)
    ]


def report_text(result: Any) -> str:
    """The summary (with the failing tensors' diagnoses), the whole-check diagnosis, the
    passing tensors' diagnoses and the notes."""
    failing = set(result.failing)
    parts = [result.summary(), f"diagnosis: {result.diagnosis.sentence}"]
    parts += [f"{n}: {d.sentence}" for n, d in result.diagnoses.items() if n not in failing]
    parts += [f"note: {note}" for note in result.notes]
    return "\n".join(parts)


# -- wording ----------------------------------------------------------------------------------

NAMED_TWICE = "names its tensor twice"
FLOOR_ABOVE_ONE = "a round-off floor above 1"
# Wording the corpus counts as wrong; other issues are listed for a human to judge.
WORDING_FAULTS = (NAMED_TWICE, FLOOR_ABOVE_ONE)
FLOOR_NUMBER = re.compile(r"floor[^;.\n]*?(\d+(?:\.\d+)?e[+-]\d+)")


def wording_issues(result: Any) -> list[tuple[str, str]]:
    """(kind, text) of wording worth a second look: a line that names its tensor twice,
    a passing tensor labelled as if it had a discrepancy, a round-off floor above 1."""
    issues = []
    lines = [*result.summary().splitlines(), result.diagnosis.sentence]
    for name in result.names:
        pattern = re.compile(rf"^{re.escape(name)}: (.*\b(for|of|in) )?{re.escape(name)}\b")
        issues += [(NAMED_TWICE, line) for line in lines if pattern.search(line)]
    failing = set(result.failing)
    for name, diagnosis in result.diagnoses.items():
        if name not in failing and diagnosis.kind == "noise":
            issues.append(
                (f"a passing tensor labelled {diagnosis.label!r}", f"{name}: {diagnosis.sentence}")
            )
        if any(float(n) >= 1 for n in FLOOR_NUMBER.findall(diagnosis.sentence)):
            issues.append((FLOOR_ABOVE_ONE, f"{name}: {diagnosis.sentence}"))
    return list(dict.fromkeys(issues))
