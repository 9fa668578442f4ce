"""Preflight of a NumPy model: ``loss(params, X, y)`` and hand-written ``grads(params, X, y)``.

Every check works on copies of the parameters, X and y; NumPy's and Python's global
RNGs are re-seeded before each evaluation (so dropout masks repeat) and restored at the
end. The batch axis is axis 0.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from nbgradcheck.adapters.numpy import ParameterSet
from nbgradcheck.api.check import check
from nbgradcheck.api.preflight_rules import (
    ADAM_BETAS,
    ADAM_EPS,
    GRADIENT_SAMPLE,
    OVERFIT_LEARNING_RATES,
    ParameterGradient,
    PreflightFindings,
    Verdict,
    as_float,
    init_loss_skipped_without_classes,
    judge_gradient_check,
    judge_gradient_flow,
    judge_init_loss,
    judge_overfit,
    overfit_ratio,
    run_timed,
)

# Example pairs whose inputs are swapped in the batch-independence test.
INTERACTION_PAIRS = 3
# A sum over examples makes the interaction exactly zero up to rounding: this share of
# the two single changes, plus this many unit round-offs of the losses, is rounding.
INTERACTION_SHARE = 1e-6
INTERACTION_ROUNDOFF = 64.0


def copied(params: Any, dtype: Any = None) -> Any:
    """A copy of a dict, list/tuple of arrays or one array (optionally cast)."""
    if isinstance(params, dict):
        return {k: np.array(v, dtype=dtype, copy=True) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return type(params)(np.array(v, dtype=dtype, copy=True) for v in params)
    return np.array(params, dtype=dtype, copy=True)


def arrays_of(params: Any) -> list[np.ndarray]:
    """The arrays of a parameter structure, in order (views, not copies)."""
    return ParameterSet.from_user(params).arrays


class NumpyModel:
    """The user's loss and gradient functions, evaluated on copies with re-seeded RNGs."""

    def __init__(self, loss: Callable, grads: Callable, X: Any, y: Any, seed: int) -> None:
        self.user_loss, self.user_grads = loss, grads
        self.X, self.y = np.array(X, copy=True), np.array(y, copy=True)
        self.seed = seed

    def reseed(self) -> None:
        np.random.seed(self.seed)
        random.seed(self.seed)

    def loss(self, params: Any, X: np.ndarray | None = None) -> float:
        self.reseed()
        value = self.user_loss(params, self.X if X is None else X, self.y)
        if isinstance(value, tuple):  # (cost, cache)
            value = value[0]
        return as_float(value)

    def gradients(self, params: Any) -> list[np.ndarray]:
        """The gradient arrays aligned with the parameters (keys W1 or dW1)."""
        self.reseed()
        raw = self.user_grads(params, self.X, self.y)
        matched, _ = ParameterSet.from_user(params).match_gradients(raw)
        return matched


def run_numpy(
    loss: Callable,
    params: Any,
    X: Any,
    y: Any,
    grads: Callable,
    classes: int | None,
    steps: int,
    seed: int,
) -> PreflightFindings:
    """All the checks on a NumPy model; the user's arrays and global RNGs are untouched."""
    names = ParameterSet.from_user(params).names
    rng_states = np.random.get_state(), random.getstate()
    try:
        model = NumpyModel(loss, grads, X, y, seed)
        start = copied(params)
        initial = model.loss(copied(start))  # an error here is the user's: it propagates
        findings = PreflightFindings("numpy", len(model.X))
        findings.outcomes = [
            run_timed("init_loss", lambda: numpy_init_loss(initial, classes)),
            run_timed("batch_independence", lambda: numpy_batch_independence(model, start)),
            run_timed("overfit_batch", lambda: numpy_overfit(model, start, steps, findings)),
            run_timed("dead_units", numpy_dead_units),
            run_timed("gradient_flow", lambda: numpy_gradient_flow(model, start, names, findings)),
            run_timed("gradients", lambda: numpy_gradients(model, start, seed, findings)),
        ]
        return findings
    finally:
        np.random.set_state(rng_states[0])
        random.setstate(rng_states[1])


# -- the checks -----------------------------------------------------------------------------


def numpy_init_loss(initial: float, classes: int | None) -> Verdict:
    if classes is None:
        return init_loss_skipped_without_classes(
            "a NumPy loss cannot be recognised as a cross-entropy"
        )
    return judge_init_loss(initial, classes)


def numpy_dead_units() -> Verdict:
    return "skip", (
        "a NumPy loss has no layers to watch: dead units are counted on PyTorch models "
        "(forward hooks on their activations)"
    )


def numpy_batch_independence(model: NumpyModel, start: Any) -> Verdict:
    """Swap two examples' inputs: a sum of per-example losses changes by exactly the two
    single changes (the mixed second difference is zero); examples that interact do not."""
    pairs = distinct_pairs(model.X)
    if not pairs:
        return "skip", "needs two examples with different inputs (batch axis 0)"
    params = copied(start)
    swaps = [swap_interaction(model, params, a, b) for a, b in pairs]
    leaking = [s for s in swaps if s.interaction > s.allowed]
    if leaking:
        worst = max(leaking, key=lambda s: s.interaction / s.allowed)
        a, b = worst.pair
        return "fail", (
            f"the examples interact: swapping the inputs of examples {a} and {b} changes "
            f"the batch loss by {worst.interaction:.3g} more than the two single changes "
            f"add up to (over independent examples they add exactly). Something mixes the "
            f"batch, e.g. a softmax or normalisation over axis 0 instead of axis 1"
        )
    if all(s.effect == 0.0 for s in swaps):
        return "warn", (
            "the loss does not change when examples' inputs are swapped: does X reach the loss?"
        )
    return "pass", (
        f"the batch loss adds up over examples (the inputs of {len(pairs)} pairs of "
        f"examples swapped; no interaction beyond rounding)"
    )


