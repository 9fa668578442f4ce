"""The adapter protocol: what the check needs from a set of parameters, for any framework.

An adapter turns what the user passed (a dict of NumPy arrays, a torch module, a JAX
pytree, ...) into named flat tensors the check can read, perturb in place and restore bit
for bit. The core calls only the members declared here: required ones are abstract,
optional capabilities have a default that says "not available" (no ``getattr`` probing).
:mod:`nbgradcheck.adapters.registry` picks the adapter from the type of the parameters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from nbgradcheck.errors import GradCheckError, GradientError

SetElement = Callable[[int, Any], None]
SetGroup = Callable[[np.ndarray, np.ndarray], None]


class ParameterAdapter(ABC):
    """Named parameter tensors, perturbed in place and restored exactly."""

    names: list[str]
    # True when the loss sees perturbations through the object ``argument()`` returns
    # (NumPy arrays, torch modules); False when a new argument is built per call (JAX).
    fixed_argument: bool = True
    # Appended to the "the loss is random" error: how to seed or switch off randomness.
    randomness_hint: str = ""

    # -- description -------------------------------------------------------------------
    @property
    @abstractmethod
    def shapes(self) -> list[tuple[int, ...]]:
        """Shape of each tensor, in check order."""

    @property
    @abstractmethod
    def dtypes(self) -> list[np.dtype]:
        """NumPy dtype of each tensor as checked (steps and round-off floors use it)."""

    @property
    def notes(self) -> list[str]:
        """Sentences for the report about how the parameters are checked."""
        return []

    @abstractmethod
    def argument(self) -> Any:
        """What ``loss(params)`` receives."""

    # -- reading and perturbing ----------------------------------------------------------
    @abstractmethod
    def flat_values(self, position: int, indices: np.ndarray) -> np.ndarray:
        """Current values of some elements (flat C-order indices), in the tensor's dtype."""

    def values_at_start(self, position: int) -> np.ndarray:
        """Every element's value when the check started, flat, in the tensor's dtype (a
        read-only view of the snapshot where the adapter keeps one)."""
        size = int(np.prod(self.shapes[position], dtype=np.int64))
        return self.flat_values(position, np.arange(size, dtype=np.int64))

    @abstractmethod
    def element_setter(self, position: int) -> SetElement:
        """A function setting one element by flat C-order index, in place."""

    def group_setter(self, position: int) -> SetGroup:
        """A function setting several elements at once, in place (fast mode's groups)."""
        set_element = self.element_setter(position)

        def set_each(indices: np.ndarray, values: np.ndarray) -> None:
            for index, value in zip(np.asarray(indices).tolist(), np.asarray(values).tolist()):
                set_element(index, value)

        return set_each

    def with_replacement(self, position: int, array: np.ndarray) -> Any:
        """The loss's argument with one tensor replaced by ``array`` (complex steps)."""
        raise GradCheckError("method='complex' is available for NumPy parameters only")

    @property
    def evaluation_notes(self) -> list[str]:
        """Sentences about how the loss was evaluated (e.g. why one element at a time),
        read when the check ends."""
        return []

    def perturbed_buffers(self) -> list[Any]:
        """The arrays or tensors the check writes into (claimed against concurrent checks)."""
        return []

    # -- randomness and global state -----------------------------------------------------
    @abstractmethod
    def reseed(self, seed: int) -> None:
        """Re-seed the RNGs a loss may draw from (dropout masks then repeat)."""

    def rng_fingerprint(self) -> tuple | None:
        """A cheap summary of the RNG states that changes with every draw; None when the
        adapter cannot tell (the loss is then re-seeded whenever ``seed`` is given)."""
        return None

    @abstractmethod
    def rng_state(self) -> Callable[[], None]:
        """Save the global state the check may disturb; returns the function restoring it.

        Called once before the first evaluation, its result once at the end (also on
        errors): it brackets the whole check.
        """

    # -- snapshot and restore ------------------------------------------------------------
    @abstractmethod
    def snapshot(self) -> Any:
        """Exact copies of everything the check could change."""

    @abstractmethod
    def modified_names(self, snapshot: Any) -> list[str]:
        """Names of the tensors whose bits differ from ``snapshot``."""

    @abstractmethod
    def restore(self, snapshot: Any) -> None:
        """Write ``snapshot`` back, bit for bit."""

    @abstractmethod
    def ensure_unmodified(self, snapshot: Any, culprit: str) -> None:
        """Restore and raise ParametersModifiedError if ``culprit`` changed parameters."""

    # -- gradients -----------------------------------------------------------------------
    @abstractmethod
    def match_gradients(self, grads: Any) -> tuple[list[np.ndarray], list[str]]:
        """The user's gradients as float64 arrays in check order, and the ignored keys."""

    def autograd_gradients(self, loss: Callable[..., Any], pass_argument: bool) -> Any:
        """Analytic gradients from the framework's automatic differentiation."""
        raise GradientError(
            "grads is required for NumPy parameters: pass the gradient dict your backward "
            "pass computes (or a function returning it)"
        )

    # -- vectorized evaluation (optional) ------------------------------------------------
    def bind_loss(self, loss: Callable[..., Any], pass_argument: bool) -> None:
        """Remember the loss, for adapters that evaluate perturbations in batches."""
        return None

    @property
    def can_batch(self) -> bool:
        """True while :meth:`batched_losses` can be used."""
        return False

    def batched_losses(self, position: int, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """J with each listed element set to its value in turn (the others unperturbed);
        the parameters are left as they were. Only called while ``can_batch``."""
        raise NotImplementedError(f"{type(self).__name__} does not evaluate in batches")
