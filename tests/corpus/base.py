"""What every corpus model shares: parameters, loss, gradients, a float32 twin, planted bugs.

A model computes its loss and its hand-written gradients in one ``forward_backward``
method built from small layer methods, the way course exercises are written. A bug is
planted by editing the source of one of those methods (one exact piece of text replaced
by another) and binding the edited function to one model instance: the buggy code is
real code, one token away from the correct one.
"""

from __future__ import annotations

import copy
import inspect
import textwrap
import types
from typing import Any

import numpy as np


class Model:
    """A hand-written model: ``params``, ``loss(params)``, ``grads(params)``.

    Subclasses define ``initial_params()`` (float64 arrays) and
    ``forward_backward(params, backward)`` returning the loss and, when ``backward``,
    the gradient dict. Data are float64 constants, cast to the parameters' dtype in the
    forward pass, so the float32 twin computes in float32 throughout.
    """

    name = ""
    # Every kink distance (see kink_distances) is exactly zero or at least this large.
    kink_margin = 0.1

    def __init__(self, dtype: Any = np.float64) -> None:
        self.dtype = np.dtype(dtype)
        self.edits: list[tuple[str, str, str]] = []  # (target, old, new) of planted bugs
        self.params = {
            key: np.array(value, dtype=self.dtype) for key, value in self.initial_params().items()
        }

    def initial_params(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def forward_backward(self, params: dict, backward: bool) -> tuple[Any, dict | None]:
        raise NotImplementedError

    def loss(self, params: dict) -> float:
        """J at ``params`` (a Python float)."""
        return float(self.forward_backward(params, False)[0])

    def grads(self, params: dict) -> dict[str, np.ndarray]:
        """The hand-written gradient at ``params``."""
        return self.forward_backward(params, True)[1]

    def kink_distances(self, params: dict) -> list[np.ndarray]:
        """How far each kink of the loss is from ``params``: the inputs of every ReLU, the
        gap between the two largest values of every max-pooling window. Exact zeros are
        kinks (or ties) placed on purpose; every other value keeps ``kink_margin`` (see
        tests/test_corpus.py), so a correct model crosses no kink by accident."""
        return []

    def data(self, array: np.ndarray) -> np.ndarray:
        """A data constant in the parameters' dtype."""
        return np.asarray(array, dtype=self.dtype)

    def astype(self, dtype: Any) -> Model:
        """The same model (same planted bugs) with parameters of another dtype."""
        twin = copy.copy(self)
        for target, _, _ in self.edits:
            twin.__dict__.pop(target.split(".")[0], None)
        twin.dtype = np.dtype(dtype)
        twin.params = {key: value.astype(dtype) for key, value in self.params.items()}
        twin.edits = []
        for edit in self.edits:
            plant(twin, *edit)
        return twin

    def float32(self) -> Model:
        return self.astype(np.float32)


def edited_function(function: Any, source: str, old: str, new: str, label: str) -> Any:
    """``function`` recompiled from ``source`` (its text) with ``old`` replaced by ``new``."""
    count = source.count(old)
    if count != 1:
        raise ValueError(f"{label}: {old!r} occurs {count} times in {function.__qualname__}")
    namespace: dict[str, Any] = {}
    code = compile(source.replace(old, new), f"<planted bug {label}>", "exec")
    exec(code, function.__globals__, namespace)
    return namespace[function.__name__]


def plant(model: Model, target: str, old: str, new: str) -> None:
    """Edit ``target`` for this model only: a method name (``"backward"``), or
    ``"Class.method"`` for a class the model holds as a class attribute (the instance gets
    a subclass). Several edits of one target apply one after the other."""
    holder, _, method = target.rpartition(".")
    owner = getattr(type(model), holder) if holder else type(model)
    original = getattr(owner, method)
    source = textwrap.dedent(inspect.getsource(original))
    for done, done_old, done_new in model.edits:
        if done == target:
            source = source.replace(done_old, done_new)
    function = edited_function(original, source, old, new, f"{model.name}.{target}")
    if holder:
        setattr(model, holder, type(owner.__name__, (owner,), {method: function}))
    else:
        setattr(model, method, types.MethodType(function, model))
    model.edits = [*model.edits, (target, old, new)]
