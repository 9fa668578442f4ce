"""A fully connected (affine) layer with a squared-error loss, through the course-style
``affine_forward`` / ``affine_backward`` pair."""

from __future__ import annotations

import numpy as np

from .layers import Layers


class AffineRegression(Layers):
    """out = X·W + b, J = ½·mean over examples of ‖out − T‖². W (5, 5) is square (a
    transposed gradient keeps its shape) and the batch has 5 examples (a bias gradient
    summed over the wrong axis keeps its shape too).

    ``row_bias``: b stored as (1, 5), as some courses keep it, while ``affine_backward``
    returns db of shape (5,).
    """

    name = "affine"

    def __init__(self, dtype=np.float64, row_bias: bool = False) -> None:
        rng = np.random.RandomState(1)
        self.X = rng.randn(5, 5)
        self.T = rng.randn(5, 5)
        bias = 0.5 * rng.randn(5)
        self.start = {"W": 0.5 * rng.randn(5, 5), "b": bias.reshape(1, 5) if row_bias else bias}
        super().__init__(dtype)

    def initial_params(self) -> dict[str, np.ndarray]:
        return self.start

    def forward_backward(self, params, backward):
        X, T = self.data(self.X), self.data(self.T)
        out, cache = self.affine_forward(X, params["W"], params["b"])
        num_examples = X.shape[0]
        loss = 0.5 * np.sum((out - T) ** 2) / num_examples
        if not backward:
            return loss, None
        dout = (out - T) / num_examples
        _, dW, db = self.affine_backward(dout, cache)
        return loss, {"dW": dW, "db": db}
