"""The colour of each verdict, shared by tables, HTML, figures and the inspector."""

from __future__ import annotations

# Dark enough for white text on them, distinct enough to tell apart at a glance.
VERDICT_COLOURS = {
    "correct": "#1a7f37",
    "ok": "#5b8c1a",
    "suspicious": "#b35900",
    "wrong": "#cf222e",
    "empty": "#6e7781",
}
FAILING_COLOUR = VERDICT_COLOURS["wrong"]


def verdict_colour(verdict: str) -> str:
    return VERDICT_COLOURS.get(verdict, VERDICT_COLOURS["empty"])
