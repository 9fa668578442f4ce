"""Views of a GradCheckResult: styled tables, exports and rich notebook display.

``result.table`` stays a plain DataFrame for programs; :meth:`ResultViews.styled_table`
is the same table as a pandas Styler (verdict colours, scientific notation, the
diagnosis column when the result has one), and is what the notebook display shows.

JSON schema (``to_dict`` / ``to_json``), version 1. Stable: fields may be added in a
later version, none is renamed or removed without raising ``schema_version``::

    {
      "schema": "nbgradcheck.core.result", "schema_version": 1, "nbgradcheck_version": "0.1.0",
      "passed": false, "verdict": "wrong", "difference": 0.101, "floor": 3.1e-08,
      "method": "central", "eps": 1e-06,          # or "auto"
      "mode": "full", "tol": 1e-05, "complete": true,
      "n_evaluations": 96, "n_checked": 47, "n_parameters": 47,
      "loss_value": 0.69, "duration_s": 0.01, "failing": ["b1", "W2"],
      "summary": "Gradient check FAILED: ...",    # result.summary(), several lines
      "notes": ["..."],
      "tensors": [
        {"name": "W1", "dtype": "float64", "passed": true, "tol": 1e-05,
         "shape": [5, 4], "size": 20, "checked": 20, "difference": 1.5e-09,
         "max_abs_error": 1.8e-10, "worst_index": [3, 3], "kinks": 0, "floor": 3e-08,
         "verdict": "correct",            # + every further field of the table's row
         "elements": {                     # one entry per checked element; absent when
           "flat_index": [0, 1, ...],      # exported with elements=False
           "value": [...], "analytic": [...], "numeric": [...], "step": [...],
           "loss_plus": [...], "loss_minus": [...], "noise": [...], "kink": [false, ...]}}
      ]
    }

NaN and ±inf are written as ``null`` (so the output is strict JSON), tuples as lists;
``flat_index`` is the C-order index (``np.unravel_index(flat_index, shape)``). The summary
fields are the result's own; a result rebuilt by ``from_dict`` recomputes them from the
elements.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from pandas.io.formats.style import Styler

    from nbgradcheck.api.sweep import EpsSweep
    from nbgradcheck.core.result import GradCheckResult, TensorCheck

SCHEMA = "nbgradcheck.core.result"
SCHEMA_VERSION = 1
# Dark enough for white text on them, distinct enough to tell apart at a glance.
VERDICT_COLOURS = {
    "correct": "#1a7f37",
    "ok": "#5b8c1a",
    "suspicious": "#b35900",
    "wrong": "#cf222e",
    "empty": "#6e7781",
}
# Per-element JSON keys and the TensorCheck arrays they hold.
ELEMENT_FIELDS = {
    "value": "values",
    "analytic": "analytic",
    "numeric": "numeric",
    "step": "step",
    "loss_plus": "loss_plus",
    "loss_minus": "loss_minus",
    "noise": "noise",
}
SCIENTIFIC_COLUMNS = {"difference": "{:.2e}", "max_abs_error": "{:.2e}", "floor": "{:.1e}"}
HTML_MAX_ROWS = 25  # tensors listed in the notebook display (failing ones always)
HTML_MAX_PANELS = 4  # failing tensors drawn in the notebook display's heatmap
HTML_WORST = 5  # worst elements listed in the notebook display
HTML_DPI = 80


class ResultViews:
    """Mixed into GradCheckResult: every view reads the result's numbers, never recomputes."""

    # -- tables ---------------------------------------------------------------------------
    def styled_table(self: GradCheckResult, max_rows: int | None = None) -> Styler:
        """``table`` as a pandas Styler: verdicts coloured, errors in scientific notation.

        ``max_rows`` keeps every failing tensor and fills up with the others, in order.
        """
        table = shown_rows(self.table, self.failing, max_rows).reset_index()
        styler = table.style.format(table_formatters(table), na_rep="—", escape="html")
        styler = styler.hide(axis="index")
        styler = styler.map(verdict_cell, subset=["verdict"])
        styler = styler.apply(verdict_text, subset=["difference"], verdicts=table["verdict"])
        failing = set(self.failing)
        styler = styler.map(
            lambda name: "color: #cf222e; font-weight: 600" if name in failing else "",
            subset=["parameter"],
        )
        styles = [{"selector": "td, th", "props": "padding: 2px 8px; font-size: 12px;"}]
        if "diagnosis" in table.columns:
            column = table.columns.get_loc("diagnosis")
            styles.append(
                {
                    "selector": f"td.col{column}",
                    "props": "text-align: left; white-space: normal; max-width: 36em;",
                }
            )
        return styler.set_table_styles(styles, overwrite=False)

    def worst(
        self: GradCheckResult, k: int = 10, by: str = "abs_error", include_kinks: bool = False
    ) -> pd.DataFrame:
        """The ``k`` elements with the largest error across all tensors, worst first.

        ``by`` is 'abs_error' or 'rel_error'. Kink crossings are left out unless
        ``include_kinks`` (they are excused; ``result.kinks`` lists them).
        """
        import pandas as pd

        if by not in ("abs_error", "rel_error"):
            raise ValueError(f"by must be 'abs_error' or 'rel_error', not {by!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}")
        frames = [worst_of_tensor(t, int(k), by, include_kinks) for t in self.tensors]
        frame = pd.concat(frames, ignore_index=True)
        return frame.sort_values(by, ascending=False, ignore_index=True, kind="stable").head(k)

    def to_frame(self: GradCheckResult) -> pd.DataFrame:
        """Every checked element of every tensor, one row each (long format).

        Columns: parameter, index, flat_index, value, analytic, numeric, abs_error,
        rel_error, step, noise, kink. ``table`` has one row per tensor instead.
        """
        import pandas as pd

        return pd.concat([tensor_elements(t) for t in self.tensors], ignore_index=True)

    # -- exports --------------------------------------------------------------------------
    def to_dict(self: GradCheckResult, elements: bool = True) -> dict[str, Any]:
        """The result as JSON-safe builtins, in the versioned schema of this module.

        ``elements=False`` leaves out the per-element arrays (the summary only).
        """
        from nbgradcheck import __version__

        summary = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "nbgradcheck_version": __version__,
            "passed": self.passed,
            "verdict": self.verdict,
            "difference": self.difference,
            "floor": self.floor,
            "method": self.method,
            "eps": self.eps,
            "mode": self.mode,
            "tol": self.tol,
            "complete": self.complete,
            "n_evaluations": self.n_evaluations,
            "n_checked": self.n_checked,
            "n_parameters": self.n_parameters,
            "loss_value": self.loss_value,
            "duration_s": self.duration_s,
            "failing": self.failing,
            "summary": self.summary(),
            "notes": list(self.notes),
            "tensors": [tensor_dict(t, elements) for t in self.tensors],
        }
        return json_safe(summary)

    def to_json(
        self: GradCheckResult,
        path: str | Path | None = None,
        *,
        elements: bool = True,
        indent: int | None = None,
    ) -> str:
        """``to_dict()`` as strict JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(elements=elements), indent=indent, allow_nan=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GradCheckResult:
        """Rebuild a result saved with ``to_dict()`` (with its elements).

        The loaded result has every number and view; it cannot ``recheck`` or
        ``sweep_eps`` (the loss is not saved), and the analytic gradient is known
        only at the checked elements.
        """
        from nbgradcheck.core.result import GradCheckResult

        validate_schema(data)
        return GradCheckResult(
            [tensor_from_dict(t, data["tol"]) for t in data["tensors"]],
            data["method"],
            data["eps"],
            data["mode"],
            float(data["tol"]),
            int(data["n_evaluations"]),
            as_float(data["loss_value"]),
            complete=bool(data["complete"]),
            notes=list(data["notes"]),
            duration_s=as_float(data["duration_s"]),
        )

    @classmethod
    def from_json(cls, text: str) -> GradCheckResult:
        """Rebuild a result from ``to_json()`` text."""
        return cls.from_dict(json.loads(text))

    def to_html(
        self: GradCheckResult, path: str | Path | None = None, *, heatmap: bool = True
    ) -> str:
        """The notebook display as an HTML fragment: summary, table, worst elements,
        notes and (when tensors fail) their heatmap as an embedded PNG.

        With ``path``, a complete HTML page is also written there.
        """
        table = self.styled_table(max_rows=HTML_MAX_ROWS)
        parts = [
            summary_html(self),
            table.to_html(),
            hidden_rows_html(len(self.tensors) - len(table.data)),
        ]
        if self.failing:
            parts.append(worst_html(self.worst(HTML_WORST)))
        parts.append(notes_html(self.notes))
        if heatmap and self.failing:
            parts.append(heatmap_html(self))
        fragment = "\n".join(p for p in parts if p)
        fragment = f'<div class="nbgradcheck-result">\n{fragment}\n</div>'
        if path is not None:
            page = (
                '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
                f"<title>nbgradcheck: {self.verdict}</title></head>"
                f"<body>\n{fragment}\n</body></html>\n"
            )
            Path(path).write_text(page, encoding="utf-8")
        return fragment

    def _repr_mimebundle_(
        self: GradCheckResult,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
    ) -> dict[str, str]:
        """text/plain (the repr) and text/html (:meth:`to_html`) for Jupyter."""
        wanted = {"text/plain", "text/html"}
        if include is not None:
            wanted &= set(include)
        if exclude is not None:
            wanted -= set(exclude)
        bundle = {}
        if "text/plain" in wanted:
            bundle["text/plain"] = repr(self)
        if "text/html" in wanted:
            bundle["text/html"] = self.to_html()
        return bundle

    # -- figures --------------------------------------------------------------------------
    def heatmap(
        self: GradCheckResult,
        name: str | list[str] | None = None,
        scale: str = "log",
        **options: Any,
    ) -> Figure:
        """Per-element discrepancy, one panel per tensor (see ``views.figures.heatmap``).

        ``scale``: 'log' (relative error, verdict thresholds on the colour bar), 'abs' or
        'signed'; ``options``: ``highlight_above``, ``pool_above``, ``dpi``.
        """
        from nbgradcheck.views.figures import heatmap

        return heatmap(self, name, scale, **options)

    def sweep_eps(
        self: GradCheckResult,
        eps: Iterable[float] | None = None,
        methods: Iterable[str] = ("central", "forward"),
        **changes: Any,
    ) -> EpsSweep:
        """The error against the step ε for this check's loss, parameters and gradients.

        Uses the check's own mode, sample and seed unless ``changes`` overrides them;
        see :func:`nbgradcheck.api.sweep.sweep_eps`.
        """
        from nbgradcheck.api.sweep import DEFAULT_EPS, sweep_eps

        if not self.rerun:
            raise ValueError(
                "this result holds no loss to re-run (loaded from JSON?): call "
                "nbgradcheck.sweep_eps(loss, params, grads) instead"
            )
        options = {key: self.rerun[key] for key in ("mode", "sample", "seed") if key in self.rerun}
        options.update(changes)
        return sweep_eps(
            self.rerun["loss"],
            self.rerun["params"],
            self.rerun["grads"],
            eps=DEFAULT_EPS if eps is None else eps,
            methods=methods,
            **options,
        )


# -- table helpers ---------------------------------------------------------------------------


def shown_rows(table: pd.DataFrame, failing: list[str], max_rows: int | None) -> pd.DataFrame:
    """All rows, or the failing ones plus the first others up to ``max_rows``, in order."""
    if max_rows is None or len(table) <= max_rows:
        return table
    failing_set = set(failing)
    room = max(0, max_rows - len(failing_set))
    others = [name for name in table.index if name not in failing_set][:room]
    keep = failing_set | set(others)
    return table.loc[[name for name in table.index if name in keep]]


def table_formatters(table: pd.DataFrame) -> dict[str, Any]:
    formatters: dict[str, Any] = {
        column: fmt for column, fmt in SCIENTIFIC_COLUMNS.items() if column in table.columns
    }
    if "shape" in table.columns:
        formatters["shape"] = lambda shape: "×".join(map(str, shape)) or "scalar"
    if "worst_index" in table.columns:
        formatters["worst_index"] = lambda index: (
            "—" if index is None else "[" + ", ".join(map(str, index)) + "]"
        )
    return formatters


def verdict_cell(verdict: str) -> str:
    colour = VERDICT_COLOURS.get(verdict, VERDICT_COLOURS["empty"])
    return f"background-color: {colour}; color: white; font-weight: 600; text-align: center"


def verdict_text(column: pd.Series, verdicts: pd.Series) -> list[str]:
    return [f"color: {VERDICT_COLOURS.get(v, 'inherit')}" for v in verdicts.loc[column.index]]


def worst_of_tensor(tensor: TensorCheck, k: int, by: str, include_kinks: bool) -> pd.DataFrame:
    """Up to ``k`` rows: the largest errors of one tensor (selected without sorting all)."""
    import pandas as pd

    usable = tensor.evaluated if include_kinks else tensor.counted
    errors = np.where(usable, getattr(tensor, by), -np.inf)
    count = min(k, int(usable.sum()))
    chosen = np.argpartition(-errors, count - 1)[:count] if count else np.empty(0, int)
    return pd.DataFrame(
        {
            "parameter": [tensor.name] * count,
            "index": [tensor.multi_index(i) for i in tensor.indices[chosen]],
            "analytic": tensor.analytic[chosen],
            "numeric": tensor.numeric[chosen],
            "abs_error": tensor.abs_error[chosen],
            "rel_error": tensor.rel_error[chosen],
            "kink": tensor.kink[chosen],
        }
    )


def tensor_elements(tensor: TensorCheck) -> pd.DataFrame:
    import pandas as pd

    mask = tensor.evaluated
    flat = tensor.indices[mask]
    index = list(zip(*(axis.tolist() for axis in np.unravel_index(flat, tensor.shape))))
    return pd.DataFrame(
        {
            "parameter": [tensor.name] * int(mask.sum()),
            "index": index if tensor.shape else [()] * flat.size,
            "flat_index": flat,
            "value": tensor.values[mask],
            "analytic": tensor.analytic[mask],
            "numeric": tensor.numeric[mask],
            "abs_error": tensor.abs_error[mask],
            "rel_error": tensor.rel_error[mask],
            "step": tensor.step[mask],
            "noise": tensor.noise[mask],
            "kink": tensor.kink[mask],
        }
    )


# -- JSON ------------------------------------------------------------------------------------


def tensor_dict(tensor: TensorCheck, elements: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": tensor.name,
        "dtype": str(np.dtype(tensor.dtype)),
        "passed": tensor.passed,
        "tol": tensor.tol,
    }
    entry.update(tensor.summary_row())
    if elements:
        entry["elements"] = {
            "flat_index": tensor.indices,
            **{key: getattr(tensor, attribute) for key, attribute in ELEMENT_FIELDS.items()},
            "kink": tensor.kink,
        }
    return entry


def json_safe(value: Any) -> Any:
    """Builtins only: NaN/inf → None, tuples and arrays → lists, NumPy scalars → Python."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            return [x if math.isfinite(x) else None for x in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def as_float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def float_array(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def validate_schema(data: Any) -> None:
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"not an nbgradcheck result: expected 'schema': {SCHEMA!r}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"result schema version {version!r} is not supported by this nbgradcheck "
            f"(it reads version {SCHEMA_VERSION})"
        )
    missing = [t.get("name") for t in data["tensors"] if "elements" not in t]
    if missing:
        raise ValueError(
            f"tensors {missing} were saved without elements (to_dict(elements=False)); "
            f"only a summary can be read from them"
        )


