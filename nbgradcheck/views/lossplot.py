"""The training-stalls view: loss figures with the stalls marked, and the stall table.

:func:`plot_loss` draws raw and smoothed loss, shades stalled spans (labelled), the
converged tail and divergence, marks recovery points, and adds a panel of per-tensor
gradient norms when they were recorded (matplotlib, no pyplot state: Agg-safe).
:func:`history_html` is the rich HTML of a recorded run: status line, figure and the
stall table (:func:`stall_table_html`, which scrolls sideways instead of being cut).
Epochs and steps are shown as the user logged them, whole numbers as integers.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from nbgradcheck.training.history import LossRecorder
from nbgradcheck.training.stalls import StallReport, analyze_stalls, plural
from nbgradcheck.training.values import as_series
from nbgradcheck.views.figures import figure_png

__all__ = [
    "figure_to_png",
    "history_html",
    "loss_frame_from_dataframe",
    "plot_loss",
    "stall_table_html",
]

STALL_COLOR = "tab:orange"
CONVERGED_COLOR = "tab:green"
DIVERGED_COLOR = "tab:red"
_MAX_RAW_POINTS = 20_000


def figure_to_png(figure: Figure, dpi: int = 96) -> bytes:
    """PNG bytes of ``figure`` (loss plots render at screen resolution)."""
    return figure_png(figure, dpi=dpi)


# ---------------------------------------------------------------------------- inputs


def _history_inputs(history: LossRecorder) -> tuple[pd.DataFrame, dict[str, Any]]:
    return history.to_frame(), dict(history.stall_options)


def _frame_from_values(values: Any, epochs: Any, grad_norms: Any) -> pd.DataFrame:
    if isinstance(values, pd.DataFrame):
        frame = loss_frame_from_dataframe(values)
    else:
        losses = as_series(values, "losses")
        frame = pd.DataFrame({"step": np.arange(losses.size), "loss": losses})
    if epochs is not None:
        epoch_values = as_series(epochs, "epochs")
        if epoch_values.size != len(frame):
            raise ValueError(f"epochs has {epoch_values.size} values but losses has {len(frame)}")
        frame["epoch"] = epoch_values
    if grad_norms is not None:
        frame = pd.concat([frame, _grad_columns(grad_norms, len(frame))], axis=1)
    return frame


def loss_frame_from_dataframe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``loss`` column: itself, or its only numeric column renamed."""
    if "loss" in frame.columns:
        return frame.reset_index(drop=True)
    numeric = frame.select_dtypes("number").columns
    if len(numeric) == 1:
        return pd.DataFrame({"loss": _floats(frame[numeric[0]])})
    raise ValueError(
        "a DataFrame needs a 'loss' column (or exactly one numeric column); "
        f"got columns {list(frame.columns)}"
    )


def _grad_columns(grad_norms: Any, length: int) -> pd.DataFrame:
    named = grad_norms if isinstance(grad_norms, Mapping) else {"total": grad_norms}
    columns = {}
    for name, values in named.items():
        array = as_series(values, f"grad_norms[{name!r}]")
        if array.size != length:
            raise ValueError(
                f"grad_norms[{name!r}] has {array.size} values but losses has {length}"
            )
        columns[f"grad_norm/{name}"] = array
    frame = pd.DataFrame(columns)
    frame.insert(0, "grad_norm", np.sqrt(np.nansum(frame.to_numpy() ** 2, axis=1)))
    return frame


def _floats(column: pd.Series) -> np.ndarray:
    """A column as float64 (nullable integers too: ``<NA>`` becomes NaN)."""
    return column.to_numpy(dtype=np.float64, na_value=np.nan)


def _epochs(frame: pd.DataFrame) -> pd.Series:
    """Epoch of every row, missing ones taken from their neighbours."""
    return pd.Series(_floats(frame["epoch"]), index=frame.index).ffill().bfill()


