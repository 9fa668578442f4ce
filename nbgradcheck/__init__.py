"""nbgradcheck: find the bugs in hand-written backpropagation, and where training stalls.

``import nbgradcheck`` loads NumPy and the standard library only. Every public name is
resolved when first used (module ``__getattr__``), so a NumPy check never imports pandas,
matplotlib, IPython or ipywidgets; framework adapters (PyTorch, JAX) load when parameters
of that framework are checked.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nbgradcheck.errors import (
    GradCheckError,
    GradientError,
    LossError,
    NonFiniteLossError,
    ParameterError,
    ParametersModifiedError,
    RandomLossError,
    UnpicklableLossError,
)

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first use)
_LAZY = {
    "check": "nbgradcheck.api.check",
    "GradCheckResult": "nbgradcheck.api.result",
    "relative_difference": "nbgradcheck.core.verdict",
    "EpsSweep": "nbgradcheck.api.sweep",
    "sweep_eps": "nbgradcheck.api.sweep",
    "preflight": "nbgradcheck.api.preflight",
    "PreflightReport": "nbgradcheck.api.preflight",
    "LossHistory": "nbgradcheck.api.history",
    "StallReport": "nbgradcheck.training.stalls",
    "analyze_stalls": "nbgradcheck.training.stalls",
    "find_stalls": "nbgradcheck.training.stalls",
    "TorchRecorder": "nbgradcheck.api.integrations",
    "keras_callback": "nbgradcheck.api.integrations",
    "lightning_callback": "nbgradcheck.api.integrations",
    "plot_loss": "nbgradcheck.views.lossplot",
}

__all__ = [
    "EpsSweep",
    "GradCheckError",
    "GradCheckResult",
    "GradientError",
    "LossError",
    "LossHistory",
    "NonFiniteLossError",
    "ParameterError",
    "ParametersModifiedError",
    "PreflightReport",
    "RandomLossError",
    "StallReport",
    "TorchRecorder",
    "UnpicklableLossError",
    "analyze_stalls",
    "check",
    "find_stalls",
    "keras_callback",
    "lightning_callback",
    "load_ipython_extension",
    "plot_loss",
    "preflight",
    "relative_difference",
    "sweep_eps",
    "unload_ipython_extension",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from nbgradcheck.api.check import check
    from nbgradcheck.api.history import LossHistory
    from nbgradcheck.api.integrations import (
        TorchRecorder,
        keras_callback,
        lightning_callback,
    )
    from nbgradcheck.api.preflight import PreflightReport, preflight
    from nbgradcheck.api.result import GradCheckResult
    from nbgradcheck.api.sweep import EpsSweep, sweep_eps
    from nbgradcheck.core.verdict import relative_difference
    from nbgradcheck.training.stalls import StallReport, analyze_stalls, find_stalls
    from nbgradcheck.views.lossplot import plot_loss


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nbgradcheck' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbgradcheck``: register %gradcheck, %%gradcheck and %lossplot."""
    from nbgradcheck.notebook.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbgradcheck``: remove the magics again."""
    from nbgradcheck.notebook.magics import unload_ipython_extension as unload

    unload(ipython)
