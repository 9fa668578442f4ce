"""``LossRecorder``: record a training run and find its stalls (pure: NumPy and pandas).

Works with any training loop: losses may be Python floats, NumPy scalars or framework
tensors; gradients and parameters are dicts of arrays or tensors (converted through
``.detach().cpu().numpy()`` or ``np.asarray``, never by importing a framework).
Showing a run (rich display, live view) is the job of
:class:`nbgradcheck.api.history.LossHistory`, which adds display to this recorder.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from nbgradcheck.training.stalls import StallReport, analyze_stalls, plural
from nbgradcheck.training.values import (
    as_number,
    as_series,
    is_integral,
    named_values,
    norm,
    to_numpy,
)

__all__ = ["LossRecorder"]

_BASE_COLUMNS = ("step", "epoch", "loss", "diverged")
Named = Mapping[str, Any] | Iterable[tuple[str, Any]]
Recorder = TypeVar("Recorder", bound="LossRecorder")


def _total(norms: Iterable[float]) -> float:
    finite = [n for n in norms if not math.isnan(n)]
    return math.sqrt(sum(n * n for n in finite)) if finite else math.nan


def _epoch(value: Any) -> float:
    if value is None:
        return math.nan
    epoch = as_number(value, "epoch")
    if not math.isfinite(epoch):
        raise ValueError(f"epoch must be a finite number, got {epoch}")
    return epoch


def _step(value: Any, previous: list[int]) -> int:
    if value is None:
        return previous[-1] + 1 if previous else 0
    step = as_number(value, "step")
    if not math.isfinite(step) or step != round(step):
        raise ValueError(f"step must be a whole number, got {value!r}")
    return int(step)


def _parameter_array(name: str, value: Any) -> np.ndarray:
    array = to_numpy(value)
    if array.dtype.kind not in "iuf":
        raise ValueError(
            f"params[{name!r}] must be an array of numbers, got {type(value).__name__} "
            f"({array.dtype})"
        )
    return np.array(array, dtype=np.float64)


class LossRecorder:
    """Records losses (and optionally gradient norms and update ratios) of a training run.

    >>> history = LossRecorder()
    >>> for epoch in range(3):
    ...     history.log(1.0 / (epoch + 1), epoch=epoch)
    >>> history.to_frame()["loss"].round(3).tolist()
    [1.0, 0.5, 0.333]

    Args:
        stall_options: keyword arguments for :func:`~nbgradcheck.training.stalls.find_stalls`.
    """

    def __init__(self, *, stall_options: Mapping[str, Any] | None = None) -> None:
        self.stall_options: dict[str, Any] = dict(stall_options or {})
        self._steps: list[int] = []
        self._epochs: list[float] = []
        self._losses: list[float] = []
        self._extra: list[dict[str, float]] = []
        self._previous_params: dict[str, np.ndarray] = {}
        self._report_cache: tuple[tuple, StallReport] | None = None

    # ------------------------------------------------------------------ recording

    def log(
        self,
        loss: Any,
        *,
        epoch: int | float | None = None,
        step: int | None = None,
        grads: Named | None = None,
        params: Named | None = None,
        **metrics: Any,
    ) -> None:
        """Record one step.

        Args:
            loss: the training loss (a number or a scalar tensor); NaN/inf is recorded as
                divergence.
            epoch: the epoch of this step, as you count them (tables, plots and text show
                the same numbers); losses are averaged per epoch for stall finding.
            step: the step number (default: one more than the last).
            grads: gradients by tensor name (arrays or tensors); their norms are recorded.
                A scalar entry is taken as an already computed norm.
            params: parameters by tensor name, after the optimiser step; the ratio
                ``|θ − θ_prev| / |θ_prev|`` to the previous call's parameters is recorded.
            **metrics: other numbers to keep (validation loss, accuracy, learning rate...).

        Raises:
            ValueError: a value that is not a number (naming it); nothing is recorded then.
        """
        as_number(loss, "loss")  # first: a bad value records nothing
        _epoch(epoch)
        _step(step, self._steps)
        grad_norms = None
        if grads is not None:
            named = named_values(grads, "grads")
            grad_norms = {name: norm(g, f"grads[{name!r}]") for name, g in named.items()}
        update_norms = param_norms = None
        if params is not None:
            update_norms, param_norms = self._update_norms(named_values(params, "params"))
        self.log_norms(
            loss,
            epoch=epoch,
            step=step,
            grad_norms=grad_norms,
            update_norms=update_norms,
            param_norms=param_norms,
            **metrics,
        )

    def log_norms(
        self,
        loss: Any,
        *,
        epoch: int | float | None = None,
        step: int | None = None,
        grad_norms: Mapping[str, float] | None = None,
        update_norms: Mapping[str, float] | None = None,
        param_norms: Mapping[str, float] | None = None,
        **metrics: Any,
    ) -> None:
        """Record one step from norms computed elsewhere (e.g. on a GPU by an integration).

        ``update_norms[name]`` is ``|θ − θ_prev|`` and ``param_norms[name]`` is
        ``|θ_prev|``; their ratio is the update/weight ratio.
        """
        loss_value = as_number(loss, "loss")
        epoch_value = _epoch(epoch)
        step_value = _step(step, self._steps)
        row: dict[str, float] = {}
        if grad_norms:
            norms = {name: as_number(v, f"grad_norms[{name!r}]") for name, v in grad_norms.items()}
            row["grad_norm"] = _total(norms.values())
            row.update({f"grad_norm/{name}": v for name, v in norms.items()})
        if update_norms and param_norms:
            row.update(_update_ratios(update_norms, param_norms))
        for name, value in metrics.items():
            row[name] = as_number(value, f"metric {name!r}")
        self._steps.append(step_value)
        self._epochs.append(epoch_value)
        self._losses.append(loss_value)
        self._extra.append(row)
        self._logged()

    def _logged(self) -> None:
        """Called after every recorded step (subclasses update their views here)."""

    def _update_norms(self, params: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
        current = {name: _parameter_array(name, p) for name, p in params.items()}
        update_norms, param_norms = {}, {}
        for name, value in current.items():
            previous = self._previous_params.get(name)
            if previous is None or previous.shape != value.shape:
                continue
            update_norms[name] = float(np.linalg.norm((value - previous).ravel()))
            param_norms[name] = float(np.linalg.norm(previous.ravel()))
        self._previous_params = current
        return update_norms, param_norms

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self._losses)

    @property
    def losses(self) -> np.ndarray:
        """The recorded losses, one per call of :meth:`log`."""
        return np.asarray(self._losses, dtype=np.float64)

    def to_frame(self) -> pd.DataFrame:
        """One row per logged step: ``step``, ``epoch``, ``loss``, ``diverged``, then
        ``grad_norm``, ``update_ratio`` (totals), metrics, and per-tensor
        ``grad_norm/<name>`` and ``update_ratio/<name>`` columns when recorded.

        Whole-number epochs are nullable integers (``Int64``; ``<NA>`` where no epoch
        was given), fractional ones floats."""
        epochs = pd.Series(self._epochs, dtype=np.float64)
        frame = pd.DataFrame(
            {
                "step": np.asarray(self._steps, dtype=np.int64),
                "epoch": epochs.astype("Int64") if is_integral(epochs.to_numpy()) else epochs,
                "loss": self.losses,
            }
        )
        frame["diverged"] = ~np.isfinite(frame["loss"].to_numpy())
        extra = pd.DataFrame(self._extra, index=frame.index, dtype=np.float64)
        return pd.concat([frame, extra[_ordered_columns(extra.columns)]], axis=1)

    @property
    def report(self) -> StallReport:
        """The :class:`~nbgradcheck.training.stalls.StallReport` of the recorded run."""
        key = (len(self), tuple(sorted(self.stall_options.items())))
        if self._report_cache is None or self._report_cache[0] != key:
            self._report_cache = (key, analyze_stalls(**self._stall_inputs(), **self.stall_options))
        return self._report_cache[1]

    @property
    def stalls(self) -> pd.DataFrame:
        """:func:`~nbgradcheck.training.stalls.find_stalls` on the recorded run."""
        return self.report.to_table()

    @property
    def verdict(self) -> str:
        """``"converged"``, ``"stalled"``, ``"diverged"``, ``"improving"`` or ``"too short"``."""
        return self.report.verdict

    def _stall_inputs(self) -> dict[str, Any]:
        if not self._losses:
            raise ValueError("the history is empty: log some losses first")
        epochs = pd.Series(self._epochs, dtype=np.float64)
        inputs: dict[str, Any] = {"losses": self.losses}
        if epochs.notna().any():
            inputs["epochs"] = epochs.ffill().bfill().to_numpy()
        else:
            inputs["steps"] = np.asarray(self._steps, dtype=np.float64)
        inputs["grad_norms"] = self._column("grad_norm")
        inputs["update_ratios"] = self._column("update_ratio")
        return inputs

    def _column(self, name: str) -> np.ndarray | None:
        if not any(name in row for row in self._extra):
            return None
        return np.array([row.get(name, math.nan) for row in self._extra], dtype=np.float64)

    # ------------------------------------------------------------------ text

    def summary(self) -> str:
        """Plain-text summary: size of the run, loss, verdict and stalls."""
        if not self._losses:
            return f"{type(self).__name__}: nothing logged yet"
        return f"{self.status_line()}\n{self.report.summary()}"

    def status_line(self) -> str:
        """One line: steps, last epoch, last and best loss, verdict and number of stalls."""
        if not self._losses:
            return f"{type(self).__name__}: nothing logged yet"
        losses = self.losses
        finite = losses[np.isfinite(losses)]
        parts = [f"{type(self).__name__}: {plural(len(self), 'step')}"]
        epochs = np.asarray(self._epochs)
        if np.isfinite(epochs).any():
            parts[0] += f", epoch {_number(np.nanmax(epochs))}"
        parts.append(f"loss {losses[-1]:.4g}")
        if finite.size:
            parts.append(f"best {finite.min():.4g}")
        report = self.report
        parts.append(plural(len(report.stalled), "stall"))
        parts.append(report.verdict_text())
        return " | ".join(parts)

    def __repr__(self) -> str:
        return self.summary()

    # ------------------------------------------------------------------ building

    @classmethod
    def from_losses(
        cls: type[Recorder],
        losses: Any,
        *,
        epochs: Any = None,
        stall_options: Mapping[str, Any] | None = None,
    ) -> Recorder:
        """A history holding ``losses`` (one per step) and optionally their epochs."""
        frame = pd.DataFrame({"loss": as_series(losses, "losses")})
        if epochs is not None:
            epoch_values = as_series(epochs, "epochs")
            if epoch_values.size != len(frame):
                raise ValueError(
                    f"epochs has {epoch_values.size} values but losses has {len(frame)}"
                )
            frame["epoch"] = epoch_values
        return cls.from_frame(frame, stall_options=stall_options)

    @classmethod
    def from_frame(
        cls: type[Recorder],
        frame: pd.DataFrame,
        *,
        stall_options: Mapping[str, Any] | None = None,
    ) -> Recorder:
        """A history from a DataFrame with a ``loss`` column (as :meth:`to_frame` gives):
        ``epoch`` and ``step`` columns are used when present, other numeric columns
        (``grad_norm``, ``grad_norm/<name>``, metrics) are kept."""
        if "loss" not in frame.columns:
            raise ValueError(f"the DataFrame needs a 'loss' column; got {list(frame.columns)}")
        losses = as_series(frame["loss"], "loss column")
        history = cls(stall_options=stall_options)
        history._losses = losses.tolist()
        steps = frame["step"] if "step" in frame else np.arange(losses.size)
        history._steps = [int(v) for v in as_series(steps, "step column")]
        epochs = frame["epoch"] if "epoch" in frame else np.full(losses.size, math.nan)
        history._epochs = as_series(epochs, "epoch column").tolist()
        extra_columns = [c for c in frame.select_dtypes("number").columns if c not in _BASE_COLUMNS]
        extra = frame[extra_columns].astype(np.float64)
        history._extra = [
            {k: v for k, v in row.items() if not math.isnan(v)} for row in extra.to_dict("records")
        ]
        return history


def _update_ratios(
    update_norms: Mapping[str, float], param_norms: Mapping[str, float]
) -> dict[str, float]:
    names = [name for name in update_norms if name in param_norms]
    if not names:
        return {}
    ratios = {
        f"update_ratio/{name}": _ratio(update_norms[name], param_norms[name]) for name in names
    }
    total = _ratio(_total(update_norms[n] for n in names), _total(param_norms[n] for n in names))
    return {"update_ratio": total, **ratios}


def _ratio(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return math.nan if numerator == 0 else math.inf
    return numerator / denominator


def _ordered_columns(columns: Iterable[str]) -> list[str]:
    columns = list(columns)
    totals = [c for c in ("grad_norm", "update_ratio") if c in columns]
    per_tensor = [c for c in columns if c.startswith(("grad_norm/", "update_ratio/"))]
    metrics = [c for c in columns if c not in totals and c not in per_tensor]
    return totals + metrics + per_tensor


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"
