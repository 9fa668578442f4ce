"""Explain a gradient discrepancy: which kind of mistake produces these numbers (pure NumPy).

:func:`diagnose` reads one tensor's measurements (numeric and analytic values of the
elements checked, the parameter values, and in fast mode the directional tests) and
tries simple explanations in turn, each of which must account for nearly every element:

- a random loss (J differed when re-evaluated at the same point): not a gradient bug;
- a zero analytic gradient (the tensor is not connected to the backward pass);
- numeric and analytic gradients both zero (a passing tensor): the loss does not depend
  on it, a warning;
- analytic ≈ c·numeric: a constant factor (c = −1: a sign flip);
- analytic ≈ c·numericᵀ, or numericᵀ reshaped to the tensor's shape: a transpose;
- analytic ≈ numeric − κ·θ: a missing L2 term, κ = λ/m;
- round-off: no such structure, and a failing tensor's discrepancy is within a few times
  the round-off floor: inconclusive (the check cannot tell a bug that small from noise);
- the right total over the wrong elements: a sum over the wrong axis;
- only some rows, columns or elements wrong (and how: scaled, zero, sign);
- otherwise no simple pattern, with the worst elements.

:func:`diagnose_result` turns the per-tensor diagnoses into one for the whole check, naming
a cause shared by several tensors once (one factor, one sign, the same units of a layer).

A sentence never names its own tensor: it is shown after the name ("W1: only columns 2, 4
are wrong ..."). A diagnosis never contradicts the verdict beside it: a passing tensor
gets 'ok' (nothing worth saying, round-off within the floor included), 'kink' or 'unused';
a failing tensor never one of those ('noise' there says the check is inconclusive).
:func:`diagnose` runs once per tensor, when the check ends
(:meth:`~nbgradcheck.core.result.TensorCheck.freeze`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nbgradcheck.adapters.numpy import format_index
from nbgradcheck.core.verdict import ROUND_OFF_MARGIN

# Kinds that describe the check, not a bug in the gradient.
NOT_BUGS = ("ok", "kink", "noise", "random", "unused")
# A pattern explains an element when it predicts its analytic value to this relative
# accuracy (plus a few round-off floors).
PATTERN_TOLERANCE = 1e-3
# A pattern must explain this share of all elements and of the clearly wrong ones ...
EXPLAINED_SHARE = 0.9
# ... or leave at most this share of the discrepancy ‖analytic − numeric‖, the rest
# within the round-off floor (low precision, where single elements are noisy).
RESIDUAL_SHARE = 0.25
# A scale seen through noisy elements: this share of the ratios nearer the factor than 1,
# and the median this many standard errors away from 1.
MAJORITY = 0.75
SIGNIFICANCE = 5.0
# ... and the ratios clustered round the factor: their robust spread at most this share
# of it (scattered ratios with a median away from 1 are no scale, least of all near 0).
RATIO_SPREAD = 0.5
# A sum over the wrong axis keeps the total: Σ analytic = Σ numeric to this relative
# accuracy (plus round-off), a total at least this share of Σ|numeric| (a total that
# cancels says nothing), and at least this share of the measurable elements wrong (a
# few wrong elements keeping the total are a local mistake: 'partial').
AXIS_TOLERANCE = 1e-3
AXIS_TOTAL_SHARE = 0.1
AXIS_WRONG_SHARE = 0.5
# Patterns need at least this many elements with a measurable gradient.
MIN_PATTERN_ELEMENTS = 3
# Discrepancies within this many round-off floors are noise (the verdict rules' margin).
NOISE_MARGIN = ROUND_OFF_MARGIN
MAX_LISTED = 5
# Transposition partners are looked up in a table over the tensor when the elements
# checked are at least 1/DENSE_LOOKUP of it.
DENSE_LOOKUP = 4


@dataclass(frozen=True)
class Diagnosis:
    """What kind of mistake explains a tensor's (or a whole check's) discrepancy.

    ``kind``: 'ok', 'scale', 'sign', 'transpose', 'missing_l2', 'extra_l2', 'zero',
    'axis' (a sum over the wrong axis), 'partial', 'none_found' (no simple pattern), or,
    not bugs: 'kink', 'noise' (round-off), 'random' (the loss is random), 'unused'
    (numeric and analytic gradients both zero), and for a whole check also 'mask' (the
    same units of a layer wrong in several tensors) and 'several'. ``failing``: said of a
    tensor (or check) that fails; its 'noise' is inconclusive, not an acquittal. A
    tensor's ``sentence`` does not name it (it follows the name); a whole check's names
    every tensor it is about.
    """

    kind: str
    sentence: str
    name: str | None = None
    factor: float | None = None  # scale, sign, transpose: analytic ≈ factor × numeric
    l2_lambda: float | None = None  # missing (extra) L2: the coefficient κ of the term κ·θ
    rows: list[int] | None = None
    columns: list[int] | None = None
    elements: list[tuple[int, ...]] | None = None
    failing: bool = False
    # partial: the units (rows or columns of a matrix, elements of a vector) wrong, for
    # matching a mask shared by a layer's weights and biases
    units: list[int] | None = None

    @property
    def is_bug(self) -> bool:
        """True when the diagnosis points at a mistake in the analytic gradient."""
        return self.kind not in NOT_BUGS

    @property
    def label(self) -> str:
        """A few words for a table cell ('' when there is nothing to say)."""
        return label_for(self)

    def __str__(self) -> str:
        return self.sentence


def label_for(d: Diagnosis) -> str:
    labels = {
        "ok": "",
        "sign": "sign flip",
        "zero": "zero gradient",
        "kink": "kink (not a bug)",
        "noise": "round-off: inconclusive",  # a passing tensor within round-off gets 'ok'
        "random": "random loss",
        "unused": "loss does not depend on it",
        "none_found": "no simple pattern",
        "axis": "wrong axis",
        "several": "several bugs",
    }
    if d.kind in labels:
        return labels[d.kind]
    if d.kind == "scale":
        return f"scale {format_factor(d.factor)}"
    if d.kind == "transpose":
        scaled = f" × {format_factor(d.factor)}" if d.factor not in (None, 1.0) else ""
        return "transposed" + scaled
    if d.kind == "mask":
        return f"units {', '.join(map(str, (d.units or [])[:MAX_LISTED]))}" + more(d.units or [])
    if d.kind in ("missing_l2", "extra_l2"):
        return f"{d.kind.split('_')[0]} L2 (κ ≈ {abs(d.l2_lambda or 0):.3g})"
    if d.rows:
        return f"rows {', '.join(map(str, d.rows[:MAX_LISTED]))}" + more(d.rows)
    if d.columns:
        return f"columns {', '.join(map(str, d.columns[:MAX_LISTED]))}" + more(d.columns)
    elements = d.elements or []
    if len(elements) <= 2:
        return (
            "element"
            + ("s " if len(elements) > 1 else " ")
            + ", ".join(format_index(e) for e in elements)
        )
    return f"{len(elements)} elements"


def more(items: list) -> str:
    return f" (+{len(items) - MAX_LISTED})" if len(items) > MAX_LISTED else ""


def format_factor(factor: float | None) -> str:
    """3 significant digits, with '.0' on whole numbers: 2.0, 0.25, 0.333, -1.0."""
    if factor is None:
        return "?"
    text = f"{factor:.3g}"
    return text if any(c in text for c in ".en") else text + ".0"


# -- the evidence ---------------------------------------------------------------------------


@dataclass
class Evidence:
    """Measurements a pattern is fitted to: elements (or directional tests) as arrays."""

    indices: np.ndarray  # flat indices of the elements (positions for directions)
    numeric: np.ndarray
    analytic: np.ndarray
    values: np.ndarray  # θ at the elements (θ·u for directions)
    noise: np.ndarray
    failing: np.ndarray
    minimum: int = MIN_PATTERN_ELEMENTS  # measurable elements a pattern needs

    @classmethod
    def of_elements(cls, tensor: Any) -> Evidence:
        """The counted elements (evaluated, not at a kink)."""
        mask = tensor.counted
        if mask.all():  # the tensor's own arrays, not copies of them
            mask = slice(None)
        return cls(
            tensor.indices[mask],
            tensor.numeric[mask],
            tensor.analytic[mask],
            np.asarray(tensor.values, dtype=float)[mask],
            tensor.noise[mask],
            tensor.element_failing[mask],
            min(MIN_PATTERN_ELEMENTS, tensor.size),
        )

    @classmethod
    def of_directions(cls, record: Any) -> Evidence:
        """Fast mode's whole-tensor directional tests, with the model's own gradient."""
        count = len(record.tests)
        return cls(
            np.arange(count),
            record.numeric,
            record.analytic,
            record.theta,
            record.noise,
            record.failing,
        )

    def subset(self, mask: np.ndarray) -> Evidence:
        return Evidence(
            self.indices[mask],
            self.numeric[mask],
            self.analytic[mask],
            self.values[mask],
            self.noise[mask],
            self.failing[mask],
            self.minimum,
        )

    @property
    def signal(self) -> np.ndarray:
        """Elements whose gradient stands out of the round-off noise."""
        magnitude = np.abs(self.numeric) + np.abs(self.analytic)
        return (magnitude > NOISE_MARGIN * self.noise) & (magnitude > 0)

    @property
    def large(self) -> np.ndarray:
        """Elements whose discrepancy is large at the pattern tolerance."""
        return ~explained(self.numeric, self.analytic, self.noise)


def explained(predicted: np.ndarray, analytic: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Where ``predicted`` matches the analytic values, up to the pattern tolerance."""
    slack = PATTERN_TOLERANCE * (np.abs(analytic) + np.abs(predicted)) + NOISE_MARGIN * noise
    return np.abs(analytic - predicted) <= slack


