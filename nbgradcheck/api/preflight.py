"""``preflight()``: the checks an expert runs on a new model before training it.

One call runs them all on one batch and returns a :class:`PreflightReport`:

- ``init_loss``: a classification loss at initialisation is near ln(classes);
- ``batch_independence``: an example's output does not depend on the other examples;
- ``overfit_batch``: a copy trained on the batch drives the loss far down;
- ``dead_units``: ReLU-like units that never fire on the batch (PyTorch);
- ``gradient_flow``: every parameter receives a gradient, not vanishing or exploding;
- ``gradients``: nbgradcheck's own gradient check, float64, sampled elements of every tensor.

PyTorch models are examined by :mod:`nbgradcheck.api.preflight_torch` (imported only for
them), NumPy losses by :mod:`nbgradcheck.api.preflight_numpy`; every threshold is in
:mod:`nbgradcheck.api.preflight_rules`. Nothing the user owns changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from nbgradcheck.adapters.registry import framework_of
from nbgradcheck.api.preflight_rules import (
    CHECK_NAMES,
    PreflightFindings,
    gradient_status,
    site_status,
)
from nbgradcheck.api.result import GradCheckResult
from nbgradcheck.errors import GradCheckError


def preflight(
    model: Any,
    loss_fn: Callable[..., Any],
    X: Any,
    y: Any,
    *,
    grads: Callable[..., Any] | None = None,
    classes: int | None = None,
    steps: int = 100,
    seed: int = 0,
) -> PreflightReport:
    """Run the pre-training checks on one batch ``X, y`` and report what they find.

    PyTorch: ``preflight(model, loss_fn, X, y)`` with ``model`` an ``nn.Module`` and
    ``loss_fn(model(X), y)`` a scalar tensor. NumPy: ``preflight(loss, params, X, y,
    grads=grads)`` with ``loss(params, X, y)`` a float (a tuple's first element counts)
    and ``grads(params, X, y)`` a dict with the same keys as ``params`` (or ``dW1``-style
    keys). The batch axis is axis 0.

    Args:
        classes: the number of classes, for the loss at initialisation (ln(classes)).
            PyTorch: inferred from the output's last dimension when ``y`` holds integer
            labels and the loss is their cross-entropy; NumPy: give it.
        steps: optimisation steps of the ``overfit_batch`` check.
        seed: seeds torch's, NumPy's and Python's RNGs before every check (dropout masks
            repeat); the RNG states are restored afterwards.

    Returns:
        A :class:`PreflightReport`: ``checks`` (a DataFrame: status and finding of each
        check), ``failed``, ``ok``, and a checklist with plots in the notebook.

    The checks work on copies: the parameters, buffers, ``.grad``, ``requires_grad``,
    training flags and hooks of the model, ``X`` and ``y``, the RNG states, the grad mode
    and the default dtype are as they were afterwards, also when the model raises.
    An error in the first forward pass propagates; one in a later check fails that check
    (its exception is kept in ``report.errors``).
    """
    validate_options(classes, steps, seed)
    started = time.perf_counter()
    if framework_of(model) == "torch":
        if grads is not None:
            raise GradCheckError(
                "grads= is for NumPy models: autograd gives a PyTorch model's gradients"
            )
        from nbgradcheck.api.preflight_torch import run_torch

        validate_batch(X, y)
        findings = run_torch(model, loss_fn, X, y, classes, steps, seed)
    else:
        loss, params = model, loss_fn
        validate_numpy_call(loss, params, grads)
        validate_batch(X, y)
        from nbgradcheck.api.preflight_numpy import run_numpy

        findings = run_numpy(loss, params, X, y, grads, classes, steps, seed)
    return PreflightReport.from_findings(findings, time.perf_counter() - started)


# -- the report -----------------------------------------------------------------------------


@dataclass(eq=False)
class PreflightReport:
    """What :func:`preflight` found: a checklist, and the numbers behind it.

    Attributes:
        checks: DataFrame indexed by check name, columns ``status`` ('pass', 'warn',
            'fail' or 'skip'), ``finding`` (a sentence naming the layer or tensor at
            fault) and ``seconds``.
        overfit_curve: the loss on the batch at each training step of ``overfit_batch``
            (the last value after the last step).
        activations: per ReLU-like layer (PyTorch): ``units``, ``dead``, ``dead_share``,
            ``status``.
        gradients: per parameter: ``layer``, ``grad_norm`` (NaN: no gradient),
            ``param_norm``, ``status``.
        gradcheck: the :class:`~nbgradcheck.GradCheckResult` of the
            ``gradients`` check (``report.gradcheck.inspect()`` drills down).
        errors: check name → the exception it raised, for the checks that raised.
    """

    checks: pd.DataFrame
    framework: str
    batch_size: int
    overfit_curve: np.ndarray
    overfit_learning_rate: float | None
    activations: pd.DataFrame
    gradients: pd.DataFrame
    gradcheck: GradCheckResult | None = None
    errors: dict[str, BaseException] = field(default_factory=dict)
    duration_s: float = 0.0

    @classmethod
    def from_findings(cls, findings: PreflightFindings, seconds: float) -> PreflightReport:
        outcomes = {o.name: o for o in findings.outcomes}
        checks = pd.DataFrame(
            {
                "status": [outcomes[name].status for name in CHECK_NAMES],
                "finding": [outcomes[name].finding for name in CHECK_NAMES],
                "seconds": [outcomes[name].seconds for name in CHECK_NAMES],
            },
            index=pd.Index(CHECK_NAMES, name="check"),
        )
        return cls(
            checks=checks,
            framework=findings.framework,
            batch_size=findings.batch_size,
            overfit_curve=np.asarray(findings.overfit_curve, dtype=float),
            overfit_learning_rate=findings.overfit_learning_rate,
            activations=activation_frame(findings),
            gradients=gradient_frame(findings),
            gradcheck=findings.gradcheck,
            errors={o.name: o.error for o in findings.outcomes if o.error is not None},
            duration_s=seconds,
        )

    @property
    def failed(self) -> list[str]:
        """Names of the failing checks."""
        return list(self.checks.index[self.checks["status"] == "fail"])

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings and skips allowed)."""
        return not self.failed

    def status(self, name: str) -> str:
        """'pass', 'warn', 'fail' or 'skip' for one check."""
        return str(self.checks.loc[name, "status"])

    def finding(self, name: str) -> str:
        return str(self.checks.loc[name, "finding"])

    @property
    def summary(self) -> str:
        from nbgradcheck.views.preflight import headline

        return headline(self.checks, self.framework, self.batch_size, self.duration_s)

    def figure(self) -> Any:
        """The plots: overfit curve, dead share per activation layer, gradient norms."""
        from nbgradcheck.views.preflight import preflight_figure

        return preflight_figure(
            self.overfit_curve, self.overfit_learning_rate, self.activations, self.gradients
        )

    def to_html(self) -> str:
        from nbgradcheck.views.preflight import checklist_html

        return checklist_html(self.checks, self.summary, self.figure())

    def __repr__(self) -> str:
        from nbgradcheck.views.preflight import checklist_text

        return checklist_text(self.checks, self.summary)

    def _repr_mimebundle_(
        self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None
    ) -> dict[str, str]:
        wanted = {"text/plain", "text/html"}
        if include is not None:
            wanted &= set(include)
        if exclude is not None:
            wanted -= set(exclude)
        bundle = {}
        if "text/plain" in wanted:
            bundle["text/plain"] = repr(self)
        if "text/html" in wanted:
            bundle["text/html"] = self.to_html()
        return bundle


