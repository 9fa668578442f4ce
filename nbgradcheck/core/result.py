"""GradCheckResult: the numbers a gradient check produced, and the verdicts drawn from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from nbgradcheck.adapters.numpy import format_index
from nbgradcheck.views.report import ResultViews

VERDICT_THRESHOLDS = (("correct", 1e-7), ("ok", 1e-5), ("suspicious", 1e-3))
VERDICT_ORDER = ("empty", "correct", "ok", "suspicious", "wrong")
# A round-off floor above this means the check cannot resolve real bugs; it is not used
# to excuse larger discrepancies.
MAX_FLOOR_EXCUSE = 1e-2
# The engine's noise bound is NOISE_FACTOR (8) unit round-offs of J per step; a gradient
# below one of them (this fraction of the bound) is zero as far as the check can tell.
ZERO_LEVEL = 1 / 8


def relative_difference(numeric: np.ndarray, analytic: np.ndarray) -> float:
    """‖numeric − analytic‖₂ / (‖numeric‖₂ + ‖analytic‖₂); 0 when both are zero."""
    denominator = np.linalg.norm(numeric) + np.linalg.norm(analytic)
    if denominator == 0:
        return 0.0
    return float(np.linalg.norm(numeric - analytic) / denominator)


def verdict_for(difference: float, floor: float = 0.0) -> str:
    """'correct' ≤1e-7, 'ok' ≤1e-5, 'suspicious' ≤1e-3, else 'wrong'.

    A discrepancy within the round-off ``floor`` of the check (float32 parameters) is
    'ok': it cannot be told apart from noise.
    """
    if np.isnan(difference):
        return "empty"
    if difference <= VERDICT_THRESHOLDS[0][1]:
        return "correct"
    if difference <= min(floor, MAX_FLOOR_EXCUSE):
        return "ok"
    for name, threshold in VERDICT_THRESHOLDS:
        if difference <= threshold:
            return name
    return "wrong"


def worst_verdict(verdicts: list[str]) -> str:
    return max(verdicts, key=VERDICT_ORDER.index, default="empty")


@dataclass
class TensorCheck:
    """Per-element measurements for one parameter tensor (arrays over checked elements)."""

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
    analytic_full: np.ndarray  # the whole analytic gradient, for diagnosis
    tol: float
    refined: int = 0  # elements whose estimate was replaced by one with a smaller step
    # fast mode: the whole-tensor directional tests and localization record
    # (localize.DirectionalTests); None in full and sample mode
    directional: Any = None
    # False when J re-evaluated at the unperturbed parameters differed (a random loss)
    repeatable: bool | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def evaluated(self) -> np.ndarray:
        return ~np.isnan(self.numeric)

    @property
    def counted(self) -> np.ndarray:
        """Elements that enter the verdict: evaluated and not at a kink."""
        return self.evaluated & ~self.kink

    @property
    def abs_error(self) -> np.ndarray:
        return np.abs(self.numeric - self.analytic)

    @property
    def rel_error(self) -> np.ndarray:
        scale = np.abs(self.numeric) + np.abs(self.analytic)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(scale > 0, self.abs_error / np.where(scale > 0, scale, 1), 0.0)

    @property
    def element_failing(self) -> np.ndarray:
        """Elements whose error exceeds both the tolerance and their round-off floor."""
        scale = np.abs(self.numeric) + np.abs(self.analytic)
        return self.evaluated & (self.abs_error > np.maximum(self.tol * scale, self.noise))

    def adopt(self, positions: np.ndarray, other: TensorCheck, take: np.ndarray) -> None:
        """Replace the measurements at ``positions[take]`` with ``other``'s (a re-estimate)."""
        for field_name in ("numeric", "step", "loss_plus", "loss_minus", "noise", "kink"):
            getattr(self, field_name)[positions[take]] = getattr(other, field_name)[take]
        self.refined += int(np.count_nonzero(take))

    @property
    def element_difference(self) -> float:
        """Relative difference over the elements checked one by one."""
        mask = self.counted
        if not mask.any():
            return float("nan")
        return relative_difference(self.numeric[mask], self.analytic[mask])

    @property
    def tested_along_directions(self) -> bool:
        """Fast mode tested this tensor along whole-tensor directions (not one by one)."""
        return self.directional is not None and len(self.directional.tests) > 0

    @property
    def difference(self) -> float:
        """Relative difference over the counted elements. In fast mode the larger of the
        ones over the whole-tensor directional tests and over the elements sampled at
        random: unbiased estimates of the same quantity (the elements localization
        checked were picked for looking wrong)."""
        if self.tested_along_directions:
            sample = self.directional.sample_difference(self)[0]
            return float(np.nanmax([self.directional.difference, sample]))
        return self.element_difference

    @property
    def element_floor(self) -> float:
        """The relative difference round-off alone could produce, element-wise."""
        mask = self.counted
        scale = np.linalg.norm(self.numeric[mask]) + np.linalg.norm(self.analytic[mask])
        return float(np.linalg.norm(self.noise[mask]) / scale) if scale > 0 else 0.0

    @property
    def floor(self) -> float:
        """The relative difference round-off alone could produce."""
        if self.tested_along_directions:
            return max(self.directional.floor, self.directional.sample_difference(self)[1])
        return self.element_floor

    @property
    def diagnosis(self) -> Any:
        """A :class:`~nbgradcheck.core.diagnose.Diagnosis` of this tensor's numbers."""
        from nbgradcheck.core.diagnose import diagnose

        return diagnose(self)

    @property
    def verdict(self) -> str:
        verdict = verdict_for(self.difference, self.floor)
        if verdict in ("suspicious", "wrong") and (
            self.within_noise or (self.tested_along_directions and self.passed)
        ):
            return "ok"  # within round-off: both gradients zero, or fast mode's floor
        return verdict

    @property
    def passed(self) -> bool:
        """Within tol (or the round-off floor); in fast mode, the whole-tensor
        directional tests together and the random sample (see
        localize.DirectionalTests.passed_with)."""
        if self.tested_along_directions:
            return self.directional.passed_with(self)
        difference = self.difference
        if np.isnan(difference) or difference <= max(self.tol, self.floor_excuse):
            return True
        return self.within_noise

    @property
    def within_noise(self) -> bool:
        """Both gradients are indistinguishable from zero: a true gradient of zero (numeric
        0 against analytic 1e-18) is not a bug however large their ratio. ``noise`` holds a
        pessimistic bound (several unit round-offs); one round-off is the zero level."""
        counted = self.counted
        zero_level = self.noise[counted] * ZERO_LEVEL
        return bool(
            counted.any()
            and np.all(np.abs(self.numeric[counted]) <= zero_level)
            and np.all(np.abs(self.analytic[counted]) <= zero_level)
        )

    @property
    def floor_excuse(self) -> float:
        return min(self.floor, MAX_FLOOR_EXCUSE)

    @property
    def worst_position(self) -> int | None:
        """Position (into ``indices``) of the counted element with the largest error."""
        mask = self.counted
        if not mask.any():
            return None
        errors = np.where(mask, self.abs_error, -np.inf)
        return int(np.argmax(errors))

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
        worst = self.worst_position
        evaluated = self.evaluated
        return {
            "shape": self.shape,
            "size": self.size,
            "checked": int(evaluated.sum()),
            "difference": self.difference,
            "max_abs_error": float(self.abs_error[worst]) if worst is not None else np.nan,
            "worst_index": self.multi_index(self.indices[worst]) if worst is not None else None,
            "kinks": int((self.kink & evaluated).sum()),
            "floor": self.floor,
            "verdict": self.verdict,
            "diagnosis": self.diagnosis.label,
        }

    def elements_frame(self) -> pd.DataFrame:
        mask = self.evaluated
        return pd.DataFrame(
            {
                "index": [self.multi_index(i) for i in self.indices[mask]],
                "analytic": self.analytic[mask],
                "numeric": self.numeric[mask],
                "abs_error": self.abs_error[mask],
                "rel_error": self.rel_error[mask],
                "kink": self.kink[mask],
            }
        )


