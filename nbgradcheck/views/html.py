"""The notebook display of a gradient check as HTML: the summary with its verdict badge,
the styled table, the worst elements, notes and (when tensors fail) their heatmap as an
embedded PNG. Everything is read from the result; nothing is judged here.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from typing import TYPE_CHECKING

from nbgradcheck.views.colours import verdict_colour
from nbgradcheck.views.figures import figure_png, heatmap
from nbgradcheck.views.tables import format_index

if TYPE_CHECKING:
    import pandas as pd
    from pandas.io.formats.style import Styler

    from nbgradcheck.core.result import CheckResult

HTML_MAX_ROWS = 25  # tensors listed in the notebook display (failing ones always)
HTML_MAX_PANELS = 4  # failing tensors drawn in the notebook display's heatmap
HTML_WORST = 5  # worst elements listed in the notebook display
HTML_DPI = 80
MIME_TYPES = ("text/plain", "text/html")


def result_fragment(
    result: CheckResult, table: Styler, worst: pd.DataFrame | None, with_heatmap: bool
) -> str:
    """The display as an HTML fragment: summary, ``table`` (the styled summary, perhaps
    with rows left out), ``worst`` elements, notes, the failing tensors' heatmap."""
    parts = [
        summary_html(result),
        table.to_html(),
        hidden_rows_html(len(result.tensors) - len(table.data)),
    ]
    if worst is not None:
        parts.append(worst_html(worst))
    parts.append(notes_html(result.notes))
    if with_heatmap and result.failing:
        parts.append(heatmap_html(result))
    fragment = "\n".join(p for p in parts if p)
    return f'<div class="nbgradcheck-result">\n{fragment}\n</div>'


def page(fragment: str, verdict: str) -> str:
    """A complete HTML page around ``fragment``."""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>nbgradcheck: {html.escape(verdict)}</title></head>"
        f"<body>\n{fragment}\n</body></html>\n"
    )


def wanted_types(include: Iterable[str] | None, exclude: Iterable[str] | None) -> set[str]:
    """The MIME types of MIME_TYPES a frontend asked for."""
    wanted = set(MIME_TYPES)
    if include is not None:
        wanted &= set(include)
    if exclude is not None:
        wanted -= set(exclude)
    return wanted


def summary_html(result: CheckResult) -> str:
    colour = verdict_colour(result.verdict)
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
                "index": format_index,
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


def notes_html(notes: Iterable[str]) -> str:
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    return f'<ul style="margin:4px 0;font-size:12px">{items}</ul>' if items else ""


def heatmap_html(result: CheckResult) -> str:
    """The failing tensors' heatmap as an <img> with the PNG inlined (base64)."""
    names = result.failing[:HTML_MAX_PANELS]
    figure = heatmap(result, names, dpi=HTML_DPI)
    encoded = base64.b64encode(figure_png(figure)).decode("ascii")
    more = len(result.failing) - len(names)
    caption = f" (and {more} more: result.heatmap())" if more > 0 else ""
    alt = html.escape(f"heatmap of the failing tensors {', '.join(names)}{caption}")
    return f'<img src="data:image/png;base64,{encoded}" alt="{alt}" style="max-width:100%"/>'
