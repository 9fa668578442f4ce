"""A two-layer ReLU network (affine - relu - affine - softmax), built so that the ReLU's
inputs are known: which hidden units are off for which example, and by how much."""

from __future__ import annotations

import numpy as np

from .layers import Layers

# Four examples with three features each; with a column of ones the system is square.
INPUTS = np.array(
    [[1.0, -0.5, 0.3], [0.2, 0.8, -1.0], [-0.7, 0.4, 0.9], [0.5, 1.1, 0.6]],
)
# The first layer's pre-activations X·W1 + b1: two units are off, each for one example
# (unit 2 for example 1, unit 4 for example 3); every value is ≥ 0.4 away from the kink.
PRE_ACTIVATIONS = np.array(
    [
        [0.8, 0.6, 0.9, 0.7, 1.1],
        [0.5, 1.2, -0.6, 0.9, 0.4],
        [1.0, 0.7, 0.5, 0.6, 0.8],
        [0.6, 0.9, 0.7, 1.0, -0.7],
    ]
)
DEAD_UNITS = ((1, 2), (3, 4))  # (example, unit) whose ReLU output is exactly zero
LABELS = np.array([0, 2, 1, 2])


class TwoLayerNet(Layers):
    """X (4, 3) → W1 (3, 5), b1 (5,) → ReLU → W2 (5, 3), b2 (3,) → softmax loss.

    ``blank``: the last example is blank (all zeros) and b1 starts at zero, so that
    example's pre-activations are exact zeros: perturbing b1 crosses a ReLU kink at every
    element (the code is right; the check must recognise the kinks). The other examples'
    pre-activations are the first three rows of ``PRE_ACTIVATIONS`` with the dead units
    switched on.
    """

    name = "relu"

    def __init__(
        self, dtype=np.float64, blank: bool = False, pre_activations=PRE_ACTIVATIONS
    ) -> None:
        rng = np.random.RandomState(2)
        self.X = INPUTS.copy()
        if blank:
            self.X[3] = 0.0
            W1, b1 = np.linalg.solve(self.X[:3], np.abs(pre_activations[:3])), np.zeros(5)
        else:
            solved = np.linalg.solve(np.hstack([self.X, np.ones((4, 1))]), pre_activations)
            W1, b1 = solved[:3], solved[3]
        self.y = LABELS
        self.start = {"W1": W1, "b1": b1, "W2": 0.5 * rng.randn(5, 3), "b2": 0.1 * rng.randn(3)}
        super().__init__(dtype)

    def initial_params(self) -> dict[str, np.ndarray]:
        return self.start

    def forward_backward(self, params, backward):
        X = self.data(self.X)
        a1, affine1 = self.affine_forward(X, params["W1"], params["b1"])
        h1, relu1 = self.relu_forward(a1)
        scores, affine2 = self.affine_forward(h1, params["W2"], params["b2"])
        loss, dscores = self.softmax_loss(scores, self.y)
        if not backward:
            return loss, None
        dh1, dW2, db2 = self.affine_backward(dscores, affine2)
        da1 = self.relu_backward(dh1, relu1)
        _, dW1, db1 = self.affine_backward(da1, affine1)
        return loss, {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}

    def kink_distances(self, params):
        X = self.data(self.X)
        return [X @ params["W1"] + params["b1"]]
