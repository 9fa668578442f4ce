"""``LossHistory``: record a training run, find its stalls, and show it in a notebook.

The recording and the stall detection are :class:`~nbgradcheck.training.history.LossRecorder`'s
(pure data); this class adds the views: a rich display (status line, loss figure, stall
table) and a live view updated while training runs (:mod:`nbgradcheck.views.live`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from nbgradcheck.training.history import LossRecorder
from nbgradcheck.views.live import LiveDisplay, live_output
from nbgradcheck.views.lossplot import history_html, loss_frame_from_dataframe

__all__ = ["LossHistory", "as_loss_history"]


class LossHistory(LossRecorder):
    """Records losses (and optionally gradient norms and update ratios) of a training run,
    and shows them: the plot and stall table in a notebook, a text summary elsewhere.

    >>> history = LossHistory()
    >>> for epoch in range(3):
    ...     history.log(1.0 / (epoch + 1), epoch=epoch)
    >>> history.to_frame()["loss"].round(3).tolist()
    [1.0, 0.5, 0.333]

    Args:
        live: show a live plot (see :meth:`live`) from the first :meth:`log` on.
        every: at most one live update per this many seconds.
        stall_options: keyword arguments for :func:`~nbgradcheck.training.stalls.find_stalls`.
    """

    def __init__(
        self,
        *,
        live: bool = False,
        every: float = 1.0,
        stall_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(stall_options=stall_options)
        self._live: LiveDisplay | None = None
        if live:
            self.live(every=every)

    def _logged(self) -> None:
        if self._live is not None:
            self._live.notify()

    # ------------------------------------------------------------------ rich display

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/plain": self.summary(), "text/html": self._repr_html_()}

    def _repr_html_(self) -> str:
        return history_html(self)

    # ------------------------------------------------------------------ live view

    def live(self, *, every: float = 1.0, mode: str = "auto") -> LossHistory:
        """Show this history live while it is logged, updating in place.

        In a notebook one display (plot and stall table) is updated at most once every
        ``every`` seconds, through a display handle: no flicker, and the cell's other
        output stays. Elsewhere a one-line text summary is printed at the same rate.
        ``mode`` is ``"auto"``, ``"display"`` or ``"text"``. Use as a context manager, or
        call :meth:`finish`, to show the final state; in IPython this also happens when
        the cell ends. Returns ``self``.
        """
        if every < 0:
            raise ValueError(f"every must be >= 0 seconds, got {every}")
        self._live = LiveDisplay(self, every=every, output=live_output(mode))
        return self

    def finish(self) -> None:
        """Show the final state of the live view and stop updating it."""
        if self._live is not None:
            self._live.flush()
            self._live.close()
            self._live = None

    def __enter__(self) -> LossHistory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()


def as_loss_history(value: Any) -> LossHistory:
    """``value`` as a LossHistory (what ``%lossplot VAR`` shows): a LossHistory itself,
    or one made from a list/tuple/array of losses, a pandas Series or a DataFrame with a
    ``loss`` column (or one numeric column).

    Raises:
        TypeError: for values that are not loss histories or sequences of numbers.
        ValueError: for empty, non-numeric or multi-dimensional values.
    """
    if isinstance(value, LossRecorder):
        if not len(value):
            raise ValueError("the LossHistory is empty: log some losses first")
        if isinstance(value, LossHistory):
            return value
        return LossHistory.from_frame(value.to_frame(), stall_options=value.stall_options)
    if isinstance(value, (str, bytes, Mapping)) or np.isscalar(value):
        raise TypeError(
            f"%lossplot needs a LossHistory, a list/array of losses, a Series or a DataFrame "
            f"with a 'loss' column; got {type(value).__name__}"
        )
    if isinstance(value, pd.DataFrame):
        return LossHistory.from_frame(loss_frame_from_dataframe(value))
    if not hasattr(value, "__len__") and not hasattr(value, "__array__"):
        raise TypeError(
            f"%lossplot needs a LossHistory or a sequence of losses, got {type(value).__name__}"
        )
    return LossHistory.from_losses(value)
