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
- round-off: no such structure, and the discrepancy is within a few times the round-off
  floor: not a bug when the tensor passes; inconclusive when it fails (the check cannot
  tell a bug that small from noise);
- only some rows, columns or elements wrong (and how: scaled, zero, sign);
- otherwise no simple pattern, with the worst elements.

:func:`diagnose_result` turns the per-tensor diagnoses into one for the whole check.

A diagnosis never contradicts the verdict beside it: a passing tensor gets 'ok', 'kink',
'noise' (round-off, not a bug) or 'unused'; a failing tensor never one of those that say
"not a bug" ('noise' there says the check is inconclusive). :func:`diagnose` runs once per
tensor, when the check ends (:meth:`~nbgradcheck.core.result.TensorCheck.freeze`).
"""

from __future__ import annotations

import dataclasses
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
    'partial', 'none_found' (no simple pattern), or, not bugs: 'kink', 'noise' (round-off),
    'random' (the loss is random), 'unused' (numeric and analytic gradients both zero),
    and for a whole check also 'several'. ``failing``: said of a tensor (or check) that
    fails; its 'noise' is inconclusive, not an acquittal.
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
        "noise": "round-off: inconclusive" if d.failing else "round-off (not a bug)",
        "random": "random loss",
        "unused": "loss does not depend on it",
        "none_found": "no simple pattern",
        "several": "several bugs",
    }
    if d.kind in labels:
        return labels[d.kind]
    if d.kind == "scale":
        return f"scale {format_factor(d.factor)}"
    if d.kind == "transpose":
        scaled = f" × {format_factor(d.factor)}" if d.factor not in (None, 1.0) else ""
        return "transposed" + scaled
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
    """Most element ratios sit nearer ``factor`` than 1, and their median is many standard
    errors from 1: a scale seen through noisy (low-precision) numeric values."""
    values = ratios(evidence.analytic, evidence.numeric, evidence.noise)
    if values.size < max(evidence.minimum, 8):
        return False
    nearer = np.mean(np.abs(values - factor) < np.abs(values - 1))
    spread = 1.4826 * np.median(np.abs(values - factor))  # robust standard deviation
    standard_error = 1.253 * spread / np.sqrt(values.size)  # of a median
    return bool(nearer >= MAJORITY and abs(factor - 1) > SIGNIFICANCE * standard_error)


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
    # a pattern is structure, which round-off has not: it goes first
    return found or round_off(tensor) or partial(tensor, evidence) or no_pattern(tensor, evidence)


def passing_diagnosis(tensor: Any) -> Diagnosis:
    if tensor.unused:
        return Diagnosis(
            "unused",
            f"{tensor.name}: the loss does not depend on it (numeric and analytic gradients "
            f"are both zero)",
            tensor.name,
        )
    kink_text = kinks_text(tensor)
    difference = tensor.difference
    if not np.isnan(difference) and difference > tensor.tol:
        sentence = (
            f"{tensor.name} differs by {difference:.1e}, within the round-off floor "
            f"{tensor.floor:.1e} of this {np.dtype(tensor.dtype).name} check: not a "
            f"bug"
        )
        if kink_text:
            sentence += f"; {kink_text}"
        return Diagnosis("noise", sentence, tensor.name)
    if kink_text:
        return Diagnosis("kink", f"not a bug: {kink_text}", tensor.name)
    return Diagnosis("ok", f"{tensor.name}: no discrepancy", tensor.name)


def kinks_text(tensor: Any) -> str:
    """'3 elements of W1 crossed a kink ...' ('' when none did), counting fast mode's
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
        f"{' and '.join(parts)} of {tensor.name} crossed a kink (ReLU, max, abs) between "
        f"θ−ε and θ+ε; the code is right there"
    )


