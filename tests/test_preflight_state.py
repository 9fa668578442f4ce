"""Nothing the user owns changes in preflight, whatever happens.

Before and after every call (planted bugs, a loss that reaches into the model, a forward
pass that raises at the start or in the middle, grad mode off, float64 by default) the
test compares, bit for bit: every parameter and buffer (same objects, same bits),
``.grad``, ``requires_grad``, every module's training flag, every hook table, X and y
(with ``requires_grad`` and ``.grad``), the torch, NumPy and Python RNG states, the grad
mode, the default dtype and torch's thread count.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_preflight_zoo import TORCH_BUGS, numpy_batch, numpy_model, torch_batch, torch_model
from torch import nn

import nbgradcheck as ng

# -- the state, written out independently of the implementation ------------------------------


def tensor_state(tensor: torch.Tensor | None) -> tuple | None:
    if tensor is None:
        return None
    data = tensor.detach().cpu()
    return (
        data.dtype,
        tuple(data.shape),
        data.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes(),
    )


def torch_state(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> dict:
    return {
        "parameters": [
            (name, id(p), tensor_state(p), p.requires_grad, tensor_state(p.grad))
            for name, p in model.named_parameters(remove_duplicate=False)
        ],
        "buffers": [
            (name, id(b), tensor_state(b))
            for name, b in model.named_buffers(remove_duplicate=False)
        ],
        "training": [(name, m.training) for name, m in model.named_modules()],
        "hooks": [
            (name, attribute, list(table.items()))
            for name, module in model.named_modules()
            for attribute, table in sorted(vars(module).items())
            if attribute.endswith("_hooks") and isinstance(table, dict)
        ],
        "X": (id(X), tensor_state(X), X.requires_grad, tensor_state(X.grad)),
        "y": (id(y), tensor_state(y)),
        **global_state(),
    }


def global_state() -> dict:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch_rng": tensor_state(torch.get_rng_state()),
        "numpy_rng": (kind, keys.tobytes(), position, has_gauss, gauss),
        "python_rng": random.getstate(),
        "grad_mode": torch.is_grad_enabled(),
        "default_dtype": torch.get_default_dtype(),
        "threads": torch.get_num_threads(),
    }


def numpy_state(params: dict, X: np.ndarray, y: np.ndarray) -> dict:
    return {
        "params": [(k, id(v), v.dtype.str, v.shape, v.tobytes()) for k, v in params.items()],
        "X": (id(X), X.tobytes()),
        "y": (id(y), y.tobytes()),
        **global_state(),
    }


# -- a model with every kind of state --------------------------------------------------------


class Stateful(nn.Module):
    """BatchNorm (buffers), dropout, a frozen parameter, a submodule in eval mode."""

    calls = 0  # class-level: copies of the model count too
    raise_at: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(20, 32)
        self.norm = nn.BatchNorm1d(32)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(32, 10)
        self.scale = nn.Parameter(torch.ones(10), requires_grad=False)

    def forward(self, x):
        type(self).calls += 1
        if type(self).raise_at is not None and type(self).calls >= type(self).raise_at:
            raise RuntimeError("the user's forward pass failed")
        return self.fc2(self.drop(F.relu(self.norm(self.fc1(x))))) * self.scale


@pytest.fixture
def stateful():
    """The model with .grad set, a hook, mixed training flags; X requiring grad; RNG seeded."""
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(5)
    model = Stateful()
    X, y = torch_batch()
    X.requires_grad_(True)
    F.cross_entropy(model(X), y).backward()  # .grad on parameters and on X
    model.drop.eval()
    model.fc1.register_forward_hook(lambda module, inputs, output: None)
    model.register_forward_pre_hook(lambda module, inputs: None)
    Stateful.calls, Stateful.raise_at = 0, None
    yield model, X, y
    Stateful.raise_at = None


def test_a_healthy_preflight_changes_nothing(stateful):
    model, X, y = stateful
    before = torch_state(model, X, y)
    report = ng.preflight(model, F.cross_entropy, X, y, steps=10)
    assert torch_state(model, X, y) == before
    assert report.status("init_loss") == "pass"


def test_a_loss_reaching_into_the_model_changes_nothing(stateful):
    model, X, y = stateful

    def regularised(out, target):
        penalty = sum(p.pow(2).sum() for p in model.parameters() if p.requires_grad)
        return F.cross_entropy(out, target) + 1e-4 * penalty

    before = torch_state(model, X, y)
    ng.preflight(model, regularised, X, y, steps=10)
    assert torch_state(model, X, y) == before


def test_an_error_in_the_first_forward_propagates_and_changes_nothing(stateful):
    model, X, y = stateful
    Stateful.raise_at = 1
    before = torch_state(model, X, y)
    with pytest.raises(RuntimeError, match="user's forward"):
        ng.preflight(model, F.cross_entropy, X, y, steps=10)
    assert torch_state(model, X, y) == before


@pytest.mark.parametrize("raise_at", [3, 8, 40])
def test_an_error_in_the_middle_fails_a_check_and_changes_nothing(stateful, raise_at):
    model, X, y = stateful
    Stateful.raise_at = raise_at
    before = torch_state(model, X, y)
    report = ng.preflight(model, F.cross_entropy, X, y, steps=10)
    assert torch_state(model, X, y) == before
    assert report.failed and all(isinstance(e, RuntimeError) for e in report.errors.values())


def test_grad_mode_off_and_float64_default_stay_as_they_were(stateful):
    model, X, y = stateful
    model.double()
    X64 = X.detach().double()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            before = torch_state(model, X64, y)
            report = ng.preflight(model, F.cross_entropy, X64, y, steps=10)
            after = torch_state(model, X64, y)
    finally:
        torch.set_default_dtype(previous)
    assert after == before
    assert report.status("gradients") == "pass"


@pytest.mark.parametrize("bug", list(TORCH_BUGS))
def test_no_planted_bug_changes_the_users_model(bug):
    model = torch_model(bug)
    X, y = torch_batch()
    before = torch_state(model, X, y)
    ng.preflight(model, F.cross_entropy, X, y, steps=10)
    assert torch_state(model, X, y) == before


@pytest.mark.parametrize("raise_at", [None, 1, 5])
def test_numpy_preflight_changes_nothing(raise_at):
    loss, params, grads = numpy_model("wrong_sign")
    X, y = numpy_batch()
    calls = []

    def fragile_loss(p, X, y):
        calls.append(1)
        if raise_at is not None and len(calls) >= raise_at:
            raise FloatingPointError("the user's loss failed")
        p["W1"] += 0.0  # in place, on preflight's copy
        return loss(p, X, y)

    np.random.seed(3)
    before = numpy_state(params, X, y)
    if raise_at == 1:
        with pytest.raises(FloatingPointError):
            ng.preflight(fragile_loss, params, X, y, grads=grads, classes=10, steps=10)
    else:
        report = ng.preflight(fragile_loss, params, X, y, grads=grads, classes=10, steps=10)
        assert "overfit_batch" in report.failed  # the wrong sign, or the error
        assert bool(report.errors) == (raise_at is not None)
    assert numpy_state(params, X, y) == before