def _report_for(frame: pd.DataFrame, options: Mapping[str, Any]) -> StallReport:
    kwargs: dict[str, Any] = {"losses": _floats(frame["loss"])}
    if "epoch" in frame and frame["epoch"].notna().any():
        kwargs["epochs"] = _epochs(frame).to_numpy()
    elif "step" in frame:
        kwargs["steps"] = _floats(frame["step"])
    for column, name in (("grad_norm", "grad_norms"), ("update_ratio", "update_ratios")):
        if column in frame:
            kwargs[name] = _floats(frame[column])
    return analyze_stalls(**kwargs, **options)


# ---------------------------------------------------------------------------- geometry


def _spacing(labels: np.ndarray) -> float:
    gaps = np.diff(np.unique(labels))
    return float(np.median(gaps)) if gaps.size else 1.0


def _raw_positions(frame: pd.DataFrame, report: StallReport) -> np.ndarray:
    """x of every logged step: inside its epoch when epochs are known, else its step."""
    if report.unit_name != "epoch":
        if "step" in frame:
            return _floats(frame["step"])
        return np.arange(len(frame), dtype=np.float64)
    epochs = _epochs(frame)
    width = _spacing(epochs.to_numpy())
    grouped = epochs.groupby(epochs, sort=False)
    within = grouped.cumcount().to_numpy()
    counts = grouped.transform("size").to_numpy()
    return epochs.to_numpy() + width * ((within + 0.5) / counts - 0.5)


def _span_edges(report: StallReport, start: Any, end: Any) -> tuple[float, float]:
    half = 0.5 * _spacing(_floats(report.units["x_first"]))
    return float(start) - half, float(end) + half


