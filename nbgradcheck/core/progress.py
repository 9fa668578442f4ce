"""Progress reporting for long checks: tqdm's auto bar, updated at a bounded rate.

``tqdm.auto`` draws a widget bar in Jupyter and a text bar in terminals, both with an
ETA. The check loop does not call the bar per element: it reports chunks of
:func:`chunk_size` elements, sized to last about :data:`TICK_SECONDS`, and tqdm redraws
at most every :data:`REDRAW_SECONDS`, so the bar costs a fraction of a percent even
when the loss takes a microsecond.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# A check expected to take longer than this shows a bar when ``progress=None``.
AUTO_PROGRESS_SECONDS = 1.0
# The loop reports progress in chunks lasting about this long.
TICK_SECONDS = 0.1
# The largest chunk: the per-element time is measured on one evaluation, and if that
# one was unusually fast the bar must still move; one tick per MAX_CHUNK elements is
# still negligible next to MAX_CHUNK loss evaluations.
MAX_CHUNK = 1024
# tqdm redraws at most this often.
REDRAW_SECONDS = 0.2

Tick = Callable[[int], None]


class Progress:
    """Counts checked elements; shows a tqdm bar (with ETA) when enabled."""

    def __init__(self, total: int, enabled: bool, description: str = "gradcheck") -> None:
        self.bar: Any = None
        if enabled and total > 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                desc=description,
                unit="elem",
                mininterval=REDRAW_SECONDS,
                dynamic_ncols=True,
            )

    @property
    def shown(self) -> bool:
        return self.bar is not None

    def advance(self, count: int) -> None:
        """``count`` more elements checked (called once per chunk, not per element)."""
        if self.bar is not None and count:
            self.bar.update(count)

    def describe(self, text: str) -> None:
        """Name the tensor being checked, shown after the bar at its next redraw."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        """Finish the bar; an interrupted check leaves it short of its total."""
        if self.bar is not None:
            self.bar.close()


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
