"""Framework adapters: turn the user's parameters into the engine's parameter set.

NumPy parameters need nothing beyond :mod:`nbgradcheck.adapters.numpy`. Framework adapters
(``torch.py``, ``jax.py``) are imported only when the parameters come from that
framework, so ``import nbgradcheck`` needs neither.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from nbgradcheck.adapters.numpy import ParameterSet


def framework_of(params: Any) -> str:
    """'torch', 'jax' or 'numpy', judged by the types of the parameters (no imports).

    The whole class hierarchy counts, so a user's ``class Net(nn.Module)`` defined in a
    notebook is recognised as torch, and so are the adapters' own option wrappers.
    """
    for value in sample_values(params):
        for cls in type(value).__mro__:
            framework = framework_of_module(cls.__module__ or "")
            if framework != "numpy":
                return framework
    return "numpy"


def framework_of_module(module: str) -> str:
    for framework in ("torch", "jax"):
        own_adapter = f"nbgradcheck.adapters.{framework}"
        if module in (framework, own_adapter) or module.startswith(
            (framework + ".", framework + "lib", own_adapter + ".")
        ):
            return framework
    return "numpy"


def sample_values(params: Any, depth: int = 3) -> list[Any]:
    """The object and the values nested in it (a few levels: JAX pytrees nest)."""
    values = [params]
    if depth == 0:
        return values
    if isinstance(params, Mapping):
        children = list(params.values())
    elif isinstance(params, Sequence) and not isinstance(params, (str, bytes)):
        children = list(params)
    else:
        return values
    for child in children:
        values += sample_values(child, depth - 1)
    return values


def parameter_set(params: Any) -> Any:
    """The engine's view of ``params`` for the framework they belong to."""
    if isinstance(params, Iterator):  # model.parameters(): a generator
        params = list(params)
    framework = framework_of(params)
    if framework == "torch":
        from nbgradcheck.adapters.torch import torch_parameter_set

        return torch_parameter_set(params)
    if framework == "jax":
        from nbgradcheck.adapters.jax import jax_parameter_set

        return jax_parameter_set(params)
    return ParameterSet.from_user(params)