def distinct_pairs(X: np.ndarray) -> list[tuple[int, int]]:
    """Up to INTERACTION_PAIRS pairs of examples whose inputs differ, spread over the batch."""
    count = len(X) if X.ndim else 0
    candidates = [(0, count - 1), (count // 2, 1), (count // 4, (3 * count) // 4)]
    pairs = []
    for a, b in candidates:
        inside = 0 <= a < count and 0 <= b < count and a != b
        if inside and (a, b) not in pairs and not np.array_equal(X[a], X[b]):
            pairs.append((a, b))
    return pairs[:INTERACTION_PAIRS]


class Swap(NamedTuple):
    """The batch loss with two examples' inputs swapped, against the single changes."""

    pair: tuple[int, int]
    interaction: float  # |L(both swapped) − L(a changed) − L(b changed) + L|
    allowed: float  # what rounding explains
    effect: float  # |L(a changed) − L| + |L(b changed) − L|


def swap_interaction(model: NumpyModel, params: Any, a: int, b: int) -> Swap:
    X = model.X

    def with_rows(rows: dict[int, int]) -> np.ndarray:
        changed = X.copy()
        for target, source in rows.items():
            changed[target] = X[source]
        return changed

    base = model.loss(params)
    only_a = model.loss(params, with_rows({a: b}))
    only_b = model.loss(params, with_rows({b: a}))
    both = model.loss(params, with_rows({a: b, b: a}))
    interaction = abs(both - only_a - only_b + base)
    effect = abs(only_a - base) + abs(only_b - base)
    roundoff = computation_eps(params, X) * sum(abs(v) for v in (base, only_a, only_b, both))
    allowed = INTERACTION_SHARE * effect + INTERACTION_ROUNDOFF * roundoff
    return Swap((a, b), interaction, max(allowed, np.finfo(float).tiny), effect)


def computation_eps(params: Any, X: np.ndarray) -> float:
    dtypes = [a.dtype for a in arrays_of(params)]
    if np.issubdtype(X.dtype, np.floating):
        dtypes.append(X.dtype)
    return float(np.finfo(np.result_type(*dtypes)).eps)


def numpy_overfit(
    model: NumpyModel, start: Any, steps: int, findings: PreflightFindings
) -> Verdict:
    """Adam on a copy, with each learning rate in turn until one drives the loss far down."""
    best: tuple[float, float, float, list[float], float] | None = None
    for learning_rate in OVERFIT_LEARNING_RATES:
        params = copied(start)
        initial = model.loss(params)
        curve = adam(model, params, steps, learning_rate)
        final = model.loss(params)
        ratio = overfit_ratio(initial, final)
        if best is None or ratio < best[0]:
            best = (ratio, initial, final, curve, learning_rate)
        if judge_overfit(initial, final, steps, learning_rate)[0] == "pass":
            break
    assert best is not None
    _, initial, final, curve, learning_rate = best
    findings.overfit_curve = [*curve, final]
    findings.overfit_learning_rate = learning_rate
    return judge_overfit(initial, final, steps, learning_rate)


def adam(model: NumpyModel, params: Any, steps: int, learning_rate: float) -> list[float]:
    """``steps`` Adam updates of ``params`` in place; the loss before each step."""
    arrays = arrays_of(params)
    first = [np.zeros(a.shape) for a in arrays]
    second = [np.zeros(a.shape) for a in arrays]
    beta1, beta2 = ADAM_BETAS
    curve = []
    for step in range(1, steps + 1):
        loss = model.loss(params)
        curve.append(loss)
        if not math.isfinite(loss):
            break
        for array, g, m, v in zip(arrays, model.gradients(params), first, second):
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g * g
            update = m / (1 - beta1**step) / (np.sqrt(v / (1 - beta2**step)) + ADAM_EPS)
            array -= (learning_rate * update).astype(array.dtype)
    return curve


def numpy_gradient_flow(
    model: NumpyModel, start: Any, names: Sequence[str], findings: PreflightFindings
) -> Verdict:
    params = copied(start)
    gradients = model.gradients(params)
    findings.gradients = [
        ParameterGradient(
            name,
            name,
            float(np.linalg.norm(g)) if np.all(np.isfinite(g)) else math.inf,
            float(np.linalg.norm(a)),
        )
        for name, g, a in zip(names, gradients, arrays_of(params))
    ]
    weights = [name for name, a in zip(names, arrays_of(params)) if a.ndim >= 2]
    return judge_gradient_flow(findings.gradients, weights)


def numpy_gradients(
    model: NumpyModel, start: Any, seed: int, findings: PreflightFindings
) -> Verdict:
    """nbgradcheck's own check in float64 on a sample of every tensor's elements."""
    params = copied(start, np.float64)
    X = model.X.astype(np.float64) if np.issubdtype(model.X.dtype, np.floating) else model.X

    def loss(p: Any) -> Any:
        return model.user_loss(p, X, model.y)

    def grads(p: Any) -> Any:
        return model.user_grads(p, X, model.y)

    result = check(
        loss, params, grads, mode="sample", sample=GRADIENT_SAMPLE, seed=seed, progress=False
    )
    findings.gradcheck = result
    return judge_gradient_check(result)