def random_loss(tensor: Any) -> Diagnosis | None:
    if tensor.repeatable is not False:
        return None
    return Diagnosis(
        "random",
        f"the loss is random: evaluated again at the unperturbed parameters it returned "
        f"another value, so the discrepancy in {tensor.name} may be noise, not a gradient "
        f"bug. Pass seed=0 (re-seeds NumPy before every evaluation) or switch the "
        f"randomness (dropout, shuffling, augmentation) off for the check",
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
        f"the analytic gradient of {tensor.name} is zero everywhere but the loss depends on "
        f"it{largest}: {tensor.name} is not connected to the backward pass (detached, never "
        f"assigned, stored under another key, or overwritten with zeros)",
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
        f"{tensor.name} differs by {tensor.difference:.1e}, within {NOISE_MARGIN:g}× the "
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
    low-precision values) in the ratios' median and majority."""
    factor = ratio(evidence.analytic, evidence.numeric, evidence.noise)
    if factor is None or abs(factor - 1) <= PATTERN_TOLERANCE:
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
            f"the gradient of {name} has the wrong sign{seen} (analytic ≈ −numeric): "
            f"a minus sign lost or added (e.g. y − a written as a − y, or -= for +=)",
            name,
            factor=-1.0,
        )
    return Diagnosis(
        "scale",
        f"analytic ≈ {format_factor(factor)} × numeric for {name}{seen}: {scale_causes(factor)}",
        name,
        factor=factor,
    )


def scale_causes(factor: float) -> str:
    """The usual mistakes behind a constant factor."""
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
            f"the gradient is {whole}× too large: a missing 1/m if m = {whole} is the "
            f"number of examples, else a stray constant ({whole}/m written for 1/m?)"
        )
    if inverse >= 3 and abs(1 / factor - inverse) <= close / factor:
        return (
            f"an extra 1/m: the gradient is divided by {inverse} once too often (is m = "
            f"{inverse} the number of examples?)"
        )
    return "a constant factor in the backward pass only (a scale, temperature or 1/m?)"


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
    name, (rows, columns) = tensor.name, tensor.shape
    scaled = "" if factor == 1.0 else f", scaled by {format_factor(factor)}"
    if rows == columns:
        what = f"analytic ≈ numericᵀ for {name}{scaled}: the gradient is transposed"
    elif label == "transposed":
        what = (
            f"analytic ≈ numericᵀ reshaped to ({rows}, {columns}) for {name}{scaled}: the "
            f"gradient was computed with shape ({columns}, {rows}) and reshaped to fit"
        )
    else:
        what = (
            f"analytic ≈ numeric.reshape({columns}, {rows})ᵀ for {name}{scaled}: the "
            f"gradient's layout is transposed"
        )
    return what + " (for W in Z = W·A the gradient is dZ·Aᵀ, not A·dZᵀ)"


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
            f"the residual numeric − analytic of {name} is proportional to {name}: "
            f"an L2 term κ·{name} with κ ≈ {kappa:.3g} is missing from the gradient "
            f"(a cost with (λ/2m)·‖{name}‖² needs (λ/m)·{name}; λ/m ≈ {kappa:.3g})"
        )
        return Diagnosis("missing_l2", sentence, name, l2_lambda=kappa)
    sentence = (
        f"the analytic gradient of {name} has an extra term {-kappa:.3g}·{name} that "
        f"the cost does not have: an L2 term added in backprop but not in the cost "
        f"(or with a larger λ)"
    )
    return Diagnosis("extra_l2", sentence, name, l2_lambda=kappa)


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
            f"only row{'s' if len(rows) > 1 else ''} {list_text(rows)} of {name} "
            f"{'are' if len(rows) > 1 else 'is'} wrong ({checked}){how}: look at what "
            f"differs for those rows (a slice, a mask, an index off by one)"
        )
        return Diagnosis("partial", sentence, name, rows=rows)
    if columns:
        sentence = (
            f"only column{'s' if len(columns) > 1 else ''} {list_text(columns)} of "
            f"{name} {'are' if len(columns) > 1 else 'is'} wrong ({checked}){how}: "
            f"look at what differs for those columns (an input feature, a mask)"
        )
        return Diagnosis("partial", sentence, name, columns=columns)
    order = np.argsort(-np.abs(evidence.numeric - evidence.analytic)[wrong], kind="stable")
    elements = [multi_index(tensor.shape, i) for i in evidence.indices[wrong][order]]
    listed = worst_text(tensor, evidence.subset(wrong), order)
    sentence = (
        f"only {len(elements)} element{'s' if len(elements) > 1 else ''} of {name} "
        f"{'are' if len(elements) > 1 else 'is'} wrong ({checked}){how}: {listed}"
    )
    return Diagnosis("partial", sentence, name, elements=elements)


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
            f"{tensor.name}: random directional derivatives disagree (relative difference "
            f"{difference:.1e}) but no element checked one by one is wrong: many small "
            f"errors spread over the tensor? mode='full' checks every element",
            tensor.name,
            elements=[],
        )
    order = np.argsort(-np.abs(evidence.numeric - evidence.analytic)[wrong], kind="stable")
    elements = [multi_index(tensor.shape, i) for i in evidence.indices[wrong][order]]
    return Diagnosis(
        "none_found",
        f"no simple pattern in {tensor.name} (not a constant factor, sign, transpose, L2 term "
        f"or a few rows): worst {worst_text(tensor, evidence.subset(wrong), order)}",
        tensor.name,
        elements=elements,
    )