def tensor_from_dict(entry: dict[str, Any], tol: float) -> TensorCheck:
    from nbgradcheck.core.result import TensorCheck

    shape = tuple(int(n) for n in entry["shape"])
    elements = entry["elements"]
    indices = np.asarray(elements["flat_index"], dtype=np.int64)
    arrays = {attribute: float_array(elements[key]) for key, attribute in ELEMENT_FIELDS.items()}
    tensor = TensorCheck(
        name=entry["name"],
        shape=shape,
        dtype=np.dtype(entry["dtype"]),
        indices=indices,
        kink=np.asarray(elements["kink"], dtype=bool),
        analytic_full=np.empty(0),
        tol=float(entry.get("tol", tol)),
        **arrays,
    )
    tensor.analytic_full = tensor.full_array(tensor.analytic)
    return tensor


# -- HTML ------------------------------------------------------------------------------------


def summary_html(result: GradCheckResult) -> str:
    colour = VERDICT_COLOURS.get(result.verdict, VERDICT_COLOURS["empty"])
    badge = (
        f'<span style="background:{colour};color:white;padding:1px 7px;'
        f'border-radius:3px;font-weight:600">{html.escape(result.verdict.upper())}</span>'
    )
    first, *rest = result.summary().splitlines()
    lines = [f'<div style="margin:4px 0">{badge} {html.escape(first)}</div>']
    lines += [
        f'<div style="margin:2px 0;color:{colour}">{html.escape(line)}</div>' for line in rest
    ]
    return "\n".join(lines)


