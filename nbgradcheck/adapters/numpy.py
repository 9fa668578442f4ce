"""Named parameter sets: validate, match gradients, snapshot and restore bit for bit.

The check perturbs the user's own arrays in place, so whatever the loss holds a
reference to sees the perturbation. This module owns everything about those
arrays that is not finite differencing: which arrays can be perturbed at all (real
floats, writable, finite, no two sharing memory), what "unchanged" means (the meaningful
bits of every value, a masked array's mask and fill value, the shape and dtype, and the
very objects in the user's dict or list), and how to put everything back.

Masked arrays are checked with their mask intact: the check writes into the data under
the mask, never through the masked array (which would unmask the element).
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Callable, Mapping, MutableMapping, MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nbgradcheck.adapters.base import ParameterAdapter
from nbgradcheck.adapters.guard import byte_range
from nbgradcheck.errors import GradientError, ParameterError, ParametersModifiedError

SINGLE_ARRAY_NAME = "theta"
# The x87 80-bit extended format (np.longdouble on x86 Linux) fills 12 or 16 bytes: the
# rest is padding whose content is arbitrary and is not part of the value.
X87_MANTISSA_BITS = 63
X87_VALUE_BYTES = 10


@dataclass
class Snapshot:
    """Everything a check could change in the user's parameters, copied exactly."""

    values: list[np.ndarray]  # C-order copies of each array's data
    masks: list[np.ndarray | None]  # full boolean masks of masked arrays
    fill_values: list[Any]  # masked arrays' fill values (None: never set)
    hard_masks: list[bool]
    layouts: list[tuple]  # (shape, strides, dtype, writeable) of each array object
    structure: list[tuple[Any, Any]] | None  # (key or index, object) of a dict or list

    @property
    def flat_values(self) -> list[np.ndarray]:
        return [v.reshape(-1) for v in self.values]


