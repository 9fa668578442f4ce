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
from typing import Any

import numpy as np

from nbgradcheck.adapters.numpy import format_index
from nbgradcheck.core.diagnose import Diagnosis, diagnose, diagnose_result
from nbgradcheck.core.directional import DirectionalTests
from nbgradcheck.core.verdict import (
    Judgement,
    Measurements,
    element_failing,
    judge,
    relative_difference,
    relative_floor,
    worst_verdict,
)

# The arrays of a TensorCheck, one entry per checked element (made read-only at freeze).
ELEMENT_ARRAYS = (
    "indices",
    "values",
    "analytic",
    "numeric",
    "step",
    "loss_plus",
    "loss_minus",
    "noise",
    "kink",
)
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


@dataclass(frozen=True, eq=False)
class ElementErrors:
    """Per-element numbers derived from a tensor's measurements."""

    evaluated: np.ndarray  # numeric value known (not NaN)
    counted: np.ndarray  # evaluated and not at a kink: these enter the verdict
    abs_error: np.ndarray  # |numeric − analytic|
    rel_error: np.ndarray  # |numeric − analytic| / (|numeric| + |analytic|); 0 when both 0
    failing: np.ndarray  # over tol and over the element's round-off floor

    @classmethod
    def of(cls, tensor: TensorCheck) -> ElementErrors:
        numeric, analytic = tensor.numeric, tensor.analytic
        evaluated = ~np.isnan(numeric)
        abs_error = np.abs(numeric - analytic)
        scale = np.abs(numeric) + np.abs(analytic)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel_error = np.where(scale > 0, abs_error / np.where(scale > 0, scale, 1), 0.0)
        failing = evaluated & element_failing(numeric, analytic, tensor.noise, tensor.tol)
        return cls(evaluated, evaluated & ~tensor.kink, abs_error, rel_error, failing)

    def frozen(self) -> ElementErrors:
        return ElementErrors(*(read_only(getattr(self, n)) for n in self.__dataclass_fields__))


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
    :meth:`freeze` when the check ends, after which every verdict, error and the
    diagnosis are stored values and the arrays are read-only.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    indices: np.ndarray  # flat (C-order) indices of the elements checked
    values: np.ndarray  # parameter values at those elements (float64)
    analytic: np.ndarray  # the model's gradient at those elements
    numeric: np.ndarray  # finite-difference estimate; NaN where not evaluated (interrupted)
    step: np.ndarray  # actual step between the two evaluation points
    loss_plus: np.ndarray  # J(θ+ε) (NaN when the method does not use it)
    loss_minus: np.ndarray  # J(θ−ε) (NaN when the method does not use it)
    noise: np.ndarray  # round-off floor of each numeric estimate
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
        """Compute the verdict, the errors and the diagnosis once and store them; make the
        arrays read-only. Called when the check ends; later calls do nothing."""
        if self.frozen:
            return self
        for name in ELEMENT_ARRAYS:
            super().__setattr__(name, read_only(getattr(self, name)))
        if self.analytic_full is not None:
            super().__setattr__("analytic_full", read_only(self.analytic_full))
        stored = self.__dict__  # set directly: __setattr__ refuses once "_outcome" is in
        stored["_errors"] = errors = ElementErrors.of(self).frozen()
        stored["_judgement"] = judge(self.measurements(), self.tol)
        worst = self.worst_first("abs_error", counted_only=True, limit=1)
        stored["_outcome"] = TensorOutcome(
            judgement=stored["_judgement"],
            diagnosis=diagnose(self),
            checked=int(errors.evaluated.sum()),
            kinks=int((self.kink & errors.evaluated).sum()),
            worst_position=int(worst[0]) if worst.size else None,
        )
        return self

    @property
    def errors(self) -> ElementErrors:
        """Stored once frozen; from the measurements so far while the check runs."""
        stored = self.__dict__.get("_errors")
        return stored if stored is not None else ElementErrors.of(self)

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
    def evaluated(self) -> np.ndarray:
        return self.errors.evaluated

    @property
    def counted(self) -> np.ndarray:
        """Elements that enter the verdict: evaluated and not at a kink."""
        return self.errors.counted

    @property
    def abs_error(self) -> np.ndarray:
        return self.errors.abs_error

    @property
    def rel_error(self) -> np.ndarray:
        return self.errors.rel_error

    @property
    def element_failing(self) -> np.ndarray:
        """Elements whose error exceeds both the tolerance and their round-off floor."""
        return self.errors.failing

    def adopt(self, positions: np.ndarray, other: TensorCheck, take: np.ndarray) -> None:
        """Replace the measurements at ``positions[take]`` with ``other``'s (a re-estimate)."""
        for name in ("numeric", "step", "loss_plus", "loss_minus", "noise", "kink"):
            getattr(self, name)[positions[take]] = getattr(other, name)[take]
        self.refined += int(np.count_nonzero(take))

    # -- what enters the verdict ---------------------------------------------------------
    @property
    def tested_along_directions(self) -> bool:
        """Fast mode tested this tensor along whole-tensor directions (not one by one)."""
        return self.directional is not None and len(self.directional.tests) > 0

    def element_measurements(self, mask: np.ndarray | None = None) -> Measurements:
        """The counted elements (those in ``mask`` too, when given)."""
        chosen = self.counted if mask is None else self.counted & mask
        return Measurements(self.numeric[chosen], self.analytic[chosen], self.noise[chosen])

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
    parts = [part for t in tensors for part in t.measurements()]
    numeric, analytic, noise = (
        np.concatenate([getattr(part, name) for part in parts] or [np.empty(0)])
        for name in ("numeric", "analytic", "noise")
    )
    failing = tuple(t.name for t in tensors if not t.passed)
    found = {t.name: t.diagnosis for t in tensors}
    diagnoses = {name: d for name, d in found.items() if d.kind != "ok"}
    return ResultOutcome(
        difference=relative_difference(numeric, analytic) if numeric.size else math.nan,
        floor=relative_floor(numeric, analytic, noise),
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