def activation_frame(findings: PreflightFindings) -> pd.DataFrame:
    rows = [
        {
            "site": site.name,
            "units": site.units,
            "dead": site.dead,
            "dead_share": site.dead_share,
            "status": site_status(site, findings.batch_size),
        }
        for site in findings.activations
    ]
    columns = ["units", "dead", "dead_share", "status"]
    return pd.DataFrame(rows, columns=["site", *columns]).set_index("site")


def gradient_frame(findings: PreflightFindings) -> pd.DataFrame:
    rows = [
        {
            "parameter": g.name,
            "layer": g.layer,
            "grad_norm": np.nan if g.grad_norm is None else g.grad_norm,
            "param_norm": g.param_norm,
            "status": gradient_status(g),
        }
        for g in findings.gradients
    ]
    columns = ["layer", "grad_norm", "param_norm", "status"]
    return pd.DataFrame(rows, columns=["parameter", *columns]).set_index("parameter")


# -- validating what the user passed --------------------------------------------------------


def validate_options(classes: Any, steps: Any, seed: Any) -> None:
    if classes is not None and (
        isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 2
    ):
        raise GradCheckError(f"classes must be an integer of at least 2; got {classes!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise GradCheckError(f"steps must be a positive integer; got {steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise GradCheckError(f"seed must be a non-negative integer; got {seed!r}")


def validate_numpy_call(loss: Any, params: Any, grads: Any) -> None:
    if not callable(loss):
        raise GradCheckError(
            f"preflight takes a PyTorch nn.Module, or a NumPy loss function with its "
            f"params: preflight(loss, params, X, y, grads=grads); got a "
            f"{type(loss).__name__} first"
        )
    if grads is None:
        raise GradCheckError(
            "a NumPy model needs its hand-written gradient: preflight(loss, params, X, y, "
            "grads=grads) with grads(params, X, y) returning a dict like params (keys W1 or dW1)"
        )
    if not callable(grads):
        raise GradCheckError(
            f"grads must be a function grads(params, X, y), not {type(grads).__name__}"
        )
    if framework_of(params) != "numpy":
        raise GradCheckError(
            "preflight supports PyTorch modules and NumPy parameters; for a "
            f"{framework_of(params)} model use nbgradcheck.check"
        )


def validate_batch(X: Any, y: Any) -> None:
    """X and y hold the same number of examples along axis 0."""
    x_rows, y_rows = batch_length(X), batch_length(y)
    if x_rows is None:
        raise GradCheckError(f"X must be an array or tensor with a batch axis; got {X!r:.60}")
    if x_rows < 1:
        raise GradCheckError("X holds no examples: preflight needs a batch")
    if y_rows is not None and y_rows != x_rows:
        raise GradCheckError(
            f"X holds {x_rows} examples but y holds {y_rows} (batch axis 0; transposed?)"
        )


def batch_length(value: Any) -> int | None:
    shape = getattr(value, "shape", None)
    if shape is None:
        try:
            shape = np.shape(value)
        except Exception:
            return None
    return int(shape[0]) if len(shape) else None
