"""Named parameter sets: validate, match gradients, snapshot and restore bit for bit.

The check perturbs the user's own arrays in place, so whatever the loss holds a
reference to sees the perturbation. This module owns everything about those
arrays that is not finite differencing.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nbgradcheck.errors import GradientError, ParameterError, ParametersModifiedError

SINGLE_ARRAY_NAME = "theta"


@dataclass
class ParameterSet:
    """The user's parameter arrays under stable names, in check order."""

    names: list[str]
    arrays: list[np.ndarray]
    kind: str  # "dict", "sequence" or "array": the structure the user passed
    original: Any  # the object passed to ``loss(params)``

    @classmethod
    def from_user(cls, params: Any) -> ParameterSet:
        """Validate ``params`` (dict, list/tuple of arrays or one array) without copying."""
        if isinstance(params, Mapping):
            names = [str(k) for k in params]
            arrays, kind = list(params.values()), "dict"
        elif isinstance(params, np.ndarray):
            names, arrays, kind = [SINGLE_ARRAY_NAME], [params], "array"
        elif isinstance(params, Sequence) and not isinstance(params, (str, bytes)):
            names = [f"p{i}" for i in range(len(params))]
            arrays, kind = list(params), "sequence"
        else:
            raise ParameterError(
                f"params must be a dict of arrays, a list/tuple of arrays or one array, "
                f"not {type(params).__name__}"
            )
        if not arrays:
            raise ParameterError("params is empty: there is nothing to check")
        for name, array in zip(names, arrays):
            validate_parameter(name, array)
        reject_repeated_arrays(names, arrays)
        return cls(names, arrays, kind, params)

    # -- the interface the engine uses (framework adapters implement the same) ---------
    fixed_argument = True  # the loss sees perturbations through the same object

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [a.shape for a in self.arrays]

    @property
    def dtypes(self) -> list[np.dtype]:
        """NumPy dtypes of the parameters (for steps and the round-off floor)."""
        return [a.dtype for a in self.arrays]

    def argument(self) -> Any:
        """What ``loss(params)`` receives; perturbations are visible through it."""
        return self.original

    def flat_values(self, position: int, indices: np.ndarray) -> np.ndarray:
        """Current values of some elements (flat C-order indices), in the parameter dtype."""
        array = self.arrays[position]
        values = array.reshape(-1)[indices] if array.flags.c_contiguous else array.flat[indices]
        return np.asarray(values, dtype=array.dtype)

    def element_setter(self, position: int) -> Callable[[int, Any], None]:
        """A function setting one element by flat C-order index, in place."""
        return element_setter(self.arrays[position])

    def reseed(self, seed: int) -> None:
        """Re-seed the RNGs a loss may draw from (dropout masks then repeat)."""
        np.random.seed(seed)
        random.seed(seed)

    def rng_fingerprint(self) -> tuple:
        """Cheap summary of the global RNG states: changes whenever a draw is made."""
        _, key, position, has_gauss, gauss = np.random.get_state()
        return position, int(key[0]), int(key[-1]), has_gauss, gauss, hash(random.getstate())

    def rng_state(self) -> Callable[[], None]:
        """Save the global RNG states; returns a function that puts them back."""
        numpy_state, python_state = np.random.get_state(), random.getstate()

        def restore() -> None:
            np.random.set_state(numpy_state)
            random.setstate(python_state)

        return restore

    def autograd_gradients(self, loss: Callable[..., Any], pass_argument: bool) -> Any:
        """Analytic gradients from automatic differentiation, when the framework has it."""
        raise GradientError(
            "grads is required for NumPy parameters: pass the gradient dict your backward "
            "pass computes (or a function returning it)"
        )

    def snapshot(self) -> list[np.ndarray]:
        """Exact copies of every array, for a final bit-for-bit comparison."""
        return [a.copy() for a in self.arrays]

    def modified_names(self, snapshot: list[np.ndarray]) -> list[str]:
        """Names of the arrays whose bits differ from ``snapshot``."""
        return [
            name
            for name, array, saved in zip(self.names, self.arrays, snapshot)
            if array.tobytes() != saved.tobytes()
        ]

    def restore(self, snapshot: list[np.ndarray]) -> None:
        """Write ``snapshot`` back into the user's arrays, bit for bit."""
        for array, saved in zip(self.arrays, snapshot):
            np.copyto(array, saved, casting="no")

    def ensure_unmodified(self, snapshot: list[np.ndarray], culprit: str) -> None:
        """Restore and raise if ``culprit`` (the loss, say) changed parameters."""
        changed = self.modified_names(snapshot)
        if changed:
            self.restore(snapshot)
            raise ParametersModifiedError(
                f"{culprit} changed {', '.join(changed)} in place (an update step or an "
                f"in-place operation on the parameters?). The parameters were restored; "
                f"make {culprit} leave them unchanged."
            )

    def with_replacement(self, position: int, array: np.ndarray) -> Any:
        """A copy of the user's structure with one array swapped (for complex steps)."""
        if self.kind == "array":
            return array
        if self.kind == "sequence":
            items = list(self.original)
            items[position] = array
            return type(self.original)(items) if isinstance(self.original, tuple) else items
        swapped = dict(self.original)
        swapped[list(self.original)[position]] = array
        return swapped

    def match_gradients(self, grads: Any) -> tuple[list[np.ndarray], list[str]]:
        """Align ``grads`` with the parameters: float64 copies, plus the ignored keys."""
        if self.kind == "dict":
            raw, ignored = self._match_gradient_dict(grads)
        elif self.kind == "sequence":
            raw, ignored = self._match_gradient_sequence(grads), []
        else:
            raw, ignored = [grads], []
        matched = [
            validated_gradient(name, g, array)
            for name, g, array in zip(self.names, raw, self.arrays)
        ]
        return matched, ignored

    def _match_gradient_dict(self, grads: Any) -> tuple[list[Any], list[str]]:
        if not isinstance(grads, Mapping):
            raise GradientError(
                f"params is a dict, so grads must be a dict too (keys like "
                f"{self.names[0]!r} or {'d' + self.names[0]!r}), not {type(grads).__name__}"
            )
        keys = [gradient_key(name, grads) for name in self.names]
        missing = [n for n, k in zip(self.names, keys) if k is None]
        if missing:
            wanted = ", ".join(f"{n!r} or {'d' + n!r}" for n in missing)
            raise GradientError(
                f"no gradient for {', '.join(missing)} (looked for {wanted}); "
                f"gradient keys are: {', '.join(map(str, grads)) or '(none)'}"
            )
        unused = [str(k) for k in grads if k not in set(keys)]
        orphans = [k for k in unused if looks_like_parameter_gradient(k, self.names)]
        if orphans:
            raise GradientError(
                f"gradient {', '.join(map(repr, orphans))} has no matching parameter; "
                f"parameters are: {', '.join(self.names)} (did you leave one out of params?)"
            )
        return [grads[k] for k in keys], unused

    def _match_gradient_sequence(self, grads: Any) -> list[Any]:
        if isinstance(grads, (Mapping, np.ndarray)) or not isinstance(grads, Sequence):
            raise GradientError(
                f"params is a {type(self.original).__name__} of {len(self.arrays)} arrays, "
                f"so grads must be a list/tuple of {len(self.arrays)} arrays, "
                f"not {type(grads).__name__}"
            )
        if len(grads) != len(self.arrays):
            raise GradientError(
                f"{len(grads)} gradients for {len(self.arrays)} parameters: "
                f"give one gradient per parameter, in the same order"
            )
        return list(grads)


