"""Views of a preflight report: the checklist as text and HTML, and its small plots.

They only read what the checks measured and decided (the ``checks`` table, the overfit
curve, the per-layer activation and gradient tables with their per-row status); no
verdict is recomputed here.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from nbgradcheck.views.figures import figure_png

STATUS_MARKS = {"pass": "✓", "warn": "⚠", "fail": "✗", "skip": "–"}
STATUS_COLOURS = {"pass": "#1a7f37", "warn": "#b35900", "fail": "#cf222e", "skip": "#6e7781"}
BAR_COLOURS = {"pass": "#8fbc8f", "warn": "#fdae61", "fail": "#e31a1c"}
PANEL_SIZE = (3.4, 2.4)  # inches per plot
# Margins inside a panel, in inches: room for tick labels (layer names on the left of bar
# plots), the axis label and the title. Fixed, because constrained layout costs 3× the drawing.
LEFT_MARGIN = {"curve": 0.75, "bars": 1.25}
BOTTOM_MARGIN, TOP_MARGIN, RIGHT_MARGIN = 0.45, 0.3, 0.25
PLOT_DPI = 80
MAX_BARS = 16  # layers drawn per plot (the worst kept when there are more)


def headline(checks: pd.DataFrame, framework: str, batch_size: int, seconds: float) -> str:
    """One line: PASSED / FAILED (which checks) / PASSED with warnings."""
    failed = list(checks.index[checks["status"] == "fail"])
    warned = list(checks.index[checks["status"] == "warn"])
    model = {"torch": "PyTorch", "numpy": "NumPy"}.get(framework, framework)
    scope = f"{len(checks)} checks, {model} model, batch of {batch_size}, {seconds:.1f} s"
    if failed:
        return f"Preflight FAILED: {', '.join(failed)} ({scope})"
    if warned:
        return f"Preflight passed with warnings: {', '.join(warned)} ({scope})"
    return f"Preflight PASSED ({scope})"


def checklist_text(checks: pd.DataFrame, title: str) -> str:
    """The checklist as plain text: one line per check, its finding indented below."""
    width = max(len(name) for name in checks.index)
    lines = [title]
    for name, row in checks.iterrows():
        lines.append(f"  {STATUS_MARKS[row['status']]} {name:<{width}}  {row['status']}")
        lines.append(f"      {row['finding']}")
    return "\n".join(lines)


def checklist_html(checks: pd.DataFrame, title: str, figure: Figure | None) -> str:
    """The checklist as an HTML fragment (a pandas Styler table) and the plots as a PNG."""
    table = checks[["status", "finding", "seconds"]].copy()
    table.insert(0, "check", table.index)
    table["status"] = [f"{STATUS_MARKS[s]} {s}" for s in table["status"]]
    styler = table.style.hide(axis="index").format({"seconds": "{:.2f}"}, escape="html")
    styler = styler.map(status_cell, subset=["status"])
    styler = styler.set_table_styles(
        [
            {"selector": "td, th", "props": "padding: 2px 8px; font-size: 12px;"},
            {"selector": "td.col2", "props": "text-align: left; max-width: 48em;"},
            {"selector": "td.col0", "props": "font-family: monospace;"},
        ]
    )
    worst = next((s for s in ("fail", "warn") if (checks["status"] == s).any()), "pass")
    colour = STATUS_COLOURS[worst]
    parts = [
        f'<p style="font-weight: 600; color: {colour}">{html.escape(title)}</p>',
        styler.to_html(),
    ]
    if figure is not None:
        png = base64.b64encode(figure_png(figure, dpi=PLOT_DPI)).decode("ascii")
        parts.append(f'<img alt="preflight plots" src="data:image/png;base64,{png}"/>')
    return '<div class="nbgradcheck-preflight">\n' + "\n".join(parts) + "\n</div>"


def status_cell(text: str) -> str:
    status = text.split()[-1]
    return f"color: {STATUS_COLOURS.get(status, '')}; font-weight: 600; white-space: nowrap"


# -- plots ----------------------------------------------------------------------------------


def preflight_figure(
    curve: Sequence[float],
    learning_rate: float | None,
    activations: pd.DataFrame,
    gradients: pd.DataFrame,
) -> Figure | None:
    """Up to three small plots: the overfit curve, the dead share of each activation
    layer, each parameter's gradient norm. None when there is nothing to draw."""
    drawers = []
    if len(curve):
        drawers.append(("curve", lambda ax: draw_overfit(ax, curve, learning_rate)))
    if len(activations):
        drawers.append(("bars", lambda ax: draw_dead_units(ax, activations)))
    if len(gradients):
        drawers.append(("bars", lambda ax: draw_gradient_norms(ax, gradients)))
    if not drawers:
        return None
    width, height = PANEL_SIZE
    figure = Figure(figsize=(width * len(drawers), height))
    for position, (kind, draw) in enumerate(drawers):
        draw(figure.add_axes(panel_rect(position, len(drawers), LEFT_MARGIN[kind])))
    return figure