@dataclass
class ParameterSet(ParameterAdapter):
    """The user's parameter arrays under stable names, in check order."""

    names: list[str]
    arrays: list[np.ndarray]  # the user's objects (masked arrays and matrices included)
    kind: str  # "dict", "sequence" or "array": the structure the user passed
    original: Any  # the object passed to ``loss(params)``
    keys: list[Any] = field(default_factory=list)  # the dict's own keys, in check order
    # Names of the parameters the loss changed in place during the check, as the setters
    # saw (writing the saved value back would otherwise hide the change).
    tampered: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        # Plain views of the data: writes never touch a mask, and keep working when the
        # loss makes the user's object read-only or reshapes it.
        self.buffers = [np.ndarray.view(a, np.ndarray) for a in self.arrays]
        self.reference: list[np.ndarray] | None = None  # flat values at the snapshot
        self.gradient_notes: list[str] = []  # gradients accepted after a reshape

    @classmethod
    def from_user(cls, params: Any) -> ParameterSet:
        """Validate ``params`` (dict, list/tuple of arrays or one array) without copying."""
        keys: list[Any] = []
        if isinstance(params, Mapping):
            keys = list(params)
            names = [display_name(k) for k in keys]
            arrays, kind = list(params.values()), "dict"
            reject_colliding_names(keys, names)
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
        reject_shared_memory(names, arrays)
        reject_all_empty(names, arrays)
        return cls(names, arrays, kind, params, keys)

    # -- the interface the engine uses (framework adapters implement the same) ---------
    fixed_argument = True  # the loss sees perturbations through the same object

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [a.shape for a in self.buffers]

    @property
    def dtypes(self) -> list[np.dtype]:
        """NumPy dtypes of the parameters (for steps and the round-off floor)."""
        return [a.dtype for a in self.buffers]

    @property
    def notes(self) -> list[str]:
        """Empty parameters among non-empty ones: named, since nothing of them is checked."""
        notes = list(self.gradient_notes)
        empty = [n for n, a in zip(self.names, self.buffers) if a.size == 0]
        if empty:
            verb = "is" if len(empty) == 1 else "are"
            notes.append(f"{', '.join(empty)} {verb} empty (no elements): nothing to check there")
        return notes

    def argument(self) -> Any:
        """What ``loss(params)`` receives; perturbations are visible through it."""
        return self.original

    def perturbed_buffers(self) -> list[np.ndarray]:
        """The arrays the check writes into (for :func:`nbgradcheck.adapters.guard.claim`)."""
        return list(self.arrays)

    def flat_values(self, position: int, indices: np.ndarray) -> np.ndarray:
        """Current values of some elements (flat C-order indices), in the parameter dtype."""
        array = self.buffers[position]
        return np.array(flat_view(array)[consecutive(indices)], dtype=array.dtype, copy=True)

    def values_at_start(self, position: int) -> np.ndarray:
        """The snapshot's flat values (a read-only view: no copy of a large tensor)."""
        if self.reference is None:
            return super().values_at_start(position)
        view = self.reference[position].view()
        view.flags.writeable = False
        return view

    def element_setter(self, position: int) -> Callable[[int, Any], None]:
        """A function setting one element by flat C-order index, in place.

        It also notices when the loss changed the element it is about to overwrite (the
        element in flight, or one not perturbed yet): see :attr:`tampered`.
        """
        target = flat_view(self.buffers[position])
        reference = self.reference[position] if self.reference is not None else None
        name, tampered = self.names[position], self.tampered
        last: list[Any] = [-1, None]  # index and value read back after the last write

        def set_element(index: int, value: Any) -> None:
            if index == last[0]:
                if target[index] != last[1]:
                    tampered.add(name)
            elif reference is not None and target[index] != reference[index]:
                tampered.add(name)
            target[index] = value
            last[0], last[1] = index, target[index]

        return set_element

    def group_setter(self, position: int) -> Callable[[np.ndarray, np.ndarray], None]:
        """A function setting several elements at once (one vectorized assignment); like
        :meth:`element_setter` it notices changes the loss made to the group: before
        each write the group must hold, bit for bit, what the last write left there (the
        snapshot's values before the first).

        ``indices`` are sorted and distinct. ``values`` of the parameter's dtype is kept
        to compare with, not copied: leave it unchanged until the next call.
        """
        target = flat_view(self.buffers[position])
        reference = self.reference[position] if self.reference is not None else None
        name, tampered = self.names[position], self.tampered
        last: list[Any] = [None, None]  # indices and values of the last write

        def set_group(indices: np.ndarray, values: np.ndarray) -> None:
            where = contiguous(indices)
            if last[0] is not None and same_indices(last[0], indices):
                expected = last[1]
            else:
                expected = None if reference is None else reference[where]
            if expected is not None and not same_values(target[where], expected):
                tampered.add(name)
            target[where] = values
            last[0], last[1] = indices, written(target, where, values)

        return set_group

    def reseed(self, seed: int) -> None:
        """Re-seed the RNGs a loss may draw from (dropout masks then repeat)."""
        seed = int(seed)  # random.seed refuses NumPy integers
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

    # -- snapshot and restore ------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Exact copies of everything the check could change, for a final comparison.

        The setters compare against the latest snapshot's values from now on.
        """
        saved = Snapshot(
            values=[np.array(b, order="C", copy=True) for b in self.buffers],
            masks=[mask_of(a) for a in self.arrays],
            fill_values=[saved_fill_value(a) for a in self.arrays],
            hard_masks=[bool(getattr(a, "hardmask", False)) for a in self.arrays],
            layouts=[layout(a) for a in self.arrays],
            structure=self.structure(),
        )
        self.reference = saved.flat_values
        return saved

    def structure(self) -> list[tuple[Any, Any]] | None:
        """(key, object) pairs of a dict, (index, object) of a list; None when immutable."""
        if self.kind == "dict":
            return list(self.original.items())
        if self.kind == "sequence" and isinstance(self.original, MutableSequence):
            return list(enumerate(self.original))
        return None

    def changes(self, snapshot: Snapshot) -> list[tuple[str, str]]:
        """(name, what changed) for everything that differs from ``snapshot``."""
        found = self.structure_changes(snapshot)
        for position, (name, array) in enumerate(zip(self.names, self.arrays)):
            buffer = self.buffers[position]
            if name in self.tampered or not same_bits(buffer, snapshot.values[position]):
                found.append((name, "values"))
            if not same_mask(mask_of(array), snapshot.masks[position]):
                found.append((name, "mask"))
            if not same_fill_value(saved_fill_value(array), snapshot.fill_values[position]):
                found.append((name, "fill value"))
            if layout(array) != snapshot.layouts[position]:
                found.append((name, "layout"))
        return found

    def structure_changes(self, snapshot: Snapshot) -> list[tuple[str, str]]:
        if snapshot.structure is None:
            return []
        saved = snapshot.structure
        if self.kind == "dict":
            current = self.original
            found = [
                (slot_name(key), "removed" if key not in current else "replaced")
                for key, value in saved
                if key not in current or current[key] is not value
            ]
            saved_keys = [key for key, _ in saved]
            return found + [(slot_name(key), "added") for key in current if key not in saved_keys]
        items = list(self.original)
        found = [
            (slot_name(i), "removed" if i >= len(items) else "replaced")
            for i, value in saved
            if i >= len(items) or items[i] is not value
        ]
        return found + [(slot_name(i), "added") for i in range(len(saved), len(items))]

    def modified_names(self, snapshot: Snapshot) -> list[str]:
        """Names of the parameters that differ from ``snapshot`` in any way (values, mask,
        fill value, layout, the object in the dict), or that the loss changed mid-check."""
        return list(dict.fromkeys(name for name, _ in self.changes(snapshot)))

    def restore(self, snapshot: Snapshot) -> None:
        """Put everything in ``snapshot`` back: the objects in the dict or list, then
        every array's bits, mask, fill value, shape and dtype."""
        self.restore_structure(snapshot)
        for position, array in enumerate(self.arrays):
            np.copyto(self.buffers[position], snapshot.values[position], casting="no")
            restore_layout(array, snapshot.layouts[position])
            if snapshot.masks[position] is not None:
                restore_mask(array, snapshot, position)

    def restore_structure(self, snapshot: Snapshot) -> None:
        saved = snapshot.structure
        if saved is None or not self.structure_changes(snapshot):
            return
        if isinstance(self.original, MutableMapping):
            self.original.clear()
            self.original.update(saved)
        elif isinstance(self.original, MutableSequence):
            self.original[:] = [value for _, value in saved]

    def ensure_unmodified(self, snapshot: Snapshot, culprit: str) -> None:
        """Restore and raise if ``culprit`` (the loss, say) changed parameters."""
        found = self.changes(snapshot)
        if not found:
            return
        self.restore(snapshot)
        self.tampered.clear()
        stuck = [
            n
            for n, a, saved in zip(self.names, self.arrays, snapshot.layouts)
            if layout(a) != saved
        ]
        raise ParametersModifiedError(modification_message(found, culprit, stuck))

    def with_replacement(self, position: int, array: np.ndarray) -> Any:
        """A copy of the user's structure with one array swapped (for complex steps); a
        masked array's stand-in carries its mask, a matrix's is a matrix."""
        array = like_original(array, self.arrays[position])
        if self.kind == "array":
            return array
        if self.kind == "sequence":
            items = list(self.original)
            items[position] = array
            return type(self.original)(items) if isinstance(self.original, tuple) else items
        swapped = dict(self.original)
        swapped[self.keys[position]] = array
        return swapped

    # -- gradients -----------------------------------------------------------------------
    def match_gradients(self, grads: Any) -> tuple[list[np.ndarray], list[str]]:
        """Align ``grads`` with the parameters: float64 copies, plus the ignored keys."""
        if self.kind == "dict":
            raw, ignored = self._match_gradient_dict(grads)
        elif self.kind == "sequence":
            raw, ignored = self._match_gradient_sequence(grads), []
        else:
            raw, ignored = [grads], []
        self.gradient_notes = []
        matched = [
            validated_gradient(name, g, array, self.gradient_notes)
            for name, g, array in zip(self.names, raw, self.buffers)
        ]
        return matched, ignored

    def _match_gradient_dict(self, grads: Any) -> tuple[list[Any], list[str]]:
        if not isinstance(grads, Mapping):
            raise GradientError(
                f"params is a dict, so grads must be a dict too (keys like "
                f"{self.keys[0]!r} or {'d' + self.names[0]!r}), not {type(grads).__name__}"
            )
        found = [gradient_key(n, grads, k) for n, k in zip(self.names, self.keys)]
        missing = [
            (n, k)
            for (n, k), found_key in zip(zip(self.names, self.keys), found)
            if found_key is None
        ]
        if missing:
            wanted = ", ".join(" or ".join(map(repr, candidate_keys(n, k))) for n, k in missing)
            raise GradientError(
                f"no gradient for {', '.join(n for n, _ in missing)} (looked for {wanted}); "
                f"gradient keys are: {', '.join(map(display_name, grads)) or '(none)'}"
            )
        used = set(found)
        unused = [display_name(k) for k in grads if k not in used]
        orphans = [k for k in unused if looks_like_parameter_gradient(k, self.names)]
        if orphans:
            raise GradientError(
                f"gradient {', '.join(map(repr, orphans))} has no matching parameter; "
                f"parameters are: {', '.join(self.names)} (did you leave one out of params?)"
            )
        return [grads[k] for k in found], unused

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


