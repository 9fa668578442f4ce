"""Progress reporting for long checks, without drawing anything (pure).

The check loop does not report per element: it reports chunks of :func:`chunk_size`
elements, sized to last about :data:`TICK_SECONDS`. What draws the bar is given by the
caller (``CheckSetup.make_bar``: tqdm, in :mod:`nbgradcheck.views.progress`); the core
only decides whether a bar is worth showing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

# A check expected to take longer than this shows a bar when ``progress=None``.
AUTO_PROGRESS_SECONDS = 1.0
# The loop reports progress in chunks lasting about this long.
TICK_SECONDS = 0.1
# The largest chunk: the per-element time is measured on one evaluation, and if that
# one was unusually fast the bar must still move; one tick per MAX_CHUNK elements is
# still negligible next to MAX_CHUNK loss evaluations.
MAX_CHUNK = 1024

Tick = Callable[[int], None]


class Bar(Protocol):
    """What the check reports to: elements done, the tensor being checked, the end."""

    def advance(self, count: int) -> None: ...

    def describe(self, text: str) -> None: ...

    def close(self) -> None: ...


BarFactory = Callable[[int], Bar]  # total elements -> a bar


class SilentBar:
    """No bar: the check reports to nothing."""

    def advance(self, count: int) -> None:
        return None

    def describe(self, text: str) -> None:
        return None

    def close(self) -> None:
        return None


def open_bar(make_bar: BarFactory | None, total: int, show: bool) -> Bar:
    """A bar from ``make_bar`` when one should show, else a silent one."""
    if make_bar is None or not show or total <= 0:
        return SilentBar()
    return make_bar(total)


def should_show(progress: bool | None, expected_seconds: float) -> bool:
    """``progress`` if given, else whether the check should take over a second."""
    if progress is None:
        return expected_seconds > AUTO_PROGRESS_SECONDS
    return bool(progress)


def chunk_size(seconds_per_element: float) -> int:
    """How many elements make one progress tick: about TICK_SECONDS, 1 to MAX_CHUNK."""
    if not seconds_per_element > 0:
        return MAX_CHUNK
    return int(min(MAX_CHUNK, max(1.0, TICK_SECONDS / seconds_per_element)))
