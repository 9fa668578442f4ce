"""``LossHistory``: record a training run, find its stalls, show it live in a notebook.

Works with any training loop: losses may be Python floats, NumPy scalars or framework
tensors; gradients and parameters are dicts of arrays or tensors (converted through
``.detach().cpu().numpy()`` or ``np.asarray``, never by importing a framework).
"""

from __future__ import annotations

import base64
import html
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

import numpy as np
import pandas as pd

from nbgradcheck.training.stalls import StallReport, analyze_stalls, as_loss_array, plural

__all__ = ["LiveDisplay", "LossHistory", "to_numpy"]

_BASE_COLUMNS = ("step", "epoch", "loss", "diverged")


def to_numpy(value: Any) -> np.ndarray:
    """An array from a NumPy array, torch tensor, JAX array or anything ``np.asarray`` takes."""
    if hasattr(value, "detach"):
        value = value.detach()
        if hasattr(value, "cpu"):
            value = value.cpu()
        try:
            return value.numpy()
        except TypeError:  # bfloat16 and other dtypes NumPy lacks
            return value.float().numpy()
    return np.asarray(value)


def _to_float(value: Any, what: str) -> float:
    array = to_numpy(value)
    if array.size != 1:
        raise ValueError(f"{what} must be a single number, got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be a real number, got {value!r}")
    return float(array.reshape(()))


def _norm(value: Any) -> float:
    array = to_numpy(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"cannot take the norm of {type(value).__name__} ({array.dtype})")
    return float(np.linalg.norm(array.astype(np.float64, copy=False).ravel()))


def _named(values: Mapping[str, Any] | Iterable[tuple[str, Any]], what: str) -> dict[str, Any]:
    if isinstance(values, Mapping):
        return {str(name): value for name, value in values.items()}
    try:
        return {str(name): value for name, value in values}
    except (TypeError, ValueError):
        raise ValueError(
            f"{what} must be a dict of name → array (or (name, array) pairs)"
        ) from None


def _total(norms: Iterable[float]) -> float:
    finite = [n for n in norms if not math.isnan(n)]
    return math.sqrt(sum(n * n for n in finite)) if finite else math.nan