@dataclass(repr=False)
class GradCheckResult(ResultViews):
    """Outcome of :func:`nbgradcheck.check`: global and per-tensor verdicts, all the numbers.

    ``verdict`` is the worst per-tensor verdict, so one wrong bias vector is not hidden
    by the global norm of a large weight matrix; ``difference`` is the global relative
    difference over all checked elements.
    """

    tensors: list[TensorCheck]
    method: str
    eps: float | str
    mode: str
    tol: float
    n_evaluations: int
    loss_value: float
    complete: bool = True
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    rerun: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- global numbers -------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def _counted(self) -> tuple[np.ndarray, np.ndarray]:
        numeric = np.concatenate([t.numeric[t.counted] for t in self.tensors])
        analytic = np.concatenate([t.analytic[t.counted] for t in self.tensors])
        return numeric, analytic

    def _measurements(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Numeric, analytic and noise behind the verdicts: the counted elements, or in
        fast mode a tensor's whole-tensor directional tests and random sample."""
        parts = []
        for t in self.tensors:
            if t.tested_along_directions:
                record, mask = t.directional, t.directional.unbiased
                parts.append((record.numeric[mask], record.analytic[mask], record.noise[mask]))
                sample = record.sample_mask(t)
                parts.append((t.numeric[sample], t.analytic[sample], t.noise[sample]))
            else:
                parts.append((t.numeric[t.counted], t.analytic[t.counted], t.noise[t.counted]))
        numeric, analytic, noise = (np.concatenate(column) for column in zip(*parts))
        return numeric, analytic, noise

    @property
    def difference(self) -> float:
        """Over all checked elements (in fast mode: and directional tests)."""
        numeric, analytic, _ = self._measurements()
        return relative_difference(numeric, analytic) if numeric.size else float("nan")

    @property
    def floor(self) -> float:
        numeric, analytic, noise = self._measurements()
        scale = np.linalg.norm(numeric) + np.linalg.norm(analytic)
        return float(np.linalg.norm(noise) / scale) if scale > 0 else 0.0

    @property
    def verdict(self) -> str:
        return worst_verdict([t.verdict for t in self.tensors])

    @property
    def failing(self) -> list[str]:
        return [t.name for t in self.tensors if not t.passed]

    @property
    def passed(self) -> bool:
        """No tensor fails, and the check ran to the end."""
        return self.complete and not self.failing

    @property
    def n_checked(self) -> int:
        return int(sum(t.evaluated.sum() for t in self.tensors))

    @property
    def n_parameters(self) -> int:
        return sum(t.size for t in self.tensors)

    @property
    def diagnoses(self) -> dict[str, Any]:
        """Parameter name → :class:`~nbgradcheck.core.diagnose.Diagnosis`, for every failing
        tensor and for passing ones with something to say (kinks, round-off); a tensor
        with nothing to report is left out."""
        found = {t.name: t.diagnosis for t in self.tensors}
        return {name: d for name, d in found.items() if d.kind != "ok"}

    @property
    def diagnosis(self) -> Any:
        """One :class:`~nbgradcheck.core.diagnose.Diagnosis` for the whole check."""
        from nbgradcheck.core.diagnose import diagnose_result

        return diagnose_result(self.diagnoses, self.failing, self.complete)

    # -- views of the numbers -------------------------------------------------------
    @property
    def table(self) -> pd.DataFrame:
        """One row per parameter tensor."""
        frame = pd.DataFrame([t.summary_row() for t in self.tensors], index=self.names)
        frame.index.name = "parameter"
        return frame

    @property
    def numeric(self) -> dict[str, np.ndarray]:
        return {t.name: t.full_array(t.numeric) for t in self.tensors}

    @property
    def analytic(self) -> dict[str, np.ndarray]:
        return {t.name: t.full_array(t.analytic) for t in self.tensors}

    @property
    def kinks(self) -> pd.DataFrame:
        """Elements excused as kink crossings (not counted as failures)."""
        frames = [
            t.elements_frame().loc[lambda f: f["kink"]].assign(parameter=t.name)
            for t in self.tensors
        ]
        columns = ["parameter", "index", "analytic", "numeric", "abs_error", "rel_error"]
        return pd.concat(frames, ignore_index=True)[columns]

    def tensor(self, name: str) -> TensorCheck:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"no parameter {name!r}; parameters are: {', '.join(self.names)}")

    def elements(self, name: str, sort_by: str | None = None) -> pd.DataFrame:
        """Checked elements of one tensor: index, analytic, numeric, abs_error, rel_error.

        ``sort_by`` ('abs_error' or 'rel_error') lists the worst first.
        """
        frame = self.tensor(name).elements_frame()
        if sort_by is None:
            return frame
        if sort_by not in ("abs_error", "rel_error"):
            raise ValueError(f"sort_by must be 'abs_error' or 'rel_error', not {sort_by!r}")
        return frame.sort_values(sort_by, ascending=False, ignore_index=True)

    def inspect(self) -> Any:
        """The inspector widget (the static report where widgets cannot render)."""
        from nbgradcheck.views.inspector import inspect

        return inspect(self)

    def recheck(self, **changes: Any) -> GradCheckResult:
        """Run the same check again, with some arguments changed (e.g. ``eps=1e-4``)."""
        from nbgradcheck.api.check import check

        arguments = {**self.rerun, **changes}
        return check(
            arguments.pop("loss"), arguments.pop("params"), arguments.pop("grads"), **arguments
        )

    # -- text -------------------------------------------------------------------------
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
        if self.failing:
            line += f"\nfailing: {', '.join(self.failing)}"
            diagnoses = self.diagnoses
            line += "".join(f"\n{name}: {diagnoses[name].sentence}" for name in self.failing)
        return line

    def __repr__(self) -> str:
        table = self.table.copy()
        table["difference"] = table["difference"].map("{:.2e}".format)
        table["max_abs_error"] = table["max_abs_error"].map("{:.2e}".format)
        table["floor"] = table["floor"].map("{:.1e}".format)
        parts = [self.summary(), "", table.to_string()]
        parts += [f"note: {note}" for note in self.notes]
        return "\n".join(parts)