def fits(evidence: Evidence, predicted: np.ndarray, noise: np.ndarray) -> bool:
    """A pattern fits when it explains nearly all elements and nearly all of the clearly
    wrong ones (of which there must be some), or when it removes most of the discrepancy
    and leaves only round-off."""
    if evidence.signal.sum() < evidence.minimum:
        return False
    large = evidence.large
    ok = explained(predicted, evidence.analytic, noise)
    if large.any() and ok.mean() >= EXPLAINED_SHARE and ok[large].mean() >= EXPLAINED_SHARE:
        return True
    before = np.linalg.norm(evidence.analytic - evidence.numeric)
    after = np.linalg.norm(evidence.analytic - predicted)
    allowed = max(
        PATTERN_TOLERANCE * np.linalg.norm(evidence.analytic), NOISE_MARGIN * np.linalg.norm(noise)
    )
    return bool(after <= RESIDUAL_SHARE * before and after <= allowed < before)


def ratios(analytic: np.ndarray, numeric: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """analytic / numeric where the numeric value is measurable."""
    usable = (np.abs(numeric) > NOISE_MARGIN * noise) & (numeric != 0)
    return analytic[usable] / numeric[usable]


def ratio(analytic: np.ndarray, numeric: np.ndarray, noise: np.ndarray) -> float | None:
    """The median of analytic / numeric where the numeric value is measurable."""
    values = ratios(analytic, numeric, noise)
    return float(np.median(values)) if values.size else None


def significant_factor(evidence: Evidence, factor: float) -> bool:
    """Most element ratios sit nearer ``factor`` than 1, clustered round it (a spread of
    at most RATIO_SPREAD·|factor|), and their median is many standard errors from 1: a
    scale seen through noisy (low-precision) numeric values."""
    values = ratios(evidence.analytic, evidence.numeric, evidence.noise)
    if values.size < max(evidence.minimum, 8):
        return False
    nearer = np.mean(np.abs(values - factor) < np.abs(values - 1))
    spread = 1.4826 * np.median(np.abs(values - factor))  # robust standard deviation
    standard_error = 1.253 * spread / np.sqrt(values.size)  # of a median
    return bool(
        nearer >= MAJORITY
        and spread <= RATIO_SPREAD * abs(factor)
        and abs(factor - 1) > SIGNIFICANCE * standard_error
    )


# -- one tensor -----------------------------------------------------------------------------


def diagnose(tensor: Any) -> Diagnosis:
    """Explain the numbers of one :class:`~nbgradcheck.core.result.TensorCheck`.

    A passing tensor gets kind 'ok', or 'unused' / 'kink' / 'noise' when its gradients
    are both zero or kinks or round-off were excused; a failing tensor always gets a
    diagnosis other than those (``failing=True``).
    """
    if tensor.passed:
        return passing_diagnosis(tensor)
    return dataclasses.replace(failing_diagnosis(tensor), failing=True)


def failing_diagnosis(tensor: Any) -> Diagnosis:
    found = random_loss(tensor) or zero_gradient(tensor)
    if found is not None:
        return found
    evidence = Evidence.of_elements(tensor)
    found = whole_pattern(tensor, evidence)
    record = tensor.directional
    few = evidence.signal.sum() < evidence.minimum
    if found is None and few and record is not None and len(record.tests):
        found = whole_pattern(tensor, Evidence.of_directions(record), directions=True)
        found = found if found is None or supported(found, evidence) else None
    # a pattern is structure, which round-off has not: it goes first
    return (
        found
        or round_off(tensor)
        or wrong_axis(tensor, evidence)
        or partial(tensor, evidence)
        or no_pattern(tensor, evidence)
    )


def supported(found: Diagnosis, evidence: Evidence) -> bool:
    """A pattern seen along random directions also explains every element checked one by
    one whose gradient stands out of the noise (the directions alone can fit a factor to
    a handful of numbers that no element bears out)."""
    measurable = evidence.signal
    if not measurable.any():
        return True
    sub = evidence.subset(measurable)
    if found.factor is not None:
        predicted = found.factor * sub.numeric
        noise = sub.noise * max(1, abs(found.factor))
    elif found.l2_lambda is not None:
        predicted, noise = sub.numeric - found.l2_lambda * sub.values, sub.noise
    else:
        return True
    return bool(explained(predicted, sub.analytic, noise).all())


def passing_diagnosis(tensor: Any) -> Diagnosis:
    """A passing tensor: 'unused' or 'kink' when there is something worth saying, else
    'ok' (a difference within the round-off floor included: the verdict says it all)."""
    if tensor.unused:
        return Diagnosis(
            "unused",
            "the loss does not depend on it (numeric and analytic gradients are both zero)",
            tensor.name,
        )
    kink_text = kinks_text(tensor)
    if kink_text:
        return Diagnosis("kink", kink_text, tensor.name)
    return Diagnosis("ok", "no discrepancy", tensor.name)


def kinks_text(tensor: Any) -> str:
    """'3 elements crossed a kink ...' ('' when none did), counting fast mode's
    whole-tensor directions too."""
    elements = int((tensor.kink & tensor.evaluated).sum())
    record = tensor.directional
    directions = int(record.at_kinks.sum()) if record is not None and record.tests else 0
    parts = [f"{elements} element{'s' if elements > 1 else ''}"] if elements else []
    if directions:
        parts.append(f"{directions} whole-tensor direction{'s' if directions > 1 else ''}")
    if not parts:
        return ""
    return (
        f"{' and '.join(parts)} crossed a kink (ReLU, max, abs) between θ−ε and θ+ε, where "
        f"the numeric estimate is off and the code is right"
    )


def random_loss(tensor: Any) -> Diagnosis | None:
    if tensor.repeatable is not False:
        return None
    return Diagnosis(
        "random",
        "the loss is random: evaluated again at the unperturbed parameters it returned "
        "another value, so the discrepancy may be noise, not a gradient bug. Pass seed=0 "
        "(re-seeds NumPy before every evaluation) or switch the randomness (dropout, "
        "shuffling, augmentation) off for the check",
        tensor.name,
    )


def zero_gradient(tensor: Any) -> Diagnosis | None:
    """The analytic gradient is zero everywhere (where known) but the numeric one is not."""
    known = tensor.analytic_full if tensor.analytic_full is not None else tensor.analytic
    if np.any(known != 0):
        return None
    numeric = tensor.numeric[tensor.evaluated]
    largest = f" (numeric values up to {np.max(np.abs(numeric)):.2e})" if numeric.size else ""
    return Diagnosis(
        "zero",
        f"the analytic gradient is zero everywhere but the loss depends on the tensor"
        f"{largest}: it is not connected to the backward pass (detached, never assigned, "
        f"stored under another key, or overwritten with zeros)",
        tensor.name,
        factor=0.0,
    )


def round_off(tensor: Any) -> Diagnosis | None:
    """Every set of measurements over tol (the elements checked one by one; fast mode's
    directional tests) is within NOISE_MARGIN round-off floors: the check cannot tell."""
    sources = [tensor.element_measurements()]
    if tensor.directional is not None and len(tensor.directional.tests):
        sources.append(tensor.directional.measurements())
    over = [s for s in sources if not np.isnan(s.difference) and s.difference > tensor.tol]
    if not over or not all(s.within_round_off(tensor.tol) for s in over):
        return None
    floor = max(s.floor for s in over)
    return Diagnosis(
        "noise",
        f"differs by {tensor.difference:.1e}, within {NOISE_MARGIN:g}× the "
        f"round-off floor {floor:.1e} of this {np.dtype(tensor.dtype).name} check: too "
        f"close to round-off to tell a bug from noise. Use eps='auto' (a step suited to "
        f"the dtype) or float64 parameters",
        tensor.name,
    )


# -- patterns over the whole tensor ---------------------------------------------------------


def whole_pattern(tensor: Any, evidence: Evidence, directions: bool = False) -> Diagnosis | None:
    """A constant factor, a transpose or an L2 term explaining (nearly) every element."""
    found = scaled(tensor.name, evidence, directions)
    if found is None and not directions:
        found = transposed(tensor, evidence)
    found = found or l2_term(tensor.name, evidence, directions)
    return found or scaled(tensor.name, evidence, directions, statistically=True)


def scaled(
    name: str, evidence: Evidence, directions: bool, statistically: bool = False
) -> Diagnosis | None:
    """analytic ≈ c·numeric element by element, or (``statistically``, for noisy
    low-precision values) in the ratios' median and majority. A factor of 0 is no scale:
    an analytic gradient zero where the numeric one is not is a missing term."""
    factor = ratio(evidence.analytic, evidence.numeric, evidence.noise)
    if not factor or abs(factor - 1) <= PATTERN_TOLERANCE:
        return None
    predicted, noise = factor * evidence.numeric, evidence.noise * max(1, abs(factor))
    if not (
        significant_factor(evidence, factor) if statistically else fits(evidence, predicted, noise)
    ):
        return None
    seen = " along every random direction tested" if directions else ""
    if abs(factor + 1) <= 10 * PATTERN_TOLERANCE:
        return Diagnosis(
            "sign",
            f"the gradient has the wrong sign{seen} (analytic ≈ −numeric): {SIGN_CAUSES}",
            name,
            factor=-1.0,
        )
    return Diagnosis(
        "scale",
        f"analytic ≈ {format_factor(factor)} × numeric{seen}: {scale_causes(factor)}",
        name,
        factor=factor,
    )


SIGN_CAUSES = "a minus sign lost or added (e.g. y − a written as a − y, or -= for +=)"


def scale_causes(factor: float) -> str:
    """The usual mistakes behind a constant factor (without guessing the batch size)."""
    close = 10 * PATTERN_TOLERANCE
    whole, inverse = round(factor), round(1 / factor) if factor else 0
    if factor < 0:
        return "the sign is flipped as well as scaled (a − where + belongs, and a factor)"
    if abs(factor - 2) <= 2 * close:
        return "a stray factor 2 (the derivative of x² taken twice, or a missing ½ in the cost)"
    if abs(factor - 0.5) <= close:
        return "a missing factor 2 (½ applied twice, or 2·x written as x)"
    if whole >= 3 and abs(factor - whole) <= close * factor:
        return (
            f"the gradient is {whole}× too large: a stray factor {whole}, or a missing 1/m "
            f"if the batch holds {whole} examples"
        )
    if inverse >= 3 and abs(1 / factor - inverse) <= close / factor:
        return (
            f"the gradient is {inverse}× too small: a stray factor 1/{inverse}, or an extra "
            f"1/m (divided by m once too often) if the batch holds {inverse} examples"
        )
    return "a constant factor in the backward pass only (a scale, a temperature or a 1/m)"


def transposition_maps(shape: tuple[int, ...]) -> list[tuple[str, Callable]]:
    """Flat index k → the flat index whose numeric value a transposed gradient puts at k.

    'transposed': analytic = numericᵀ (square), or numericᵀ reshaped to the shape;
    'transposed layout' (non-square): analytic = numeric.reshape(columns, rows)ᵀ.
    """
    if len(shape) != 2 or min(shape) < 2:
        return []
    rows, columns = shape
    maps = [("transposed", lambda k: (k % rows) * columns + k // rows)]
    if rows != columns:
        maps.append(("transposed layout", lambda k: (k % columns) * rows + k // columns))
    return maps


def transposition_partners(indices: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    """For each transposition map, the elements whose values ``indices`` are compared with."""
    return [partner_of(indices) for _, partner_of in transposition_maps(tuple(shape))]


def transposed(tensor: Any, evidence: Evidence) -> Diagnosis | None:
    for label, partner_of in transposition_maps(tuple(tensor.shape)):
        partner = partner_of(evidence.indices)
        usable, where = lookup(evidence.indices, partner, tensor.size)
        usable &= partner != evidence.indices
        if usable.sum() < MIN_PATTERN_ELEMENTS:
            continue
        sub = evidence.subset(usable)
        numeric, sub_noise = evidence.numeric[where[usable]], evidence.noise[where[usable]]
        factor = ratio(sub.analytic, numeric, sub_noise)
        if factor is None or not fits(sub, factor * numeric, sub_noise * max(1, abs(factor))):
            continue
        factor = 1.0 if abs(factor - 1) <= PATTERN_TOLERANCE else factor
        return Diagnosis(
            "transpose", transpose_sentence(tensor, label, factor), tensor.name, factor=factor
        )
    return None


def lookup(known: np.ndarray, wanted: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which ``wanted`` flat indices of a tensor of ``size`` elements are among ``known``
    (distinct), and their positions there. A table over the tensor when the elements
    known fill a good part of it, else a sorted search: never memory out of proportion
    to the measurements."""
    if size <= DENSE_LOOKUP * known.size:
        table = np.full(size, -1, dtype=np.int64)
        table[known] = np.arange(known.size)
        where = table[wanted]
        return where >= 0, np.maximum(where, 0)
    if not known.size:
        return np.zeros(wanted.shape, dtype=bool), np.zeros(wanted.shape, dtype=np.int64)
    order = np.argsort(known, kind="stable")
    where = order[np.minimum(np.searchsorted(known[order], wanted), known.size - 1)]
    return known[where] == wanted, where


def transpose_sentence(tensor: Any, label: str, factor: float) -> str:
    rows, columns = tensor.shape
    scaled = "" if factor == 1.0 else f", scaled by {format_factor(factor)}"
    if rows == columns:
        what = f"analytic ≈ numericᵀ{scaled}: the gradient is transposed"
    elif label == "transposed":
        what = (
            f"analytic ≈ numericᵀ reshaped to ({rows}, {columns}){scaled}: the gradient was "
            f"computed with shape ({columns}, {rows}) and reshaped to fit"
        )
    else:
        what = (
            f"analytic ≈ numeric.reshape({columns}, {rows})ᵀ{scaled}: the gradient's layout "
            f"is transposed"
        )
    return what + " (when Z = W·A, the weight's gradient is dZ·Aᵀ, not A·dZᵀ)"


def l2_term(name: str, evidence: Evidence, directions: bool) -> Diagnosis | None:
    """analytic ≈ numeric − κ·θ: an L2 term missing from (κ < 0: extra in) the gradient."""
    theta = evidence.values
    if not theta @ theta > 0:
        return None
    residual = evidence.numeric - evidence.analytic
    kappa = float(residual @ theta / (theta @ theta))
    large = evidence.large
    if kappa == 0 or (not directions and np.unique(theta[large]).size < 2):
        return None
    if not fits(evidence, evidence.numeric - kappa * theta, evidence.noise):
        return None
    if kappa > 0:
        sentence = (
            f"numeric − analytic is proportional to the parameter θ: an L2 term κ·θ with "
            f"κ ≈ {kappa:.3g} is missing from the gradient (a cost with (λ/2m)·‖θ‖² needs "
            f"(λ/m)·θ in it; λ/m ≈ {kappa:.3g})"
        )
        return Diagnosis("missing_l2", sentence, name, l2_lambda=kappa)
    sentence = (
        f"the analytic gradient has an extra term {-kappa:.3g}·θ (θ the parameter) that "
        f"the cost does not have: an L2 term added in backprop but not in the cost "
        f"(or with a larger λ)"
    )
    return Diagnosis("extra_l2", sentence, name, l2_lambda=kappa)


# -- the right total in the wrong places ----------------------------------------------------


def wrong_axis(tensor: Any, evidence: Evidence) -> Diagnosis | None:
    """Σ analytic = Σ numeric over the whole tensor, distributed differently over most of
    its elements (or every element holding the total): a sum over the wrong axis, such as
    db = dout.sum(axis=1) where axis=0 belongs, or a mean broadcast to every element."""
    if tensor.size < 2 or evidence.indices.size != tensor.size:
        return None  # the totals need every element
    measurable = evidence.signal
    if evidence.failing.sum() < AXIS_WRONG_SHARE * max(measurable.sum(), 1):
        return None
    numeric, analytic = evidence.numeric, evidence.analytic
    total, magnitude, noise = numeric.sum(), np.abs(numeric).sum(), evidence.noise.sum()
    if abs(total) < max(AXIS_TOTAL_SHARE * magnitude, NOISE_MARGIN * noise):
        return None
    slack = AXIS_TOLERANCE * (magnitude + np.abs(analytic).sum()) + NOISE_MARGIN * noise
    if abs(analytic.sum() - total) <= slack:
        return Diagnosis(
            "axis",
            f"the right total (Σ analytic ≈ Σ numeric ≈ {total:.4g}) spread over the wrong "
            f"elements: a sum over the wrong axis (e.g. db = dout.sum(axis=1) where "
            f"axis=0 belongs: one value per example, not per unit), or a mean broadcast "
            f"to every element",
            tensor.name,
        )
    if np.all(explained(np.full_like(analytic, total), analytic, evidence.noise)):
        return Diagnosis(
            "axis",
            f"every element holds the total Σ numeric ≈ {total:.4g}: a sum over every axis "
            f"(dout.sum()) where a sum over one axis belongs",
            tensor.name,
        )
    return None


# -- only part of the tensor wrong ----------------------------------------------------------


def partial(tensor: Any, evidence: Evidence) -> Diagnosis | None:
    """Only some rows, columns or elements are wrong (and others provably right)."""
    wrong = evidence.failing
    if not wrong.any() or not (~wrong & evidence.signal).any():
        return None
    how = subset_pattern(evidence.subset(wrong))
    checked = f"{int(wrong.sum())} of {wrong.size} elements checked one by one"
    rows, columns = wrong_lines(tensor.shape, evidence)
    name = tensor.name
    if rows:
        sentence = (
            f"only row{'s' if len(rows) > 1 else ''} {list_text(rows)} "
            f"{'are' if len(rows) > 1 else 'is'} wrong ({checked}){how}: look at what "
            f"differs for those rows (a slice, a mask, an index off by one)"
        )
        return Diagnosis("partial", sentence, name, rows=rows, units=rows)
    if columns:
        sentence = (
            f"only column{'s' if len(columns) > 1 else ''} {list_text(columns)} "
            f"{'are' if len(columns) > 1 else 'is'} wrong ({checked}){how}: "
            f"look at what differs for those columns (an input feature, a mask)"
        )
        return Diagnosis("partial", sentence, name, columns=columns, units=columns)
    order = np.argsort(-np.abs(evidence.numeric - evidence.analytic)[wrong], kind="stable")
    elements = [multi_index(tensor.shape, i) for i in evidence.indices[wrong][order]]
    listed = worst_text(tensor, evidence.subset(wrong), order)
    sentence = (
        f"only {len(elements)} element{'s' if len(elements) > 1 else ''} "
        f"{'are' if len(elements) > 1 else 'is'} wrong ({checked}){how}: {listed}"
    )
    vector = sum(extent > 1 for extent in tensor.shape) <= 1
    units = sorted(int(i) for i in evidence.indices[wrong]) if vector else None
    return Diagnosis("partial", sentence, name, elements=elements, units=units)


def wrong_lines(shape: tuple[int, ...], evidence: Evidence) -> tuple[list[int], list[int]]:
    """Rows (or else columns) of a matrix whose every checked element with a gradient is
    wrong, at least two of them, while other lines hold right ones."""
    if len(shape) != 2 or min(shape) < 2:
        return [], []
    rows = whole_lines(evidence.indices // shape[1], evidence)
    return rows, [] if rows else whole_lines(evidence.indices % shape[1], evidence)


def whole_lines(keys: np.ndarray, evidence: Evidence) -> list[int]:
    bad = np.unique(keys[evidence.failing])
    inside = np.isin(keys, bad)
    if np.any(inside & ~evidence.failing & evidence.signal):
        return []
    if not np.any(~inside & evidence.signal):
        return []
    counts = np.array([np.sum(evidence.failing & (keys == line)) for line in bad])
    return [int(line) for line in bad] if np.all(counts >= 2) else []


def subset_pattern(evidence: Evidence) -> str:
    """', scaled by 2.0 there' when one factor explains the wrong elements."""
    if np.all(evidence.analytic == 0):
        return ", where the analytic gradient is 0 (a missing term or mask)"
    factor = ratio(evidence.analytic, evidence.numeric, evidence.noise)
    if factor is None or evidence.analytic.size < 2:
        return ""
    ok = explained(
        factor * evidence.numeric, evidence.analytic, evidence.noise * max(1, abs(factor))
    )
    if not ok.all():
        return ""
    if abs(factor + 1) <= 10 * PATTERN_TOLERANCE:
        return ", with the sign flipped there"
    return f", scaled by {format_factor(factor)} there"


# -- nothing simple -------------------------------------------------------------------------


def no_pattern(tensor: Any, evidence: Evidence) -> Diagnosis:
    wrong = evidence.failing
    if not wrong.any():
        difference = tensor.difference
        return Diagnosis(
            "none_found",
            f"random directional derivatives disagree (relative difference "
            f"{difference:.1e}) but no element checked one by one is wrong: many small "
            f"errors spread over the tensor? mode='full' checks every element",
            tensor.name,
            elements=[],
        )
    order = np.argsort(-np.abs(evidence.numeric - evidence.analytic)[wrong], kind="stable")
    elements = [multi_index(tensor.shape, i) for i in evidence.indices[wrong][order]]
    return Diagnosis(
        "none_found",
        f"no simple pattern (not a constant factor, sign, transpose, L2 term, wrong axis or "
        f"a few rows){shortfall_text(evidence.subset(wrong))}: worst elements "
        f"{worst_text(tensor, evidence.subset(wrong), order)}",
        tensor.name,
        elements=elements,
    )


def shortfall_text(wrong: Evidence) -> str:
    """'; |analytic| < |numeric| at 7 of 8 wrong elements ...' when the analytic values
    mostly fall short (zero included): terms missing from a sum."""
    short = np.abs(wrong.analytic) < np.abs(wrong.numeric)
    if wrong.numeric.size < 2 or short.mean() < MAJORITY:
        return ""
    zeros = int(np.sum((wrong.analytic == 0) & (np.abs(wrong.numeric) > wrong.noise)))
    zero_text = f" (0 at {zeros} of them)" if zeros else ""
    return (
        f"; |analytic| < |numeric| at {int(short.sum())} of {short.size} wrong elements"
        f"{zero_text}: terms missing from a sum, as when a gradient is assigned (=) where "
        f"it must accumulate (+=) or a path is not followed back"
    )


def worst_text(tensor: Any, evidence: Evidence, order: np.ndarray) -> str:
    """'[0, 3] (analytic 0.5, numeric 0.25), ...' for the first few in ``order``."""
    parts = [
        f"{format_index(multi_index(tensor.shape, evidence.indices[i]))} "
        f"(analytic {evidence.analytic[i]:.4g}, numeric {evidence.numeric[i]:.4g})"
        for i in order[:MAX_LISTED]
    ]
    extra = f" and {order.size - MAX_LISTED} more" if order.size > MAX_LISTED else ""
    return ", ".join(parts) + extra


def multi_index(shape: tuple[int, ...], flat: int) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(flat), tuple(shape)))


def list_text(items: list[int]) -> str:
    return ", ".join(map(str, items[:MAX_LISTED])) + (
        f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    )


# -- the whole check ------------------------------------------------------------------------


def diagnose_result(
    diagnoses: dict[str, Diagnosis], failing: list[str] | tuple = (), complete: bool = True
) -> Diagnosis:
    """One diagnosis for a check from its per-tensor ones (``result.diagnoses``) and the
    names of the failing tensors: a cause shared by several tensors is named once."""
    random = [name for name, d in diagnoses.items() if d.kind == "random"]
    if random:
        return Diagnosis(
            "random",
            f"the loss is random: evaluated again at the unperturbed parameters "
            f"it returned another value, so the discrepancies in {', '.join(random)} may be "
            f"noise, not gradient bugs. Pass seed=0 or switch the randomness off",
            failing=bool(failing),
        )
    bugs = {name: d for name, d in diagnoses.items() if d.is_bug}
    if not bugs:
        return no_bug(diagnoses, [n for n in failing if n in diagnoses], complete)
    if len(bugs) == 1:
        name, d = next(iter(bugs.items()))
        return dataclasses.replace(d, sentence=f"{name}: {d.sentence}", name=name)
    return common_pattern(bugs) or Diagnosis(
        "several",
        f"{len(bugs)} tensors are wrong: "
        + "; ".join(f"{name}: {d.label}" for name, d in bugs.items()),
        failing=True,
    )


def no_bug(diagnoses: dict[str, Diagnosis], excused: list[str], complete: bool) -> Diagnosis:
    """No bug found; tensors that fail anyway (``excused``) fail within round-off, where
    the check cannot tell."""
    if excused:
        first = diagnoses[excused[0]]
        return Diagnosis(
            first.kind,
            "inconclusive: " + "; ".join(f"{n}: {diagnoses[n].sentence}" for n in excused),
            failing=True,
        )
    sentence = "no bug found" + ("" if complete else " in the part checked (interrupted)")
    if diagnoses:
        sentence += "; " + "; ".join(f"{n}: {d.sentence}" for n, d in diagnoses.items())
    return Diagnosis("ok", sentence)


# -- causes shared by several tensors -------------------------------------------------------


def common_pattern(bugs: dict[str, Diagnosis]) -> Diagnosis | None:
    """One cause behind several tensors: one factor, one sign flip, one missing L2
    coefficient, or the same units of a layer."""
    return shared_scale(bugs) or shared_sign(bugs) or shared_l2(bugs) or shared_units(bugs)


def shared_scale(bugs: dict[str, Diagnosis]) -> Diagnosis | None:
    factor = shared_value([d.factor for d in bugs.values() if d.kind == "scale"], len(bugs))
    if factor is None:
        return None
    return Diagnosis(
        "scale",
        f"{and_list(list(bugs))} are off by the same factor {format_factor(factor)}: the "
        f"error is {upstream(list(bugs))}; {scale_causes(factor)}",
        factor=factor,
        failing=True,
    )


def shared_sign(bugs: dict[str, Diagnosis]) -> Diagnosis | None:
    if any(d.kind != "sign" for d in bugs.values()):
        return None
    return Diagnosis(
        "sign",
        f"{and_list(list(bugs))} {all_or_both(bugs)} have the wrong sign (analytic ≈ −numeric): "
        f"one sign "
        f"error {upstream(list(bugs))}: {SIGN_CAUSES}",
        factor=-1.0,
        failing=True,
    )


def shared_l2(bugs: dict[str, Diagnosis]) -> Diagnosis | None:
    kappa = shared_value([d.l2_lambda for d in bugs.values() if d.kind == "missing_l2"], len(bugs))
    if kappa is None:
        return None
    return Diagnosis(
        "missing_l2",
        f"{and_list(list(bugs))} {all_or_both(bugs)} miss the same L2 term κ·θ with "
        f"κ ≈ {kappa:.3g}: the cost has (λ/2m)·Σ‖W‖² but the backward pass leaves out (λ/m)·W "
        f"(λ/m ≈ {kappa:.3g})",
        l2_lambda=kappa,
        failing=True,
    )


def shared_units(bugs: dict[str, Diagnosis]) -> Diagnosis | None:
    """The same units wrong in every tensor (columns or rows of a layer's weights,
    elements of its bias), the others right: a mask or comparison in the gradient
    flowing into the layer."""
    units = [d.units for d in bugs.values() if d.kind == "partial" and d.units]
    if len(units) != len(bugs) or any(u != units[0] for u in units):
        return None
    names = list(bugs)
    layer = layer_number(names)
    where = f" of layer {layer}" if layer is not None else ""
    parts = and_list([f"{name} ({lines_text(d)})" for name, d in bugs.items()])
    return Diagnosis(
        "mask",
        f"unit{'s' if len(units[0]) > 1 else ''} {list_text(units[0])}{where} "
        f"{'are' if len(units[0]) > 1 else 'is'} wrong in "
        f"{parts}, the other units right: one cause {upstream(names)}: a mask or "
        f"comparison (> for >=?, a dropout or ReLU mask not applied, or applied to the "
        f"wrong units)",
        failing=True,
        units=units[0],
    )


def lines_text(d: Diagnosis) -> str:
    """'columns 2, 4', 'rows 1, 3' or 'elements 2, 4'."""
    what = "rows" if d.rows else "columns" if d.columns else "elements"
    lines = d.rows or d.columns or d.units or []
    return f"{what if len(lines) > 1 else what[:-1]} {list_text(lines)}"


def upstream(names: list[str]) -> str:
    """Where an error shared by ``names`` enters: 'in the gradient flowing into layer 1
    (dZ1), not in dW1 or db1' (the highest-numbered layer when they span several: the
    layers below inherit it)."""
    own = (
        f"not in {' or '.join('d' + n for n in names)}"
        if len(names) <= 3 and all(n.isidentifier() for n in names)
        else "not in each tensor's own gradient"
    )
    layer = layer_number(names)
    if layer is not None:
        return f"in the gradient flowing into layer {layer} (dZ{layer}), {own}"
    numbers = [layer_number([name]) for name in names]
    if None not in numbers:
        top = max(numbers, key=int)
        return (
            f"in the gradient flowing into layer {top} (dZ{top}), which every layer below "
            f"inherits, {own}"
        )
    return (
        f"in the gradient flowing into their layer (the delta they are computed from: dZ, "
        f"dscores, dout), {own}"
    )


def layer_number(names: list[str]) -> str | None:
    """The layer number the names share ('1' for W1 and b1; the last number in each)."""
    numbers = {(re.findall(r"\d+", name) or [None])[-1] for name in names}
    return numbers.pop() if len(numbers) == 1 else None


def all_or_both(items: Any) -> str:
    return "both" if len(items) == 2 else "all"


def and_list(items: list[str]) -> str:
    """'W1 and b1', 'W1, b1 and W2'."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def shared_value(values: list[float | None], count: int) -> float | None:
    """The common value when every one of ``count`` diagnoses has it (within 1%)."""
    known = [v for v in values if v]
    if len(known) != count:
        return None
    if all(abs(v - known[0]) <= 10 * PATTERN_TOLERANCE * abs(known[0]) for v in known):
        return float(np.median(known))
    return None