class LossHistory:
    """Records losses (and optionally gradient norms and update ratios) of a training run.

    >>> history = LossHistory()
    >>> for epoch in range(3):
    ...     history.log(1.0 / (epoch + 1), epoch=epoch)
    >>> history.to_frame()["loss"].round(3).tolist()
    [1.0, 0.5, 0.333]

    Args:
        live: show a live plot (see :meth:`live`) from the first :meth:`log` on.
        every: at most one live update per this many seconds.
        stall_options: keyword arguments for :func:`~nbgradcheck.training.stalls.find_stalls`.
    """

    def __init__(
        self,
        *,
        live: bool = False,
        every: float = 1.0,
        stall_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.stall_options: dict[str, Any] = dict(stall_options or {})
        self._steps: list[int] = []
        self._epochs: list[float] = []
        self._losses: list[float] = []
        self._extra: list[dict[str, float]] = []
        self._previous_params: dict[str, np.ndarray] = {}
        self._report_cache: tuple[tuple, StallReport] | None = None
        self._live: LiveDisplay | None = None
        if live:
            self.live(every=every)

    # ------------------------------------------------------------------ recording

    def log(
        self,
        loss: Any,
        *,
        epoch: int | float | None = None,
        step: int | None = None,
        grads: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        **metrics: Any,
    ) -> None:
        """Record one step.

        Args:
            loss: the training loss (a number or a scalar tensor); NaN/inf is recorded as
                divergence.
            epoch: the epoch of this step; losses are averaged per epoch for stall finding.
            step: the step number (default: one more than the last).
            grads: gradients by tensor name (arrays or tensors); their norms are recorded.
                A scalar entry is taken as an already computed norm.
            params: parameters by tensor name, after the optimiser step; the ratio
                ``|θ − θ_prev| / |θ_prev|`` to the previous call's parameters is recorded.
            **metrics: other numbers to keep (validation loss, accuracy, learning rate...).
        """
        loss = _to_float(loss, "loss")  # first: a bad loss records nothing
        grad_norms = None
        if grads is not None:
            grad_norms = {name: _norm(g) for name, g in _named(grads, "grads").items()}
        update_norms = param_norms = None
        if params is not None:
            update_norms, param_norms = self._update_norms(_named(params, "params"))
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
        loss_value = _to_float(loss, "loss")
        row: dict[str, float] = {}
        if grad_norms:
            norms = {name: float(v) for name, v in grad_norms.items()}
            row["grad_norm"] = _total(norms.values())
            row.update({f"grad_norm/{name}": v for name, v in norms.items()})
        if update_norms and param_norms:
            row.update(_update_ratios(update_norms, param_norms))
        for name, value in metrics.items():
            row[name] = _to_float(value, f"metric {name!r}")
        self._append(loss_value, epoch, step, row)

    def _append(
        self, loss: float, epoch: float | None, step: int | None, row: dict[str, float]
    ) -> None:
        if step is None:
            step = self._steps[-1] + 1 if self._steps else 0
        self._steps.append(int(step))
        self._epochs.append(math.nan if epoch is None else _to_float(epoch, "epoch"))
        self._losses.append(loss)
        self._extra.append(row)
        if self._live is not None:
            self._live.notify()

    def _update_norms(self, params: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
        current = {name: np.array(to_numpy(p), dtype=np.float64) for name, p in params.items()}
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
        ``grad_norm/<name>`` and ``update_ratio/<name>`` columns when recorded."""
        frame = pd.DataFrame(
            {
                "step": np.asarray(self._steps, dtype=np.int64),
                "epoch": np.asarray(self._epochs, dtype=np.float64),
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

    # ------------------------------------------------------------------ display

    def summary(self) -> str:
        """Plain-text summary: size of the run, loss, verdict and stalls."""
        if not self._losses:
            return "LossHistory: nothing logged yet"
        return f"{self.status_line()}\n{self.report.summary()}"

    def status_line(self) -> str:
        """One line: steps, epochs, last and best loss, verdict and number of stalls."""
        if not self._losses:
            return "LossHistory: nothing logged yet"
        losses = self.losses
        finite = losses[np.isfinite(losses)]
        parts = [f"LossHistory: {plural(len(self), 'step')}"]
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

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/plain": self.summary(), "text/html": self._repr_html_()}

    def _repr_html_(self) -> str:
        if not self._losses:
            return "<p><b>LossHistory</b>: nothing logged yet</p>"
        from nbgradcheck.views.lossplot import figure_to_png, plot_loss

        png = base64.b64encode(figure_to_png(plot_loss(self))).decode("ascii")
        return (
            '<div class="nbgradcheck-losshistory">'
            f"<p>{html.escape(self.status_line())}</p>"
            f'<img src="data:image/png;base64,{png}" alt="loss curve"/>'
            f"{_stall_table_html(self.report)}</div>"
        )

    # ------------------------------------------------------------------ live view

    def live(self, *, every: float = 1.0, mode: str = "auto") -> LossHistory:
        """Show this history live while it is logged, updating in place.

        In a notebook one display (plot and stall table) is updated at most once every
        ``every`` seconds, through a display handle: no flicker, and the cell's other
        output stays. Elsewhere a one-line text summary is printed at the same rate.
        ``mode`` is ``"auto"``, ``"display"`` or ``"text"``. Use as a context manager, or
        call :meth:`finish`, to show the final state; in IPython this also happens when
        the cell ends. Returns ``self``.
        """
        if every < 0:
            raise ValueError(f"every must be >= 0 seconds, got {every}")
        self._live = LiveDisplay(self, every=every, output=_live_output(mode))
        return self

    def finish(self) -> None:
        """Show the final state of the live view and stop updating it."""
        if self._live is not None:
            self._live.flush()
            self._live.close()
            self._live = None

    def __enter__(self) -> LossHistory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()

    @classmethod
    def from_losses(
        cls,
        losses: Any,
        *,
        epochs: Any = None,
        stall_options: Mapping[str, Any] | None = None,
    ) -> LossHistory:
        """A history holding ``losses`` (one per step) and optionally their epochs."""
        frame = pd.DataFrame({"loss": as_loss_array(losses, "losses")})
        if epochs is not None:
            epoch_values = as_loss_array(epochs, "epochs")
            if epoch_values.size != len(frame):
                raise ValueError(
                    f"epochs has {epoch_values.size} values but losses has {len(frame)}"
                )
            frame["epoch"] = epoch_values
        return cls.from_frame(frame, stall_options=stall_options)

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, *, stall_options: Mapping[str, Any] | None = None
    ) -> LossHistory:
        """A history from a DataFrame with a ``loss`` column (as :meth:`to_frame` gives):
        ``epoch`` and ``step`` columns are used when present, other numeric columns
        (``grad_norm``, ``grad_norm/<name>``, metrics) are kept."""
        if "loss" not in frame.columns:
            raise ValueError(f"the DataFrame needs a 'loss' column; got {list(frame.columns)}")
        losses = as_loss_array(frame["loss"], "loss column")
        history = cls(stall_options=stall_options)
        history._losses = losses.tolist()
        steps = frame["step"] if "step" in frame else np.arange(losses.size)
        history._steps = [int(v) for v in as_loss_array(steps, "step column")]
        epochs = frame["epoch"] if "epoch" in frame else np.full(losses.size, math.nan)
        history._epochs = as_loss_array(epochs, "epoch column").tolist()
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


def _stall_table_html(report: StallReport) -> str:
    if report.table.empty:
        return "<p>No stalls.</p>"
    table = report.table.copy()
    table.index = pd.RangeIndex(1, len(table) + 1, name="stall")
    return table.to_html(
        float_format=lambda v: f"{v:.4g}", na_rep="–", classes="nbgradcheck-stalls"
    )


# ---------------------------------------------------------------------------- live output


class _DisplayOutput:
    """Shows the history in one IPython display, updated in place through its handle."""

    def __init__(self) -> None:
        self.handle: Any = None
        self._registered_shell: Any = None

    def show(self, history: LossHistory) -> None:
        from IPython.display import display

        if self.handle is None:
            self.handle = display(history, display_id=True)
        else:
            self.handle.update(history)

    def new_cell(self) -> None:
        """A new cell's logs start a new display (in that cell)."""
        self.handle = None


class _TextOutput:
    """Prints the status line of the history (outside notebooks)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def show(self, history: LossHistory) -> None:
        print(history.status_line(), file=self.stream or sys.stdout, flush=True)

    def new_cell(self) -> None:
        """Nothing to reset for printed lines."""


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def _live_output(mode: str) -> _DisplayOutput | _TextOutput:
    if mode not in ("auto", "display", "text"):
        raise ValueError(f"mode must be 'auto', 'display' or 'text', got {mode!r}")
    if mode == "display" or (mode == "auto" and _in_notebook()):
        return _DisplayOutput()
    return _TextOutput()


class LiveDisplay:
    """Rate-bounded live view of a :class:`LossHistory`.

    ``output`` has ``show(history)`` and ``new_cell()``; ``clock`` returns seconds. The
    first log is shown at once, later ones at most once per ``every`` seconds; ``flush``
    shows whatever is pending. In IPython, the pending state is flushed when the running
    cell ends, and the next cell's logs open a new display.
    """

    def __init__(
        self,
        history: LossHistory,
        *,
        every: float,
        output: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.history = history
        self.every = every
        self.output = output
        self.clock = clock
        self.updates = 0
        self._last: float | None = None
        self._pending = False
        self._shell: Any = None

    def notify(self) -> None:
        """A step was logged: show it now if the last update is old enough."""
        self._pending = True
        self._watch_cell_end()
        now = self.clock()
        if self._last is None or now - self._last >= self.every:
            self._show(now)

    def flush(self) -> None:
        """Show the latest state if it has not been shown yet."""
        if self._pending:
            self._show(self.clock())

    def close(self) -> None:
        """Stop listening to IPython's cell events."""
        if self._shell is not None:
            self._shell.events.unregister("post_run_cell", self._after_cell)
            self._shell = None

    def _show(self, now: float) -> None:
        self.output.show(self.history)
        self.updates += 1
        finished = self.clock()
        # the next update waits `every` seconds of training, and at least as long as this
        # one took to draw: drawing never takes more than half of the time
        self._last = finished + max(0.0, finished - now - self.every)
        self._pending = False

    def _watch_cell_end(self) -> None:
        if self._shell is not None:
            return
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
        if shell is not None:
            shell.events.register("post_run_cell", self._after_cell)
            self._shell = shell

    def _after_cell(self, result: Any = None) -> None:
        self.flush()
        self.output.new_cell()
        self._last = None
        self.close()
