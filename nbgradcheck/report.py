"""Views of a GradCheckResult: styled tables, exports and rich notebook display."""

from __future__ import annotations


class ResultViews:
    """Mixed into GradCheckResult: every view reads the result's numbers, never recomputes."""
