"""Batch normalization in training mode (batch statistics), between two affine layers.

The first layer's bias feeds the normalization, which subtracts the batch mean: the loss
does not depend on b1 at all, and its true gradient is exactly zero.
"""

from __future__ import annotations

import numpy as np

from .layers import Layers


class BatchNormNet(Layers):
    """X (5, 4) → W1 (4, 5), b1 (5,) → batchnorm (gamma, beta) → ReLU → W2 (5, 3), b2 (3,)
    → softmax loss. The batch holds as many examples as the layer has units (5), so a
    sum over the wrong axis keeps its shape."""

    name = "batchnorm"

    def __init__(self, dtype=np.float64) -> None:
        rng = np.random.RandomState(41)
        self.X = rng.randn(5, 4)
        self.y = np.array([0, 1, 2, 1, 0])
        self.start = {
            "W1": 0.7 * rng.randn(4, 5),
            "b1": 0.2 * rng.randn(5),
            "gamma": 1.0 + 0.2 * rng.randn(5),
            "beta": 0.1 * rng.randn(5),
            "W2": 0.5 * rng.randn(5, 3),
            "b2": 0.1 * rng.randn(3),
        }
        super().__init__(dtype)

    def initial_params(self) -> dict[str, np.ndarray]:
        return self.start

    def forward_backward(self, params, backward):
        a1, affine1 = self.affine_forward(self.data(self.X), params["W1"], params["b1"])
        n1, norm1 = self.batchnorm_forward(a1, params["gamma"], params["beta"])
        h1, relu1 = self.relu_forward(n1)
        scores, affine2 = self.affine_forward(h1, params["W2"], params["b2"])
        loss, dscores = self.softmax_loss(scores, self.y)
        if not backward:
            return loss, None
        dh1, dW2, db2 = self.affine_backward(dscores, affine2)
        dn1 = self.relu_backward(dh1, relu1)
        da1, dgamma, dbeta = self.batchnorm_backward(dn1, norm1)
        _, dW1, db1 = self.affine_backward(da1, affine1)
        grads = {"W1": dW1, "b1": db1, "gamma": dgamma, "beta": dbeta}
        return loss, {**grads, "W2": dW2, "b2": db2}

    def kink_distances(self, params):
        a1, _ = self.affine_forward(self.data(self.X), params["W1"], params["b1"])
        return [self.batchnorm_forward(a1, params["gamma"], params["beta"])[0]]
