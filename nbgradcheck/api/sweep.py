"""The epsilon curve: how the finite-difference error depends on the step ε.

For a step ε the numeric gradient carries two errors: truncation, which falls as ε²
(central, complex) or ε (forward, backward), and round-off, which grows as u·|J|/ε
(u the unit round-off; absent for the complex step). On log-log axes the curve is a
V: slope −1 on the left (round-off), slope 2 or 1 on the right (truncation), the best ε
at the bottom. A flat curve means the step is not the problem: the analytic gradient is.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nbgradcheck.api.perform import perform_check
from nbgradcheck.core.schemes import METHODS, scheme_for
from nbgradcheck.core.verdict import VERDICT_THRESHOLDS
from nbgradcheck.errors import GradCheckError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from nbgradcheck.core.result import CheckResult

DEFAULT_EPS = np.logspace(-12, -1, 23)
METHOD_COLOURS = {
    "central": "#1f77b4",
    "forward": "#d62728",
    "backward": "#ff7f0e",
    "complex": "#2ca02c",
}
Y_COLUMNS = {
    "difference": "relative difference ‖n − a‖ / (‖n‖ + ‖a‖)",
    "max_abs_error": "largest |n − a| of an element",
}
# The truncation region: error at least this many times the best, and below saturation.
CLEAR_OF_OPTIMUM = 10.0
SATURATION = 0.1
# Local slopes within this of the median belong to the same power law.
SLOPE_AGREEMENT = 0.5
MIN_FIT_POINTS = 3  # a slope through two points says nothing about a power law
PLOT_SIZE = (7.4, 4.5)  # inches
VERDICT_LINES = VERDICT_THRESHOLDS  # the verdict scale, drawn as lines


@dataclass
class EpsSweep:
    """Errors of the gradient check at each step ε and method.

    ``frame`` has one row per (method, ε): difference (global relative difference),
    max_abs_error, floor (relative round-off floor), verdict, and problem (why the check
    could not run at that step; '' when it did). ``results`` holds the full
    :class:`CheckResult` of each usable row, keyed by (method, ε).
    """

    frame: pd.DataFrame
    results: dict[tuple[str, float], CheckResult] = field(default_factory=dict, repr=False)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(self.frame["method"]))

    def curve(self, method: str, y: str = "difference") -> tuple[np.ndarray, np.ndarray]:
        """(ε, error) of one method, ε ascending."""
        rows = self.frame[self.frame["method"] == method].sort_values("eps")
        return rows["eps"].to_numpy(float), rows[y].to_numpy(float)

    @property
    def best(self) -> pd.DataFrame:
        """Per method: the ε with the smallest difference, and that difference."""
        rows = []
        for method in self.methods:
            eps, errors = self.curve(method)
            position = best_position(errors)
            if position is not None:
                rows.append(
                    {"method": method, "eps": eps[position], "difference": errors[position]}
                )
        return pd.DataFrame(rows, columns=["method", "eps", "difference"]).set_index("method")

    def slope(self, method: str, y: str = "difference") -> float:
        """Fitted log-log slope of the truncation region (≈2 central, ≈1 one-sided)."""
        eps, errors = self.curve(method, y)
        region = truncation_region(eps, errors)
        if region.sum() < MIN_FIT_POINTS:
            return float("nan")
        return float(np.polyfit(np.log10(eps[region]), np.log10(errors[region]), 1)[0])

    @property
    def slopes(self) -> dict[str, float]:
        return {method: self.slope(method) for method in self.methods}

    @property
    def gradient_wrong(self) -> bool:
        """True when even the best step is judged suspicious or wrong (the verdict allows
        for the round-off floor, so a correct float32 gradient is not called wrong)."""
        usable = self.frame[self.frame["difference"] > 0]
        if usable.empty:
            return False
        best = usable.loc[usable["difference"].idxmin()]
        return best["verdict"] not in ("correct", "ok")

    @property
    def roundoff_below(self) -> float | None:
        """The ε below which round-off dominates for every method (the smallest best ε)."""
        best = self.best
        if best.empty or self.gradient_wrong:
            return None
        smallest_eps = float(self.frame["eps"].min())
        edge = float(best["eps"].min())
        return edge if edge > smallest_eps else None

    @property
    def note(self) -> str:
        """What the curve says about the gradient (and which steps could not be used)."""
        unusable = self.frame[self.frame["problem"] != ""]
        if unusable.empty:
            return self.verdict_note()
        steps = sorted(set(unusable["eps"]))
        listed = (
            ", ".join(f"{e:.0e}" for e in steps)
            if len(steps) <= 3
            else f"{len(steps)} from {steps[0]:.0e} to {steps[-1]:.0e}"
        )
        return f"{self.verdict_note()}; unusable steps (see .frame['problem']): {listed}"

    def verdict_note(self) -> str:
        best = self.best
        if best.empty:
            exact = bool((self.frame["difference"] == 0).any())
            return "every step gave the exact gradient" if exact else "no error was measured"
        lowest = float(best["difference"].min())
        if self.gradient_wrong:
            return (
                f"even the best step gives a relative difference of {lowest:.1e}: the "
                f"error does not come from the step size, the analytic gradient is wrong"
            )
        winner = best["difference"].idxmin()
        step = best.loc[winner, "eps"]
        verdict = self.result(winner, step).verdict
        return (
            f"the analytic gradient is right: best relative difference {lowest:.1e} "
            f"({verdict}) at ε={step:.0e} with {winner} differences"
        )

    def result(self, method: str, eps: float) -> CheckResult:
        """The full check behind one point (the nearest ε of that method)."""
        candidates = [e for m, e in self.results if m == method]
        if not candidates:
            raise KeyError(f"no results for method {method!r}; methods: {self.methods}")
        nearest = min(candidates, key=lambda e: abs(math.log10(e) - math.log10(eps)))
        return self.results[(method, nearest)]

    def plot(self, y: str = "difference", dpi: float = 100) -> Figure:
        """Log-log error against ε: fitted truncation slopes, round-off region, best ε."""
        if y not in Y_COLUMNS:
            raise ValueError(f"y must be one of {', '.join(map(repr, Y_COLUMNS))}; got {y!r}")
        from nbgradcheck.views.figures import NotebookFigure

        width, height = PLOT_SIZE
        figure = NotebookFigure(figsize=PLOT_SIZE, dpi=dpi)
        # fixed margins in inches (constrained layout costs more than the drawing)
        ax = figure.add_axes((0.95 / width, 0.85 / height, 1 - 1.75 / width, 1 - 1.2 / height))
        draw_roundoff_region(ax, self.roundoff_below)
        for method in self.methods:
            draw_method(ax, self, method, y, mark_best=not self.gradient_wrong)
        ax.set_xscale("log")
        ax.set_yscale("log")
        low, high = float(self.frame["eps"].min()), float(self.frame["eps"].max())
        ax.set_xlim(low / 2, high * 2)
        if y == "difference":
            draw_verdict_lines(ax)
        ax.set_xlabel("step ε")
        ax.set_ylabel(Y_COLUMNS[y])
        ax.set_title("Finite-difference error against the step ε", fontsize=11, loc="left")
        ax.grid(True, which="major", color="0.92")
        ax.legend(fontsize=8, loc="best", framealpha=0.95)
        figure.text(
            0.5,
            0.08 / height,
            textwrap.fill(self.note, 110),
            fontsize=8,
            color="0.3",
            ha="center",
            va="bottom",
        )
        return figure

    def __repr__(self) -> str:
        lines = ["EpsSweep: " + self.note]
        slopes = self.slopes
        for method, row in self.best.iterrows():
            lines.append(
                f"  {method:8s} best ε={row['eps']:.1e} (difference "
                f"{row['difference']:.1e}), truncation slope {slopes[method]:.2f} "
                f"(expected {scheme_for(method).order})"
            )
        return "\n".join(lines)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from nbgradcheck.views.figures import figure_png

        return {"text/plain": repr(self), "image/png": figure_png(self.plot())}


def best_position(errors: np.ndarray) -> int | None:
    """Position of the smallest positive error (an exact 0 is luck, not a trend)."""
    usable = np.isfinite(errors) & (errors > 0)
    if not usable.any():
        return None
    return int(np.nanargmin(np.where(usable, errors, np.nan)))


def truncation_region(eps: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """The points of the truncation region: one clean power law right of the best ε.

    Candidates rise from the best ε, stay well above the best error and below
    saturation (the run ends where the error falls clearly). Among them the longest run
    of consecutive points whose local slopes agree with the median slope is kept: a
    step that starts crossing kinks (ReLU) jumps off the power law and is left out.
    """
    candidates = rising_run(errors)
    region = np.zeros(eps.shape, dtype=bool)
    if candidates.size < 2:
        return region
    local = np.diff(np.log10(errors[candidates])) / np.diff(np.log10(eps[candidates]))
    agrees = np.abs(local - np.median(local)) <= SLOPE_AGREEMENT
    start, length = longest_true_run(agrees)
    if length:
        region[candidates[start : start + length + 1]] = True
    return region


def rising_run(errors: np.ndarray) -> np.ndarray:
    """Positions right of the best error, rising, ≥ CLEAR_OF_OPTIMUM × best, ≤ SATURATION."""
    position = best_position(errors)
    if position is None:
        return np.empty(0, dtype=int)
    lowest = max(float(errors[position]), np.finfo(float).tiny)
    highest, run = lowest, []
    for i in range(position + 1, len(errors)):
        error = float(errors[i])
        if not math.isfinite(error) or error > SATURATION or error < highest / 2:
            break
        highest = max(highest, error)
        if error >= CLEAR_OF_OPTIMUM * lowest:
            run.append(i)
    return np.asarray(run, dtype=int)


def longest_true_run(flags: np.ndarray) -> tuple[int, int]:
    """(start, length) of the longest run of True in ``flags``; (0, 0) when none."""
    best_start, best_length, start = 0, 0, None
    for i, flag in enumerate([*flags.tolist(), False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if i - start > best_length:
                best_start, best_length = start, i - start
            start = None
    return best_start, best_length


# -- drawing ---------------------------------------------------------------------------------


def draw_roundoff_region(ax: Axes, edge: float | None) -> None:
    if edge is None:
        return
    ax.axvspan(1e-300, edge, color="0.88", zorder=0, label="round-off dominates (every method)")


def draw_verdict_lines(ax: Axes) -> None:
    """Dotted lines at the verdict thresholds; each band named in the right margin."""
    from nbgradcheck.views.colours import VERDICT_COLOURS

    for verdict, level in VERDICT_LINES:
        ax.axhline(level, color=VERDICT_COLOURS[verdict], linestyle=":", linewidth=0.9, zorder=1)
    low, high = ax.get_ylim()
    edges = [low, *(level for _, level in VERDICT_LINES), high]
    names = [verdict for verdict, _ in VERDICT_LINES] + ["wrong"]
    for verdict, start, stop in zip(names, edges[:-1], edges[1:]):
        start, stop = max(start, low), min(stop, high)
        if start < stop:
            ax.annotate(
                verdict,
                (1.0, math.sqrt(start * stop)),
                xycoords=("axes fraction", "data"),
                xytext=(4, 0),
                textcoords="offset points",
                ha="left",
                va="center",
                fontsize=7,
                color=VERDICT_COLOURS[verdict],
            )


def draw_method(ax: Axes, sweep: EpsSweep, method: str, y: str, mark_best: bool) -> None:
    """The measured curve, the fitted truncation slope (a highlighter over the points it
    was fitted on) and the best ε (a star; its value in the legend)."""
    colour = METHOD_COLOURS.get(method, "0.3")
    eps, errors = sweep.curve(method, y)
    shown = np.where(errors > 0, errors, np.nan)  # exact zeros cannot sit on a log axis
    position = best_position(shown)
    label = method
    if position is not None and mark_best:
        label = f"{method}: best ε = {eps[position]:.0e}"
        ax.plot(
            eps[position],
            shown[position],
            marker="*",
            markersize=15,
            color=colour,
            markeredgecolor="black",
            linestyle="none",
            zorder=4,
        )
    ax.plot(
        eps, shown, marker="o", markersize=3.5, color=colour, linewidth=1.4, label=label, zorder=3
    )
    exact = errors == 0
    if exact.any():
        ax.plot(
            eps[exact],
            np.full(exact.sum(), 0.015),
            marker="v",
            markersize=6,
            linestyle="none",
            color=colour,
            transform=ax.get_xaxis_transform(),
            label=f"{method}: exact (0 error), off the log axis",
            zorder=3,
        )
    region = truncation_region(eps, errors)
    slope = sweep.slope(method, y)
    if np.isfinite(slope):
        fit = np.polyfit(np.log10(eps[region]), np.log10(errors[region]), 1)
        span = eps[region]
        ax.plot(
            span,
            10 ** np.polyval(fit, np.log10(span)),
            color=colour,
            linewidth=7,
            alpha=0.25,
            solid_capstyle="round",
            zorder=2,
            label=f"{method} truncation: slope {slope:.2f} (expected {scheme_for(method).order})",
        )


# -- running the checks ----------------------------------------------------------------------


def sweep_eps(
    loss: Callable[..., Any],
    params: Any,
    grads: Any,
    eps: Iterable[float] = DEFAULT_EPS,
    methods: Iterable[str] = ("central", "forward"),
    **check_options: Any,
) -> EpsSweep:
    """Run the gradient check at every step in ``eps`` with every method in ``methods``.

    Each point is a full :func:`nbgradcheck.check` (``check_options``: mode, sample,
    seed), so the parameters are restored bit for bit after every one. Every estimate is
    taken at its own ε: failing elements are not re-estimated with smaller steps nor
    excused as kinks (``tol`` is not used), so the curve shows what each step really
    gives. With ``mode="sample"`` and no seed, ``seed=0`` is used so every point checks
    the same elements. A step at which the check cannot run (it rounds away in float32,
    or the loss overflows) is kept as an 'unusable' row, the reason in ``problem``; when
    no step works, the first error is raised. Ctrl-C stops the sweep and returns the
    points finished so far.

    Returns:
        An :class:`EpsSweep` with ``.frame``, ``.best``, ``.slopes`` and ``.plot()``.
    """
    steps = validated_steps(eps)
    methods = validated_methods(methods)
    if check_options.get("mode") == "sample" and check_options.get("seed") is None:
        check_options["seed"] = 0
    # An infinite tolerance keeps the engine from re-estimating failing elements with
    # smaller steps (or excusing them as kinks): every point measures its own ε.
    check_options.update(progress=False, tol=np.inf)
    rows, results, problems = [], {}, []
    for method in methods:
        for step in steps:
            try:
                with np.errstate(invalid="ignore", over="ignore"):
                    result = perform_check(
                        loss, params, grads, eps=step, method=method, **check_options
                    )
            except GradCheckError as error:  # e.g. a step that rounds away in float32
                problems.append(error)
                rows.append(unusable_row(method, step, error))
                continue
            if not result.complete:
                warnings.warn(
                    f"sweep interrupted at {method}, ε={step:g}", RuntimeWarning, stacklevel=2
                )
                break
            rows.append(sweep_row(method, step, result))
            results[(method, step)] = result
    if problems and not results:
        raise problems[0]
    return EpsSweep(sweep_frame(rows), results)


def validated_steps(eps: Iterable[float]) -> list[float]:
    steps = np.asarray(list(eps) if not np.isscalar(eps) else [eps], dtype=float).ravel()
    if steps.size == 0 or not np.all(np.isfinite(steps)) or np.any(steps <= 0):
        raise ValueError(f"eps must be one or more positive finite steps; got {eps!r}")
    return sorted(set(steps.tolist()))


def validated_methods(methods: Iterable[str]) -> list[str]:
    chosen = [methods] if isinstance(methods, str) else list(methods)
    unknown = [m for m in chosen if m not in METHODS]
    if not chosen or unknown:
        raise ValueError(f"methods must be taken from {', '.join(METHODS)}; got {chosen!r}")
    return list(dict.fromkeys(chosen))


def sweep_row(method: str, step: float, result: CheckResult) -> dict[str, Any]:
    errors = [t.abs_error[t.counted] for t in result.tensors]
    largest = max((float(e.max()) for e in errors if e.size), default=float("nan"))
    return {
        "method": method,
        "eps": step,
        "difference": result.difference,
        "max_abs_error": largest,
        "floor": result.floor,
        "verdict": result.verdict,
        "problem": "",
    }


def unusable_row(method: str, step: float, error: GradCheckError) -> dict[str, Any]:
    """A point where the check could not run at this step; the reason in ``problem``."""
    nan = float("nan")
    return {
        "method": method,
        "eps": step,
        "difference": nan,
        "max_abs_error": nan,
        "floor": nan,
        "verdict": "unusable",
        "problem": str(error),
    }


def sweep_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    columns = ["method", "eps", "difference", "max_abs_error", "floor", "verdict", "problem"]
    return pd.DataFrame(rows, columns=columns)
