"""Small models with one planted bug each, for preflight's tests and benchmark.

``torch_model(bug)`` and ``numpy_model(bug)`` build a 3-layer (PyTorch) or 2-layer (NumPy)
ReLU classifier of 20 features and 10 classes; ``bug=None`` is the correct model.
TORCH_BUGS / NUMPY_BUGS say which check each bug is planted for. The tests in this file
check that each bug is really there (so a preflight test that passes is not passing on a
healthy model by accident).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

FEATURES, HIDDEN, CLASSES, BATCH = 20, 64, 10, 64

# bug → the check planted for it (None: a correct model, every check passes)
TORCH_BUGS = {
    None: None,
    "batchnorm": None,  # correct: BatchNorm in training mode mixes examples by design
    "dropout": None,  # correct: random masks, re-seeded by preflight
    "large_init": "init_loss",  # weights drawn with std 1 instead of ~1/√fan_in
    "softmax_over_batch": "batch_independence",  # log_softmax(dim=0)
    "wrong_sign": "overfit_batch",  # a custom Function on the outputs flips the gradient
    "dead_relu": "dead_units",  # fc1's bias initialised to -10
    "detach": "gradient_flow",  # h.detach() after the first layer
    "wrong_backward": "gradients",  # a custom ReLU Function whose backward doubles
}
NUMPY_BUGS = {
    None: None,
    "large_init": "init_loss",  # W1, W2 drawn with std 1 (no 1/√fan_in)
    "softmax_over_batch": "batch_independence",  # softmax over axis 0
    "wrong_sign": "overfit_batch",  # grads returns −gradient
    "zero_gradient": "gradient_flow",  # db1 returned as zeros
    "wrong_backward": "gradients",  # dW2 doubled
}
# The tensor or layer each finding must name.
CULPRITS = {
    "large_init": "fc3",  # the last layer
    "softmax_over_batch": "MLP.forward",
    "dead_relu": "fc1",
    "detach": "fc1.weight",
    "wrong_backward": "fc1.weight",
}
NUMPY_CULPRITS = {"zero_gradient": "b1", "wrong_backward": "W2"}


class FlipGradient(torch.autograd.Function):
    """Identity forward, negated backward: training climbs the loss."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return -grad


class DoubledReLU(torch.autograd.Function):
    """ReLU whose backward is twice too large."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * grad * (x > 0)


class MLP(nn.Module):
    def __init__(self, bug: str | None = None) -> None:
        super().__init__()
        self.bug = bug
        self.fc1 = nn.Linear(FEATURES, HIDDEN)
        self.norm = nn.BatchNorm1d(HIDDEN) if bug == "batchnorm" else nn.Identity()
        self.drop = nn.Dropout(0.2) if bug == "dropout" else nn.Identity()
        self.fc2 = nn.Linear(HIDDEN, HIDDEN)
        self.fc3 = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc1(x)
        h = DoubledReLU.apply(z) if self.bug == "wrong_backward" else F.relu(z)
        h = self.drop(self.norm(h))
        if self.bug == "detach":
            h = h.detach()
        out = self.fc3(F.relu(self.fc2(h)))
        if self.bug == "softmax_over_batch":
            out = torch.log_softmax(out, dim=0)
        if self.bug == "wrong_sign":
            out = FlipGradient.apply(out)
        return out


def torch_model(bug: str | None = None, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    model = MLP(bug)
    with torch.no_grad():
        if bug == "large_init":
            for layer in (model.fc1, model.fc2, model.fc3):
                nn.init.normal_(layer.weight, std=1.0)
        if bug == "dead_relu":
            model.fc1.bias.fill_(-10.0)
    return model


def torch_batch(seed: int = 0, size: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(size, FEATURES, generator=generator)
    y = torch.randint(0, CLASSES, (size,), generator=generator)
    return X, y


# -- NumPy: batch axis 0, params W1 (20×32), b1, W2 (32×10), b2 ------------------------------


def numpy_batch(seed: int = 1, size: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(size, FEATURES)), rng.integers(0, CLASSES, size=size)


def numpy_params(bug: str | None = None, seed: int = 0, hidden: int = 32) -> dict:
    rng = np.random.default_rng(seed)
    params = {
        "W1": rng.normal(size=(FEATURES, hidden)) * np.sqrt(2 / FEATURES),
        "b1": np.zeros(hidden),
        "W2": rng.normal(size=(hidden, CLASSES)) * 0.5 / np.sqrt(hidden),
        "b2": np.zeros(CLASSES),
    }
    if bug == "large_init":
        params["W1"] = rng.normal(size=(FEATURES, hidden))
        params["W2"] = rng.normal(size=(hidden, CLASSES))
    return params


def log_softmax(z: np.ndarray, axis: int) -> np.ndarray:
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def numpy_model(bug: str | None = None, seed: int = 0) -> tuple:
    """(loss, params, grads) with ``bug`` planted."""
    axis = 0 if bug == "softmax_over_batch" else 1

    def forward(p, X, y):
        Z1 = X @ p["W1"] + p["b1"]
        A1 = np.maximum(Z1, 0)
        logp = log_softmax(A1 @ p["W2"] + p["b2"], axis)
        return -np.mean(logp[np.arange(len(y)), y]), (Z1, A1, np.exp(logp))

    def loss(p, X, y):
        return forward(p, X, y)[0]

    def grads(p, X, y):
        _, (Z1, A1, P) = forward(p, X, y)
        dZ2 = P.copy()
        dZ2[np.arange(len(y)), y] -= 1
        dZ2 /= len(y)
        dZ1 = (dZ2 @ p["W2"].T) * (Z1 > 0)
        g = {"dW1": X.T @ dZ1, "db1": dZ1.sum(0), "dW2": A1.T @ dZ2, "db2": dZ2.sum(0)}
        if bug == "wrong_sign":
            g = {k: -v for k, v in g.items()}
        if bug == "zero_gradient":
            g["db1"] = np.zeros_like(g["db1"])
        if bug == "wrong_backward":
            g["dW2"] = 2 * g["dW2"]
        return g

    return loss, numpy_params(bug, seed), grads


# -- the bugs are really there ---------------------------------------------------------------


def test_the_correct_numpy_gradient_is_right():
    loss, params, grads = numpy_model()
    X, y = numpy_batch()
    analytic = grads(params, X, y)["dW1"]
    eps = 1e-6
    params["W1"][3, 4] += eps
    plus = loss(params, X, y)
    params["W1"][3, 4] -= 2 * eps
    minus = loss(params, X, y)
    assert (plus - minus) / (2 * eps) == pytest.approx(analytic[3, 4], rel=1e-6)


def test_the_softmax_bug_makes_outputs_depend_on_the_batch():
    model = torch_model("softmax_over_batch")
    X, _ = torch_batch()
    changed = X.clone()
    changed[1:] += 1.0
    assert not torch.allclose(model(X)[0], model(changed)[0])
    healthy = torch_model()
    assert torch.equal(healthy(X)[0], healthy(changed)[0])


def test_the_dead_relu_bug_silences_the_first_layer():
    model = torch_model("dead_relu")
    X, _ = torch_batch()
    assert bool((F.relu(model.fc1(X)) == 0).all())


def test_the_wrong_backward_doubles_the_gradient():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(DoubledReLU.apply(x).sum(), x)
    assert torch.equal(grad, 2.0 * (x > 0))