def validate_parameter(name: str, array: Any) -> None:
    """Raise ParameterError unless ``array`` is a finite, writable float ndarray."""
    if not isinstance(array, np.ndarray):
        raise ParameterError(
            f"parameter {name} is a {type(array).__name__}, not a NumPy array: the check "
            f"perturbs arrays in place, so keep it as np.asarray(...) and use that array "
            f"in the loss" + torch_hint(array)
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ParameterError(
            f"parameter {name} has dtype {array.dtype}: only real floating-point arrays can "
            f"hold a small perturbation; convert it once with {name} = {name}.astype(np.float64)"
        )
    if not array.flags.writeable:
        raise ParameterError(
            f"parameter {name} is read-only (flags.writeable is False): the check perturbs it "
            f"in place; pass a writable array (e.g. {name}.copy())"
        )
    if not np.all(np.isfinite(array)):
        where = np.unravel_index(int(np.argmin(np.isfinite(array))), array.shape)
        raise ParameterError(
            f"parameter {name} contains {array[where]} at {format_index(where)}: "
            f"a gradient check needs finite parameters"
        )


def torch_hint(value: Any) -> str:
    module = type(value).__module__ or ""
    if module.startswith(("torch", "jax", "jaxlib")):
        return f" ({module.split('.')[0]} values need the {module.split('.')[0]} adapter)"
    return ""


def reject_repeated_arrays(names: list[str], arrays: list[np.ndarray]) -> None:
    seen: dict[int, str] = {}
    for name, array in zip(names, arrays):
        if id(array) in seen:
            raise ParameterError(
                f"parameters {seen[id(array)]} and {name} are the same array: pass it once"
            )
        seen[id(array)] = name


def gradient_key(name: str, grads: Mapping) -> Any:
    """The key of ``name``'s gradient in ``grads``: ``name`` itself or ``'d' + name``."""
    plain, prefixed = name in grads, ("d" + name) in grads
    if plain and prefixed:
        raise GradientError(
            f"grads has both {name!r} and {'d' + name!r}: keep one gradient per parameter"
        )
    if plain:
        return name
    return "d" + name if prefixed else None


def parameter_family(name: str) -> str:
    """The letters before the layer number: 'W' for 'W12', 'gamma' for 'gamma1'."""
    match = re.match(r"[A-Za-z_]+(?=\d)", name)
    return match.group(0) if match else ""


def looks_like_parameter_gradient(key: str, names: list[str]) -> bool:
    """True for 'dW3' when params has W1, W2 but no W3; False for intermediates like 'dZ1'."""
    families = {parameter_family(n) for n in names} - {""}
    stem = key[1:] if key.startswith("d") else key
    return parameter_family(stem) in families


def validated_gradient(name: str, grad: Any, param: np.ndarray) -> np.ndarray:
    """A float64 copy of ``grad``, checked against ``param``'s shape and for NaN."""
    if hasattr(grad, "detach"):  # a torch tensor given for a NumPy parameter
        grad = grad.detach().cpu().numpy()
    try:
        array = np.array(grad, copy=True)
    except Exception as exc:
        raise GradientError(f"gradient of {name} is not array-like: {exc}") from exc
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise GradientError(f"gradient of {name} has dtype {array.dtype}: expected real numbers")
    if array.shape != param.shape:
        raise GradientError(shape_mismatch_message(name, array.shape, param.shape))
    if not np.all(np.isfinite(array)):
        where = np.unravel_index(int(np.argmin(np.isfinite(array))), array.shape)
        raise GradientError(
            f"gradient of {name} contains {array[where]} at {format_index(where)}: "
            f"backprop produced a non-finite value"
        )
    return array.astype(np.float64)


def shape_mismatch_message(name: str, grad_shape: tuple, param_shape: tuple) -> str:
    message = f"gradient of {name} has shape {grad_shape} but {name} has shape {param_shape}"
    if len(grad_shape) == 2 and grad_shape == param_shape[::-1]:
        return message + ": it looks transposed"
    if int(np.prod(grad_shape)) == int(np.prod(param_shape)):
        return message + ": same size, so reshape it (or fix the axis order)"
    return message


def format_index(index: tuple) -> str:
    """'[2, 3]' for (2, 3); '[]' for a 0-d array."""
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def element_setter(array: np.ndarray) -> Callable[[int, Any], None]:
    """Set one element of ``array`` by flat C-order index, writing through to it."""
    if array.flags.c_contiguous:
        return array.reshape(-1).__setitem__
    return array.flat.__setitem__
