"""The result of a gradient check: its numbers, verdicts and diagnoses, frozen when it ends.

While a check runs, the engine fills :class:`TensorCheck` records (one per parameter
tensor) and may refine them; their verdicts are computed from the numbers so far. When
the check ends the engine builds a :class:`CheckResult`: building it *freezes* every
tensor (:meth:`TensorCheck.freeze`): the verdict, floor, difference, ``passed``, the
per-element errors and the diagnosis are computed once, by the rules of
:mod:`~nbgradcheck.core.verdict` and :mod:`~nbgradcheck.core.diagnose`, and stored; the
arrays become read-only. Everything shown afterwards reads those stored values.

Pure NumPy: tables, HTML and figures are views (:mod:`nbgradcheck.views`), and the class
users get, with those views as methods, is :class:`nbgradcheck.GradCheckResult`
(:mod:`nbgradcheck.api.result`), a subclass of :class:`CheckResult`.
"""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any, Protocol

import numpy as np

from nbgradcheck.adapters.numpy import format_index
from nbgradcheck.core.diagnose import Diagnosis, diagnose, diagnose_result
from nbgradcheck.core.directional import DirectionalTests
from nbgradcheck.core.plan import blocks
from nbgradcheck.core.verdict import (
    Judgement,
    Measurements,
    Norms,
    element_failing,
    judge,
    worst_verdict,
)

# The per-element arrays of a TensorCheck, one entry per checked element (read-only once
# frozen). ``indices`` and ``step`` are derived for a full check (no copies are kept).
ELEMENT_ARRAYS = ("indices", "values", "analytic", "numeric", "step", "noise", "kink")
ERROR_KEYS = ("abs_error", "rel_error")
# The per-tensor summary, in the order of the text table (and of ``result.table``).
SUMMARY_COLUMNS = (
    "shape",
    "size",
    "checked",
    "difference",
    "max_abs_error",
    "worst_index",
    "kinks",
    "floor",
    "verdict",
    "diagnosis",
)


def read_only(array: Any) -> np.ndarray:
    """A read-only view of ``array`` (the array itself, possibly the user's, stays
    writeable)."""
    view = np.asarray(array).view()
    view.flags.writeable = False
    return view


class StepSource(Protocol):
    """Where the steps of a full check come from (its plan): computed when asked."""

    def steps_taken(self, part: slice = ...) -> np.ndarray: ...

    def subset(self, positions: np.ndarray, divisor: float = 1.0) -> Any: ...


class RoundOffRule(Protocol):
    """The round-off floor of estimates from their values and steps (schemes.RoundOff)."""

    def __call__(self, numeric: np.ndarray, width: np.ndarray, first: int) -> np.ndarray: ...


@dataclass(frozen=True)
class TensorOutcome:
    """What a tensor's check concluded, computed once at freeze."""

    judgement: Judgement
    diagnosis: Diagnosis
    checked: int
    kinks: int
    worst_position: int | None  # into ``indices``: the counted element of largest |n − a|


