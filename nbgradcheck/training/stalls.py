"""Find the spans of a training run where the loss stopped improving.

The rule, applied to a loss history that may be noisy:

1. **Aggregate.** Losses are averaged per epoch when ``epochs`` are given; long series are
   then averaged in consecutive bins down to at most ``max_points`` points.
2. **Transform.** Positive losses are analysed as ``log(loss)``, so that every threshold is a
   *relative* improvement (as in ``ReduceLROnPlateau(threshold_mode="rel")``); losses that
   can be negative are analysed on a linear scale, relative to their range.
3. **Slope test.** For each point, a least-squares line is fitted to the ``window`` points
   centred on it; its fall across the window is the *improvement*. The noise of one point
   is estimated robustly (median absolute second difference), which gives the standard
   deviation ``sd`` of the improvement. A window is *flat* when the improvement is below
   ``threshold`` even at its upper confidence bound (``improvement + z·sd``, one-sided
   level ``confidence``), or is not significantly above zero (``improvement < z·sd``, which
   only matters when noise hides changes of size ``threshold``). By default the window is
   1/40 of the run, widened (up to 1/8) until noise alone cannot reach half the threshold.
4. **Spans.** A stall is the union of overlapping flat windows, at least ``min_length``
   points long. It *recovered* when the smoothed loss then fell by ``recovery_drop`` within
   as many points as the stall lasted (at least one window).
5. **Converged or stalled.** A flat span after which the loss never falls again is where
   training ended. It is *converged* when the loss had reached ``floor`` (within
   ``converged_tol`` of the initial excess) or, with no floor given, had fallen by at
   least ``min_drop`` before it; otherwise the run ended *stalled*.

Non-finite losses (NaN, inf) are *divergence* and get their own rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from nbgradcheck.training.values import as_series, is_integral

__all__ = [
    "CAUSES",
    "STALL_COLUMNS",
    "VERDICTS",
    "StallReport",
    "analyze_stalls",
    "find_stalls",
]

STALL_COLUMNS = (
    "start",
    "end",
    "length",
    "loss_start",
    "loss_end",
    "rel_improvement",
    "recovered",
    "recovered_at",
    "grad_norm",
    "update_ratio",
    "likely_cause",
)
VERDICTS = ("converged", "stalled", "diverged", "improving", "too short")
CAUSES = (
    "vanishing gradients",
    "learning rate too small",
    "saddle/plateau",
    "divergence",
    "unknown",
)
_MIN_WINDOW = 5


@dataclass(frozen=True)
class StallReport:
    """Everything :func:`analyze_stalls` found, for tables, plots and summaries.

    ``table`` has one row per stall or divergence (see :data:`STALL_COLUMNS`); ``units``
    has one row per analysed point (epoch, step or bin) with columns ``x`` (mean label),
    ``x_first``, ``x_last``, ``loss``, ``smoothed``, ``flat``, ``grad_norm`` and
    ``update_ratio``. ``verdict`` is one of :data:`VERDICTS`.
    """

    table: pd.DataFrame
    verdict: str
    units: pd.DataFrame
    unit_name: str
    window: int
    converged_from: Any = None
    converged_span: tuple[Any, Any] | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def stalled(self) -> pd.DataFrame:
        """Rows of real stalls (divergence rows left out)."""
        return self.table[self.table["likely_cause"] != "divergence"]

    def to_table(self) -> pd.DataFrame:
        """A copy of ``table`` whose ``attrs`` hold ``verdict``, ``converged_from``,
        ``window`` and ``unit`` (what :func:`find_stalls` returns)."""
        table = self.table.copy()
        table.attrs.update(
            verdict=self.verdict,
            converged_from=self.converged_from,
            window=self.window,
            unit=self.unit_name,
        )
        return table

    def summary(self) -> str:
        """A few lines of plain text: the verdict and one line per stall."""
        lines = [f"verdict: {self.verdict_text()}"]
        for number, row in enumerate(self.table.itertuples(index=False), start=1):
            lines.append(f"  {number}. {_describe_row(row, self.unit_name)}")
        if self.table.empty:
            lines.append("  no stalls")
        return "\n".join(lines)

    def verdict_text(self) -> str:
        """The verdict, with the epoch or step from which the run converged."""
        if self.verdict == "converged":
            return f"converged from {self.unit_name} {_label(self.converged_from)}"
        return self.verdict


def _label(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def plural(count: int, word: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def _describe_row(row: Any, unit_name: str) -> str:
    span = f"{unit_name}s {_label(row.start)}–{_label(row.end)} ({plural(row.length, unit_name)})"
    if row.likely_cause == "divergence" and not np.isfinite(row.loss_end):
        return f"{span}: loss is {row.loss_end} (divergence)"
    recovery = f"recovered at {_label(row.recovered_at)}" if row.recovered else "no recovery"
    change = f"loss {row.loss_start:.4g} → {row.loss_end:.4g}"
    return f"{span}: {change}, {recovery}, likely cause: {row.likely_cause}"


# ---------------------------------------------------------------------------- input checks


def _aligned(values: Any, name: str, length: int) -> np.ndarray | None:
    if values is None:
        return None
    array = as_series(values, name)
    if array.size != length:
        raise ValueError(f"{name} has {array.size} values but losses has {length}")
    return array


# ---------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class _Units:
    """Per-point series after aggregation, with the labels each point covers."""

    x: np.ndarray
    x_first: np.ndarray
    x_last: np.ndarray
    first: np.ndarray  # index of the first original unit (epoch or step) in each point
    last: np.ndarray
    loss: np.ndarray
    grad: np.ndarray | None
    update: np.ndarray | None
    integer_labels: bool = False  # epochs or steps are whole numbers: tables show integers

    def label(self, value: Any) -> Any:
        """A label as the user wrote it: an int for whole-number labels, else a float."""
        return int(value) if self.integer_labels else float(value)

    def filled(self) -> _Units:
        """The same with NaN arrays for gradient norms and update ratios never given."""
        nan = np.full(self.loss.size, np.nan)
        return dataclasses.replace(
            self,
            grad=nan if self.grad is None else self.grad,
            update=nan if self.update is None else self.update,
        )


def _group_starts(keys: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Sort order (None when already sorted), group start offsets and group labels."""
    order = None
    sorted_keys = keys
    if keys.size > 1 and not np.all(keys[1:] >= keys[:-1]):
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return order, starts, sorted_keys[starts]


