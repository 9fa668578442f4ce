"""What the preflight checks measure turned into verdicts: every threshold lives here.

Framework-free: the PyTorch and NumPy runners (:mod:`nbgradcheck.api.preflight_torch`,
:mod:`nbgradcheck.api.preflight_numpy`) measure, these functions judge and word the
finding, so both frameworks are judged by the same rules.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nbgradcheck.api.result import GradCheckResult

CHECK_NAMES = (
    "init_loss",
    "batch_independence",
    "overfit_batch",
    "dead_units",
    "gradient_flow",
    "gradients",
)
STATUSES = ("pass", "warn", "fail", "skip")

# init_loss: the loss per target at initialisation against ln(classes), in shares of
# max(ln(classes), 1 nat), widened by twice the batch's standard error: within ±25 %
# passes; more than 100 % above (over twice the chance loss) fails; between, or far below
# (already confident), warns.
INIT_LOSS_PASS = 0.25
INIT_LOSS_FAIL = 1.0
# overfit_batch: final loss / initial loss after training a copy on the batch.
OVERFIT_PASS = 0.25
OVERFIT_FAIL = 0.9  # barely moved: cannot learn (between: learns, but not this batch yet)
# Adam learning rates tried in turn until one passes (the second rescues an unstable first).
OVERFIT_LEARNING_RATES = (1e-2, 1e-3)
ADAM_BETAS = (0.9, 0.999)  # the same hand-written Adam for both frameworks
ADAM_EPS = 1e-8
# dead_units: share of a layer's units never active on the batch. PyTorch's default
# initialisation leaves deep ReLU layers partly silent (measured on 400 random MLPs, batches
# of 8-128: at most 38 % of a layer up to depth 3, 56 % at depth 4-5, 69 % at depth 6),
# which is no bug; a bias initialised to -10 silences all of them.
DEAD_WARN = 0.5
DEAD_FAIL = 0.75
DEAD_MOST = 0.95  # the bar never rises above this, however small the batch
# gradient_flow: gradient norm of the first layer over the last one, outside [1/R, R] warns.
FLOW_RATIO_LIMIT = 1e3
# batch_independence: another example's share of the gradient of example i's output.
LEAK_TOLERANCE = 1e-6
# gradients: elements sampled from every tensor by check(mode="sample").
GRADIENT_SAMPLE = 10


@dataclass
class CheckOutcome:
    """One row of the checklist."""

    name: str
    status: str
    finding: str
    seconds: float = 0.0
    error: BaseException | None = None


@dataclass
class ActivationSite:
    """A ReLU-like activation seen in the forward pass, and how many units never fired."""

    name: str
    units: int
    dead: int

    @property
    def dead_share(self) -> float:
        return self.dead / self.units if self.units else 0.0


@dataclass
class ParameterGradient:
    """One parameter's gradient at initialisation (None: the loss does not reach it)."""

    name: str
    layer: str
    grad_norm: float | None
    param_norm: float


@dataclass
class PreflightFindings:
    """Everything a framework runner measured: the checklist and the numbers behind it."""

    framework: str
    batch_size: int
    outcomes: list[CheckOutcome] = field(default_factory=list)
    overfit_curve: list[float] = field(default_factory=list)
    overfit_learning_rate: float | None = None
    activations: list[ActivationSite] = field(default_factory=list)
    gradients: list[ParameterGradient] = field(default_factory=list)
    gradcheck: GradCheckResult | None = None


Verdict = tuple[str, str]  # (status, finding)


def run_timed(name: str, measure: Callable[[], Verdict]) -> CheckOutcome:
    """Run one check; an exception in it (or in the user's code it calls) fails the check.

    ``KeyboardInterrupt`` and other non-``Exception`` errors propagate.
    """
    started = time.perf_counter()
    try:
        status, finding = measure()
        error = None
    except Exception as exc:
        status, error = "fail", exc
        finding = f"the check raised {type(exc).__name__}: {one_line(str(exc))}"
    return CheckOutcome(name, status, finding, time.perf_counter() - started, error)