# -- names and keys -------------------------------------------------------------------------


def display_name(key: Any) -> str:
    """How a dict key is shown: a string as is, anything else (0, ('enc', 'W')) by str."""
    return key if isinstance(key, str) else str(key)


def reject_colliding_names(keys: list[Any], names: list[str]) -> None:
    seen: dict[str, Any] = {}
    for key, name in zip(keys, names):
        if name in seen:
            raise ParameterError(
                f"params keys {seen[name]!r} and {key!r} both read as {name!r}: use keys "
                f"that differ as text, so that results and messages can tell them apart"
            )
        seen[name] = key


def slot_name(slot: Any) -> str:
    """Where a parameter sits in the user's structure: params['W'], params[0]."""
    return f"params[{slot!r}]"


def candidate_keys(name: str, key: Any = None) -> list[Any]:
    """The keys a gradient of parameter ``name`` (dict key ``key``) may have."""
    candidates = [key] if key is not None and key != name else []
    return [*candidates, name, "d" + name]


def gradient_key(name: str, grads: Mapping, key: Any = None) -> Any:
    """The key of ``name``'s gradient in ``grads``: the parameter's own dict key
    ``key``, ``name`` itself or ``'d' + name``; None when there is none."""
    present = [k for k in candidate_keys(name, key) if k in grads]
    if len(present) > 1:
        raise GradientError(
            f"grads has both {present[0]!r} and {present[1]!r}: keep one gradient per parameter"
        )
    return present[0] if present else None


