"""The check itself: prepare, evaluate every planned element, measure, refine.

Each element is perturbed in place in the user's own array (through the adapter) and its
saved value written back after the evaluations, so the arrays are bit-for-bit unchanged
afterwards, also when the loss raises or the user presses Ctrl-C. The method's arithmetic
lives in :mod:`~nbgradcheck.core.schemes`, the choice of elements and steps in
:mod:`~nbgradcheck.core.plan`, loss evaluation in :mod:`~nbgradcheck.core.evaluate`;
fast mode in :mod:`~nbgradcheck.core.localize`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nbgradcheck.adapters.base import ParameterAdapter
from nbgradcheck.adapters.numpy import format_index
from nbgradcheck.core.evaluate import (
    Evaluator,
    InProcessEvaluator,
    Outputs,
    Tick,
    loss_dtype,
    loss_scalar,
    make_evaluator,
    takes_argument,
)
from nbgradcheck.core.plan import TensorPlan, blocks, sub_plan
from nbgradcheck.core.progress import BarFactory, chunk_size, open_bar, should_show
from nbgradcheck.core.result import TensorCheck
from nbgradcheck.core.schemes import NOISE_BLOCK, RoundOff, Scheme
from nbgradcheck.core.verdict import kink_crossings
from nbgradcheck.errors import GradCheckError, LossError, NonFiniteLossError, RandomLossError

# Failing elements are re-estimated with steps this many times smaller (up to
# REFINE_LEVELS times) before they are called wrong: a step that crossed several kinks,
# or a large low-precision step, then gets a second chance; a real bug does not.
REFINE_FACTOR = 8
REFINE_LEVELS = 2
REFINE_PROBE = 8


@dataclass
class CheckSetup:
    """Everything about a check decided before the first perturbation."""

    params: ParameterAdapter
    analytic: list[np.ndarray]
    evaluator: Evaluator
    loss_value: float
    unit_roundoff: float
    seconds_per_evaluation: float
    notes: list[str]
    pass_argument: bool = True
    make_bar: BarFactory | None = None  # draws the progress bar (views.progress)

    @property
    def evaluate(self) -> Callable[[], Any]:
        """J at the current parameters, in this process."""
        return self.local.evaluate

    @property
    def local(self) -> InProcessEvaluator:
        """The in-process evaluator (the executor evaluator keeps one for small requests)."""
        evaluator = self.evaluator
        return evaluator if isinstance(evaluator, InProcessEvaluator) else evaluator.local


def ignore_tick(count: int) -> None:
    return None


# -- before the first perturbation ----------------------------------------------------------


def prepare(
    loss: Callable[..., Any],
    parameters: ParameterAdapter,
    grads: Any,
    seed: int | None,
    snapshot: list[np.ndarray],
) -> CheckSetup:
    """Evaluate J twice (randomness, NaN, mutation checks) and fetch the gradients."""
    pass_argument = takes_argument(loss)
    if seed is not None:
        parameters.reseed(seed)
    fingerprint = parameters.rng_fingerprint()
    raw_first = loss(parameters.argument()) if pass_argument else loss()
    first = loss_scalar(raw_first)
    draws = fingerprint is None or fingerprint != parameters.rng_fingerprint()
    # Re-seeding costs microseconds per evaluation: only for a loss that draws numbers.
    evaluate = make_evaluator(loss, parameters, pass_argument, seed if draws else None)
    started = time.perf_counter()
    second = evaluate()
    seconds = time.perf_counter() - started
    parameters.ensure_unmodified(snapshot, "the loss")
    for value in (first, second):
        reject_complex_loss(value)
        if not np.isfinite(value):
            raise NonFiniteLossError(
                f"the loss is {value} at the unperturbed parameters: fix the forward pass "
                f"(log of 0? overflow in exp?) before checking gradients"
            )
    reject_random_loss(first, second, seed, parameters.randomness_hint)
    unit_roundoff = computation_roundoff(parameters, loss_dtype(raw_first))
    analytic, ignored = gradients_at_start(grads, loss, pass_argument, parameters, seed, snapshot)
    notes = [f"ignored gradient keys: {', '.join(ignored)}"] if ignored else []
    notes += parameters.notes
    evaluator = InProcessEvaluator(
        parameters, loss, pass_argument, seed if draws else None, evaluate=evaluate
    )
    return CheckSetup(
        parameters, analytic, evaluator, first, unit_roundoff, seconds, notes, pass_argument
    )


def reject_complex_loss(value: Any) -> None:
    if isinstance(value, complex):
        raise LossError("the loss returned a complex number for real parameters")


def reject_random_loss(first: float, second: float, seed: int | None, hint: str = "") -> None:
    """Raise RandomLossError when two evaluations at the same point disagree."""
    if first == second or abs(first - second) <= 4 * np.finfo(float).eps * abs(first):
        return
    if seed is None:
        raise RandomLossError(
            f"the loss returned {first!r} and then {second!r} at the same parameters: it "
            f"is random (dropout, data augmentation, minibatch sampling?). Pass seed=0 to "
            f"re-seed NumPy's RNG before every evaluation (this checks the dropout "
            f"gradient too), or switch the randomness off for the check.{hint}"
        )
    raise RandomLossError(
        f"the loss returned {first!r} and then {second!r} at the same parameters even "
        f"with seed={seed} re-seeding numpy.random and random before every evaluation: it "
        f"draws from a generator nbgradcheck cannot re-seed (a np.random.default_rng made "
        f"outside the loss?). Create the generator inside the loss from a fixed seed, or "
        f"switch the randomness off."
    )


def computation_roundoff(parameters: ParameterAdapter, returned: np.dtype | None) -> float:
    """Unit round-off of the least precise dtype among the parameters and the loss."""
    dtypes = list(parameters.dtypes)
    if returned is not None:
        dtypes.append(returned)
    return max(float(np.finfo(d).eps) for d in dtypes) / 2


def gradients_at_start(
    grads: Any,
    loss: Callable[..., Any],
    pass_argument: bool,
    parameters: ParameterAdapter,
    seed: int | None,
    snapshot: list[Any],
) -> tuple[list[np.ndarray], list[str]]:
    """Analytic gradients aligned with the parameters.

    A callable is called once at the unperturbed point; ``None`` asks the framework
    adapter for automatic differentiation of the loss.
    """
    if seed is not None:
        parameters.reseed(seed)
    if grads is None:
        grads = parameters.autograd_gradients(loss, pass_argument)
        parameters.ensure_unmodified(snapshot, "the loss")
    elif callable(grads):
        grads = grads(parameters.argument()) if takes_argument(grads) else grads()
        parameters.ensure_unmodified(snapshot, "the gradient function")
    return parameters.match_gradients(grads)


# -- the check --------------------------------------------------------------------------------


def check_plans(
    plans: list[TensorPlan], setup: CheckSetup, scheme: Scheme, tol: float, progress: bool | None
) -> tuple[list[TensorCheck], int, bool]:
    """Evaluate, measure and refine each plan; stops evaluating at Ctrl-C."""
    total = sum(p.count for p in plans)
    per_element = setup.seconds_per_evaluation * scheme.evaluations_per_element
    expected = per_element * total / setup.evaluator.workers
    bar = open_bar(setup.make_bar, total, should_show(progress, expected))
    chunk = chunk_size(per_element)
    setup.evaluator.prefetch(plans, scheme, chunk)
    tensors, evaluations, complete = [], 2, True
    try:
        for plan in plans:
            bar.describe(plan.name)
            tensor, outputs = measuring(plan, setup, scheme, tol)
            try:
                if complete:
                    evaluate_plan(setup, plan, scheme, outputs, bar.advance, chunk)
            except KeyboardInterrupt:
                complete = False
            evaluations += outputs.evaluations
            try:
                if complete and scheme.real_steps:
                    evaluations += refine_failing(plan, tensor, setup, scheme, chunk, tol)
            except KeyboardInterrupt:
                complete = False
            tensors.append(tensor)
    finally:
        bar.close()
    return tensors, evaluations, complete


def refine_failing(
    plan: TensorPlan, tensor: TensorCheck, setup: CheckSetup, scheme: Scheme, chunk: int, tol: float
) -> int:
    """Re-estimate failing elements with smaller steps; adopt estimates that agree.

    A probe of a few failing elements goes first: when smaller steps do not fix most of
    them (a real bug), the rest are left alone, so a wrong tensor costs little extra.
    Returns the number of extra loss evaluations.
    """
    evaluations = 0
    for level in range(1, REFINE_LEVELS + 1):
        candidates = failing_positions(tensor)
        probe = candidates[
            np.linspace(0, candidates.size - 1, min(candidates.size, REFINE_PROBE)).astype(int)
        ]
        fixed, spent = re_estimate(plan, tensor, probe, level, setup, scheme, chunk, tol)
        evaluations += spent
        if not probe.size or fixed < probe.size / 2:
            break
        rest = np.setdiff1d(candidates, probe)
        evaluations += re_estimate(plan, tensor, rest, level, setup, scheme, chunk, tol)[1]
    return evaluations


def failing_positions(tensor: TensorCheck) -> np.ndarray:
    """Positions of the failing elements not explained by a kink, found block by block
    (the tensor's full error arrays would cost several times its size)."""
    found = [
        part.start + np.flatnonzero(tensor.failing_in(part) & ~tensor.kink[part])
        for part in blocks(tensor.numeric.size)
    ]
    return np.concatenate(found) if found else np.array([], dtype=np.int64)


def re_estimate(
    plan: TensorPlan,
    tensor: TensorCheck,
    positions: np.ndarray,
    level: int,
    setup: CheckSetup,
    scheme: Scheme,
    chunk: int,
    tol: float,
) -> tuple[int, int]:
    """Central/one-sided estimates at steps REFINE_FACTOR**level times smaller.

    An estimate that still disagrees is extrapolated (Richardson) from the two steps: the
    truncation error of a scheme of order p shrinks as εᵖ, so (qᵖ·N(ε/q) − N(ε)) / (qᵖ − 1)
    removes it. A zero gradient with curvature, which a one-sided difference estimates as
    about ε·J''/2, is then recognised; a wrong gradient's discrepancy does not shrink with
    the step and survives extrapolation.

    Returns (elements now agreeing, loss evaluations spent).
    """
    if not positions.size:
        return 0, 0
    try:
        sub = sub_plan(plan, positions, REFINE_FACTOR**level)
    except GradCheckError:  # the smaller step rounds away in this dtype
        return 0, 0
    refined, outputs = measuring(sub, setup, scheme, tol)
    evaluate_plan(setup, sub, scheme, outputs, ignore_tick, chunk)
    agreeing = ~refined.element_failing
    if not agreeing.all():
        extrapolate(refined, tensor.numeric[positions], tensor.step_at(positions), scheme.order)
        agreeing = ~refined.element_failing
    tensor.adopt(positions, refined, agreeing)
    return int(agreeing.sum()), outputs.evaluations


def extrapolate(
    refined: TensorCheck, coarse: np.ndarray, coarse_step: np.ndarray, order: int
) -> None:
    """Replace ``refined``'s failing estimates by their Richardson extrapolation with the
    estimates ``coarse`` taken at ``coarse_step``."""
    failing = refined.element_failing
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = (np.abs(coarse_step) / np.abs(refined.step)) ** order
        extrapolated = (gain * refined.numeric - coarse) / (gain - 1)
    usable = failing & np.isfinite(extrapolated) & (gain > 1)
    refined.round_off = refined.noise  # the floors of the losses measured, kept as they are
    refined.numeric[usable] = extrapolated[usable]


# -- from loss values to measurements ---------------------------------------------------------


def measuring(
    plan: TensorPlan, setup: CheckSetup, scheme: Scheme, tol: float
) -> tuple[TensorCheck, Outputs]:
    """A TensorCheck for ``plan`` (NaN until measured) and the :class:`Outputs` that
    measures it as the losses arrive: numeric gradient, round-off floor and kinks, run by
    run of elements, so a million-element tensor never holds its losses at once."""
    count = plan.count
    round_off = RoundOff.for_elements(scheme, setup.unit_roundoff, setup.loss_value, count)
    analytic_full = setup.analytic[plan.position]
    analytic = gathered(analytic_full.reshape(-1), plan)
    tensor = TensorCheck(
        plan.name,
        plan.shape,
        plan.dtype,
        plan.indices,
        plan.values64(),
        analytic,
        np.full(count, np.nan),
        plan if plan.indices is None else plan.steps_taken(),
        round_off,
        np.zeros(count, dtype=bool),
        analytic_full,
        tol,
    )
    j0 = setup.loss_value

    def measure(first: int, loss_plus: np.ndarray, loss_minus: np.ndarray) -> None:
        part = slice(first, first + loss_plus.size)
        reject_non_finite(plan, part, loss_plus, loss_minus)
        steps, up, down = plan.sides(part)
        numeric, step, high = scheme.estimate(j0, loss_plus, loss_minus, up, down, steps)
        round_off.record(first, high, loss_minus)
        noise = round_off(numeric, step, first)
        tensor.numeric[part] = numeric
        if scheme.sees_kinks:
            tensor.kink[part] = kink_crossings(
                numeric, analytic[part], j0, high, loss_minus, up, down, noise, tol
            )

    return tensor, Outputs.for_plan(scheme, measure, align=NOISE_BLOCK)


def evaluate_plan(
    setup: CheckSetup, plan: TensorPlan, scheme: Scheme, outputs: Outputs, tick: Tick, chunk: int
) -> None:
    """The evaluator's losses for ``plan`` into ``outputs``, every one of them measured,
    also those recorded before an error or Ctrl-C."""
    try:
        setup.evaluator.element_losses(plan, scheme, outputs, tick, chunk)
    finally:
        outputs.finish()


def gathered(flat: np.ndarray, plan: TensorPlan) -> np.ndarray:
    """``flat`` at the plan's elements; the array itself (no copy) for a full check."""
    return flat if plan.everything else flat[plan.flat_indices()]


def reject_non_finite(
    plan: TensorPlan, part: slice, loss_plus: np.ndarray, loss_minus: np.ndarray
) -> None:
    """Raise NonFiniteLossError naming the first element of ``part`` whose perturbation
    broke J (θ+ε before θ−ε)."""
    for side, sign, losses in zip((0, 1), ("+ε", "−ε"), (loss_plus, loss_minus)):
        if not (plan.scheme.plus, plan.scheme.minus)[side]:
            continue
        finite = np.isfinite(losses)
        if finite.all():
            continue
        j = int(np.argmin(finite))
        at = part.start + j
        shifted = plan.points(slice(at, at + 1))[side][0]
        where = format_index(
            np.unravel_index(int(plan.flat_indices(slice(at, at + 1))[0]), plan.shape)
        )
        raise NonFiniteLossError(
            f"the loss became {losses[j]} when {plan.name}{where} was perturbed "
            f"({sign}) from {plan.values[at]!r} to {shifted!r}; parameters restored"
        )


def result_notes(tensors: list[TensorCheck], setup: CheckSetup, scheme: Scheme) -> list[str]:
    notes = list(setup.params.evaluation_notes)
    kinks = sum(int((t.kink & t.evaluated).sum()) for t in tensors)
    if kinks:
        notes.append(
            f"{kinks} element{'s' if kinks > 1 else ''} crossed a kink (ReLU, max, abs, "
            f"hinge) between θ−ε and θ+ε: the numeric value averages two slopes there, so "
            f"{'they are' if kinks > 1 else 'it is'} not counted as failing; see result.kinks"
        )
    refined = {t.name: t.refined for t in tensors if t.refined}
    if refined:
        where = ", ".join(f"{count} in {name}" for name, count in refined.items())
        notes.append(
            f"re-estimated with a smaller step ({where}): the first step gave a discrepancy "
            f"that a step ε/{REFINE_FACTOR} or ε/{REFINE_FACTOR**2}, or the extrapolation from "
            f"two steps, removed (kinks, curvature or round-off, not a bug); their steps are in "
            f"result.tensor(name).step"
        )
    floor = max((t.floor for t in tensors if t.evaluated.any()), default=0.0)
    if floor > 1e-6 and scheme.real_steps:
        notes.append(
            f"round-off floor of this check: relative difference up to {floor:.1e} can "
            f"come from floating-point noise alone (unit round-off {setup.unit_roundoff:.1e})"
            f"; verdicts allow for it"
        )
    return notes


def probe_repeatability(tensors: list[TensorCheck], setup: CheckSetup) -> tuple[int, bool]:
    """Evaluate J once more at the unperturbed parameters when some tensor fails.

    A different value than at the start means the loss is random (a data loader or
    dropout the two evaluations before the check did not reveal): the failing tensors
    are marked ``repeatable=False``. Returns the number of evaluations (0 or 1) and
    whether the check is still complete (False after Ctrl-C here).
    """
    failing = [t for t in tensors if not t.passed]
    if not failing:
        return 0, True
    try:
        value = setup.evaluate()
    except KeyboardInterrupt:
        return 0, False
    if not np.isfinite(value):
        raise NonFiniteLossError(
            f"the loss became {value} at the unperturbed parameters when evaluated again "
            f"after the perturbations (it was {setup.loss_value!r} at the start): it depends "
            f"on something the check does not restore; parameters restored"
        )
    first = setup.loss_value
    same = value == first or abs(value - first) <= 4 * np.finfo(float).eps * abs(first)
    for tensor in failing:
        tensor.repeatable = bool(same)
    return 1, True
