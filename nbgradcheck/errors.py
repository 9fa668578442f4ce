"""Exceptions raised for user mistakes; each message names the culprit."""

from __future__ import annotations


class GradCheckError(ValueError):
    """Base class for every mistake nbgradcheck reports about its inputs."""


class ParameterError(GradCheckError):
    """A parameter cannot be perturbed in place (wrong type, dtype, not writable, NaN)."""


class GradientError(GradCheckError):
    """The analytic gradients do not match the parameters (keys, shapes, NaN)."""


class LossError(GradCheckError):
    """The loss does not return a finite real scalar."""


class NonFiniteLossError(LossError):
    """The loss became NaN or infinite, at the start or when one element was perturbed."""


class RandomLossError(LossError):
    """Two evaluations at the same parameters gave different losses."""


class ParametersModifiedError(GradCheckError):
    """The loss (or gradient callable) changed the parameters it was given."""


class UnpicklableLossError(LossError):
    """The loss or the parameters cannot be pickled to run in worker processes."""