def parameter_family(name: str) -> str:
    """The letters before the layer number: 'W' for 'W12', 'gamma' for 'gamma1'."""
    match = re.match(r"[A-Za-z_]+(?=\d)", name)
    return match.group(0) if match else ""


def looks_like_parameter_gradient(key: str, names: list[str]) -> bool:
    """True for 'dW3' when params has W1, W2 but no W3; False for intermediates like 'dZ1'."""
    families = {parameter_family(n) for n in names} - {""}
    stem = key[1:] if key.startswith("d") else key
    return parameter_family(stem) in families


# -- validating parameters ------------------------------------------------------------------


def validate_parameter(name: str, array: Any) -> None:
    """Raise ParameterError unless ``array`` is a finite, writable float ndarray whose
    elements do not overlap in memory."""
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
            f"parameter {name} is read-only (flags.writeable is False; a broadcast view?): "
            f"the check perturbs it in place; pass a writable array (e.g. {name}.copy())"
        )
    if has_internal_overlap(array):
        raise ParameterError(
            f"parameter {name} has elements that share memory (a view with a zero or "
            f"overlapping stride, strides {array.strides}): perturbing one element would "
            f"move others; pass {name}.copy()"
        )
    reject_non_finite(name, np.ndarray.view(array, np.ndarray), np.ma.isMaskedArray(array))


def reject_non_finite(name: str, data: np.ndarray, masked: bool) -> None:
    finite = np.isfinite(data)
    if finite.all():
        return
    where = np.unravel_index(int(np.argmin(finite)), data.shape)
    under = " (under the mask: the check perturbs masked data too; fill it first)"
    raise ParameterError(
        f"parameter {name} contains {data[where]} at {format_index(where)}"
        f"{under if masked else ''}: a gradient check needs finite parameters"
    )


def torch_hint(value: Any) -> str:
    module = type(value).__module__ or ""
    if module.startswith(("torch", "jax", "jaxlib")):
        return f" ({module.split('.')[0]} values need the {module.split('.')[0]} adapter)"
    return ""


