"""nbgradcheck: find the bugs in hand-written backpropagation, in Jupyter."""

from .engine import check
from .errors import (
    GradCheckError,
    GradientError,
    LossError,
    NonFiniteLossError,
    ParameterError,
    ParametersModifiedError,
    RandomLossError,
)
from .result import GradCheckResult, relative_difference

__version__ = "0.1.0"

__all__ = [
    "GradCheckError",
    "GradCheckResult",
    "GradientError",
    "LossError",
    "NonFiniteLossError",
    "ParameterError",
    "ParametersModifiedError",
    "RandomLossError",
    "check",
    "relative_difference",
]
