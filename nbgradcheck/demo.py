"""A course-style NumPy network with hand-written backprop, with and without planted bugs.

Used by ``python -m nbgradcheck demo``, the benchmarks, the tests and the notebooks: the
same shapes and conventions as the classic deep-learning course exercises (column-major
examples, ``parameters = {"W1", "b1", ...}``, ``forward(X, Y, parameters) -> (cost,
cache)`` and ``backward(X, Y, cache) -> {"dW1", "db1", "dZ1", ...}``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Params = dict[str, np.ndarray]

BUGS = {
    "scale_dW2": "dW2 multiplied by a stray factor 2",
    "db1_4_over_m": "db1 uses 4/m instead of 1/m",
}


def relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(0, z)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def initialize(layer_dims: list[int], seed: int = 1, dtype: type = np.float64) -> Params:
    """W1, b1, ... with He-style scaling and small random biases (so no element is special)."""
    rng = np.random.default_rng(seed)
    params: Params = {}
    for layer in range(1, len(layer_dims)):
        fan_in, fan_out = layer_dims[layer - 1], layer_dims[layer]
        params[f"W{layer}"] = (rng.standard_normal((fan_out, fan_in)) * np.sqrt(2 / fan_in)).astype(
            dtype
        )
        params[f"b{layer}"] = (0.1 * rng.standard_normal((fan_out, 1))).astype(dtype)
    return params


def make_data(
    n_features: int, m: int, seed: int = 2, dtype: type = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """X of shape (n_features, m) and binary labels Y of shape (1, m)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_features, m)).astype(dtype)
    Y = (rng.random((1, m)) > 0.5).astype(dtype)
    return X, Y


def forward(X: np.ndarray, Y: np.ndarray, parameters: Params) -> tuple[float, list]:
    """LINEAR→RELU × (L−1) → LINEAR→SIGMOID, cross-entropy cost; returns (cost, cache)."""
    n_layers = len(parameters) // 2
    A, cache = X, []
    for layer in range(1, n_layers + 1):
        W, b = parameters[f"W{layer}"], parameters[f"b{layer}"]
        Z = W @ A + b
        A_next = sigmoid(Z) if layer == n_layers else relu(Z)
        cache.append((A, W, Z))
        A = A_next
    m = X.shape[1]
    cost = -np.sum(Y * np.log(A) + (1 - Y) * np.log(1 - A)) / m
    cache.append(A)
    return cost, cache


def backward(X: np.ndarray, Y: np.ndarray, cache: list, bugs: tuple[str, ...] = ()) -> Params:
    """Hand-written backprop; ``bugs`` plants mistakes from :data:`BUGS`."""
    unknown = set(bugs) - set(BUGS)
    if unknown:
        raise ValueError(f"unknown bugs {sorted(unknown)}; choose from {sorted(BUGS)}")
    m = X.shape[1]
    n_layers = len(cache) - 1
    grads: Params = {}
    dZ = cache[-1] - Y
    for layer in range(n_layers, 0, -1):
        A_prev, W, _ = cache[layer - 1]
        grads[f"dZ{layer}"] = dZ
        grads[f"dW{layer}"] = dZ @ A_prev.T / m
        grads[f"db{layer}"] = np.sum(dZ, axis=1, keepdims=True) / m
        if layer == 2 and "scale_dW2" in bugs:
            grads["dW2"] = 2 * grads["dW2"]
        if layer == 1 and "db1_4_over_m" in bugs:
            grads["db1"] = 4 * np.sum(dZ, axis=1, keepdims=True) / m
        if layer > 1:
            dA = W.T @ dZ
            grads[f"dA{layer - 1}"] = dA
            dZ = dA * (cache[layer - 2][2] > 0)
    return grads


@dataclass
class CourseNetwork:
    """Data, parameters and the loss/gradient closures a gradient check needs."""

    X: np.ndarray
    Y: np.ndarray
    parameters: Params
    bugs: tuple[str, ...] = ()

    def loss(self, parameters: Params) -> float:
        return forward(self.X, self.Y, parameters)[0]

    def gradients(self, parameters: Params) -> Params:
        _, cache = forward(self.X, self.Y, parameters)
        return backward(self.X, self.Y, cache, self.bugs)

    @property
    def n_parameters(self) -> int:
        return sum(p.size for p in self.parameters.values())


def course_network(
    layer_dims: tuple[int, ...] = (4, 5, 3, 1),
    m: int = 3,
    bugs: tuple[str, ...] = (),
    seed: int = 1,
    dtype: type = np.float64,
) -> CourseNetwork:
    """The classic three-layer exercise network (47 parameters by default)."""
    X, Y = make_data(layer_dims[0], m, seed=seed + 1, dtype=dtype)
    return CourseNetwork(X, Y, initialize(list(layer_dims), seed=seed, dtype=dtype), bugs)