def _decimated(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if x.size <= _MAX_RAW_POINTS:
        return x, y
    keep = np.linspace(0, x.size - 1, _MAX_RAW_POINTS).astype(np.int64)
    return x[keep], y[keep]


# ---------------------------------------------------------------------------- drawing


def _draw_loss(ax: Axes, frame: pd.DataFrame, report: StallReport, log_scale: bool) -> None:
    x_raw = _raw_positions(frame, report)
    loss = _floats(frame["loss"])
    units = report.units
    aggregated = len(units) < len(frame)
    ax.plot(
        *_decimated(x_raw, loss),
        color="tab:blue",
        lw=0.6,
        alpha=0.35 if aggregated else 0.6,
        label="loss per step" if aggregated else "loss",
        gid="raw",
    )
    if aggregated and report.unit_name == "epoch" and len(units) <= 400:
        ax.plot(
            _floats(units["x"]),
            units["loss"],
            "o",
            ms=2.5,
            color="tab:blue",
            label="epoch mean",
            gid="epoch-mean",
        )
    x = _floats(units["x"])
    ax.plot(x, units["smoothed"], color="navy", lw=1.8, label="smoothed", gid="smoothed")
    if log_scale:
        ax.set_yscale("log")
    ax.set_ylabel("loss")


def _shade(ax: Axes, left: float, right: float, color: str, gid: str, alpha: float) -> None:
    ax.axvspan(left, right, color=color, alpha=alpha, lw=0, gid=gid)


def _label_span(ax: Axes, left: float, right: float, text: str, color: str) -> None:
    transform = blended_transform_factory(ax.transData, ax.transAxes)
    ax.text(
        0.5 * (left + right),
        0.98,
        text,
        transform=transform,
        ha="center",
        va="top",
        fontsize=8,
        color=color,
        fontweight="bold",
        gid="span-label",
        clip_on=True,
    )


def _stall_label(number: int, row: Any, width_fraction: float) -> str:
    if width_fraction < 0.06:
        return str(number)
    if width_fraction < 0.14 or row.likely_cause == "unknown":
        return f"stall {number}"
    return f"stall {number}\n{row.likely_cause}"


def _full_xlim(report: StallReport) -> tuple[float, float]:
    units = report.units
    return _span_edges(report, units["x_first"].min(), units["x_last"].max())


def _add_headroom(ax: Axes, fraction: float = 0.2) -> None:
    """Room above the data for the span labels."""
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log":
        ax.set_ylim(lo, hi * (hi / lo) ** fraction)
    else:
        ax.set_ylim(lo, hi + fraction * (hi - lo))


def _draw_spans(ax: Axes, report: StallReport, labels: bool) -> None:
    lo, hi = ax.get_xlim()
    stall_number = 0
    for row in report.table.itertuples(index=False):
        left, right = _span_edges(report, row.start, row.end)
        if row.likely_cause == "divergence":
            _shade(ax, left, right, DIVERGED_COLOR, "diverged", 0.18)
            if labels:
                text = "loss rising" if np.isfinite(row.loss_end) else "NaN/inf"
                _label_span(ax, left, right, text, DIVERGED_COLOR)
            continue
        stall_number += 1
        _shade(ax, left, right, STALL_COLOR, "stall", 0.22)
        if labels:
            text = _stall_label(stall_number, row, (right - left) / (hi - lo))
            _label_span(ax, left, right, text, "saddlebrown")
    if report.converged_span is not None:
        left, right = _span_edges(report, *report.converged_span)
        _shade(ax, left, right, CONVERGED_COLOR, "converged", 0.12)
        if labels:
            _label_span(ax, left, right, "converged", "darkgreen")
    ax.set_xlim(lo, hi)


def _draw_recoveries(ax: Axes, report: StallReport) -> None:
    rows = report.table[report.table["recovered"] & (report.table["likely_cause"] != "divergence")]
    if rows.empty:
        return
    units = report.units.set_index("x_first")
    x = _floats(rows["recovered_at"])
    y = units.loc[rows["recovered_at"], "smoothed"].to_numpy()
    ax.plot(x, y, "v", color="tab:green", ms=8, mec="darkgreen", label="recovery", gid="recovery")


def _draw_grad_norms(ax: Axes, frame: pd.DataFrame, report: StallReport) -> None:
    per_tensor = [c for c in frame.columns if c.startswith("grad_norm/")]
    columns = per_tensor or ["grad_norm"]
    x_raw = _raw_positions(frame, report)
    for column in columns:
        values = _floats(frame[column])
        if report.unit_name == "epoch" and len(report.units) < len(frame):
            x, values = _epoch_means(x_raw, _epochs(frame), values)
        else:
            x, values = _decimated(x_raw, values)
        label = column.removeprefix("grad_norm/") if per_tensor else "total"
        ax.plot(x, values, lw=1.0, label=label, gid="grad-norm")
    ax.set_yscale("log")
    ax.set_ylabel("gradient norm")
    if len(columns) <= 12:
        ax.legend(fontsize=7, ncol=min(len(columns), 4), loc="best", framealpha=0.8)


def _epoch_means(
    x_raw: np.ndarray, epochs: pd.Series, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    grouped = pd.DataFrame({"x": x_raw, "v": values, "e": epochs.to_numpy()}).groupby("e")
    means = grouped.mean()
    return means["x"].to_numpy(), means["v"].to_numpy()


def _title(report: StallReport) -> str:
    return f"{plural(len(report.stalled), 'stall')} · {report.verdict_text()}"


def _auto_log_scale(loss: np.ndarray) -> bool:
    finite = loss[np.isfinite(loss)]
    if finite.size == 0 or np.any(finite <= 0):
        return False
    return float(finite.max() / finite.min()) >= 10.0


def plot_loss(
    history_or_losses: Any,
    *,
    epochs: Any = None,
    grad_norms: Any = None,
    log_scale: bool | None = None,
    show_stalls: bool = True,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    **stall_options: Any,
) -> Figure:
    """Plot a loss history with its stalls.

    Args:
        history_or_losses: a :class:`~nbgradcheck.LossHistory`, a sequence or array of
            losses, a pandas Series, or a DataFrame with a ``loss`` column (and optional
            ``epoch``, ``step``, ``grad_norm/<name>`` columns, as ``LossHistory.to_frame``).
        epochs: epoch of each loss (for plain losses).
        grad_norms: gradient norms (for plain losses): one array, or a dict name → array
            for one line per tensor in the lower panel.
        log_scale: logarithmic loss axis; default when the loss spans a factor of 10.
        show_stalls: shade and label stalls, the converged tail and divergence.
        title: figure title (default: the number of stalls and the verdict).
        figsize: figure size in inches.
        **stall_options: passed to :func:`~nbgradcheck.training.stalls.find_stalls`.

    Returns:
        A :class:`matplotlib.figure.Figure` (not registered with pyplot).
    """
    if isinstance(history_or_losses, LossRecorder):
        if epochs is not None or grad_norms is not None:
            raise ValueError("epochs and grad_norms come from the LossHistory; do not pass them")
        frame, options = _history_inputs(history_or_losses)
        if frame.empty:
            raise ValueError("the LossHistory is empty: log some losses first")
        options.update(stall_options)
    else:
        frame, options = _frame_from_values(history_or_losses, epochs, grad_norms), stall_options
    report = _report_for(frame, options)
    has_grads = "grad_norm" in frame and bool(np.isfinite(frame["grad_norm"]).any())
    figure = Figure(figsize=figsize or (8.5, 5.6 if has_grads else 3.8), layout="constrained")
    axes = figure.subplots(
        2 if has_grads else 1,
        1,
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 2]} if has_grads else None,
    )[:, 0]
    loss_ax = axes[0]
    _draw_loss(
        loss_ax,
        frame,
        report,
        _auto_log_scale(_floats(frame["loss"])) if log_scale is None else log_scale,
    )
    if has_grads:
        _draw_grad_norms(axes[1], frame, report)
    axes[0].set_xlim(*_full_xlim(report))
    if show_stalls:
        if not report.table.empty or report.converged_span is not None:
            _add_headroom(loss_ax)
        for number, ax in enumerate(axes):
            _draw_spans(ax, report, labels=number == 0)
        _draw_recoveries(loss_ax, report)
    loss_ax.legend(fontsize=7, loc="lower left", framealpha=0.8)
    axes[-1].set_xlabel(report.unit_name)
    if report.units["x_first"].dtype == "Int64":  # whole-number epochs or steps
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_title(_title(report) if title is None else title, fontsize=10)
    return figure