def _group_means(values: np.ndarray, order: np.ndarray | None, starts: np.ndarray) -> np.ndarray:
    ordered = values if order is None else values[order]
    counts = np.diff(np.r_[starts, ordered.size])
    with np.errstate(invalid="ignore"):
        return np.add.reduceat(ordered, starts) / counts


def _nan_group_means(
    values: np.ndarray | None, order: np.ndarray | None, starts: np.ndarray
) -> np.ndarray | None:
    """Means of the finite values of each group (NaN where none); None for no values."""
    if values is None:
        return None
    ordered = values if order is None else values[order]
    finite = np.isfinite(ordered)
    sums = np.add.reduceat(np.where(finite, ordered, 0.0), starts)
    counts = np.add.reduceat(finite.astype(np.int64), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _aggregate(
    losses: np.ndarray,
    labels: np.ndarray,
    grads: np.ndarray | None,
    updates: np.ndarray | None,
    group: bool,
    integer_labels: bool,
) -> _Units:
    if group:
        order, starts, unit_labels = _group_starts(labels)
        loss = _group_means(losses, order, starts)
    else:
        order, starts, unit_labels, loss = None, np.arange(losses.size), labels, losses
    grad = _nan_group_means(grads, order, starts) if group else grads
    update = _nan_group_means(updates, order, starts) if group else updates
    index = np.arange(unit_labels.size)
    return _Units(
        unit_labels, unit_labels, unit_labels, index, index, loss, grad, update, integer_labels
    )


def _bin(units: _Units, max_points: int) -> _Units:
    n = units.loss.size
    if n <= max_points:
        return units
    size = math.ceil(n / max_points)
    starts = np.arange(0, n, size)
    ends = np.r_[starts[1:], n] - 1
    return _Units(
        x=_group_means(units.x.astype(np.float64), None, starts),
        x_first=units.x_first[starts],
        x_last=units.x_last[ends],
        first=units.first[starts],
        last=units.last[ends],
        loss=_group_means(units.loss, None, starts),
        grad=_nan_group_means(units.grad, None, starts),
        update=_nan_group_means(units.update, None, starts),
        integer_labels=units.integer_labels,
    )


# ---------------------------------------------------------------------------- the slope test


def _choose_scale(loss: np.ndarray, scale: str) -> str:
    if scale not in ("auto", "log", "linear"):
        raise ValueError(f"scale must be 'auto', 'log' or 'linear', got {scale!r}")
    if scale == "auto":
        return "log" if np.all(loss >= 0) else "linear"
    if scale == "log" and np.any(loss < 0):
        raise ValueError("scale='log' needs non-negative losses")
    return scale


@dataclass(frozen=True)
class _Transform:
    """Maps losses to the scale on which improvements are measured, and back."""

    scale: str
    offset: float
    unit: float

    @classmethod
    def fit(cls, loss: np.ndarray, scale: str) -> _Transform:
        if scale == "log":
            tiny = max(float(np.max(loss)) * 1e-12, np.finfo(float).tiny)
            return cls("log", tiny, 1.0)
        spread = float(np.ptp(loss))
        return cls("linear", 0.0, spread if spread > 0 else 1.0)

    def forward(self, loss: np.ndarray) -> np.ndarray:
        if self.scale == "log":
            return np.log(np.maximum(loss, self.offset))
        return loss / self.unit

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return np.exp(z) if self.scale == "log" else z * self.unit

    def drop(self, fraction: float) -> float:
        """A relative improvement ``fraction`` expressed on the transformed scale."""
        return -math.log1p(-fraction) if self.scale == "log" else fraction


def _noise_level(z: np.ndarray) -> float:
    """Robust scatter of single points around the trend: the median absolute deviation of
    the second differences (insensitive to trends, drops and spikes), scaled to a standard
    deviation."""
    if z.size < 3:
        return 0.0
    second = z[2:] - 2 * z[1:-1] + z[:-2]
    mad = np.median(np.abs(second - np.median(second)))
    return float(1.4826 * mad / math.sqrt(6.0))


def _improvement_sd(noise: float, window: int) -> float:
    """Standard deviation of the least-squares improvement across a window from noise."""
    half = window // 2
    sum_xx = half * (half + 1) * (2 * half + 1) / 3.0
    return 2 * half * noise / math.sqrt(sum_xx)


@dataclass(frozen=True)
class _WindowFits:
    """Least-squares lines fitted to every full centred window (``centers`` index ``z``)."""

    centers: np.ndarray
    slope: np.ndarray
    mean: np.ndarray
    half: int

    def value_at(self, k: int, offset: int) -> float:
        """Fitted value of window ``k`` at ``offset`` points from its centre."""
        return float(self.mean[k] + self.slope[k] * offset)

    @property
    def improvement(self) -> np.ndarray:
        """Fall of the fitted line across each window (positive when the loss falls)."""
        return -self.slope * (2 * self.half)


def _fit_windows(z: np.ndarray, half: int) -> _WindowFits:
    """Centred moving least-squares slope and mean, via cumulative sums."""
    level = float(np.mean(z))
    zc = z - level
    positions = np.arange(z.size, dtype=np.float64)
    s0 = np.r_[0.0, np.cumsum(zc)]
    s1 = np.r_[0.0, np.cumsum(positions * zc)]
    centers = np.arange(half, z.size - half)
    lo, hi = centers - half, centers + half + 1
    sum_y = s0[hi] - s0[lo]
    sum_xy = (s1[hi] - s1[lo]) - centers * sum_y
    sum_xx = half * (half + 1) * (2 * half + 1) / 3.0
    return _WindowFits(centers, sum_xy / sum_xx, sum_y / (2 * half + 1) + level, half)


def _moving_average(z: np.ndarray, half: int) -> np.ndarray:
    """Centred moving average whose window shrinks at the ends."""
    n = z.size
    if half < 1:
        return z.copy()
    cumulative = np.r_[0.0, np.cumsum(z - z[0])]
    idx = np.arange(n)
    lo = np.maximum(idx - half, 0)
    hi = np.minimum(idx + half + 1, n)
    return (cumulative[hi] - cumulative[lo]) / (hi - lo) + z[0]


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (start, end) indices of the runs of True in ``mask``."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1


def _covered(flat_centers: np.ndarray, n: int, half: int) -> np.ndarray:
    """Points covered by at least one flat window."""
    marks = np.zeros(n + 1, dtype=np.int64)
    np.add.at(marks, flat_centers - half, 1)
    np.add.at(marks, flat_centers + half + 1, -1)
    return np.cumsum(marks[:-1]) > 0


# ---------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class _Span:
    start: int  # indices into the finite series
    end: int
    first_window: int  # index into the window fits
    last_window: int


@dataclass(frozen=True)
class _Settings:
    window: int
    threshold: float
    confidence: float
    min_length: int
    recovery_drop: float
    floor: float | None
    min_drop: float
    converged_tol: float
    vanishing_grad: float
    saddle_ratio: float
    small_update: float
    rising: float


def _resolve_window(
    window: int | None, n: int, noise: float, resolvable: float, z_score: float
) -> int:
    """The requested window, or by default the smallest one that is at least 1/40 of the
    run and resolves ``resolvable`` against ``noise`` (bound at 1/8 of the run)."""
    if window is None:
        sd_per_point = 2 * z_score * noise / resolvable if resolvable > 0 else 0.0
        needed = 12 * sd_per_point**2
        window = max(_MIN_WINDOW, round(n / 40), min(math.ceil(needed), n // 8))
    if window < 3:
        raise ValueError(f"window must be at least 3 points, got {window}")
    window = min(int(window), n if n % 2 else n - 1)
    return window if window % 2 else window - 1


def _flat_spans(
    z: np.ndarray, s: _Settings, transform: _Transform, noise: float
) -> tuple[list[_Span], _WindowFits]:
    """Spans covered by flat windows: windows whose improvement is confidently below the
    threshold, or not significantly above zero (when noise hides smaller changes)."""
    half = s.window // 2
    fits = _fit_windows(z, half)
    margin = NormalDist().inv_cdf(s.confidence) * _improvement_sd(noise, s.window)
    limit = max(transform.drop(s.threshold) - margin, margin)
    flat_idx = np.flatnonzero(fits.improvement < limit)
    covered = _covered(fits.centers[flat_idx], z.size, half)
    spans = []
    for start, end in zip(*_runs(covered), strict=True):
        if end - start + 1 < s.min_length:
            continue
        left = fits.centers[flat_idx] - half
        right = fits.centers[flat_idx] + half
        inside = flat_idx[(left >= start) & (right <= end)]
        spans.append(_Span(int(start), int(end), int(inside[0]), int(inside[-1])))
    return spans, fits


def _recovery(
    smoothed: np.ndarray, span: _Span, level_end: float, s: _Settings, transform: _Transform
) -> tuple[int | None, bool]:
    """Where the smoothed loss first fell ``recovery_drop`` below its stalled level, if that
    took no longer than the stall itself (or one window); and whether it ever happened."""
    target = level_end - transform.drop(s.recovery_drop)
    below = np.flatnonzero(smoothed[span.end + 1 :] <= target)
    if below.size == 0:
        return None, False
    first = int(below[0])
    horizon = max(s.window, span.end - span.start + 1)
    return (span.end + 1 + first if first < horizon else None), True


def _likely_cause(
    rel_improvement: float,
    recovered: bool,
    grad: float,
    update: float,
    grad_reference: float,
    s: _Settings,
) -> str:
    """First matching rule: rising loss; tiny gradients; tiny updates; a sudden recovery or
    gradients well below their typical size (saddle); a healthy gradient that still makes
    only slow progress (learning rate too small)."""
    if rel_improvement < -s.rising:
        return "divergence"
    if np.isnan(grad):
        return "unknown"
    if grad < s.vanishing_grad:
        return "vanishing gradients"
    if update < s.small_update:
        return "learning rate too small"
    if recovered or grad < s.saddle_ratio * grad_reference:
        return "saddle/plateau"
    if rel_improvement > 0:
        return "learning rate too small"
    return "unknown"


def _nan_median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else math.nan


def _grad_reference(grad: np.ndarray, spans: list[_Span], window: int) -> float:
    """Typical gradient norm outside the stalls (90th percentile); when the whole run is
    stalled, the largest norm of its first window (the gradient it started with)."""
    outside = np.ones(grad.size, dtype=bool)
    for span in spans:
        outside[span.start : span.end + 1] = False
    values = grad[outside & np.isfinite(grad)]
    if values.size == 0:
        values = grad[:window][np.isfinite(grad[:window])]
        return float(values.max()) if values.size else math.nan
    return float(np.percentile(values, 90))


@dataclass
class _Analysis:
    """Working state of one analysis of a finite series."""

    units: _Units
    keep: np.ndarray  # indices of the finite points in ``units``
    z: np.ndarray
    smoothed: np.ndarray
    transform: _Transform
    settings: _Settings


def _stall_rows(a: _Analysis, spans: list[_Span], fits: _WindowFits) -> tuple[list, list]:
    s, u, keep, tr = a.settings, a.units, a.keep, a.transform
    grad, update = u.grad[keep], u.update[keep]
    reference = _grad_reference(grad, spans, s.window)
    rows, ever_recovers = [], []
    for span in spans:
        z_start = fits.value_at(span.first_window, -fits.half)
        z_end = fits.value_at(span.last_window, fits.half)
        loss_start, loss_end = (float(v) for v in tr.inverse(np.array([z_start, z_end])))
        recovered_at, recovers = _recovery(a.smoothed, span, z_end, s, tr)
        rel = _relative_change(loss_start, loss_end)
        g = _nan_median(grad[span.start : span.end + 1])
        r = _nan_median(update[span.start : span.end + 1])
        first, last = keep[span.start], keep[span.end]
        rows.append(
            {
                "start": u.x_first[first],
                "end": u.x_last[last],
                "length": int(u.last[last] - u.first[first] + 1),
                "loss_start": loss_start,
                "loss_end": loss_end,
                "rel_improvement": rel,
                "recovered": recovered_at is not None,
                "recovered_at": (
                    u.x_first[keep[recovered_at]] if recovered_at is not None else None
                ),
                "grad_norm": g,
                "update_ratio": r,
                "likely_cause": _likely_cause(rel, recovered_at is not None, g, r, reference, s),
            }
        )
        ever_recovers.append(recovers)
    return rows, ever_recovers


def _relative_change(start: float, end: float) -> float:
    return (start - end) / abs(start) if start != 0 else math.nan


def _divergence_rows(units: _Units) -> list[dict]:
    rows = []
    finite = np.isfinite(units.loss)
    for start, end in zip(*_runs(~finite), strict=True):
        before = units.loss[:start][finite[:start]]
        rows.append(
            {
                "start": units.x_first[start],
                "end": units.x_last[end],
                "length": int(units.last[end] - units.first[start] + 1),
                "loss_start": float(before[-1]) if before.size else math.nan,
                "loss_end": float(units.loss[start]),
                "rel_improvement": math.nan,
                "recovered": bool(end + 1 < units.loss.size),
                "recovered_at": units.x_first[end + 1] if end + 1 < units.loss.size else None,
                "grad_norm": _nan_median(units.grad[start : end + 1]),
                "update_ratio": _nan_median(units.update[start : end + 1]),
                "likely_cause": "divergence",
            }
        )
    return rows


def _is_converged(a: _Analysis, level: float) -> bool:
    s = a.settings
    initial = float(a.transform.inverse(a.smoothed[:1])[0])
    if s.floor is not None:
        excess = initial - s.floor
        return level - s.floor <= s.converged_tol * max(excess, 0.0)
    return _relative_change(initial, level) >= s.min_drop


def _terminal_count(ever_recovers: list[bool]) -> int:
    """How many of the last spans are never followed by a recovery."""
    count = 0
    for recovers in reversed(ever_recovers):
        if recovers:
            break
        count += 1
    return count


_LABEL_COLUMNS = ("start", "end", "recovered_at")
_COLUMN_TYPES = {
    "length": "int64",
    "loss_start": "float64",
    "loss_end": "float64",
    "rel_improvement": "float64",
    "recovered": "bool",
    "grad_norm": "float64",
    "update_ratio": "float64",
}


def _labels(values: Any, integer: bool) -> pd.Series:
    """Epochs or steps: nullable integers (``Int64``) when they are whole numbers."""
    series = pd.Series(values, dtype="float64")
    return series.astype("Int64") if integer else series


def _table(rows: list[dict], units: _Units) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(STALL_COLUMNS))
    for column in _LABEL_COLUMNS:
        table[column] = _labels(table[column].to_numpy(dtype=np.float64), units.integer_labels)
    table = table.astype(_COLUMN_TYPES)
    return table.sort_values("start", kind="stable").reset_index(drop=True)


def _units_frame(units: _Units, smoothed_full: np.ndarray, flat_full: np.ndarray) -> pd.DataFrame:
    whole_x = units.integer_labels and is_integral(units.x.astype(np.float64))
    return pd.DataFrame(
        {
            "x": _labels(units.x, whole_x),
            "x_first": _labels(units.x_first, units.integer_labels),
            "x_last": _labels(units.x_last, units.integer_labels),
            "loss": units.loss,
            "smoothed": smoothed_full,
            "flat": flat_full,
            "grad_norm": units.grad,
            "update_ratio": units.update,
        }
    )


def analyze_stalls(
    losses: Any,
    *,
    epochs: Any = None,
    steps: Any = None,
    grad_norms: Any = None,
    update_ratios: Any = None,
    window: int | None = None,
    threshold: float = 0.02,
    confidence: float = 0.8,
    min_length: int | None = None,
    recovery_drop: float = 0.1,
    floor: float | None = None,
    min_drop: float = 0.5,
    converged_tol: float = 0.05,
    scale: str = "auto",
    max_points: int = 10_000,
    vanishing_grad: float = 1e-6,
    saddle_ratio: float = 0.25,
    small_update: float = 1e-5,
    rising: float = 0.5,
) -> StallReport:
    """Find stalls in a loss history and say whether the run converged, stalled or diverged.

    Parameters are those of :func:`find_stalls`; this returns the full :class:`StallReport`
    (stall table, verdict and the per-point smoothed series used by the plots).
    """
    _check_options(threshold, recovery_drop, confidence, max_points)
    units, unit_name = _prepared_units(losses, epochs, steps, grad_norms, update_ratios, max_points)
    options = dict(
        threshold=threshold,
        confidence=confidence,
        recovery_drop=recovery_drop,
        floor=floor,
        min_drop=min_drop,
        converged_tol=converged_tol,
        vanishing_grad=vanishing_grad,
        saddle_ratio=saddle_ratio,
        small_update=small_update,
        rising=rising,
    )
    keep = np.flatnonzero(np.isfinite(units.loss))
    if keep.size < _MIN_WINDOW:
        return _short_run_report(units, unit_name, {**options, "scale": scale})
    transform = _Transform.fit(units.loss[keep], _choose_scale(units.loss[keep], scale))
    z = transform.forward(units.loss[keep])
    noise = _noise_level(z)
    chosen_window = _resolve_window(
        window,
        keep.size,
        noise,
        transform.drop(threshold) / 2,
        NormalDist().inv_cdf(confidence),
    )
    settings = _Settings(
        window=chosen_window,
        min_length=chosen_window if min_length is None else int(min_length),
        **options,
    )
    smoothed = _moving_average(z, max(1, chosen_window // 4))
    analysis = _Analysis(units, keep, z, smoothed, transform, settings)
    report_settings = {**options, "scale": transform.scale, "window": chosen_window}
    return _run_report(analysis, unit_name, noise, {**report_settings, "noise": noise})


def _check_options(
    threshold: float, recovery_drop: float, confidence: float, max_points: int
) -> None:
    _check_fraction("threshold", threshold)
    _check_fraction("recovery_drop", recovery_drop)
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    if max_points < 100:
        raise ValueError(f"max_points must be at least 100, got {max_points}")


def _prepared_units(
    losses: Any, epochs: Any, steps: Any, grad_norms: Any, update_ratios: Any, max_points: int
) -> tuple[_Units, str]:
    """Validated inputs, aggregated per epoch and binned; and the name of their unit."""
    loss = as_series(losses, "losses")
    group = epochs is not None
    label_name = "epochs" if group else "steps"
    labels = _aligned(epochs if group else steps, label_name, loss.size)
    if labels is None:
        labels = np.arange(loss.size, dtype=np.float64)
    _check_finite(labels, label_name)
    grads = _aligned(grad_norms, "grad_norms", loss.size)
    updates = _aligned(update_ratios, "update_ratios", loss.size)
    units = _aggregate(loss, labels, grads, updates, group, is_integral(labels))
    return _bin(units, max_points).filled(), "epoch" if group else "step"


def _check_finite(labels: np.ndarray, name: str) -> None:
    bad = np.flatnonzero(~np.isfinite(labels))
    if bad.size:
        raise ValueError(
            f"{name} must be finite numbers (one label per loss); {name}[{bad[0]}] is "
            f"{labels[bad[0]]}"
        )


def _short_run_report(units: _Units, unit_name: str, settings: dict[str, Any]) -> StallReport:
    """Too few finite points for a slope test: only divergence is reported."""
    diverged = not np.isfinite(units.loss[-1])
    return StallReport(
        table=_table(_divergence_rows(units), units),
        verdict="diverged" if diverged else "too short",
        units=_units_frame(
            units,
            np.where(np.isfinite(units.loss), units.loss, np.nan),
            np.zeros(units.loss.size, dtype=bool),
        ),
        unit_name=unit_name,
        window=0,
        settings=settings,
    )


def _run_report(
    a: _Analysis, unit_name: str, noise: float, settings: dict[str, Any]
) -> StallReport:
    spans, fits = _flat_spans(a.z, a.settings, a.transform, noise)
    rows, ever_recovers = _stall_rows(a, spans, fits)
    verdict, converged_from, converged_span, rows = _verdict(a, spans, rows, ever_recovers)
    units, keep = a.units, a.keep
    flat = np.zeros(units.loss.size, dtype=bool)
    for span in spans:
        flat[keep[span.start : span.end + 1]] = True
    smoothed = np.full(units.loss.size, np.nan)
    smoothed[keep] = a.transform.inverse(a.smoothed)
    return StallReport(
        table=_table(rows + _divergence_rows(units), units),
        verdict="diverged" if not np.isfinite(units.loss[-1]) else verdict,
        units=_units_frame(units, smoothed, flat),
        unit_name=unit_name,
        window=a.settings.window,
        converged_from=converged_from,
        converged_span=converged_span,
        settings=settings,
    )


def _check_fraction(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name} must be between 0 and 1 (a relative change), got {value}")


def _verdict(
    a: _Analysis, spans: list[_Span], rows: list[dict], ever_recovers: list[bool]
) -> tuple[str, Any, tuple[Any, Any] | None, list[dict]]:
    """Verdict on how the run ended, converged span and the rows that remain stalls."""
    terminal = _terminal_count(ever_recovers)
    if terminal == 0:
        return "improving", None, None, rows
    first_terminal = len(rows) - terminal
    if any(row["likely_cause"] == "divergence" for row in rows[first_terminal:]):
        return "diverged", None, None, rows
    level = float(np.min(a.transform.inverse(a.smoothed[spans[first_terminal].start :])))
    if not _is_converged(a, level):
        return "stalled", None, None, rows
    start = a.units.label(rows[first_terminal]["start"])
    end = a.units.label(a.units.x_last[a.keep[-1]])  # converged until the end of the run
    return "converged", start, (start, end), rows[:first_terminal]


def find_stalls(
    losses: Any,
    *,
    epochs: Any = None,
    steps: Any = None,
    grad_norms: Any = None,
    update_ratios: Any = None,
    window: int | None = None,
    threshold: float = 0.02,
    confidence: float = 0.8,
    min_length: int | None = None,
    recovery_drop: float = 0.1,
    floor: float | None = None,
    min_drop: float = 0.5,
    converged_tol: float = 0.05,
    scale: str = "auto",
    max_points: int = 10_000,
    vanishing_grad: float = 1e-6,
    saddle_ratio: float = 0.25,
    small_update: float = 1e-5,
    rising: float = 0.5,
) -> pd.DataFrame:
    """Return one row per span where the loss stopped improving.

    Args:
        losses: one loss per step (or per epoch); NaN/inf mark divergence.
        epochs: epoch of each loss; losses are averaged per epoch and the table is in epochs.
        steps: label of each loss when no ``epochs`` are given (default ``0, 1, 2, ...``).
        grad_norms: gradient norm at each step (enables ``grad_norm`` and ``likely_cause``).
        update_ratios: ``|Δθ| / |θ|`` at each step (tells a too small learning rate).
        window: points per slope test (default: 1/40 of the points, at least 5; made odd).
        threshold: a window is flat when its loss improves by less than this fraction.
        confidence: one-sided level of the bound on the improvement (0.5: point estimate).
        min_length: shortest reported stall, in points (default: ``window``).
        recovery_drop: relative fall within one window after a stall that counts as recovery.
        floor: lowest attainable loss if known (e.g. 0); decides converged vs stalled.
        min_drop: without ``floor``, a final flat span is converged if the loss had fallen by
            at least this fraction of its initial value.
        converged_tol: with ``floor``, converged when the loss is within this fraction of the
            initial excess over the floor.
        scale: ``"log"`` (relative changes), ``"linear"`` (changes relative to the loss range)
            or ``"auto"`` (log unless some loss is negative).
        max_points: longer series are averaged in consecutive bins down to this many points.
        vanishing_grad: gradient norm below which a stall is put down to vanishing gradients.
        saddle_ratio: a stall whose gradient norm is below this fraction of the typical norm
            elsewhere in the run (90th percentile) is a saddle or plateau.
        small_update: update/weight ratio below which the learning rate is too small.
        rising: a "stall" whose loss rose by more than this fraction is divergence.

    Returns:
        A DataFrame with columns :data:`STALL_COLUMNS`: ``start`` and ``end`` (inclusive
        epochs or steps), ``length``, ``loss_start``, ``loss_end``, ``rel_improvement``
        (fraction of the loss gained over the span), ``recovered`` (fell fast afterwards),
        ``recovered_at``, ``grad_norm`` and ``update_ratio`` (medians over the span) and
        ``likely_cause`` (one of :data:`CAUSES`). A flat span at the end of a converged run
        is not a stall: ``table.attrs["verdict"]`` says ``"converged"`` (from
        ``attrs["converged_from"]``), ``"stalled"``, ``"diverged"``, ``"improving"`` or
        ``"too short"``. :func:`analyze_stalls` returns the same with the smoothed series.

    Raises:
        ValueError: empty, non-numeric or non-1-D input, or misaligned ``epochs``/``steps``/
            ``grad_norms``/``update_ratios``.
    """
    return analyze_stalls(
        losses,
        epochs=epochs,
        steps=steps,
        grad_norms=grad_norms,
        update_ratios=update_ratios,
        window=window,
        threshold=threshold,
        confidence=confidence,
        min_length=min_length,
        recovery_drop=recovery_drop,
        floor=floor,
        min_drop=min_drop,
        converged_tol=converged_tol,
        scale=scale,
        max_points=max_points,
        vanishing_grad=vanishing_grad,
        saddle_ratio=saddle_ratio,
        small_update=small_update,
        rising=rising,
    ).to_table()
