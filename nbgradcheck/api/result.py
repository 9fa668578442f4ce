"""GradCheckResult: the result users get from :func:`nbgradcheck.check`, with its views.

The numbers, verdicts and diagnoses are the frozen core result's
(:class:`~nbgradcheck.core.result.CheckResult`); this subclass adds what needs pandas,
matplotlib, ipywidgets or the loss: tables (:mod:`nbgradcheck.views.tables`), HTML and
rich display (:mod:`nbgradcheck.views.html`), heatmaps (:mod:`nbgradcheck.views.figures`),
the inspector (:mod:`nbgradcheck.views.inspector`), JSON (:mod:`nbgradcheck.core.serialize`),
and re-running the check (``recheck``, ``sweep_eps``). Every view reads stored values.

The views load when first used, so a check run from a script imports NumPy only.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbgradcheck.core import serialize
from nbgradcheck.core.result import CheckResult
from nbgradcheck.errors import GradCheckError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from pandas.io.formats.style import Styler

    from nbgradcheck.api.sweep import EpsSweep
    from nbgradcheck.views.inspector import Inspector


@dataclass(frozen=True, eq=False, repr=False)
class GradCheckResult(CheckResult):
    """Outcome of :func:`nbgradcheck.check`: global and per-tensor verdicts, all the numbers,
    and their views.

    ``verdict`` is the worst per-tensor verdict, so one wrong bias vector is not hidden
    by the global norm of a large weight matrix; ``difference`` is the global relative
    difference over all checked elements. ``rerun`` holds the check's arguments (the loss
    included), for :meth:`recheck` and :meth:`sweep_eps`; empty for a loaded result.
    """

    rerun: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_core(
        cls,
        result: CheckResult,
        *,
        rerun: dict[str, Any] | None = None,
        duration_s: float | None = None,
    ) -> GradCheckResult:
        """The public result around a frozen core result (nothing is recomputed).

        ``rerun``: the check's arguments, to re-run it; ``duration_s``: how long it took.
        """
        kept = rerun if rerun is not None else getattr(result, "rerun", {})
        plain: dict[str, Any] = {"rerun": dict(kept)}
        if duration_s is not None:
            plain["duration_s"] = float(duration_s)
        return result.copied(cls, **plain)

    @classmethod
    def run(cls, loss: Any, params: Any, grads: Any = None, **options: Any) -> GradCheckResult:
        """Run a check (:func:`nbgradcheck.check`'s arguments) and keep what re-runs it."""
        from nbgradcheck.api.perform import perform_check  # the engine, when a check runs

        core = perform_check(loss, params, grads, **options)
        return cls.from_core(core, rerun=dict(loss=loss, params=params, grads=grads, **options))

    # -- tables -------------------------------------------------------------------------------
    @property
    def table(self) -> pd.DataFrame:
        """One row per parameter tensor."""
        from nbgradcheck.views.tables import summary_table

        return summary_table(self)

    def styled_table(self, max_rows: int | None = None) -> Styler:
        """``table`` as a pandas Styler: verdicts coloured, errors in scientific notation.

        ``max_rows`` keeps every failing tensor and fills up with the others, in order.
        """
        from nbgradcheck.views.tables import styled_table

        return styled_table(self, self.table, max_rows)

    def worst(
        self, k: int = 10, by: str = "abs_error", include_kinks: bool = False
    ) -> pd.DataFrame:
        """The ``k`` elements with the largest error across all tensors, worst first.

        ``by`` is 'abs_error' or 'rel_error'. Kink crossings are left out unless
        ``include_kinks`` (they are excused; ``result.kinks`` lists them).
        """
        from nbgradcheck.views.tables import worst_elements

        return worst_elements(self, k, by, include_kinks)

    def to_frame(self) -> pd.DataFrame:
        """Every checked element of every tensor, one row each (long format).

        Columns: parameter, index, flat_index, value, analytic, numeric, abs_error,
        rel_error, step, noise, kink. ``table`` has one row per tensor instead.
        """
        from nbgradcheck.views.tables import all_elements

        return all_elements(self)

    def elements(self, name: str, sort_by: str | None = None) -> pd.DataFrame:
        """Checked elements of one tensor: index, analytic, numeric, abs_error, rel_error.

        ``sort_by`` ('abs_error' or 'rel_error') lists the worst first.
        """
        from nbgradcheck.views.tables import elements_frame

        return elements_frame(self.tensor(name), sort_by)

    @property
    def kinks(self) -> pd.DataFrame:
        """Elements excused as kink crossings (not counted as failures)."""
        from nbgradcheck.views.tables import kinks_frame

        return kinks_frame(self)

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self, elements: bool = True) -> dict[str, Any]:
        """The result as JSON-safe builtins (schema: :mod:`nbgradcheck.core.serialize`).

        ``elements=False`` leaves out the per-element arrays (the summary only).
        """
        return serialize.to_dict(self, elements)

    def to_json(
        self, path: str | Path | None = None, *, elements: bool = True, indent: int | None = None
    ) -> str:
        """``to_dict()`` as strict JSON text; also written to ``path`` when given."""
        text = serialize.to_json(self, elements, indent)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GradCheckResult:
        """Rebuild a result saved with ``to_dict()`` (with its elements), validated.

        The loaded result has every number and view; it cannot ``recheck`` or
        ``sweep_eps`` (the loss is not saved), and the analytic gradient is known
        only at the checked elements.
        """
        return cls.from_core(serialize.from_dict(data), rerun={})

    @classmethod
    def from_json(cls, text: str | bytes) -> GradCheckResult:
        """Rebuild a result from ``to_json()`` text (validated)."""
        return cls.from_core(serialize.from_json(text), rerun={})

    # -- HTML and rich display ------------------------------------------------------------
    def to_html(self, path: str | Path | None = None, *, heatmap: bool = True) -> str:
        """The notebook display as an HTML fragment: summary, table, worst elements,
        notes and (when tensors fail) their heatmap as an embedded PNG.

        With ``path``, a complete HTML page is also written there.
        """
        from nbgradcheck.views import html

        worst = self.worst(html.HTML_WORST) if self.failing else None
        table = self.styled_table(max_rows=html.HTML_MAX_ROWS)
        fragment = html.result_fragment(self, table, worst, heatmap)
        if path is not None:
            Path(path).write_text(html.page(fragment, self.verdict), encoding="utf-8")
        return fragment

    def _repr_mimebundle_(
        self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None
    ) -> dict[str, str]:
        """text/plain (the repr) and text/html (:meth:`to_html`) for Jupyter."""
        from nbgradcheck.views.html import wanted_types

        wanted = wanted_types(include, exclude)
        bundle = {}
        if "text/plain" in wanted:
            bundle["text/plain"] = repr(self)
        if "text/html" in wanted:
            bundle["text/html"] = self.to_html()
        return bundle

    # -- figures and the inspector ----------------------------------------------------------
    def heatmap(
        self, name: str | list[str] | None = None, scale: str = "log", **options: Any
    ) -> Figure:
        """Per-element discrepancy, one panel per tensor (see ``views.figures.heatmap``).

        ``scale``: 'log' (relative error, verdict thresholds on the colour bar), 'abs' or
        'signed'; ``options``: ``highlight_above``, ``pool_above``, ``dpi``.
        """
        from nbgradcheck.views.figures import heatmap

        return heatmap(self, name, scale, **options)

    def inspect(self) -> Inspector:
        """The inspector widget (the static report where widgets cannot render)."""
        from nbgradcheck.views.inspector import inspect

        return inspect(self)

    # -- running the check again --------------------------------------------------------------
    def recheck(self, **changes: Any) -> GradCheckResult:
        """Run the same check again, with some arguments changed (e.g. ``eps=1e-4``)."""
        again = type(self).run(**{**self.needs_rerun(), **changes})
        if not again.complete:
            warnings.warn(again.summary(), RuntimeWarning, stacklevel=2)
        return again

    def sweep_eps(
        self,
        eps: Iterable[float] | None = None,
        methods: Iterable[str] = ("central", "forward"),
        **changes: Any,
    ) -> EpsSweep:
        """The error against the step ε for this check's loss, parameters and gradients.

        Uses the check's own mode, sample and seed unless ``changes`` overrides them;
        see :func:`nbgradcheck.api.sweep.sweep_eps`.
        """
        from nbgradcheck.api.sweep import DEFAULT_EPS, sweep_eps

        rerun = self.needs_rerun("call nbgradcheck.sweep_eps(loss, params, grads) instead")
        options = {key: rerun[key] for key in ("mode", "sample", "seed") if key in rerun}
        options.update(changes)
        return sweep_eps(
            rerun["loss"],
            rerun["params"],
            rerun["grads"],
            eps=DEFAULT_EPS if eps is None else eps,
            methods=methods,
            **options,
        )

    def needs_rerun(self, instead: str = "call nbgradcheck.check instead") -> dict[str, Any]:
        """``rerun``, or an error saying the loss is not held (a loaded result)."""
        if not self.rerun:
            raise GradCheckError(
                f"this result holds no loss to re-run (loaded from JSON?): {instead}"
            )
        return self.rerun
