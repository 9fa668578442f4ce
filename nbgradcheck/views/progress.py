"""The progress bar of long checks: tqdm's auto bar (a widget in Jupyter, text in a
terminal, both with an ETA), redrawn at a bounded rate.

The core reports chunks of elements (see :mod:`nbgradcheck.core.progress`), not single
elements, and tqdm redraws at most every :data:`REDRAW_SECONDS`, so the bar costs a
fraction of a percent even when the loss takes a microsecond.
"""

from __future__ import annotations

from typing import Any

# tqdm redraws at most this often.
REDRAW_SECONDS = 0.2


class TqdmBar:
    """Counts checked elements on a tqdm bar (implements core.progress.Bar)."""

    def __init__(self, total: int, description: str = "gradcheck") -> None:
        from tqdm.auto import tqdm  # looked up at each bar: tests may substitute it

        self.bar: Any = tqdm(
            total=total,
            desc=description,
            unit="elem",
            mininterval=REDRAW_SECONDS,
            dynamic_ncols=True,
        )

    def advance(self, count: int) -> None:
        if count:
            self.bar.update(count)

    def describe(self, text: str) -> None:
        """Name the tensor being checked, shown after the bar at its next redraw."""
        self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        """Finish the bar; an interrupted check leaves it short of its total."""
        self.bar.close()
