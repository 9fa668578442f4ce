"""Numbers from what training loops hand over: floats, NumPy scalars, tensors, Series.

Tensors are converted by duck typing (``.detach().cpu().numpy()``), never by importing a
framework, so a tensor that requires grad is accepted anywhere a number is. Every error
is a one-line ``ValueError`` that names the value at fault.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["as_number", "as_series", "is_integral", "named_values", "norm", "to_numpy"]

_REAL_KINDS = "iuf"


def to_numpy(value: Any) -> np.ndarray:
    """An array from a NumPy array, torch tensor, JAX array or anything ``np.asarray`` takes."""
    if hasattr(value, "detach"):
        value = value.detach()
        if hasattr(value, "cpu"):
            value = value.cpu()
        try:
            return value.numpy()
        except TypeError:  # bfloat16 and other dtypes NumPy lacks
            return value.float().numpy()
    return np.asarray(value)


def as_number(value: Any, what: str) -> float:
    """``value`` (a number, NumPy scalar or one-element tensor) as a float; NaN/inf pass."""
    if isinstance(value, (str, bytes, bool, np.bool_)) or value is None:
        raise ValueError(f"{what} must be a real number, got {value!r}")
    array = to_numpy(value)
    if array.dtype.kind not in _REAL_KINDS:
        raise ValueError(f"{what} must be a real number, got {_short(value)}")
    if array.size != 1:
        raise ValueError(f"{what} must be a single number, got shape {array.shape}")
    return float(array.reshape(()))


def norm(value: Any, what: str) -> float:
    """The Euclidean norm of an array or tensor (of a scalar: its absolute value)."""
    array = to_numpy(value)
    if array.dtype.kind not in _REAL_KINDS:
        raise ValueError(
            f"cannot take the norm of {what}: {type(value).__name__} ({array.dtype}) "
            "is not an array of numbers"
        )
    return float(np.linalg.norm(array.astype(np.float64, copy=False).ravel()))


def named_values(
    values: Mapping[str, Any] | Iterable[tuple[str, Any]], what: str
) -> dict[str, Any]:
    """A dict of name → value from a dict or from (name, value) pairs."""
    if isinstance(values, Mapping):
        return {str(name): value for name, value in values.items()}
    try:
        return {str(name): value for name, value in values}
    except (TypeError, ValueError):
        raise ValueError(
            f"{what} must be a dict of name → array (or (name, array) pairs), "
            f"got {type(values).__name__}"
        ) from None


def as_series(values: Any, name: str = "losses") -> np.ndarray:
    """``values`` as a 1-D float64 array, or a ValueError saying what is wrong and where.

    Accepts lists and tuples (of numbers or scalar tensors, even ones that require grad),
    NumPy arrays, pandas Series (nullable ones too: ``<NA>`` becomes NaN) and tensors.
    """
    if isinstance(values, pd.DataFrame):
        raise ValueError(
            f"{name} must be 1-D; got a DataFrame with columns {list(values.columns)}: "
            "pass one column, e.g. df['loss']"
        )
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be numeric, got a string")
    if isinstance(values, (list, tuple)):
        return _sequence(values, name)
    array = _array(values, name)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (one value per step); got an array of shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if array.dtype.kind == "O":
        return _sequence(array.tolist(), name)
    if array.dtype.kind not in _REAL_KINDS:
        raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}")
    return array.astype(np.float64, copy=False)


def is_integral(values: np.ndarray) -> bool:
    """True when every finite value is a whole number (epochs and steps that are labels)."""
    finite = values[np.isfinite(values)]
    return bool(np.all(finite == np.round(finite)))


def _array(values: Any, name: str) -> np.ndarray:
    if isinstance(values, (pd.Series, pd.Index)) and values.dtype.kind in "iuf":
        return values.to_numpy(dtype=np.float64, na_value=np.nan)  # Int64, Float64 too
    try:
        return to_numpy(values)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a flat sequence of numbers") from None


def _sequence(values: list | tuple, name: str) -> np.ndarray:
    if len(values) == 0:
        raise ValueError(f"{name} is empty")
    result = np.empty(len(values), dtype=np.float64)
    for position, value in enumerate(values):
        result[position] = _element(value, name, position)
    return result


def _element(value: Any, name: str, position: int) -> float:
    if value is pd.NA:
        return np.nan
    if isinstance(value, (str, bytes, bool, np.bool_, complex)) or value is None:
        raise ValueError(f"{name} must be real numbers; found {value!r} at position {position}")
    try:
        array = to_numpy(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a flat sequence of numbers") from None
    if array.ndim != 0:
        raise ValueError(
            f"{name} must be 1-D, a flat sequence of numbers; found shape {array.shape} "
            f"at position {position}"
        )
    if array.dtype.kind not in _REAL_KINDS:
        raise ValueError(f"{name} must be real numbers; found {value!r} at position {position}")
    return float(array.reshape(()))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__}"