def figure_png_base64(figure: Figure) -> str:
    """The figure as a base64 PNG, for an ``<img src="data:...">``."""
    return base64.b64encode(figure_to_png(figure)).decode("ascii")


def stall_table_html(report: StallReport) -> str:
    """The stall table as HTML, numbered ``stall 1, 2, ...`` as in the figure and the text,
    in a box that scrolls sideways instead of being cut off on narrow screens."""
    if report.table.empty:
        return "<p>No stalls.</p>"
    table = report.table.copy()
    table.index = pd.RangeIndex(1, len(table) + 1, name="stall")
    for column in ("start", "end", "recovered_at"):  # to_html shows <NA> whatever na_rep
        table[column] = [_label_or_dash(value) for value in table[column]]
    body = table.to_html(
        float_format=lambda v: f"{v:.4g}", na_rep="–", classes="nbgradcheck-stalls"
    )
    return f'<div class="nbgradcheck-stalls-scroll" style="overflow-x:auto">{body}</div>'


def _label_or_dash(value: Any) -> str:
    if pd.isna(value):
        return "–"
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def history_html(history: LossRecorder) -> str:
    """Rich HTML of a recorded run: its status line, loss figure and stall table."""
    if not len(history):
        return f"<p><b>{type(history).__name__}</b>: nothing logged yet</p>"
    png = figure_png_base64(plot_loss(history))
    return (
        '<div class="nbgradcheck-losshistory">'
        f"<p>{html.escape(history.status_line())}</p>"
        f'<img src="data:image/png;base64,{png}" alt="loss curve"/>'
        f"{stall_table_html(history.report)}</div>"
    )