def hidden_rows_html(hidden: int) -> str:
    if hidden <= 0:
        return ""
    return (
        f'<div style="font-size:11px;color:#6e7781">… {hidden} more passing tensors '
        f"not shown; <code>result.table</code> lists all</div>"
    )


def worst_html(worst: pd.DataFrame) -> str:
    if worst.empty:
        return ""
    styler = (
        worst.style.format(
            {
                "index": lambda index: "[" + ", ".join(map(str, index)) + "]",
                "analytic": "{:.4e}",
                "numeric": "{:.4e}",
                "abs_error": "{:.2e}",
                "rel_error": "{:.2e}",
            },
            escape="html",
        )
        .hide(axis="index")
        .hide(["kink"], axis="columns")
    )
    styler = styler.set_table_styles(
        [{"selector": "td, th", "props": "padding: 1px 8px; font-size: 12px;"}]
    )
    return (
        '<details open><summary style="cursor:pointer">worst elements</summary>'
        f"{styler.to_html()}</details>"
    )


def notes_html(notes: list[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    return f'<ul style="margin:4px 0;font-size:12px">{items}</ul>'


def heatmap_html(result: GradCheckResult) -> str:
    """The failing tensors' heatmap as an <img> with the PNG inlined (base64)."""
    import base64

    from nbgradcheck.views.figures import figure_png, heatmap

    names = result.failing[:HTML_MAX_PANELS]
    figure = heatmap(result, names, dpi=HTML_DPI)
    encoded = base64.b64encode(figure_png(figure)).decode("ascii")
    more = len(result.failing) - len(names)
    caption = f" (and {more} more: result.heatmap())" if more > 0 else ""
    alt = html.escape(f"heatmap of the failing tensors {', '.join(names)}{caption}")
    return f'<img src="data:image/png;base64,{encoded}" alt="{alt}" style="max-width:100%"/>'