def has_internal_overlap(array: np.ndarray) -> bool:
    """True when two elements of ``array`` may share bytes (zero or overlapping strides).

    Sufficient test: sorted by stride, each axis must step over the whole extent of the
    smaller ones (NumPy's own criterion for "no internal overlap").
    """
    if array.size <= 1:
        return False
    axes = sorted(
        (abs(stride), extent) for stride, extent in zip(array.strides, array.shape) if extent > 1
    )
    reach = array.itemsize
    for stride, extent in axes:
        if stride < reach:
            return True
        reach = stride * (extent - 1) + reach
    return False


def reject_repeated_arrays(names: list[str], arrays: list[np.ndarray]) -> None:
    seen: dict[int, str] = {}
    for name, array in zip(names, arrays):
        if id(array) in seen:
            raise ParameterError(
                f"parameters {seen[id(array)]} and {name} are the same array: pass it once"
            )
        seen[id(array)] = name


def reject_shared_memory(names: list[str], arrays: list[np.ndarray]) -> None:
    """Refuse two parameters that are views of one buffer: perturbing one moves the other,
    so both numeric gradients would be wrong. Byte ranges first (sorted, so overlapping
    pairs only), then NumPy's exact test (interleaved views do not share)."""
    spans = sorted(
        (*byte_range(np.ndarray.view(a, np.ndarray)), i) for i, a in enumerate(arrays) if a.size
    )
    for first, (_, high, i) in enumerate(spans):
        for other_low, _, j in spans[first + 1 :]:
            if other_low >= high:
                break
            if shares_memory(arrays[i], arrays[j]):
                a, b = sorted((i, j))
                raise ParameterError(
                    f"parameters {names[a]} and {names[b]} share memory (views of one "
                    f"array): perturbing one changes the other, so both gradients would be "
                    f"wrong; pass copies ({names[b]}.copy()) or check them as one array"
                )


def shares_memory(first: np.ndarray, second: np.ndarray) -> bool:
    try:
        return bool(np.shares_memory(first, second, max_work=10**6))
    except Exception:  # too costly to decide exactly: they may
        return True


def reject_all_empty(names: list[str], arrays: list[np.ndarray]) -> None:
    if any(a.size for a in arrays):
        return
    shapes = ", ".join(f"{n} {a.shape}" for n, a in zip(names, arrays))
    raise ParameterError(
        f"every parameter is empty ({shapes}): there are no elements to check; "
        f"pass the arrays the loss actually uses"
    )


# -- bits, masks and layouts ----------------------------------------------------------------


def value_bytes(dtype: np.dtype) -> slice:
    """The bytes of one element that hold its value (all but the x87 padding)."""
    if (
        dtype.kind == "f"
        and dtype.itemsize > X87_VALUE_BYTES
        and np.finfo(dtype).nmant == X87_MANTISSA_BITS
    ):
        big = dtype.byteorder == ">" or (dtype.byteorder == "=" and np.little_endian is False)
        return slice(-X87_VALUE_BYTES, None) if big else slice(0, X87_VALUE_BYTES)
    return slice(None)


def meaningful_bytes(array: np.ndarray) -> np.ndarray:
    """The bytes of ``array``'s values, one row per element in C order (padding dropped)."""
    contiguous_copy = np.ascontiguousarray(array)
    rows = contiguous_copy.reshape(-1).view(np.uint8).reshape(array.size, array.itemsize)
    return rows[:, value_bytes(array.dtype)]


# same_bits compares this many elements at a time (no copy of a large array).
COMPARE_BLOCK = 65536


def same_bits(array: np.ndarray, saved: np.ndarray) -> bool:
    """Bit for bit the same values (signed zeros and NaN payloads told apart); padding
    bytes, which hold no value, are ignored. Compared block by block."""
    if array.shape != saved.shape:
        return False
    flat, flat_saved = array.reshape(-1), saved.reshape(-1)
    return all(
        np.array_equal(meaningful_bytes(flat[part]), meaningful_bytes(flat_saved[part]))
        for part in (slice(i, i + COMPARE_BLOCK) for i in range(0, flat.size, COMPARE_BLOCK))
    )


