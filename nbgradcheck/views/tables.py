"""Tables of a gradient check as pandas objects: the per-tensor summary (plain and
styled), the worst elements, every checked element. They read the result's stored
numbers and verdicts; nothing here judges anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nbgradcheck.core.result import ERROR_KEYS, SUMMARY_COLUMNS
from nbgradcheck.views.colours import FAILING_COLOUR, VERDICT_COLOURS, verdict_colour

if TYPE_CHECKING:
    from pandas.io.formats.style import Styler

    from nbgradcheck.core.result import CheckResult, TensorCheck

SCIENTIFIC_COLUMNS = {"difference": "{:.2e}", "max_abs_error": "{:.2e}", "floor": "{:.1e}"}
ELEMENT_COLUMNS = ("index", "analytic", "numeric", "abs_error", "rel_error", "kink")


# -- the summary table -------------------------------------------------------------------------


def summary_table(result: CheckResult) -> pd.DataFrame:
    """One row per parameter tensor (index: the parameter names)."""
    frame = pd.DataFrame(result.summary_rows(), columns=["parameter", *SUMMARY_COLUMNS])
    return frame.set_index("parameter")


def styled_table(result: CheckResult, table: pd.DataFrame, max_rows: int | None = None) -> Styler:
    """``table`` (the summary) as a pandas Styler: verdicts coloured, errors in scientific
    notation, failing names in red. ``max_rows`` keeps every failing tensor and fills up
    with the others, in order."""
    shown = shown_rows(table, result.failing, max_rows).reset_index()
    styler = shown.style.format(table_formatters(shown), na_rep="—", escape="html")
    styler = styler.hide(axis="index")
    styler = styler.map(verdict_cell, subset=["verdict"])
    styler = styler.apply(verdict_text, subset=["difference"], verdicts=shown["verdict"])
    failing = set(result.failing)
    styler = styler.map(
        lambda name: f"color: {FAILING_COLOUR}; font-weight: 600" if name in failing else "",
        subset=["parameter"],
    )
    styles = [{"selector": "td, th", "props": "padding: 2px 8px; font-size: 12px;"}]
    if "diagnosis" in shown.columns:
        column = shown.columns.get_loc("diagnosis")
        styles.append(
            {
                "selector": f"td.col{column}",
                "props": "text-align: left; white-space: normal; max-width: 36em;",
            }
        )
    return styler.set_table_styles(styles, overwrite=False)


def shown_rows(table: pd.DataFrame, failing: list[str], max_rows: int | None) -> pd.DataFrame:
    """All rows, or the failing ones plus the first others up to ``max_rows``, in order."""
    if max_rows is None or len(table) <= max_rows:
        return table
    failing_set = set(failing)
    room = max(0, max_rows - len(failing_set))
    others = [name for name in table.index if name not in failing_set][:room]
    keep = failing_set | set(others)
    return table.loc[[name for name in table.index if name in keep]]


def format_index(index: Any) -> str:
    return "—" if index is None else "[" + ", ".join(map(str, index)) + "]"


def table_formatters(table: pd.DataFrame) -> dict[str, Any]:
    formatters: dict[str, Any] = {
        column: fmt for column, fmt in SCIENTIFIC_COLUMNS.items() if column in table.columns
    }
    if "shape" in table.columns:
        formatters["shape"] = lambda shape: "×".join(map(str, shape)) or "scalar"
    if "worst_index" in table.columns:
        formatters["worst_index"] = format_index
    return formatters


def verdict_cell(verdict: str) -> str:
    return (
        f"background-color: {verdict_colour(verdict)}; color: white; font-weight: 600; "
        f"text-align: center"
    )


def verdict_text(column: pd.Series, verdicts: pd.Series) -> list[str]:
    return [f"color: {VERDICT_COLOURS.get(v, 'inherit')}" for v in verdicts.loc[column.index]]


# -- elements ----------------------------------------------------------------------------------


def check_error_key(by: str, argument: str = "by") -> None:
    if by not in ERROR_KEYS:
        raise ValueError(f"{argument} must be 'abs_error' or 'rel_error', not {by!r}")


def element_rows(tensor: TensorCheck, positions: np.ndarray) -> dict[str, Any]:
    """Columns of ELEMENT_COLUMNS for the elements at ``positions`` (into ``indices``)."""
    return {
        "index": [tensor.multi_index(i) for i in tensor.indices[positions]],
        "analytic": tensor.analytic[positions],
        "numeric": tensor.numeric[positions],
        "abs_error": tensor.abs_error[positions],
        "rel_error": tensor.rel_error[positions],
        "kink": tensor.kink[positions],
    }


def elements_frame(tensor: TensorCheck, sort_by: str | None = None) -> pd.DataFrame:
    """The checked elements of one tensor; ``sort_by`` ('abs_error' or 'rel_error') lists
    the worst first, in the order of ``TensorCheck.worst_first``."""
    if sort_by is None:
        positions = np.flatnonzero(tensor.evaluated)
    else:
        check_error_key(sort_by, "sort_by")
        positions = tensor.worst_first(sort_by)
    return pd.DataFrame(element_rows(tensor, positions), columns=list(ELEMENT_COLUMNS))


def worst_elements(
    result: CheckResult, k: int = 10, by: str = "abs_error", include_kinks: bool = False
) -> pd.DataFrame:
    """The ``k`` elements with the largest error across all tensors, worst first (each
    tensor's in the order of ``TensorCheck.worst_first``)."""
    check_error_key(by)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    frames = [
        pd.DataFrame(
            {
                "parameter": t.name,
                **element_rows(t, t.worst_first(by, counted_only=not include_kinks, limit=k)),
            },
            columns=["parameter", *ELEMENT_COLUMNS],
        )
        for t in result.tensors
    ]
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values(by, ascending=False, ignore_index=True, kind="stable").head(k)


def every_element(tensor: TensorCheck) -> pd.DataFrame:
    """Every checked element of one tensor, long format (see ``all_elements``)."""
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


def all_elements(result: CheckResult) -> pd.DataFrame:
    """Every checked element of every tensor, one row each: parameter, index, flat_index,
    value, analytic, numeric, abs_error, rel_error, step, noise, kink."""
    return pd.concat([every_element(t) for t in result.tensors], ignore_index=True)


def kinks_frame(result: CheckResult) -> pd.DataFrame:
    """Elements excused as kink crossings (not counted as failures)."""
    frames = [
        elements_frame(t).loc[lambda f: f["kink"]].assign(parameter=t.name) for t in result.tensors
    ]
    columns = ["parameter", "index", "analytic", "numeric", "abs_error", "rel_error"]
    return pd.concat(frames, ignore_index=True)[columns]
