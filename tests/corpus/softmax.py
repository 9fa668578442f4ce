"""A linear softmax classifier with the cross-entropy loss (the vision course's first exercise)."""

from __future__ import annotations

import numpy as np

from .layers import Layers


class SoftmaxClassifier(Layers):
    """scores = X·W + b, J = mean cross-entropy of softmax(scores). W (6, 4), b (4,)."""

    name = "softmax"

    def __init__(self, dtype=np.float64) -> None:
        rng = np.random.RandomState(0)
        self.X = rng.randn(5, 6)
        self.y = np.array([0, 1, 2, 3, 1])
        self.start = {"W": 0.5 * rng.randn(6, 4), "b": 0.1 * rng.randn(4)}
        super().__init__(dtype)

    def initial_params(self) -> dict[str, np.ndarray]:
        return self.start

    def forward_backward(self, params, backward):
        scores, cache = self.affine_forward(self.data(self.X), params["W"], params["b"])
        loss, dscores = self.softmax_loss(scores, self.y)
        if not backward:
            return loss, None
        _, dW, db = self.affine_backward(dscores, cache)
        return loss, {"W": dW, "b": db}