@dataclass(eq=False)
class TensorCheck:
    """Per-element measurements for one parameter tensor (arrays over checked elements).

    Mutable while the check runs (the engine refines estimates); frozen by
    :meth:`freeze` when the check ends, after which the verdict, the summary figures and
    the diagnosis are stored values and the arrays are read-only. Errors per element
    (``abs_error``, ``rel_error``, ``element_failing``) are derived from the stored
    numbers when asked, and a full check keeps no index array and no step array: a
    million-element result holds its values, analytic and numeric gradients and kink
    flags, nothing else: steps come from the plan, round-off floors from the scheme's rule.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    checked_indices: np.ndarray | None  # flat C-order indices; None: every element
    values: np.ndarray  # parameter values at those elements (float64)
    analytic: np.ndarray  # the model's gradient at those elements
    numeric: np.ndarray  # finite-difference estimate; NaN where not evaluated (interrupted)
    steps: np.ndarray | StepSource  # step between the two points, or the plan to compute it
    round_off: np.ndarray | RoundOffRule  # each estimate's floor, or the rule giving it
    kink: np.ndarray  # True where a slope jump explains the discrepancy
    # the whole analytic gradient (None when unknown: a result loaded from JSON)
    analytic_full: np.ndarray | None
    tol: float
    refined: int = 0  # elements whose estimate was replaced by one with a smaller step
    # fast mode: the whole-tensor directional tests and localization record; None in
    # full and sample mode
    directional: DirectionalTests | None = None
    # False when J re-evaluated at the unperturbed parameters differed (a random loss)
    repeatable: bool | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if "_outcome" in self.__dict__:
            raise FrozenInstanceError(
                f"cannot assign to {name!r}: {self.name}'s check has ended (frozen)"
            )
        super().__setattr__(name, value)

    # -- freezing -------------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        return "_outcome" in self.__dict__

    def freeze(self) -> TensorCheck:
        """Compute the verdict, the summary and the diagnosis once and store them; make the
        arrays read-only. Called when the check ends; later calls do nothing."""
        if self.frozen:
            return self
        for name in ("values", "analytic", "numeric", "kink"):
            super().__setattr__(name, read_only(getattr(self, name)))
        for name in ("checked_indices", "steps", "round_off", "analytic_full"):
            if isinstance(getattr(self, name), np.ndarray):
                super().__setattr__(name, read_only(getattr(self, name)))
        stored = self.__dict__  # set directly: __setattr__ refuses once "_outcome" is in
        stored["_parts"] = self.measurements()
        stored["_judgement"] = judge(stored["_parts"], self.tol)
        checked, kinks, worst = self.summary_counts()
        stored["_outcome"] = TensorOutcome(
            judgement=stored["_judgement"],
            diagnosis=diagnose(self),
            checked=checked,
            kinks=kinks,
            worst_position=worst,
        )
        return self

    def summary_counts(self) -> tuple[int, int, int | None]:
        """(elements evaluated, kinks among them, position of the counted element with the
        largest |n − a|, first in index order among ties), block by block."""
        checked = kinks = 0
        worst, largest = None, -1.0
        for part in blocks(self.numeric.size):
            evaluated = ~np.isnan(self.numeric[part])
            kink = self.kink[part] & evaluated
            checked += int(evaluated.sum())
            kinks += int(kink.sum())
            errors = np.abs(self.numeric[part] - self.analytic[part])
            errors[~evaluated | kink] = -1.0
            if errors.size and errors.max() > largest:
                at = int(np.argmax(errors))
                worst, largest = part.start + at, float(errors[at])
        return checked, kinks, worst

    @property
    def judgement(self) -> Judgement:
        """Stored once frozen; from the measurements so far while the check runs (the
        engine's own decisions, e.g. whether to probe a random loss)."""
        stored = self.__dict__.get("_judgement")
        return stored if stored is not None else judge(self.measurements(), self.tol)

    # -- sizes and per-element numbers ------------------------------------------------------
    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def indices(self) -> np.ndarray:
        """Flat C-order indices of the elements checked."""
        if self.checked_indices is not None:
            return self.checked_indices
        return read_only(np.arange(self.numeric.size, dtype=np.int64))

    @property
    def step(self) -> np.ndarray:
        """The step taken between the two evaluation points of each element."""
        if isinstance(self.steps, np.ndarray):
            return self.steps
        return read_only(self.steps.steps_taken())

    def step_at(self, positions: np.ndarray) -> np.ndarray:
        if isinstance(self.steps, np.ndarray):
            return self.steps[positions]
        return self.steps.subset(positions).steps_taken()

    def step_in(self, part: slice) -> np.ndarray:
        if isinstance(self.steps, np.ndarray):
            return self.steps[part]
        return self.steps.steps_taken(part)

    @property
    def noise(self) -> np.ndarray:
        """The round-off floor of each numeric estimate."""
        return self.noise_in(slice(None))

    def noise_in(self, part: slice) -> np.ndarray:
        if isinstance(self.round_off, np.ndarray):
            return self.round_off[part]
        first = part.indices(self.numeric.size)[0]
        return self.round_off(self.numeric[part], self.step_in(part), first)

    @property
    def evaluated(self) -> np.ndarray:
        """Elements whose numeric value is known (not NaN)."""
        return ~np.isnan(self.numeric)

    @property
    def counted(self) -> np.ndarray:
        """Elements that enter the verdict: evaluated and not at a kink."""
        return self.evaluated & ~self.kink

    @property
    def abs_error(self) -> np.ndarray:
        """|numeric − analytic|."""
        return np.abs(self.numeric - self.analytic)

    @property
    def rel_error(self) -> np.ndarray:
        """|numeric − analytic| / (|numeric| + |analytic|); 0 where both are 0."""
        scale = np.abs(self.numeric) + np.abs(self.analytic)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(scale > 0, self.abs_error / np.where(scale > 0, scale, 1), 0.0)

    @property
    def element_failing(self) -> np.ndarray:
        """Elements whose error exceeds both the tolerance and their round-off floor."""
        return self.failing_in(slice(None))

    def failing_in(self, part: slice) -> np.ndarray:
        n, a = self.numeric[part], self.analytic[part]
        return ~np.isnan(n) & element_failing(n, a, self.noise_in(part), self.tol)

    def adopt(self, positions: np.ndarray, other: TensorCheck, take: np.ndarray) -> None:
        """Replace the measurements at ``positions[take]`` with ``other``'s (a re-estimate)."""
        if not take.any():
            return
        if not isinstance(self.round_off, np.ndarray):  # the floors of the estimates so far
            self.round_off = self.noise.copy()
        if not isinstance(self.steps, np.ndarray):
            self.steps = self.step.copy()
        changed = positions[take]
        self.numeric[changed], self.steps[changed] = other.numeric[take], other.step[take]
        self.kink[changed], self.round_off[changed] = other.kink[take], other.noise[take]
        self.refined += int(np.count_nonzero(take))

    # -- what enters the verdict ---------------------------------------------------------
    @property
    def tested_along_directions(self) -> bool:
        """Fast mode tested this tensor along whole-tensor directions (not one by one)."""
        return self.directional is not None and len(self.directional.tests) > 0

    def element_norms(self, mask: np.ndarray | None = None) -> Norms:
        """:class:`Norms` of the counted elements (those in ``mask`` too), block by block."""
        parts = []
        for part in blocks(self.numeric.size):
            chosen = ~np.isnan(self.numeric[part]) & ~self.kink[part]
            if mask is not None:
                chosen &= mask[part]
            n, a = self.numeric[part][chosen], self.analytic[part][chosen]
            parts.append(Norms.of(n, a, self.noise_in(part)[chosen]))
        return Norms.total(parts)

    def element_measurements(self, mask: np.ndarray | None = None) -> Measurements:
        """The counted elements (those in ``mask`` too, when given)."""
        return Measurements.from_norms(self.element_norms(mask))

    @property
    def verdict_measurements(self) -> list[Measurements]:
        """What the verdict is computed from: stored once frozen."""
        stored = self.__dict__.get("_parts")
        return stored if stored is not None else self.measurements()

    def measurements(self) -> list[Measurements]:
        """The measurements the verdict is on: the counted elements; in fast mode the
        whole-tensor directional tests and the elements sampled at random (unbiased: the
        elements localization checked were picked for looking wrong)."""
        if not self.tested_along_directions:
            return [self.element_measurements()]
        sampled = np.isin(self.indices, self.directional.sampled)
        return [self.directional.measurements(), self.element_measurements(sampled)]

    # -- the verdict (stored once frozen) -------------------------------------------------------
    @property
    def difference(self) -> float:
        """Relative difference ‖n − a‖ / (‖n‖ + ‖a‖) over what enters the verdict (in fast
        mode the larger of the directional tests' and the random sample's); 0 for a
        tensor whose gradients are both zero within round-off."""
        return self.judgement.difference

    @property
    def floor(self) -> float:
        """The relative difference round-off alone could produce."""
        return self.judgement.floor

    @property
    def verdict(self) -> str:
        return self.judgement.verdict

    @property
    def passed(self) -> bool:
        """Within tol or the round-off floor (or numeric and analytic both zero)."""
        return self.judgement.passed

    @property
    def unused(self) -> bool:
        """Numeric and analytic gradients are both zero: the loss does not depend on it."""
        return self.judgement.zero

    @property
    def diagnosis(self) -> Diagnosis:
        """A :class:`~nbgradcheck.core.diagnose.Diagnosis` of this tensor's numbers."""
        outcome = self.__dict__.get("_outcome")
        return outcome.diagnosis if outcome is not None else diagnose(self)

    @property
    def checked(self) -> int:
        outcome = self.__dict__.get("_outcome")
        return outcome.checked if outcome is not None else int(self.evaluated.sum())

    @property
    def kinks(self) -> int:
        outcome = self.__dict__.get("_outcome")
        return outcome.kinks if outcome is not None else int((self.kink & self.evaluated).sum())

    # -- the worst elements ---------------------------------------------------------------
    def worst_first(
        self, by: str = "abs_error", counted_only: bool = False, limit: int | None = None
    ) -> np.ndarray:
        """Positions (into ``indices``) of the evaluated elements, largest ``by``
        ('abs_error' or 'rel_error') first, ties in index order: the one ordering every
        view of the worst elements uses. ``counted_only`` leaves out kinks."""
        if by not in ERROR_KEYS:
            raise ValueError(f"by must be 'abs_error' or 'rel_error', not {by!r}")
        usable = self.counted if counted_only else self.evaluated
        positions = np.flatnonzero(usable)
        errors = getattr(self, by)[positions]
        if limit is not None and positions.size > limit:
            # the `limit` largest (all of those tied with the last one) without a full sort
            cut = -np.partition(-errors, limit - 1)[limit - 1]
            keep = errors >= cut
            positions, errors = positions[keep], errors[keep]
        order = np.lexsort((positions, -errors))
        return positions[order][:limit]

    @property
    def worst_position(self) -> int | None:
        """Position (into ``indices``) of the counted element with the largest |n − a|."""
        outcome = self.__dict__.get("_outcome")
        if outcome is not None:
            return outcome.worst_position
        first = self.worst_first("abs_error", counted_only=True, limit=1)
        return int(first[0]) if first.size else None

    def worst_position_by(self, by: str) -> int | None:
        """The counted element ranked first by ``by`` (``worst_position`` for abs_error)."""
        if by == "abs_error":
            return self.worst_position
        first = self.worst_first(by, counted_only=True, limit=1)
        return int(first[0]) if first.size else None

    # -- indices ------------------------------------------------------------------------------
    def multi_index(self, flat: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(int(flat), self.shape))

    def label(self, flat: int) -> str:
        return f"{self.name}{format_index(self.multi_index(flat))}"

    def full_array(self, values: np.ndarray) -> np.ndarray:
        """``values`` (over checked elements) spread into the tensor's shape, NaN elsewhere."""
        if self.checked_indices is None and np.size(values) == self.size:
            return np.array(values, dtype=float).reshape(self.shape)
        out = np.full(self.size, np.nan)
        out[self.indices] = values
        return out.reshape(self.shape)

    def summary_row(self) -> dict[str, Any]:
        """The tensor's line of the summary table (stored values only)."""
        worst = self.worst_position
        return {
            "shape": tuple(int(n) for n in self.shape),
            "size": self.size,
            "checked": self.checked,
            "difference": self.difference,
            "max_abs_error": float(self.abs_error[worst]) if worst is not None else math.nan,
            "worst_index": self.multi_index(self.indices[worst]) if worst is not None else None,
            "kinks": self.kinks,
            "floor": self.floor,
            "verdict": self.verdict,
            "diagnosis": self.diagnosis.label,
        }


@dataclass(frozen=True)
class ResultOutcome:
    """What the whole check concluded, computed once when the result is built."""

    difference: float
    floor: float
    verdict: str
    failing: tuple[str, ...]
    passed: bool
    diagnoses: dict[str, Diagnosis]
    diagnosis: Diagnosis
    n_checked: int
    n_parameters: int


@dataclass(frozen=True, eq=False)
class CheckResult:
    """Outcome of a gradient check: global and per-tensor verdicts, all the numbers.

    Building it freezes the tensors and computes every verdict and diagnosis once.
    ``verdict`` is the worst per-tensor verdict, so one wrong bias vector is not hidden
    by the global norm of a large weight matrix; ``difference`` is the global relative
    difference over all measurements that enter the verdicts.
    """

    tensors: tuple[TensorCheck, ...]
    method: str
    eps: float | str
    mode: str
    tol: float
    n_evaluations: int
    loss_value: float
    complete: bool = True
    notes: tuple[str, ...] = ()
    duration_s: float = 0.0
    outcome: ResultOutcome = field(init=False, repr=False)

    def __post_init__(self) -> None:
        tensors = tuple(t.freeze() for t in self.tensors)
        object.__setattr__(self, "tensors", tensors)
        object.__setattr__(self, "notes", tuple(self.notes))
        object.__setattr__(self, "outcome", conclude(tensors, self.complete))

    def with_duration(self, seconds: float) -> CheckResult:
        """The same frozen result, timed: how long the check took (nothing recomputed)."""
        return self.copied(type(self), duration_s=float(seconds))

    def copied(self, cls: type, **plain: Any) -> Any:
        """This result as an instance of ``cls`` (this class or a subclass), fields in
        ``plain`` replaced: fields no verdict depends on (a duration, a subclass's own
        fields). Frozen tensors and conclusions are shared, not recomputed."""
        copy = object.__new__(cls)
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update(plain)
        return copy

    # -- the stored conclusions -------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    @property
    def difference(self) -> float:
        """Over all measurements that enter the verdicts."""
        return self.outcome.difference

    @property
    def floor(self) -> float:
        return self.outcome.floor

    @property
    def verdict(self) -> str:
        return self.outcome.verdict

    @property
    def failing(self) -> list[str]:
        return list(self.outcome.failing)

    @property
    def passed(self) -> bool:
        """No tensor fails, and the check ran to the end."""
        return self.outcome.passed

    @property
    def n_checked(self) -> int:
        return self.outcome.n_checked

    @property
    def n_parameters(self) -> int:
        return self.outcome.n_parameters

    @property
    def diagnoses(self) -> dict[str, Diagnosis]:
        """Parameter name → :class:`~nbgradcheck.core.diagnose.Diagnosis`, for every failing
        tensor and for passing ones with something to say (kinks, round-off, a zero
        gradient); a tensor with nothing to report is left out."""
        return dict(self.outcome.diagnoses)

    @property
    def diagnosis(self) -> Diagnosis:
        """One :class:`~nbgradcheck.core.diagnose.Diagnosis` for the whole check."""
        return self.outcome.diagnosis

    # -- numbers --------------------------------------------------------------------------
    @property
    def numeric(self) -> dict[str, np.ndarray]:
        return {t.name: t.full_array(t.numeric) for t in self.tensors}

    @property
    def analytic(self) -> dict[str, np.ndarray]:
        return {t.name: t.full_array(t.analytic) for t in self.tensors}

    def tensor(self, name: str) -> TensorCheck:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"no parameter {name!r}; parameters are: {', '.join(self.names)}")

    def summary_rows(self) -> list[dict[str, Any]]:
        """One summary row per tensor (``TensorCheck.summary_row``), with its name."""
        return [{"parameter": t.name, **t.summary_row()} for t in self.tensors]

    # -- text -------------------------------------------------------------------------------
    def summary(self) -> str:
        status = "PASSED" if self.passed else "FAILED" if self.failing else "INCOMPLETE"
        step = f"eps={self.eps:g}" if isinstance(self.eps, float) else f"eps={self.eps}"
        covered = f"{self.n_checked} of {self.n_parameters} elements"
        if self.mode == "fast":
            covered = (
                f"fast: {self.n_parameters} elements in directional tests, "
                f"{self.n_checked} one by one"
            )
        line = (
            f"Gradient check {status}: {self.verdict} (global relative difference "
            f"{self.difference:.2e}; {covered}, "
            f"{self.method}, {step}, {self.n_evaluations} loss evaluations)"
        )
        if not self.complete:
            line += "\nINCOMPLETE: interrupted; the numbers cover the elements checked so far"
        diagnoses = self.outcome.diagnoses
        if self.failing:
            line += f"\nfailing: {', '.join(self.failing)}"
            line += "".join(f"\n{name}: {diagnoses[name].sentence}" for name in self.failing)
        line += "".join(f"\n{n}: {d.sentence}" for n, d in diagnoses.items() if d.kind == "unused")
        return line

    def __repr__(self) -> str:
        parts = [self.summary(), "", text_table(self.summary_rows())]
        parts += [f"note: {note}" for note in self.notes]
        return "\n".join(parts)


