"""Framework adapters: turn the user's parameters into the engine's parameter set.

NumPy parameters need nothing beyond :mod:`nbgradcheck.params`. Framework adapters
(``torch.py``, ``jax.py``) are imported only when the parameters come from that
framework, so ``import nbgradcheck`` needs neither.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..params import ParameterSet


def framework_of(params: Any) -> str:
    """'torch', 'jax' or 'numpy', judged by the type of the parameters (no imports)."""
    for value in sample_values(params):
        module = type(value).__module__ or ""
        for framework in ("torch", "jax"):
            if module == framework or module.startswith((framework + ".", framework + "lib")):
                return framework
    return "numpy"


def sample_values(params: Any) -> list[Any]:
    """The object itself and its first-level values, enough to recognise a framework."""
    values = [params]
    if isinstance(params, Mapping):
        values += list(params.values())
    elif isinstance(params, Sequence) and not isinstance(params, (str, bytes)):
        values += list(params)
    return values


def parameter_set(params: Any) -> Any:
    """The engine's view of ``params`` for the framework they belong to."""
    framework = framework_of(params)
    if framework == "torch":
        from .torch import torch_parameter_set

        return torch_parameter_set(params)
    if framework == "jax":
        from .jax import jax_parameter_set

        return jax_parameter_set(params)
    return ParameterSet.from_user(params)
