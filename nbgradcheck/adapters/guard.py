"""One check at a time per parameter: a process-wide registry of the memory being perturbed.

A check perturbs the user's arrays in place. A second check of the same arrays in another
thread (or from inside the loss) would read the first one's perturbations as the
parameters and restore them as the original values: both report success and the
parameters stay perturbed. :func:`claim` prevents that::

    with claim(arrays, names):  # raises ParameterError if another check holds them
        ...  # perturb and restore

Memory is compared by address range (and, for overlapping NumPy ranges, exactly with
``np.shares_memory``), so a view of a claimed array is refused too. Objects without a
buffer (JAX arrays, which are never perturbed in place) are claimed by identity.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nbgradcheck.errors import ParameterError

try:
    from numpy.exceptions import TooHardError
except ImportError:  # NumPy < 1.25
    from numpy import TooHardError  # type: ignore[attr-defined,no-redef]


@dataclass(frozen=True)
class Region:
    """Bytes ``[low, high)`` of one address space (``space``: 'cpu', 'cuda:0', 'id')."""

    space: str
    low: int
    high: int
    value: Any  # the array or tensor, for an exact overlap test

    def overlaps(self, other: Region) -> bool:
        if self.space != other.space or self.high <= other.low or other.high <= self.low:
            return False
        if isinstance(self.value, np.ndarray) and isinstance(other.value, np.ndarray):
            try:
                return bool(np.shares_memory(self.value, other.value, max_work=10**6))
            except TooHardError:  # too costly to decide: assume they do
                return True
        return True


@dataclass(frozen=True)
class Claim:
    regions: tuple[Region, ...]
    names: tuple[str, ...]
    thread_id: int
    thread_name: str


_condition = threading.Condition()
_claims: dict[int, Claim] = {}


def byte_range(array: np.ndarray) -> tuple[int, int]:
    """``[low, high)`` addresses of the bytes ``array`` can reach (empty: low == high)."""
    start = array.__array_interface__["data"][0]
    if array.size == 0:
        return start, start
    low = high = start
    for extent, stride in zip(array.shape, array.strides):
        offset = (extent - 1) * stride
        low, high = (low + offset, high) if offset < 0 else (low, high + offset)
    return low, high + array.itemsize


def region_of(value: Any) -> Region | None:
    """The memory ``value`` occupies; None for an empty array (nothing to perturb)."""
    if isinstance(value, np.ndarray):
        low, high = byte_range(np.ndarray.view(value, np.ndarray))
        return Region("cpu", low, high, value) if high > low else None
    if callable(getattr(value, "data_ptr", None)) and hasattr(value, "stride"):
        return tensor_region(value)
    return Region("id", id(value), id(value) + 1, value)


def tensor_region(tensor: Any) -> Region | None:
    """A torch tensor's bytes (devices are separate address spaces)."""
    if tensor.numel() == 0:
        return None
    start, size = tensor.data_ptr(), tensor.element_size()
    low = high = start
    for extent, stride in zip(tensor.shape, tensor.stride()):
        offset = (extent - 1) * stride * size
        low, high = (low + offset, high) if offset < 0 else (low, high + offset)
    return Region(str(tensor.device), low, high + size, tensor)


def conflict(regions: Sequence[Region], names: Sequence[str]) -> tuple[str, str, Claim] | None:
    """(our name, their name, their claim) for the first overlap with a live claim."""
    for held in _claims.values():
        for mine, name in zip(regions, names):
            if mine is None:
                continue
            for theirs, their_name in zip(held.regions, held.names):
                if theirs is not None and mine.overlaps(theirs):
                    return name, their_name, held
    return None


def conflict_message(name: str, their_name: str, held: Claim) -> str:
    same = held.thread_id == threading.get_ident()
    where = f"thread {held.thread_name!r}" + (
        ": this very thread; is the loss calling check() on its own parameters?" if same else ""
    )
    what = name if name == their_name else f"{name} (it shares memory with {their_name})"
    return (
        f"{what} is already being checked by another check in this process ({where}); "
        f"wait for it to finish, or check a copy of the parameters"
    )


@contextlib.contextmanager
def claim(arrays: Sequence[Any], names: Sequence[str], timeout: float = 0.0) -> Iterator[None]:
    """Hold ``arrays`` (named ``names``) for one check; released when the block ends.

    Raises ParameterError naming the parameter when another check in this process holds
    any of their memory: at once with ``timeout=0``, else after waiting up to ``timeout``
    seconds for it to finish (never when the holder is this very thread: it would wait
    for itself).
    """
    regions = tuple(region_of(a) for a in arrays)
    deadline = time.monotonic() + timeout
    with _condition:
        while (found := conflict(regions, names)) is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or found[2].thread_id == threading.get_ident():
                raise ParameterError(conflict_message(*found))
            _condition.wait(remaining)
        thread = threading.current_thread()
        held = Claim(regions, tuple(names), threading.get_ident(), thread.name)
        _claims[id(held)] = held
    try:
        yield
    finally:
        with _condition:
            del _claims[id(held)]
            _condition.notify_all()


def claimed_names() -> list[str]:
    """Names of the parameters checks in this process hold now (for tests and reports)."""
    with _condition:
        return [name for held in _claims.values() for name in held.names]
