"""A tiny scalar autograd engine (a Value class with +, *, tanh, relu and backward, as in
micrograd) and a small MLP built from it, whose parameters are gathered into NumPy
arrays for the check."""

from __future__ import annotations

import math

import numpy as np

from .base import Model


class Value:
    """A scalar and its gradient, with the operations that made it."""

    def __init__(self, data, children=()):
        self.data = data
        self.grad = 0.0
        self._backward = lambda: None
        self._prev = tuple(children)  # a set (as in micrograd) would make the order vary

    def __add__(self, other):
        other = other if isinstance(other, Value) else type(self)(other)
        out = type(self)(self.data + other.data, (self, other))

        def _backward():
            self.grad += out.grad
            other.grad += out.grad

        out._backward = _backward
        return out

    def __mul__(self, other):
        other = other if isinstance(other, Value) else type(self)(other)
        out = type(self)(self.data * other.data, (self, other))

        def _backward():
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward = _backward
        return out

    def tanh(self):
        t = math.tanh(self.data)
        out = type(self)(t, (self,))

        def _backward():
            self.grad += (1 - t * t) * out.grad

        out._backward = _backward
        return out

    def relu(self):
        out = type(self)(0.0 if self.data < 0 else self.data, (self,))

        def _backward():
            self.grad += (out.data > 0) * out.grad

        out._backward = _backward
        return out

    def __radd__(self, other):
        return self + other

    def __rmul__(self, other):
        return self * other

    def __neg__(self):
        return self * -1

    def __sub__(self, other):
        return self + (-other)

    def backward(self):
        order, seen = [], set()

        def visit(node):
            if node not in seen:
                seen.add(node)
                for child in node._prev:
                    visit(child)
                order.append(node)

        visit(self)
        self.grad = 1.0
        for node in reversed(order):
            node._backward()


# Three examples with two features; with a column of ones the system is square, so the
# hidden pre-activations are exactly these: unit 1 is off for example 0, unit 3 for
# example 2, every value ≥ 0.4 away from the kink.
INPUTS = np.array([[1.0, 0.5], [-0.6, 1.2], [0.3, -0.9]])
PRE_ACTIVATIONS = np.array([[0.7, -0.5, 0.9, 0.6], [0.5, 0.8, 0.6, 1.0], [0.9, 0.6, 0.4, -0.8]])
DEAD_UNITS = ((0, 1), (2, 3))
TARGETS = np.array([0.5, -0.3, 0.2])


class AutogradMLP(Model):
    """2 inputs → 4 ReLU units (W1 (4, 2), b1 (4,)) → 1 tanh output (W2 (1, 4), b2 (1,)),
    J = mean squared error over three examples; gradients from ``Value.backward``."""

    name = "autograd"
    Value = Value

    def __init__(self, dtype=np.float64) -> None:
        solved = np.linalg.solve(np.hstack([INPUTS, np.ones((3, 1))]), PRE_ACTIVATIONS)
        self.start = {
            "W1": solved[:2].T,
            "b1": solved[2],
            "W2": np.array([[0.6, -0.4, 0.5, 0.3]]),
            "b2": np.array([0.1]),
        }
        super().__init__(dtype)

    def initial_params(self) -> dict[str, np.ndarray]:
        return self.start

    def forward_backward(self, params, backward):
        nodes = {
            key: np.array([self.Value(float(v)) for v in array.ravel()], dtype=object).reshape(
                array.shape
            )
            for key, array in params.items()
        }
        loss = self.mean_squared_error(nodes)
        if not backward:
            return loss.data, None
        loss.backward()
        grads = {
            key: np.array([v.grad for v in node.ravel()], dtype=self.dtype).reshape(node.shape)
            for key, node in nodes.items()
        }
        return loss.data, grads

    def mean_squared_error(self, nodes):
        W1, b1, W2, b2 = nodes["W1"], nodes["b1"], nodes["W2"], nodes["b2"]
        total = self.Value(0.0)
        for x, target in zip(INPUTS, TARGETS):
            hidden = [
                (sum((w * float(xi) for w, xi in zip(W1[j], x)), b1[j])).relu()
                for j in range(W1.shape[0])
            ]
            out = sum((v * h for v, h in zip(W2[0], hidden)), b2[0]).tanh()
            error = out - float(target)
            total = total + error * error
        return total * (1.0 / len(TARGETS))

    def kink_distances(self, params):
        return [INPUTS @ params["W1"].T.astype(float) + params["b1"]]