def panel_rect(position: int, panels: int, left_margin: float) -> tuple[float, ...]:
    """[left, bottom, width, height] of panel ``position``, in figure fractions."""
    width, height = PANEL_SIZE
    total = width * panels
    left = position * width + left_margin
    return (
        left / total,
        BOTTOM_MARGIN / height,
        (width - left_margin - RIGHT_MARGIN) / total,
        (height - BOTTOM_MARGIN - TOP_MARGIN) / height,
    )


def draw_overfit(ax: Axes, curve: Sequence[float], learning_rate: float | None) -> None:
    values = np.asarray(curve, dtype=float)
    finite = values[np.isfinite(values)]
    ax.plot(np.arange(len(values)), values, color="tab:blue", linewidth=1.2)
    if finite.size and finite.min() > 0 and finite.max() > 10 * finite.min():
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
    rate = f", Adam lr={learning_rate:g}" if learning_rate else ""
    ax.set_title(f"overfit_batch{rate}", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("loss on this batch", fontsize=8)
    ax.tick_params(labelsize=7)


def draw_dead_units(ax: Axes, activations: pd.DataFrame) -> None:
    shown = worst_rows(activations, "dead_share")
    positions = np.arange(len(shown))
    colours = [BAR_COLOURS.get(s, BAR_COLOURS["pass"]) for s in shown["status"]]
    ax.barh(positions, shown["dead_share"], color=colours)
    ax.set_yticks(positions, [short(n) for n in shown.index], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_title("dead_units: share never active", fontsize=9)
    ax.tick_params(labelsize=7)


def draw_gradient_norms(ax: Axes, gradients: pd.DataFrame) -> None:
    gradients = failing_first_rows(gradients)
    norms = gradients["grad_norm"].astype(float)
    drawable = norms.where(np.isfinite(norms) & (norms > 0))
    positions = np.arange(len(gradients))
    colours = [BAR_COLOURS.get(s, BAR_COLOURS["pass"]) for s in gradients["status"]]
    lowest = float(drawable.min()) if drawable.notna().any() else 1.0
    floor = lowest / 10
    ax.barh(positions, drawable.fillna(floor), color=colours, left=0)
    ax.set_xscale("log")
    highest = float(drawable.max()) if drawable.notna().any() else 1.0
    ax.set_xlim(10 ** math.floor(math.log10(floor)), 10 ** math.ceil(math.log10(highest)))
    plain_log_ticks(ax.xaxis)
    for position, (norm, status) in enumerate(zip(norms, gradients["status"])):
        if status == "fail":
            label = "none" if math.isnan(norm) else f"{norm:g}"
            ax.text(floor, position, f" {label}", va="center", fontsize=7, color="#cf222e")
    ax.set_yticks(positions, [short(n) for n in gradients.index], fontsize=7)
    ax.invert_yaxis()
    ax.set_title("gradient_flow: gradient norm", fontsize=9)
    ax.tick_params(labelsize=7)


def plain_log_ticks(axis) -> None:
    """Log-axis labels as plain text ('1e-03'): mathtext labels cost most of the drawing."""
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0e}"))
    axis.set_minor_formatter(NullFormatter())


def failing_first_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """At most MAX_BARS rows, in order: every failing row, then the first others."""
    if len(frame) <= MAX_BARS:
        return frame
    failing = frame["status"] == "fail"
    room = max(MAX_BARS - int(failing.sum()), 0)
    keep = failing | (~failing & (failing.eq(False).cumsum() <= room))
    return frame[keep]


def worst_rows(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    if len(frame) <= MAX_BARS:
        return frame
    keep = frame[column].nlargest(MAX_BARS).index
    return frame.loc[[name for name in frame.index if name in set(keep)]]


def short(name: str, most: int = 22) -> str:
    return name if len(name) <= most else "…" + name[-(most - 1) :]
