"""A two-layer network written the deep-learning-course way: examples in columns, biases
as (n, 1) columns, ``1/m`` in every gradient, and an optional L2 penalty
(λ/2m)·(‖W1‖² + ‖W2‖²). The backward pass returns its intermediate values too (dZ2, dA1,
dZ1), as the course's ``backward_propagation`` does."""

from __future__ import annotations

import numpy as np

from .base import Model

EXAMPLES = 5


class TwoLayerL2Net(Model):
    """X (3, 5) → W1 (4, 3), b1 (4, 1) → ReLU → W2 (1, 4), b2 (1, 1) → sigmoid →
    cross-entropy (+ L2 when ``lambd`` > 0)."""

    name = "mlp"

    def __init__(self, dtype=np.float64, lambd: float = 0.0) -> None:
        rng = np.random.RandomState(23)
        self.lambd = lambd
        self.X = rng.randn(3, EXAMPLES)
        self.Y = np.array([[1.0, 0.0, 1.0, 1.0, 0.0]])
        self.start = {
            "W1": 0.8 * rng.randn(4, 3),
            "b1": 0.5 + 0.1 * rng.randn(4, 1),
            "W2": 0.8 * rng.randn(1, 4),
            "b2": 0.1 * rng.randn(1, 1),
        }
        super().__init__(dtype)

    def initial_params(self) -> dict[str, np.ndarray]:
        return self.start

    def forward_backward(self, params, backward):
        X, Y = self.data(self.X), self.data(self.Y)
        W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
        m = X.shape[1]
        Z1 = W1 @ X + b1
        A1 = np.maximum(0, Z1)
        Z2 = W2 @ A1 + b2
        A2 = 1 / (1 + np.exp(-Z2))
        cross_entropy = -np.sum(Y * np.log(A2) + (1 - Y) * np.log(1 - A2)) / m
        penalty = self.lambd / (2 * m) * (np.sum(W1 * W1) + np.sum(W2 * W2))
        cost = cross_entropy + penalty
        if not backward:
            return cost, None
        return cost, self.backward(X, Y, (A1, W1, W2, A2))

    def backward(self, X, Y, cache):
        A1, W1, W2, A2 = cache
        m, lambd = X.shape[1], self.lambd
        dZ2 = A2 - Y
        dW2 = 1.0 / m * (dZ2 @ A1.T) + lambd / m * W2
        db2 = 1.0 / m * np.sum(dZ2, axis=1, keepdims=True)
        dA1 = W2.T @ dZ2
        dZ1 = dA1 * (A1 > 0)
        dW1 = 1.0 / m * (dZ1 @ X.T) + lambd / m * W1
        db1 = 1.0 / m * np.sum(dZ1, axis=1, keepdims=True)
        return {"dZ2": dZ2, "dW2": dW2, "db2": db2, "dA1": dA1, "dZ1": dZ1, "dW1": dW1, "db1": db1}

    def kink_distances(self, params):
        return [params["W1"] @ self.data(self.X) + params["b1"]]