def mask_of(array: np.ndarray) -> np.ndarray | None:
    """A copy of a masked array's full boolean mask; None for other arrays."""
    if not np.ma.isMaskedArray(array):
        return None
    return np.array(np.ma.getmaskarray(array), copy=True)


def same_mask(mask: np.ndarray | None, saved: np.ndarray | None) -> bool:
    if mask is None or saved is None:
        return mask is None and saved is None
    return mask.shape == saved.shape and bool(np.array_equal(mask, saved))


def saved_fill_value(array: np.ndarray) -> Any:
    """A masked array's fill value as set by the user (None when never set), read without
    the side effect of the ``fill_value`` property, which sets a default."""
    value = getattr(array, "_fill_value", None) if np.ma.isMaskedArray(array) else None
    return None if value is None else np.array(value, copy=True)


def same_fill_value(value: Any, saved: Any) -> bool:
    if value is None or saved is None:
        return value is None and saved is None
    return value.dtype == saved.dtype and value.tobytes() == saved.tobytes()


def restore_mask(array: np.ma.MaskedArray, snapshot: Snapshot, position: int) -> None:
    saved = snapshot.masks[position]
    if not same_mask(mask_of(array), saved):
        array.soften_mask()
        array.mask = saved.copy()
    if snapshot.hard_masks[position] != array.hardmask:
        (array.harden_mask if snapshot.hard_masks[position] else array.soften_mask)()
    fill = snapshot.fill_values[position]
    if not same_fill_value(saved_fill_value(array), fill):
        if fill is None:
            array._fill_value = None
        else:
            array.fill_value = fill


def layout(array: np.ndarray) -> tuple:
    """What an in-place ``W.shape = ...``, ``W.dtype = ...`` or flag change alters."""
    return array.shape, array.strides, array.dtype.str, bool(array.flags.writeable)


def restore_layout(array: np.ndarray, saved: tuple) -> None:
    """Put back the dtype, shape and writeable flag of ``array`` (as far as NumPy lets)."""
    shape, _, dtype, writeable = saved
    for attribute, value in (("dtype", np.dtype(dtype)), ("shape", shape)):
        if getattr(array, attribute) != value:
            with contextlib.suppress(AttributeError, ValueError, TypeError):
                setattr(array, attribute, value)
    if array.flags.writeable != writeable:
        with contextlib.suppress(ValueError):
            array.flags.writeable = writeable


CHANGE_WORDS = {
    "values": "changed {names} in place (an update step or an in-place operation on the "
    "parameters?)",
    "replaced": "replaced {names} with a new object (an assignment to the params dict or list)",
    "removed": "removed {names}",
    "added": "added {names}",
    "mask": "changed the mask of {names}",
    "fill value": "changed the fill value of {names}",
    "layout": "changed the shape, dtype or flags of {names} in place",
}


def modification_message(found: list[tuple[str, str]], culprit: str, stuck: list[str]) -> str:
    """One sentence naming every change, and what was done about it."""
    by_kind: dict[str, list[str]] = {}
    for name, kind in found:
        by_kind.setdefault(kind, [])
        if name not in by_kind[kind]:
            by_kind[kind].append(name)
    what = "; ".join(
        CHANGE_WORDS[kind].format(names=", ".join(names)) for kind, names in by_kind.items()
    )
    restored = "The parameters were restored"
    if any(kind in ("replaced", "removed", "added") for kind in by_kind):
        restored += " (the original arrays are back in params)"
    if stuck:
        restored += f", except the layout of {', '.join(stuck)}, which NumPy cannot set back"
    return f"{culprit} {what}. {restored}; make {culprit} leave them unchanged."


# -- gradients ------------------------------------------------------------------------------


