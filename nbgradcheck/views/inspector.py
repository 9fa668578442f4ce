"""The inspector: an ipywidgets app to explore a GradCheckResult.

A tensor selector (worst first, with verdict badges), the heatmap of the selected tensor
with a scale toggle and a threshold that highlights the elements above it, the worst
elements, what the result says about the tensor, and controls that re-check the
selected tensor with another step or method. Every view reads the result's stored
verdicts and diagnoses; the only computation is the re-check (``result.recheck``), which
runs the check again.

The worst elements are ranked by the error the scale plots (relative on the log scale,
absolute otherwise), in one order everywhere (``TensorCheck.worst_first``): the first row
of the table is the element named as worst and the one boxed in the heatmap.

Where widgets cannot render (a terminal, an exported notebook) the inspector displays as
the result's static report.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd

from nbgradcheck.core.evaluate import takes_argument
from nbgradcheck.core.result import CheckResult, TensorCheck
from nbgradcheck.core.schemes import METHODS
from nbgradcheck.core.verdict import VERDICT_ORDER
from nbgradcheck.errors import GradCheckError
from nbgradcheck.views.colours import FAILING_COLOUR, verdict_colour
from nbgradcheck.views.figures import SCALE_ERRORS, figure_png, heatmap
from nbgradcheck.views.tables import elements_frame

BADGES = {"correct": "✔", "ok": "✔", "suspicious": "⚠", "wrong": "✘", "empty": "…"}
SCALES = (("log relative", "log"), ("absolute", "abs"), ("signed", "signed"))
# The error column each scale plots: the threshold applies to it, the worst come first by it.
SCALE_COLUMNS = SCALE_ERRORS
THRESHOLD_LABELS = {"rel_error": "highlight rel. error >", "abs_error": "highlight |a − n| >"}
STEP_CHOICES = ("auto", 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10)
WORST_ROWS = 10
HIGHLIGHT = "background: #ffd8d8"  # rows of the worst-elements table above the threshold
HEATMAP_DPI = 90


def inspect(result: CheckResult) -> Inspector:
    """The inspector widget for ``result``, a :class:`nbgradcheck.GradCheckResult` (it
    calls its ``recheck`` and ``_repr_mimebundle_``); shown as the static report where
    widgets cannot render."""
    return Inspector(result)


class Inspector(widgets.VBox):
    """The inspector app. Its state is public for tests and for users' own callbacks.

    Attributes:
        result: the inspected result.
        latest: for each tensor name, the result its views show (the newest re-check).
        selector, scale, threshold, step, method, recheck_button: the controls.
        figure: the matplotlib Figure of the heatmap shown in ``heatmap``.
        worst_elements: the DataFrame shown in ``table``.
        table, diagnosis, status: HTML widgets.
    """

    def __init__(self, result: CheckResult) -> None:
        super().__init__()
        self.result = result
        self.latest: dict[str, CheckResult] = dict.fromkeys(result.names, result)
        self.figure: Any = None
        self.relabelling = False
        self.worst_elements = pd.DataFrame()
        self.selector = widgets.Select(
            rows=min(len(result.names), 8), layout=widgets.Layout(width="20em")
        )
        self.scale = widgets.ToggleButtons(
            options=SCALES, value="log", style={"button_width": "7.5em"}
        )
        self.threshold = widgets.FloatLogSlider(
            value=result.tol,
            base=10,
            min=-16,
            max=2,
            step=0.5,
            readout_format=".0e",
            continuous_update=False,
            style={"description_width": "initial"},
        )
        self.heatmap = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.table = widgets.HTML()
        self.diagnosis = widgets.HTML()
        compact = {"description_width": "initial"}
        self.step = widgets.Dropdown(
            options=step_options(result.eps),
            value=result.eps,
            description="ε",
            style=compact,
            layout=widgets.Layout(width="8em"),
        )
        self.method = widgets.Dropdown(
            options=METHODS,
            value=result.method,
            description="method",
            style=compact,
            layout=widgets.Layout(width="13em"),
        )
        self.recheck_button = widgets.Button(
            icon="refresh", disabled=not result.rerun, layout=widgets.Layout(width="auto")
        )
        self.status = widgets.HTML()
        self.output = widgets.Output()
        self.children = self.arrange()
        self.refresh_selector(worst_name(result))
        self.selector.observe(self.on_select, names="value")
        self.scale.observe(self.show_tensor, names="value")
        self.threshold.observe(self.show_highlights, names="value")
        self.recheck_button.on_click(self.recheck_selected)
        self.show_tensor()

    def arrange(self) -> list[widgets.Widget]:
        header = widgets.HTML(header_html(self.result))
        left = widgets.VBox(
            [
                widgets.HTML("<b>Tensors</b> (worst first)"),
                self.selector,
                widgets.HTML("<b>Re-check the selected tensor</b>"),
                widgets.HBox([self.step, self.method]),
                self.recheck_button,
                self.status,
                self.output,
            ],
            layout=widgets.Layout(width="24em"),
        )
        right = widgets.VBox([widgets.HBox([self.scale, self.threshold]), self.heatmap])
        lower = widgets.HBox([self.table, self.diagnosis])
        self.diagnosis.layout = widgets.Layout(margin="0 0 0 2em", max_width="40em")
        return [header, widgets.HBox([left, right]), lower]

    # -- what is shown ------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.selector.value

    @property
    def tensor(self) -> TensorCheck:
        """The selected tensor's measurements, from its newest check."""
        return self.latest[self.name].tensor(self.name)

    @property
    def error_column(self) -> str:
        return SCALE_COLUMNS[self.scale.value]

    def on_select(self, _change: Any) -> None:
        if not self.relabelling:
            self.show_tensor()

    def show_tensor(self, _change: Any = None) -> None:
        """Redraw every view of the selected tensor."""
        self.recheck_button.description = f"Re-check {self.name}"
        self.threshold.description = THRESHOLD_LABELS[self.error_column]
        self.diagnosis.value = diagnosis_html(
            self.latest[self.name],
            self.name,
            self.latest[self.name] is not self.result,
            self.error_column,
        )
        self.show_highlights()

    def show_highlights(self, _change: Any = None) -> None:
        """Redraw the heatmap and the worst-elements table for the current threshold."""
        result, threshold = self.latest[self.name], self.threshold.value
        self.figure = heatmap(
            result, self.name, self.scale.value, highlight_above=threshold, dpi=HEATMAP_DPI
        )
        self.heatmap.value = figure_png(self.figure)
        self.worst_elements = elements_frame(self.tensor, sort_by=self.error_column)
        self.table.value = worst_table_html(
            self.worst_elements, self.error_column, threshold, self.tensor.name
        )

    def refresh_selector(self, name: str) -> None:
        """Tensor labels with their newest verdicts, worst first; ``name`` stays selected."""
        checks = [self.latest[n].tensor(n) for n in self.result.names]
        options = [(tensor_label(t), t.name) for t in sorted(checks, key=severity)]
        self.relabelling = True
        try:
            self.selector.options = options
            self.selector.value = name
        finally:
            self.relabelling = False

    # -- re-checking --------------------------------------------------------------------
    def recheck_selected(self, _button: Any = None) -> None:
        """Re-run the check of the selected tensor with the chosen step and method."""
        name, step, method = self.name, self.step.value, self.method.value
        before = self.tensor
        self.recheck_button.disabled = True
        self.status.value = f"re-checking {html.escape(name)}…"
        # The progress bar goes to the Output widget. In a kernel, `with output:` would
        # swallow an exception into it, so errors are caught inside and shown as status.
        with self.output:
            try:
                new = recheck_tensor(self.result, name, eps=step, method=method)
            except Exception as error:
                new, self.status.value = None, error_html(error)
            finally:
                self.recheck_button.disabled = False
        if new is None:
            return
        self.latest[name] = new
        after = new.tensor(name)
        self.status.value = recheck_html(name, new, before, after)
        self.refresh_selector(name)
        self.show_tensor()

    # -- display --------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The widget view, with the static report for frontends that cannot show it."""
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle.update(self.result._repr_mimebundle_())
        return bundle


