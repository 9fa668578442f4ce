"""One check from start to end: pick the mode, run full/sample or fast mode, collect notes.

Sits above :mod:`~nbgradcheck.core.engine` (element-wise checks) and
:mod:`~nbgradcheck.core.localize` (fast mode), which both use the engine's measurements.
"""

from __future__ import annotations

from nbgradcheck.core.engine import (
    CheckSetup,
    check_plans,
    probe_repeatability,
    result_notes,
)
from nbgradcheck.core.localize import fast_check
from nbgradcheck.core.plan import choose_mode, plan_tensors, resolve_eps
from nbgradcheck.core.result import CheckResult
from nbgradcheck.core.schemes import Scheme


def run_check(
    setup: CheckSetup,
    scheme: Scheme,
    eps: float | str | None,
    mode: str,
    sample: int | None,
    tol: float,
    seed: int | None,
    progress: bool | None,
) -> CheckResult:
    """Full, sample or fast mode over every tensor; the result of the whole check."""
    notes = list(setup.notes)
    eps = resolve_eps(eps, scheme, setup.params, notes)
    mode = choose_mode(mode, scheme, setup.params.shapes, setup.evaluator.workers, notes)
    if mode == "fast":
        return fast_check(setup, scheme, eps, tol, seed, progress, notes)
    plans = plan_tensors(setup.params, scheme, eps, mode, sample, seed, setup.unit_roundoff)
    tensors, evaluations, complete = check_plans(plans, setup, scheme, tol, progress)
    if complete:
        spent, complete = probe_repeatability(tensors, setup)
        evaluations += spent
    notes += result_notes(tensors, setup, scheme)
    return CheckResult(
        tensors,
        scheme.name,
        eps,
        mode,
        tol,
        evaluations,
        setup.loss_value,
        complete=complete,
        notes=notes,
    )
