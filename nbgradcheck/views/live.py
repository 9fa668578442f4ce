"""Live view of a training run: one IPython display updated in place, or text lines.

:class:`LiveDisplay` decides *when* to show (at most once per ``every`` seconds, and when
the cell ends); an output decides *how*: :class:`_DisplayOutput` updates one display
through its handle (no flicker, the cell's other output stays), :class:`_TextOutput`
prints the run's status line (terminals, scripts). The shown object only needs a rich
display and a ``status_line()`` method, e.g. :class:`nbgradcheck.api.history.LossHistory`.
IPython is imported when first needed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

__all__ = ["LiveDisplay", "in_notebook", "live_output"]


class Shown(Protocol):
    """What a live view shows: anything IPython can display that has a status line."""

    def status_line(self) -> str: ...


class _DisplayOutput:
    """Shows the run in one IPython display, updated in place through its handle."""

    def __init__(self) -> None:
        self.handle: Any = None

    def show(self, shown: Shown) -> None:
        from IPython.display import display

        if self.handle is None:
            self.handle = display(shown, display_id=True)
        else:
            self.handle.update(shown)

    def new_cell(self) -> None:
        """A new cell's logs start a new display (in that cell)."""
        self.handle = None


class _TextOutput:
    """Prints the status line of the run (outside notebooks)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def show(self, shown: Shown) -> None:
        print(shown.status_line(), file=self.stream or sys.stdout, flush=True)

    def new_cell(self) -> None:
        """Nothing to reset for printed lines."""


def _current_shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def in_notebook() -> bool:
    """True in a Jupyter kernel (rich displays render), False in a terminal or script."""
    shell = _current_shell()
    return shell is not None and hasattr(shell, "kernel")


def live_output(mode: str) -> _DisplayOutput | _TextOutput:
    """The output for ``mode``: ``"display"``, ``"text"`` or ``"auto"`` (display in a
    notebook, text elsewhere)."""
    if mode not in ("auto", "display", "text"):
        raise ValueError(f"mode must be 'auto', 'display' or 'text', got {mode!r}")
    if mode == "display" or (mode == "auto" and in_notebook()):
        return _DisplayOutput()
    return _TextOutput()


class LiveDisplay:
    """Rate-bounded live view of a training run.

    ``output`` has ``show(shown)`` and ``new_cell()``; ``clock`` returns seconds. The
    first log is shown at once, later ones at most once per ``every`` seconds; ``flush``
    shows whatever is pending. In IPython, the pending state is flushed when the running
    cell ends, and the next cell's logs open a new display.
    """

    def __init__(
        self,
        shown: Shown,
        *,
        every: float,
        output: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every < 0:
            raise ValueError(f"every must be >= 0 seconds, got {every}")
        self.shown = shown
        self.every = every
        self.output = output
        self.clock = clock
        self.updates = 0
        self._last: float | None = None
        self._pending = False
        self._shell: Any = None

    def notify(self) -> None:
        """A step was logged: show it now if the last update is old enough."""
        self._pending = True
        self._watch_cell_end()
        now = self.clock()
        if self._last is None or now - self._last >= self.every:
            self._show(now)

    def flush(self) -> None:
        """Show the latest state if it has not been shown yet."""
        if self._pending:
            self._show(self.clock())

    def close(self) -> None:
        """Stop listening to IPython's cell events."""
        if self._shell is not None:
            self._shell.events.unregister("post_run_cell", self._after_cell)
            self._shell = None

    def _show(self, now: float) -> None:
        self.output.show(self.shown)
        self.updates += 1
        finished = self.clock()
        # the next update waits `every` seconds of training, and at least as long as this
        # one took to draw: drawing never takes more than half of the time
        self._last = finished + max(0.0, finished - now - self.every)
        self._pending = False

    def _watch_cell_end(self) -> None:
        if self._shell is not None:
            return
        shell = _current_shell()
        if shell is not None:
            shell.events.register("post_run_cell", self._after_cell)
            self._shell = shell

    def _after_cell(self, result: Any = None) -> None:
        self.flush()
        self.output.new_cell()
        self._last = None
        self.close()