# -- re-checking one tensor -------------------------------------------------------------------


def recheck_tensor(result: CheckResult, name: str, **changes: Any) -> CheckResult:
    """Re-run ``result``'s check on tensor ``name`` only, with ``changes`` (eps, method…).

    The loss still sees every parameter; only ``name`` is perturbed, against the analytic
    gradient the result already holds. Parameter structures other than a dict or a list of
    arrays are re-checked whole.
    """
    if not result.rerun:
        raise GradCheckError("this result holds no loss to re-run (loaded from JSON?)")
    subset = parameter_subset(result.rerun["loss"], result.rerun["params"], result.names, name)
    if len(result.tensors) == 1 or subset is None:
        return result.recheck(**changes)
    loss, params = subset
    grads = {name: result.tensor(name).analytic_full}
    return result.recheck(loss=loss, params=params, grads=grads, **changes)


def parameter_subset(
    loss: Callable[..., Any], params: Any, names: list[str], name: str
) -> tuple[Callable[..., Any], dict[str, Any]] | None:
    """``(loss, {name: array})``: the loss still receives the whole structure."""
    if isinstance(params, Mapping):
        slot: Any = next(key for key in params if str(key) == name)
    elif isinstance(params, Sequence) and not isinstance(params, (str, bytes)):
        slot = names.index(name)
    else:
        return None
    array = params[slot]
    if not isinstance(array, np.ndarray):  # framework tensors: re-check the whole set
        return None
    if not takes_argument(loss):
        return loss, {name: array}

    def loss_of_subset(subset: dict[str, Any]) -> Any:
        if subset[name] is array:
            return loss(params)
        return loss(with_item(params, slot, subset[name]))

    return loss_of_subset, {name: array}


