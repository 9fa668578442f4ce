"""nbgradcheck: find the bugs in hand-written backpropagation, and where training stalls.

``import nbgradcheck`` needs only the core dependencies: framework adapters (PyTorch, JAX)
and the notebook layer (IPython magics, widgets) are imported when first used.
"""

from __future__ import annotations

from typing import Any

from .engine import check
from .errors import (
    GradCheckError,
    GradientError,
    LossError,
    NonFiniteLossError,
    ParameterError,
    ParametersModifiedError,
    RandomLossError,
    UnpicklableLossError,
)
from .history import LossHistory
from .integrations import TorchRecorder, keras_callback, lightning_callback
from .lossplot import plot_loss
from .result import GradCheckResult, relative_difference
from .stalls import StallReport, analyze_stalls, find_stalls
from .sweep import EpsSweep, sweep_eps

__version__ = "0.1.0"

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
    "relative_difference",
    "sweep_eps",
    "unload_ipython_extension",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbgradcheck``: register %gradcheck, %%gradcheck and %lossplot."""
    from .notebook.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbgradcheck``: remove the magics again."""
    from .notebook.magics import unload_ipython_extension as unload

    unload(ipython)
