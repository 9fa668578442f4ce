"""Progress reporting for long checks: tqdm's auto bar, updated at a bounded rate."""

from __future__ import annotations

from collections.abc import Callable

# A check expected to take longer than this shows a bar when ``progress=None``.
AUTO_PROGRESS_SECONDS = 1.0
# The loop reports progress in chunks lasting about this long, so the bar costs nothing.
TICK_SECONDS = 0.1


class Progress:
    """Counts checked elements; shows a tqdm bar when enabled."""

    def __init__(self, total: int, enabled: bool, description: str = "gradcheck") -> None:
        self.bar = None
        if enabled and total > 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=description, unit="elem", mininterval=0.2)

    def advance(self, count: int) -> None:
        if self.bar is not None and count:
            self.bar.update(count)

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def should_show(progress: bool | None, expected_seconds: float) -> bool:
    if progress is None:
        return expected_seconds > AUTO_PROGRESS_SECONDS
    return bool(progress)


def chunk_size(seconds_per_element: float) -> int:
    """How many elements make one progress tick of about TICK_SECONDS."""
    if seconds_per_element <= 0:
        return 1024
    return max(1, int(TICK_SECONDS / seconds_per_element))


Tick = Callable[[int], None]