def with_item(params: Any, slot: Any, value: Any) -> Any:
    """A copy of ``params`` (dict, list or tuple) with ``params[slot]`` replaced."""
    if isinstance(params, Mapping):
        return {**params, slot: value}
    items = list(params)
    items[slot] = value
    return tuple(items) if isinstance(params, tuple) else items


# -- pieces of the views ------------------------------------------------------------------------


def severity(tensor: TensorCheck) -> tuple[int, float]:
    """Sort key: worst verdict first, then largest difference."""
    difference = tensor.difference
    return (
        -VERDICT_ORDER.index(tensor.verdict),
        -difference if difference == difference else np.inf,
    )


def worst_name(result: CheckResult) -> str:
    return min(result.tensors, key=severity).name


def tensor_label(tensor: TensorCheck) -> str:
    difference = tensor.difference
    number = f"{difference:.1e}" if difference == difference else "not checked"
    return f"{BADGES[tensor.verdict]} {tensor.name} · {tensor.verdict} · {number}"


def format_step(eps: float | str) -> str:
    """'1e-6' for 1e-6, 'auto' for 'auto'."""
    if isinstance(eps, str):
        return eps
    return np.format_float_scientific(eps, trim="-", exp_digits=1)


def step_options(eps: float | str) -> list[tuple[str, Any]]:
    choices = list(STEP_CHOICES)
    if eps not in choices:
        choices.append(eps)
    numbers = sorted((c for c in choices if c != "auto"), reverse=True)
    return [("auto", "auto")] + [(format_step(c), c) for c in numbers]


def verdict_badge(verdict: str) -> str:
    colour = verdict_colour(verdict)
    return (
        f'<span style="background:{colour}; color:white; border-radius:3px; '
        f'padding:0 6px; font-weight:600">{BADGES[verdict]} {verdict}</span>'
    )