def one_line(text: str, most: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= most else text[: most - 1] + "…"


def listed(names: Sequence[str], most: int = 4) -> str:
    """'a, b and c' (at most ``most`` names, then 'and N more')."""
    names = list(names)
    if len(names) > most:
        return ", ".join(names[:most]) + f" and {len(names) - most} more"
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


# -- init_loss ------------------------------------------------------------------------------


def judge_init_loss(
    measured: float, classes: int, targets: int = 1, culprit: str = "", noise: float = 0.0
) -> Verdict:
    """The loss at initialisation against ``targets`` · ln(classes) (a sum over targets).

    ``noise``: the standard error of the per-target loss over the batch (small batches
    scatter around ln(classes)); twice it widens both bands.
    """
    expected = targets * math.log(classes)
    chance = f"ln({classes}) = {math.log(classes):.2f}" + (
        f" per target × {targets} targets = {expected:.2f}" if targets > 1 else ""
    )
    if not math.isfinite(measured):
        return "fail", f"the loss at initialisation is {measured}: fix the forward pass first"
    deviation = (measured - expected) / expected
    scale = max(math.log(classes), 1.0)
    excess = (measured - expected) / targets  # nats per target
    said = f"the loss at initialisation is {measured:.3g}"
    if abs(excess) <= INIT_LOSS_PASS * scale + 2 * noise:
        return "pass", f"{said}, close to {chance} for {classes} equally likely classes"
    if excess > INIT_LOSS_FAIL * scale + 2 * noise:
        blame = f" ({culprit})" if culprit else ""
        return "fail", (
            f"{said}, far above {chance} expected for {classes} equally likely classes: "
            f"the network starts confidently wrong, its initial outputs are too large"
            f"{blame}; initialise the weights smaller (the last layer near zero)"
        )
    if deviation > 0:
        return "warn", (
            f"{said}, {deviation:.0%} above {chance}: the initial outputs are somewhat "
            f"large{f' ({culprit})' if culprit else ''}"
        )
    return "warn", (
        f"{said}, well below {chance}: the model is already confident at "
        f"initialisation (pretrained, or do the labels leak into the inputs?)"
    )


def init_loss_skipped_without_classes(why: str) -> Verdict:
    return "skip", f"{why}; pass classes= to compare the loss at initialisation with ln(classes)"


# -- batch_independence ----------------------------------------------------------------------


def judge_leak(example: int, leaking_rows: Sequence[int], others: int, where: str = "") -> Verdict:
    """Example ``example``'s output depends on ``leaking_rows`` (out of ``others``)."""
    rows = listed([str(r) for r in leaking_rows], most=5)
    place = f" The mixing starts {where}." if where else ""
    return "fail", (
        f"example {example}'s output depends on other examples of the batch ({rows}: "
        f"{len(leaking_rows)} of {others}): something mixes the examples, e.g. a softmax "
        f"or normalisation over the batch axis (dim=0 instead of dim=-1) or a reshape "
        f"that moves it.{place}"
    )


# -- overfit_batch --------------------------------------------------------------------------


def overfit_ratio(initial: float, final: float) -> float:
    """How far the loss fell: final / initial (for a positive loss), inf when it rose."""
    if not (math.isfinite(initial) and math.isfinite(final)):
        return math.inf
    if initial <= 0:
        return 0.0 if final < initial else math.inf
    return final / initial


def judge_overfit(initial: float, final: float, steps: int, learning_rate: float) -> Verdict:
    ratio = overfit_ratio(initial, final)
    trained = f"a copy trained on this batch for {steps} steps (Adam, lr={learning_rate:g})"
    if not math.isfinite(final):
        return "fail", f"{trained} diverged: the loss became {final}"
    moved = f"the loss went from {initial:.3g} to {final:.3g}"
    if final > initial:
        return "fail", (
            f"{trained}: {moved}, it rose. The gradient points the wrong way (a sign "
            f"flipped in a backward pass?) or the loss is not what training minimises"
        )
    if ratio <= OVERFIT_PASS:
        return "pass", f"{trained}: {moved} ({ratio:.1%} of the start)"
    if ratio <= OVERFIT_FAIL:
        return "warn", (
            f"{trained}: {moved}, only to {ratio:.0%} of the start: too small a network "
            f"for this batch, too few steps=, or a loss that cannot reach 0 (regularisation, "
            f"label smoothing)?"
        )
    return "fail", (
        f"{trained}: {moved}, barely down ({ratio:.0%} of the start). The network cannot "
        f"fit even one batch: check the gradients, the gradient flow and dead units"
    )


# -- dead_units -----------------------------------------------------------------------------


def dead_thresholds(batch_size: int) -> tuple[float, float]:
    """(warn, fail) shares: a unit active on half the examples is silent on a small batch
    by chance with probability 0.5**batch_size (more in deep layers, whose units are
    correlated), so small batches raise the bar."""
    chance = 0.5**batch_size
    warn = max(DEAD_WARN, min(DEAD_MOST, 8 * chance))
    return warn, max(DEAD_FAIL, min(DEAD_MOST, 16 * chance))


def site_status(site: ActivationSite, batch_size: int) -> str:
    warn, fail = dead_thresholds(batch_size)
    return "fail" if site.dead_share > fail else "warn" if site.dead_share > warn else "pass"


def judge_dead_units(sites: Sequence[ActivationSite], batch_size: int) -> Verdict:
    if not sites:
        return "skip", "no ReLU-like activation in the forward pass"
    failing = [s for s in sites if site_status(s, batch_size) == "fail"]
    warning = [s for s in sites if site_status(s, batch_size) == "warn"]

    def described(site: ActivationSite) -> str:
        return f"{site.name}: {site.dead} of {site.units} units ({site.dead_share:.0%})"

    if failing:
        return "fail", (
            f"most units never fire on this batch in {listed([described(s) for s in failing])}; "
            f"they pass no gradient back, so the layer before cannot learn (a bias "
            f"initialised too negative, or weights too large?)"
        )
    if warning:
        return "warn", (
            f"more than half the units never fire on this batch in "
            f"{listed([described(s) for s in warning])}"
        )
    worst = max(sites, key=lambda s: s.dead_share)
    return "pass", (
        f"{len(sites)} ReLU-like layers; at most {worst.dead_share:.0%} of a layer's units "
        f"never fire on this batch ({worst.name})"
    )


# -- gradient_flow --------------------------------------------------------------------------


def gradient_status(gradient: ParameterGradient) -> str:
    """'fail' for a missing, exactly zero or non-finite gradient, else 'pass'."""
    norm = gradient.grad_norm
    return "fail" if norm is None or norm == 0.0 or not math.isfinite(norm) else "pass"


def layer_norms(gradients: Sequence[ParameterGradient]) -> dict[str, float]:
    """Gradient norm of each layer (its parameters together), in the order given."""
    squares: dict[str, float] = {}
    for g in gradients:
        if g.grad_norm is not None:
            squares[g.layer] = squares.get(g.layer, 0.0) + g.grad_norm**2
    return {layer: math.sqrt(total) for layer, total in squares.items()}


def judge_gradient_flow(
    gradients: Sequence[ParameterGradient], layer_order: Sequence[str] = ()
) -> Verdict:
    """Missing or exactly zero gradients fail; first/last layer ratios far from 1 warn."""
    missing = [g.name for g in gradients if g.grad_norm is None]
    zero = [g.name for g in gradients if g.grad_norm == 0.0]
    broken = [g.name for g in gradients if gradient_status(g) == "fail"]
    broken = [name for name in broken if name not in missing and name not in zero]
    if missing or zero or broken:
        return "fail", blocked_gradient_sentence(missing, zero, broken)
    norms = layer_norms(gradients)
    order = [layer for layer in layer_order if layer in norms] or list(norms)
    if len(order) < 2:
        return "pass", f"every parameter receives a gradient ({len(gradients)} tensors)"
    first, last = order[0], order[-1]
    ratio = norms[first] / norms[last] if norms[last] > 0 else math.inf
    said = (
        f"gradient norm of the first layer ({first}: {norms[first]:.2g}) over the last "
        f"({last}: {norms[last]:.2g}) is {ratio:.2g}"
    )
    if ratio < 1 / FLOW_RATIO_LIMIT:
        return "warn", (
            f"{said}: the gradient vanishes on its way back (saturating activations, a "
            f"deep stack without normalisation or residual connections?)"
        )
    if ratio > FLOW_RATIO_LIMIT:
        return "warn", (
            f"{said}: the gradient explodes on its way back (large weights, unnormalised inputs?)"
        )
    return "pass", f"every parameter receives a gradient; {said}"


def blocked_gradient_sentence(missing: list[str], zero: list[str], broken: list[str]) -> str:
    parts = []
    if missing:
        parts.append(
            f"{listed(missing)} {'receives' if len(missing) == 1 else 'receive'} no gradient: "
            f"the loss does not reach {'it' if len(missing) == 1 else 'them'} (a .detach(), "
            f".data or torch.no_grad() in the forward pass after "
            f"{'it' if len(missing) == 1 else 'them'}, or unused?)"
        )
    if zero:
        parts.append(
            f"{listed(zero)} {'receives' if len(zero) == 1 else 'receive'} an exactly zero "
            f"gradient: every path back from the loss is cut (a .detach() in the middle, "
            f"units that never fire, a multiplication by zero?)"
        )
    if broken:
        verb = "has" if len(broken) == 1 else "have"
        parts.append(f"{listed(broken)} {verb} a NaN or infinite gradient")
    return "; ".join(parts)


# -- gradients ------------------------------------------------------------------------------


def judge_gradient_check(result: GradCheckResult) -> Verdict:
    """The verdict of nbgradcheck's own check, naming each wrong tensor with its diagnosis.

    Tensors that fail only within the round-off floor (or at kinks) warn: their
    gradients are too small for finite differences to resolve, which is not a bug.
    """
    checked = f"{result.n_checked} sampled elements of {len(result.tensors)} tensors"
    if result.passed:
        return "pass", f"the backward pass agrees with finite differences in float64 ({checked})"
    if not result.complete:
        return "fail", f"the gradient check was interrupted ({checked} so far)"
    diagnoses = result.diagnoses
    wrong = [n for n in result.failing if n not in diagnoses or diagnoses[n].is_bug]
    if not wrong:
        return "pass", (
            f"no wrong gradient found in float64 ({checked}); {listed(result.failing)} "
            f"{'differs' if len(result.failing) == 1 else 'differ'} from finite differences "
            f"only within the round-off floor: gradients too small to resolve (a bias "
            f"before a normalisation, or a vanishing gradient), not shown to be wrong"
        )
    named = [f"{name}: {diagnoses[name].sentence}" if name in diagnoses else name for name in wrong]
    return "fail", (
        f"wrong gradient for {listed(wrong)} (float64 finite differences, {checked}). "
        + " ".join(named[:3])
    )


def as_float(value: Any) -> float:
    """A Python float from a float, NumPy scalar, 0-d array or tensor (``.item()``)."""
    item = getattr(value, "item", None)
    return float(item()) if callable(item) else float(np.asarray(value))