def conclude(tensors: tuple[TensorCheck, ...], complete: bool) -> ResultOutcome:
    """The whole check's conclusions from its frozen tensors."""
    norms = Norms.total(part.norms for t in tensors for part in t.verdict_measurements)
    failing = tuple(t.name for t in tensors if not t.passed)
    found = {t.name: t.diagnosis for t in tensors}
    diagnoses = {name: d for name, d in found.items() if d.kind != "ok"}
    return ResultOutcome(
        difference=norms.relative_difference,
        floor=norms.relative_floor,
        verdict=worst_verdict(t.verdict for t in tensors),
        failing=failing,
        passed=complete and not failing,
        diagnoses=diagnoses,
        diagnosis=diagnose_result(diagnoses, failing, complete),
        n_checked=sum(t.checked for t in tensors),
        n_parameters=sum(t.size for t in tensors),
    )


# -- the text table ---------------------------------------------------------------------------


def text_cell(column: str, value: Any) -> str:
    if column in ("difference", "max_abs_error"):
        return f"{value:.2e}"
    if column == "floor":
        return f"{value:.1e}"
    return value


def text_table(rows: list[dict[str, Any]]) -> str:
    """The summary rows as fixed-width text, laid out as pandas' ``DataFrame.to_string``
    lays out ``result.table`` (index name on a line of its own; integer columns and their
    headers with a sign space, other cells with a leading space; all right-aligned)."""
    names = [row["parameter"] for row in rows]
    width = max(len("parameter"), *map(len, names))
    columns = [[" " * width, "parameter".ljust(width), *(name.ljust(width) for name in names)]]
    for column in SUMMARY_COLUMNS:
        values = [text_cell(column, row[column]) for row in rows]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            header, cells = f" {column}", [f"{v: d}" for v in values]
        else:
            header, cells = column, [f" {v}" for v in values]
        size = max(len(header), *map(len, cells))
        columns.append([header.rjust(size), " " * size, *(cell.rjust(size) for cell in cells)])
    return "\n".join(" ".join(column[i] for column in columns) for i in range(len(rows) + 2))