def header_html(result: CheckResult) -> str:
    lines = html.escape(result.summary()).splitlines()
    return f"<div>{verdict_badge(result.verdict)} {'<br>'.join(lines)}</div>"


def worst_table_html(elements: pd.DataFrame, column: str, threshold: float, name: str) -> str:
    """The worst elements (by ``column``), rows above ``threshold`` highlighted."""
    above = int((elements[column] > threshold).sum())
    caption = (
        f"<b>Worst elements of {html.escape(name)}</b> — {above} of {len(elements)} "
        f"checked above {threshold:.0e} ({column.replace('_', ' ')})"
    )
    if elements.empty:
        return caption
    shown = elements.head(WORST_ROWS).copy()
    shown["index"] = [f"{name}[{', '.join(map(str, i))}]" for i in shown["index"]]
    if not shown["kink"].any():
        shown = shown.drop(columns="kink")
    styler = shown.style.hide(axis="index").format(
        {c: "{:.3e}" for c in ("analytic", "numeric", "abs_error", "rel_error")}
    )
    styler = styler.apply(
        lambda row: [HIGHLIGHT if row[column] > threshold else ""] * len(row), axis=1
    )
    styler = styler.set_table_styles(
        [
            {
                "selector": "td, th",
                "props": "padding: 1px 8px; font-size: 12px; white-space: nowrap;",
            }
        ]
    )
    return f"<div>{caption}{styler.to_html()}</div>"


def diagnosis_html(result: CheckResult, name: str, rechecked: bool, by: str = "abs_error") -> str:
    """What the result says about tensor ``name``: verdict, worst element (by ``by``),
    kinks, the diagnosis, notes."""
    tensor = result.tensor(name)
    shape = "×".join(map(str, tensor.shape)) or "scalar"
    lines = [
        f"{verdict_badge(tensor.verdict)} <b>{html.escape(name)}</b> ({shape}, "
        f"{np.dtype(tensor.dtype).name}): relative difference {tensor.difference:.2e} "
        f"(tolerance {tensor.tol:g}, round-off floor {tensor.floor:.1e})",
        f"checked {tensor.checked} of {tensor.size} elements "
        f"({result.method}, ε={format_step(result.eps)})",
    ]
    lines += worst_element_lines(tensor, by)
    if tensor.kinks:
        lines.append(f"{tensor.kinks} element(s) crossed a kink and are not counted")
    if tensor.diagnosis.label:
        lines.append(f"<b>diagnosis:</b> {html.escape(tensor.diagnosis.label)}")
    if rechecked:
        lines.append("<i>numbers from the re-check</i>")
    lines += [f"note: {html.escape(note)}" for note in result.notes]
    return "<br>".join(lines)


def worst_element_lines(tensor: TensorCheck, by: str = "abs_error") -> list[str]:
    """The worst counted element by ``by``: the first row of the worst-elements table that
    is not an excused kink."""
    position = tensor.worst_position_by(by)
    if position is None:
        return ["no element evaluated"]
    analytic, numeric = tensor.analytic[position], tensor.numeric[position]
    line = (
        f"worst element {html.escape(tensor.label(tensor.indices[position]))}: analytic "
        f"{analytic:.6g}, numeric {numeric:.6g} (|a − n| = {abs(analytic - numeric):.2e})"
    )
    if numeric != 0 and analytic != 0:
        line += f"; analytic ÷ numeric = {analytic / numeric:.4g}"
    return [line]


def recheck_html(name: str, result: CheckResult, before: TensorCheck, after: TensorCheck) -> str:
    return (
        f"re-checked {html.escape(name)} ({result.method}, ε={format_step(result.eps)}):"
        f"<br>{before.difference:.2e} {before.verdict} → {after.difference:.2e} "
        f"{verdict_badge(after.verdict)}"
    )


def error_html(error: BaseException) -> str:
    message = html.escape(f"{type(error).__name__}: {error}")
    return f'<span style="color:{FAILING_COLOUR}">re-check failed: {message}</span>'
