"""Every threshold and rule that judges a gradient check (pure NumPy).

One place for each rule, used by every mode (full, sample, fast):

- the verdict scale: a relative difference ≤1e-7 is 'correct', ≤1e-5 'ok', ≤1e-3
  'suspicious', else 'wrong' (:data:`VERDICT_THRESHOLDS`, :func:`verdict_for`);
- :func:`relative_difference` ‖n − a‖ / (‖n‖ + ‖a‖) and the round-off floor
  ‖noise‖ / (‖n‖ + ‖a‖) of a set of measurements, from sums of squares (:class:`Norms`,
  which add up block by block);
- floor rules (:class:`FloorRule`): a discrepancy within the round-off floor cannot be told
  from noise and passes, up to a cap (a floor above it means the check cannot resolve
  bugs at all; it is not used to excuse them);
- the zero rule: when numeric and analytic values are all zero within round-off the loss
  does not depend on the tensor; it passes (verdict 'ok', difference 0) in every mode;
- the element rule (:func:`element_failing`) and the kink rule (:func:`kink_crossings`,
  :func:`kink_explains`);
- the directional-test rule of fast mode (:func:`directional_excess`);
- :func:`judge`: the verdict on one tensor from the sets of measurements that enter it
  (its elements; in fast mode its whole-tensor directional tests and its random sample).

The verdict always agrees with ``passed``: a failing tensor is 'suspicious' or 'wrong',
a passing one never 'wrong'.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# The verdict scale, mildest first: (verdict, largest relative difference it allows).
VERDICT_THRESHOLDS = (("correct", 1e-7), ("ok", 1e-5), ("suspicious", 1e-3))
# Worst last; 'empty' when nothing was measured.
VERDICT_ORDER = ("empty", "correct", "ok", "suspicious", "wrong")
# Verdicts of a tensor that passes / fails, at their extremes.
PASSING_WORST, FAILING_MILDEST = "suspicious", "suspicious"
# A round-off floor above this means the check cannot resolve real bugs; element-wise it
# is not used to excuse larger discrepancies.
MAX_FLOOR_EXCUSE = 1e-2
# Directional tests (fast mode) excuse a relative difference within FLOOR_SLACK times
# their floor (an estimate: round-off with a margin, truncation bounded by the change
# between two steps), up to MAX_DIRECTIONAL_FLOOR_EXCUSE (float32 networks with kinks
# reach a few percent).
FLOOR_SLACK = 2.0
MAX_DIRECTIONAL_FLOOR_EXCUSE = 0.1
# A measurement's noise bound is several unit round-offs of J per step (NOISE_FACTOR = 8
# in the schemes); a value below one of them (this fraction of the bound) is zero as far
# as the check can tell.
ZERO_LEVEL = 1 / 8
# A discrepancy within this many round-off floors cannot be told from round-off by any
# pattern: diagnoses call it noise (inconclusive when the tensor fails).
ROUND_OFF_MARGIN = 4.0
# A kink is declared when the analytic value sits this close (relative to the
# discrepancy) to one of the one-sided slopes, the slopes differ by at least the
# discrepancy, and by more than KINK_JUMP_NOISE round-off floors.
KINK_SIDE_RATIO = 0.1
KINK_JUMP_NOISE = 4.0


def relative_difference(numeric: np.ndarray, analytic: np.ndarray) -> float:
    """‖numeric − analytic‖₂ / (‖numeric‖₂ + ‖analytic‖₂); 0 when both are zero."""
    denominator = np.linalg.norm(numeric) + np.linalg.norm(analytic)
    if denominator == 0:
        return 0.0
    return float(np.linalg.norm(numeric - analytic) / denominator)


def verdict_for(difference: float, excuse: float = 0.0) -> str:
    """The verdict scale: 'correct' ≤1e-7, 'ok' ≤1e-5, 'suspicious' ≤1e-3, else 'wrong';
    'empty' for NaN. A difference within ``excuse`` (a floor rule's excuse) is at most
    'ok': it cannot be told apart from round-off."""
    if math.isnan(difference):
        return "empty"
    if difference <= VERDICT_THRESHOLDS[0][1]:
        return "correct"
    if difference <= excuse:
        return "ok"
    for name, threshold in VERDICT_THRESHOLDS:
        if difference <= threshold:
            return name
    return "wrong"


def worst_verdict(verdicts: Iterable[str]) -> str:
    """The worst of ``verdicts`` ('empty' for none)."""
    return max(verdicts, key=VERDICT_ORDER.index, default="empty")


def agreeing_verdict(verdict: str, passed: bool) -> str:
    """``verdict`` moved onto the side of ``passed``: a failing tensor is at least
    'suspicious' (tol below 1e-7), a passing one at most 'suspicious' (tol above 1e-3)."""
    if verdict == "empty":
        return verdict
    order = VERDICT_ORDER.index
    if passed and order(verdict) > order(PASSING_WORST):
        return PASSING_WORST
    if not passed and order(verdict) < order(FAILING_MILDEST):
        return FAILING_MILDEST
    return verdict


@dataclass(frozen=True)
class FloorRule:
    """How much of a round-off floor excuses a discrepancy: ``slack`` floors, at most
    ``cap``."""

    slack: float
    cap: float

    def excuse(self, floor: float) -> float:
        return min(self.slack * floor, self.cap)


ELEMENT_FLOOR = FloorRule(1.0, MAX_FLOOR_EXCUSE)
DIRECTIONAL_FLOOR = FloorRule(FLOOR_SLACK, MAX_DIRECTIONAL_FLOOR_EXCUSE)


def within_tolerance(difference: float, floor: float, tol: float, rule: FloorRule) -> bool:
    """The pass rule: NaN (nothing measured), or within tol or the rule's floor excuse."""
    return bool(math.isnan(difference) or difference <= max(tol, rule.excuse(floor)))


def allowed_discrepancy(scale: np.ndarray | float, noise: np.ndarray | float, tol: float):
    """The largest |numeric − analytic| that passes at magnitude ``scale``: tol·scale or
    the round-off floor, whichever is larger."""
    return np.maximum(tol * scale, noise)


def element_failing(
    numeric: np.ndarray, analytic: np.ndarray, noise: np.ndarray, tol: float
) -> np.ndarray:
    """Elements whose error exceeds both tol·(|n| + |a|) and their round-off floor (NaN:
    not evaluated, not failing)."""
    error = np.abs(numeric - analytic)
    with np.errstate(invalid="ignore"):
        return error > allowed_discrepancy(np.abs(numeric) + np.abs(analytic), noise, tol)


def kink_explains(
    numeric: np.ndarray | float,
    analytic: np.ndarray | float,
    left: np.ndarray | float,
    right: np.ndarray | float,
    noise: np.ndarray | float,
    noisy_sides: bool = False,
) -> np.ndarray:
    """A slope jump between θ−ε and θ+ε explains the discrepancy: the analytic value is
    one of the one-sided slopes ``left``/``right`` (the central estimate averages them).

    ``noisy_sides``: the one-sided slopes carry round-off of the order of ``noise``
    (directional tests), so "close to a side" allows that much too.
    """
    with np.errstate(invalid="ignore"):
        discrepancy = np.abs(np.subtract(numeric, analytic))
        near_a_side = np.minimum(
            np.abs(np.subtract(analytic, left)), np.abs(np.subtract(analytic, right))
        )
        jump = np.abs(np.subtract(right, left))
        near = KINK_SIDE_RATIO * discrepancy
        if noisy_sides:
            near = np.maximum(near, noise)
        return (near_a_side <= near) & (jump >= discrepancy) & (jump > KINK_JUMP_NOISE * noise)


def kink_crossings(
    numeric: np.ndarray,
    analytic: np.ndarray,
    j0: float,
    loss_plus: np.ndarray,
    loss_minus: np.ndarray,
    up: np.ndarray,
    down: np.ndarray,
    noise: np.ndarray,
    tol: float,
) -> np.ndarray:
    """Failing elements whose discrepancy a slope jump between θ−ε and θ+ε explains.

    At a kink the left and right slopes differ by the jump, the central estimate is
    their average, and the analytic gradient equals one of them; in a smooth region
    both slopes agree with the central estimate to O(ε·J'').
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        left = (j0 - loss_minus) / down
        right = (loss_plus - j0) / up
    failing = element_failing(numeric, analytic, noise, tol)
    return failing & kink_explains(numeric, analytic, left, right, noise)


def directional_excess(
    numeric: float, analytic: float, spread: float, noise: float, tol: float
) -> float:
    """A directional test's discrepancy over the largest one that passes (> 1: fails).

    The magnitude is |n| + |a|, at least twice ``spread`` (‖g⊙h‖/‖h‖, the typical
    |analytic| over random signs), so a direction along which g·h nearly cancels is not
    held to a relative tolerance of a near-zero value.
    """
    scale = max(abs(numeric) + abs(analytic), 2 * spread)
    allowed = float(allowed_discrepancy(scale, noise, tol))
    discrepancy = abs(numeric - analytic)
    if allowed > 0:
        return discrepancy / allowed
    return math.inf if discrepancy > 0 else 0.0


# -- judging a tensor ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Norms:
    """What the verdict rules need of a set of measurements: their count, the sums of
    squares of numeric, analytic, their difference and the noise, and whether every value
    is zero within round-off. Sums add up, so a million elements are summarised block by
    block (:meth:`of_blocks`) without copying them."""

    size: int = 0
    numeric: float = 0.0  # Σ numeric²
    analytic: float = 0.0  # Σ analytic²
    difference: float = 0.0  # Σ (numeric − analytic)²
    noise: float = 0.0  # Σ noise²
    zero: bool = True  # every |numeric| and |analytic| within ZERO_LEVEL·noise

    @classmethod
    def of(cls, numeric: np.ndarray, analytic: np.ndarray, noise: np.ndarray) -> Norms:
        numeric, analytic = np.asarray(numeric, dtype=float), np.asarray(analytic, dtype=float)
        noise = np.asarray(noise, dtype=float)
        difference = numeric - analytic
        level = ZERO_LEVEL * noise
        return cls(
            int(numeric.size),
            float(numeric @ numeric),
            float(analytic @ analytic),
            float(difference @ difference),
            float(noise @ noise),
            bool(np.all(np.abs(numeric) <= level) and np.all(np.abs(analytic) <= level)),
        )

    def __add__(self, other: Norms) -> Norms:
        return Norms(
            self.size + other.size,
            self.numeric + other.numeric,
            self.analytic + other.analytic,
            self.difference + other.difference,
            self.noise + other.noise,
            self.zero and other.zero,
        )

    @classmethod
    def total(cls, parts: Iterable[Norms]) -> Norms:
        return sum(parts, cls())

    @property
    def scale(self) -> float:
        """‖numeric‖ + ‖analytic‖."""
        return math.sqrt(self.numeric) + math.sqrt(self.analytic)

    @property
    def relative_difference(self) -> float:
        """‖n − a‖ / (‖n‖ + ‖a‖): 0 when both are zero, NaN when nothing was measured."""
        if not self.size:
            return float("nan")
        scale = self.scale
        return math.sqrt(self.difference) / scale if scale != 0 else 0.0

    @property
    def relative_floor(self) -> float:
        """‖noise‖ / (‖n‖ + ‖a‖): what round-off alone could produce."""
        scale = self.scale
        return math.sqrt(self.noise) / scale if self.size and scale > 0 else 0.0


class Measurements:
    """Measurements judged together (one tensor's elements, or its directional tests),
    summarised as :class:`Norms`, with the floor rule that applies to them."""

    def __init__(
        self,
        numeric: np.ndarray,
        analytic: np.ndarray,
        noise: np.ndarray,
        rule: FloorRule = ELEMENT_FLOOR,
    ) -> None:
        self.norms, self.rule = Norms.of(numeric, analytic, noise), rule

    @classmethod
    def from_norms(cls, norms: Norms, rule: FloorRule = ELEMENT_FLOOR) -> Measurements:
        made = cls.__new__(cls)
        made.norms, made.rule = norms, rule
        return made

    @property
    def size(self) -> int:
        return self.norms.size

    @property
    def difference(self) -> float:
        """Relative difference; NaN when nothing was measured."""
        return self.norms.relative_difference

    @property
    def floor(self) -> float:
        return self.norms.relative_floor

    @property
    def zero(self) -> bool:
        return self.size > 0 and self.norms.zero

    def passes(self, tol: float) -> bool:
        return within_tolerance(self.difference, self.floor, tol, self.rule)

    @property
    def verdict(self) -> str:
        return verdict_for(self.difference, self.rule.excuse(self.floor))

    def within_round_off(self, tol: float) -> bool:
        """Over tol, but within ROUND_OFF_MARGIN floors (what round-off could do)."""
        difference = self.difference
        return bool(
            not math.isnan(difference)
            and difference > tol
            and difference <= ROUND_OFF_MARGIN * self.floor
        )


@dataclass(frozen=True)
class Judgement:
    """The verdict on one tensor (or a whole check), computed once when the check ends.

    ``zero``: the zero rule applied (the loss does not depend on the tensor).
    """

    difference: float
    floor: float
    verdict: str
    passed: bool
    zero: bool = False


EMPTY = Judgement(float("nan"), 0.0, "empty", True)


def judge(parts: Sequence[Measurements], tol: float) -> Judgement:
    """The verdict on a tensor from every set of measurements that enters it.

    Nothing measured: 'empty', passing. All values zero within round-off: the zero rule
    (passes, 'ok', difference and floor 0). Otherwise the largest difference and floor;
    it passes when every set passes its floor rule; the verdict is the worst set's,
    moved to agree with ``passed``.
    """
    measured = [part for part in parts if part.size]
    if not measured:
        return EMPTY
    if all(part.zero for part in measured):
        return Judgement(0.0, 0.0, "ok", True, zero=True)
    difference = max(part.difference for part in measured)
    floor = max(part.floor for part in measured)
    passed = all(part.passes(tol) for part in measured)
    verdict = worst_verdict(part.verdict for part in measured)
    return Judgement(difference, floor, agreeing_verdict(verdict, passed), passed)
