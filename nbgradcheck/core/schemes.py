"""Finite-difference schemes: one object per method, owning everything that differs.

==========  ===============================  ===========  ==============================
method      estimate of ∂J/∂θ                error        evaluations per element
==========  ===============================  ===========  ==============================
central     (J(θ+ε) − J(θ−ε)) / 2ε           O(ε²)        2
forward     (J(θ+ε) − J(θ)) / ε              O(ε)         1
backward    (J(θ) − J(θ−ε)) / ε              O(ε)         1
complex     Im J(θ+iε) / ε                   O(ε²)        1 (no cancellation: ε = 1e-20)
==========  ===============================  ===========  ==============================

A scheme knows its step rule (``step_sizes``), the points it evaluates (``points``: θ+ε
and θ−ε rounded to the parameter's dtype; θ itself stands for an unused side), how it
combines the losses (``estimate``), its error order and its round-off floor (``noise``),
and what the rest of the check may do with it (kink detection needs both one-sided
slopes; refinement and directional tests need real steps). No other module compares
method names: adding a method means adding a scheme here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nbgradcheck.errors import GradCheckError

# Round-off in J grows with the number of operations; this many unit round-offs of |J| are
# taken as the error of one loss evaluation when computing the noise floor.
NOISE_FACTOR = 8.0
# The default step for float64 parameters (``eps=None``), and for the complex step.
DEFAULT_EPS = 1e-6
DEFAULT_COMPLEX_EPS = 1e-20
FAST_NEEDS_REAL_STEPS = (
    "mode='fast' needs real steps: use method='central' (or 'forward'/'backward') with it, "
    "or mode='full' for 'complex'"
)

Points = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Scheme:
    """A real-step finite-difference method; subclasses say which sides they evaluate."""

    name: str
    order: int  # the truncation error is O(ε**order)
    plus: bool  # evaluates J(θ+ε)
    minus: bool  # evaluates J(θ−ε)

    # -- what the rest of the check may do ---------------------------------------------
    @property
    def evaluations_per_element(self) -> int:
        return int(self.plus) + int(self.minus)

    @property
    def sees_kinks(self) -> bool:
        """Both one-sided slopes are known, so a slope jump (a kink) can be recognised."""
        return self.plus and self.minus

    @property
    def real_steps(self) -> bool:
        """Steps are real perturbations of the user's arrays (refinement and directional
        tests are possible)."""
        return True

    def default_eps(self, low_precision: bool) -> float | str:
        """``eps=None``: 'auto' (scaled to the dtype) below float64, else DEFAULT_EPS."""
        return "auto" if low_precision else DEFAULT_EPS

    def relative_step(self, unit_roundoff: float) -> float:
        """The step that balances truncation and round-off, relative to max(1, |θ|)."""
        machine_eps = 2 * unit_roundoff
        return machine_eps ** (1 / (self.order + 1))

    # -- the points ----------------------------------------------------------------------
    def step_sizes(self, values: np.ndarray, eps: float | str, unit_roundoff: float) -> np.ndarray:
        """The step for each element: ``eps``, or for 'auto' the optimum scaled by |θ|."""
        if eps != "auto":
            return np.full(values.shape, float(eps))
        return self.relative_step(unit_roundoff) * np.maximum(1.0, np.abs(values))

    def points(self, values: np.ndarray, steps: np.ndarray, dtype: np.dtype) -> Points:
        """θ+ε and θ−ε rounded to ``dtype`` (θ itself for a side not evaluated)."""
        plus = (values + steps).astype(dtype) if self.plus else values.astype(dtype)
        minus = (values - steps).astype(dtype) if self.minus else values.astype(dtype)
        return plus, minus

    def unresolved(self, plus: np.ndarray, minus: np.ndarray) -> np.ndarray:
        """Positions where the step rounds away in the dtype (θ±ε == θ)."""
        return np.flatnonzero(plus == minus)

    def directional_points(
        self,
        plus: np.ndarray,
        minus: np.ndarray,
        values: np.ndarray,
        signs: np.ndarray,
        out: Points | None = None,
    ) -> Points:
        """The two points of a directional test along ``signs`` (fast mode): θ+δ takes
        ``plus`` where the sign is positive and ``minus`` where it is negative, θ−δ the
        other one (``values`` for a side not evaluated). Exact copies of those elements,
        written into ``out`` (two arrays like ``plus``) when given and possible."""
        bits = signed_bits(plus.dtype)
        if bits is None or minus.dtype != plus.dtype:  # long double: padding bytes
            up = np.where(signs > 0, plus, minus) if self.plus else values
            down = np.where(signs > 0, minus, plus) if self.minus else values
            return up, down
        up_out, down_out = (np.empty_like(plus), np.empty_like(plus)) if out is None else out
        flips = signs < 0
        up = select(flips, plus, minus, up_out, bits) if self.plus else values
        if self.plus and self.minus:
            down = swapped(up, plus, minus, down_out, bits)
        else:
            down = select(flips, minus, plus, down_out, bits) if self.minus else values
        return up, down

    # -- from losses to an estimate ------------------------------------------------------
    def estimate(
        self,
        j0: float,
        loss_plus: np.ndarray,
        loss_minus: np.ndarray,
        up: np.ndarray,
        down: np.ndarray,
        steps: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(numeric gradient, step taken, J at θ+ε as stored) from the losses.

        ``up`` = (θ+ε) − θ and ``down`` = θ − (θ−ε) as rounded to the dtype.
        """
        with np.errstate(invalid="ignore", divide="ignore"):
            high = loss_plus if self.plus else np.full_like(loss_minus, j0)
            low = loss_minus if self.minus else np.full_like(loss_plus, j0)
            width = self.width(up, down, steps)
            return (high - low) / width, width, loss_plus

    def width(self, up: np.ndarray, down: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """The step taken between the two points: ``up`` and/or ``down`` as rounded."""
        return (up if self.plus else 0.0) + (down if self.minus else 0.0)

    def noise(
        self,
        unit_roundoff: float,
        j0: float,
        numeric: np.ndarray,
        width: np.ndarray,
        spread: np.ndarray | float = 0.0,
    ) -> np.ndarray:
        """How far round-off in J alone can move each numeric estimate: NOISE_FACTOR unit
        round-offs of |J| at the two points, over the step.

        |J₁| + |J₂| = max(|J₁ + J₂|, |J₁ − J₂|) is bounded from J(θ) and the estimate:
        J₁ − J₂ = width·numeric; J₁ + J₂ is 2J(θ) ± width·numeric for a one-sided scheme
        (one point is θ itself), and for the central one 2J(θ) plus the curvature term
        ε²J'', of which ``spread`` (see :meth:`spread`) is an upper bound. So the floor is
        a function of numbers the result keeps.
        """
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            change = width * numeric
            towards = int(self.plus) - int(self.minus)  # J₁ + J₂ = 2J(θ) + towards·change
            total = np.maximum(np.abs(2 * j0 + towards * change) + spread, np.abs(change))
            return NOISE_FACTOR * unit_roundoff * total / width

    def spread(self, j0: float, loss_plus: np.ndarray, loss_minus: np.ndarray) -> np.ndarray:
        """|J(θ+ε) + J(θ−ε) − 2J(θ)| of each element where the scheme evaluates both points
        (what :meth:`noise` cannot recover from the estimate); 0 otherwise."""
        if not (self.plus and self.minus):
            return np.zeros(np.shape(loss_plus))
        with np.errstate(invalid="ignore", over="ignore"):
            return np.abs(loss_plus + loss_minus - 2 * j0)


# Round-off floors bound the curvature term per block of this many elements.
NOISE_BLOCK = 256


@dataclass(frozen=True, eq=False)
class RoundOff:
    """A tensor's round-off floors as a function of its estimates and steps.

    Keeps one number per NOISE_BLOCK elements: the largest curvature term
    |J(θ+ε) + J(θ−ε) − 2J(θ)| measured in the block (:meth:`record`, which sees whole
    blocks: :class:`~nbgradcheck.core.evaluate.Outputs` hands losses on block-aligned).
    The floor is then an upper bound of the one computed from the two losses themselves,
    equal to it up to that term.
    """

    scheme: Scheme
    unit_roundoff: float
    j0: float
    spreads: np.ndarray  # per block of NOISE_BLOCK elements

    @classmethod
    def for_elements(cls, scheme: Scheme, unit_roundoff: float, j0: float, count: int) -> RoundOff:
        return cls(scheme, unit_roundoff, j0, np.zeros(-(-count // NOISE_BLOCK)))

    def record(self, first: int, loss_plus: np.ndarray, loss_minus: np.ndarray) -> None:
        """Take in the losses of the elements from position ``first`` on."""
        where = (first + np.arange(np.size(loss_plus))) // NOISE_BLOCK
        spread = np.nan_to_num(self.scheme.spread(self.j0, loss_plus, loss_minus))
        np.maximum.at(self.spreads, where, spread)

    def __call__(self, numeric: np.ndarray, width: np.ndarray, first: int) -> np.ndarray:
        """The floors of the estimates ``numeric`` of the elements from ``first`` on."""
        spread = self.spreads[(first + np.arange(np.size(numeric))) // NOISE_BLOCK]
        return self.scheme.noise(self.unit_roundoff, self.j0, numeric, width, spread)


@dataclass(frozen=True)
class ComplexStep(Scheme):
    """Im J(θ+iε)/ε: exact to machine precision for complex-analytic losses."""

    @property
    def real_steps(self) -> bool:
        return False

    def default_eps(self, low_precision: bool) -> float | str:
        return DEFAULT_COMPLEX_EPS

    def relative_step(self, unit_roundoff: float) -> float:
        return DEFAULT_COMPLEX_EPS

    def points(self, values: np.ndarray, steps: np.ndarray, dtype: np.dtype) -> Points:
        return values + 1j * steps, values.astype(dtype)

    def unresolved(self, plus: np.ndarray, minus: np.ndarray) -> np.ndarray:
        return np.array([], dtype=np.int64)

    def width(self, up: np.ndarray, down: np.ndarray, steps: np.ndarray) -> np.ndarray:
        return np.asarray(steps, dtype=np.float64)

    def estimate(
        self,
        j0: float,
        loss_plus: np.ndarray,
        loss_minus: np.ndarray,
        up: np.ndarray,
        down: np.ndarray,
        steps: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        loss_plus = np.asarray(loss_plus, dtype=complex)
        missing = np.isnan(loss_plus)  # not evaluated (interrupted): no estimate
        numeric = np.where(missing, np.nan, loss_plus.imag / steps)
        return numeric, steps, np.where(missing, np.nan, loss_plus.real)

    def noise(
        self,
        unit_roundoff: float,
        j0: float,
        numeric: np.ndarray,
        width: np.ndarray,
        spread: np.ndarray | float = 0.0,
    ) -> np.ndarray:
        return np.zeros(np.shape(numeric))


CENTRAL = Scheme("central", order=2, plus=True, minus=True)
FORWARD = Scheme("forward", order=1, plus=True, minus=False)
BACKWARD = Scheme("backward", order=1, plus=False, minus=True)
COMPLEX = ComplexStep("complex", order=2, plus=True, minus=False)

SCHEMES: dict[str, Scheme] = {s.name: s for s in (CENTRAL, FORWARD, BACKWARD, COMPLEX)}
METHODS = tuple(SCHEMES)


def select(
    flips: np.ndarray, first: np.ndarray, second: np.ndarray, out: np.ndarray, bits: np.dtype
) -> np.ndarray:
    """``first`` where ``flips`` is False and ``second`` where it is True, bit for bit,
    into ``out``: first ^ (mask & (first ^ second)), the mask all ones where ``flips``.

    np.where branches on every element and, on random signs, mispredicts half of the
    time: several times slower than these three passes.
    """
    result = out.view(bits)
    np.bitwise_xor(first.view(bits), second.view(bits), out=result)
    np.bitwise_and(result, np.negative(flips.view(np.int8)), out=result)
    np.bitwise_xor(result, first.view(bits), out=result)
    return out


def swapped(
    chosen: np.ndarray, first: np.ndarray, second: np.ndarray, out: np.ndarray, bits: np.dtype
) -> np.ndarray:
    """The other element of each pair, into ``out``: ``second`` where ``chosen`` holds
    ``first`` and ``first`` where it holds ``second`` (chosen ^ first ^ second)."""
    result = out.view(bits)
    np.bitwise_xor(first.view(bits), second.view(bits), out=result)
    np.bitwise_xor(result, chosen.view(bits), out=result)
    return out


def signed_bits(dtype: np.dtype) -> np.dtype | None:
    """The integer type as wide as ``dtype``, to handle its values as bits (None for
    80-bit long doubles: their padding bytes hold no value)."""
    return np.dtype(f"i{dtype.itemsize}") if dtype.itemsize in (1, 2, 4, 8) else None


def scheme_for(method: object) -> Scheme:
    """The scheme called ``method``; a clear error for anything else."""
    scheme = SCHEMES.get(method) if isinstance(method, str) else None
    if scheme is None:
        raise GradCheckError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    return scheme