def validated_gradient(
    name: str, grad: Any, param: np.ndarray, notes: list[str] | None = None
) -> np.ndarray:
    """A float64 copy of ``grad``, checked against ``param``'s shape and for NaN.

    A gradient whose shape differs from the parameter's only in dimensions of size 1 (a
    bias stored as (1, M) with a gradient of shape (M,)) is accepted, reshaped, and said
    so in ``notes``.
    """
    if hasattr(grad, "detach"):  # a torch tensor given for a NumPy parameter
        grad = grad.detach().cpu().numpy()
    if np.ma.isMaskedArray(grad):  # the loss does not depend on masked elements
        grad = np.ma.filled(grad, 0)
    try:
        array = np.array(grad, copy=True)
    except Exception as exc:
        raise GradientError(f"gradient of {name} is not array-like: {exc}") from exc
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise GradientError(f"gradient of {name} has dtype {array.dtype}: expected real numbers")
    if array.shape != param.shape:
        if not differs_in_unit_dimensions(array.shape, param.shape):
            raise GradientError(shape_mismatch_message(name, array.shape, param.shape))
        if notes is not None:
            notes.append(
                f"the gradient of {name} has shape {array.shape} and {name} has shape "
                f"{param.shape}: compared element by element (they differ only in "
                f"dimensions of size 1)"
            )
        array = array.reshape(param.shape)
    if not np.all(np.isfinite(array)):
        where = np.unravel_index(int(np.argmin(np.isfinite(array))), array.shape)
        raise GradientError(
            f"gradient of {name} contains {array[where]} at {format_index(where)}: "
            f"backprop produced a non-finite value"
        )
    return np.asarray(array.astype(np.float64))


def differs_in_unit_dimensions(first: tuple, second: tuple) -> bool:
    """Same elements in the same order once dimensions of size 1 are dropped."""
    return tuple(n for n in first if n != 1) == tuple(n for n in second if n != 1)


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


# -- writing elements -----------------------------------------------------------------------


def flat_view(array: np.ndarray) -> Any:
    """Flat C-order access to a plain ndarray: a view when contiguous, else ``.flat``."""
    return array.reshape(-1) if array.flags.c_contiguous else array.flat


def contiguous(indices: np.ndarray) -> np.ndarray | slice:
    """A slice for sorted, distinct indices without gaps (no gathering copy), else them."""
    if indices.size and int(indices[-1]) - int(indices[0]) + 1 == indices.size:
        return slice(int(indices[0]), int(indices[-1]) + 1)
    return indices


def consecutive(indices: np.ndarray) -> np.ndarray | slice:
    """A slice for increasing indices without gaps (checked), else the indices."""
    indices = np.asarray(indices)
    where = contiguous(indices)
    if isinstance(where, slice) and not bool((indices[1:] > indices[:-1]).all()):
        return indices
    return where


def same_values(current: np.ndarray, expected: np.ndarray) -> bool:
    """The same values bit for bit (signed zeros told apart), both in one dtype; by
    value for 80-bit long doubles, whose padding bytes hold no value."""
    if current.dtype != expected.dtype or current.shape != expected.shape:
        return False
    if current.dtype.itemsize not in (1, 2, 4, 8):
        return bool(np.array_equal(current, expected))
    bits = np.dtype(f"u{current.dtype.itemsize}")
    return bool(np.array_equal(current.view(bits), expected.view(bits)))


def written(target: Any, where: np.ndarray | slice, values: Any) -> np.ndarray:
    """What ``target[where] = values`` left in ``target``, as an array that later writes
    do not change: ``values`` itself when it holds exactly that (a plain array of the
    same dtype and shape, apart from ``target``), else a copy."""
    after = target[where]
    if not (isinstance(target, np.ndarray) and isinstance(where, slice)):
        return after  # fancy indexing and ``.flat`` return copies
    if (
        type(values) is np.ndarray
        and values.dtype == after.dtype
        and values.shape == after.shape
        and not np.may_share_memory(values, target)
    ):
        return values
    return after.copy()


def same_indices(first: np.ndarray, second: np.ndarray) -> bool:
    return first is second or (first.shape == second.shape and np.array_equal(first, second))


def element_setter(array: np.ndarray) -> Callable[[int, Any], None]:
    """Set one element of ``array`` by flat C-order index, writing through to it (into
    the data of a masked array: its mask stays as it is)."""
    return flat_view(np.ndarray.view(array, np.ndarray)).__setitem__


def like_original(array: np.ndarray, original: np.ndarray) -> np.ndarray:
    """``array`` dressed as ``original`` (same mask; same ndarray subclass), sharing data."""
    if np.ma.isMaskedArray(original):
        return np.ma.MaskedArray(
            array, mask=np.ma.getmaskarray(original).copy(), hard_mask=original.hardmask
        )
    if type(original) is not np.ndarray:
        try:
            return array.view(type(original))
        except Exception:
            return array
    return array