def worst_text(tensor: Any, evidence: Evidence, order: np.ndarray) -> str:
    """'W1[0, 3] (analytic 0.5, numeric 0.25), ...' for the first few in ``order``."""
    parts = [
        f"{tensor.name}{format_index(multi_index(tensor.shape, evidence.indices[i]))} "
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
    names of the failing tensors."""
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
        return Diagnosis(
            d.kind,
            f"{name}: {d.sentence}",
            name,
            d.factor,
            d.l2_lambda,
            d.rows,
            d.columns,
            d.elements,
            failing=d.failing,
        )
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
            f"{', '.join(excused)} failed within the round-off of this check, which cannot "
            f"tell a bug that small from noise: {first.sentence}",
            failing=True,
        )
    sentence = "no bug found" + ("" if complete else " in the part checked (interrupted)")
    if diagnoses:
        sentence += "; " + "; ".join(d.sentence for d in diagnoses.values())
    return Diagnosis("ok", sentence)


def common_pattern(bugs: dict[str, Diagnosis]) -> Diagnosis | None:
    """Several tensors with one factor, or one missing L2 coefficient."""
    names = ", ".join(bugs)
    factor = shared_value([d.factor for d in bugs.values() if d.kind == "scale"], len(bugs))
    if factor is not None:
        return Diagnosis(
            "scale",
            f"{names} are all scaled by {format_factor(factor)}: one factor "
            f"upstream of them, which every gradient below inherits (the output error dZ, or "
            f"1/m applied in the wrong place)? {scale_causes(factor)}",
            factor=factor,
            failing=True,
        )
    kappa = shared_value([d.l2_lambda for d in bugs.values() if d.kind == "missing_l2"], len(bugs))
    if kappa is not None:
        return Diagnosis(
            "missing_l2",
            f"{names} all miss the same L2 term κ·θ with κ ≈ {kappa:.3g}: the "
            f"cost has (λ/2m)·Σ‖W‖² but the backward pass leaves out (λ/m)·W "
            f"(λ/m ≈ {kappa:.3g})",
            l2_lambda=kappa,
            failing=True,
        )
    return None


def shared_value(values: list[float | None], count: int) -> float | None:
    """The common value when every one of ``count`` diagnoses has it (within 1%)."""
    known = [v for v in values if v]
    if len(known) != count:
        return None
    if all(abs(v - known[0]) <= 10 * PATTERN_TOLERANCE * abs(known[0]) for v in known):
        return float(np.median(known))
    return None
