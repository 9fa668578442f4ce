"""A small ConvNet: naive convolution (stride, zero padding) - ReLU - 2×2 max pooling -
affine - softmax. The images have a blank (all-zero) top-left corner: there every
convolution output equals the filter's bias, so the top-left pooling window holds four
equal values (a tie that persists whatever the weights)."""

from __future__ import annotations

import numpy as np

from .layers import Layers

STRIDE, PAD, POOL = 1, 1, 2
FAINT_SEED = 254  # its noise keeps every corner output in 5.8e-4 … 3.5e-3


class ConvNet(Layers):
    """x (2, 2, 4, 4) → W (2, 2, 3, 3), b (2,) → ReLU → max pool 2×2 → W2 (8, 3), b2 (3,).

    ``zero_bias``: b starts at zero (a common initialization), so the blank corner's
    outputs are exact zeros, at the ReLU's kink: perturbing b crosses it.

    ``faint``: the corner is not quite blank but holds noise of this size (a scanned
    background), so with a zero bias its outputs are small and scattered around zero: a
    float32 step on b (about 5e-3) crosses many ReLU kinks, each at its own point, while a
    float64 step (1e-6) crosses none.
    """

    name = "conv"

    def __init__(self, dtype=np.float64, zero_bias: bool = False, faint: float = 0.0) -> None:
        rng = np.random.RandomState(2374)
        self.x = rng.randn(2, 2, 4, 4)
        self.x[:, :, :3, :3] = faint * np.random.RandomState(FAINT_SEED).randn(2, 2, 3, 3)
        self.kink_margin = 1e-4 if faint else self.kink_margin
        self.y = np.array([1, 2])
        bias = np.zeros(2) if zero_bias else np.array([0.3, 0.5])
        self.start = {
            "W": 0.4 * rng.randn(2, 2, 3, 3),
            "b": bias,
            "W2": 0.4 * rng.randn(8, 3),
            "b2": 0.1 * rng.randn(3),
        }
        super().__init__(dtype)

    def initial_params(self) -> dict[str, np.ndarray]:
        return self.start

    def forward_backward(self, params, backward):
        x = self.data(self.x)
        conv, conv_cache = self.conv_forward_naive(x, params["W"], params["b"], STRIDE, PAD)
        relu, relu_cache = self.relu_forward(conv)
        pooled, pool_cache = self.max_pool_forward(relu, POOL)
        scores, affine_cache = self.affine_forward(pooled, params["W2"], params["b2"])
        loss, dscores = self.softmax_loss(scores, self.y)
        if not backward:
            return loss, None
        dpooled, dW2, db2 = self.affine_backward(dscores, affine_cache)
        drelu = self.max_pool_backward(dpooled, pool_cache)
        dconv = self.relu_backward(drelu, relu_cache)
        _, dW, db = self.conv_backward_naive(dconv, conv_cache)
        return loss, {"W": dW, "b": db, "W2": dW2, "b2": db2}

    def kink_distances(self, params):
        conv, _ = self.conv_forward_naive(self.data(self.x), params["W"], params["b"], STRIDE, PAD)
        windows = self.max_pool_forward(np.maximum(conv, 0), POOL)[1][0]
        top_two = np.sort(windows, axis=-1)[..., -2:]
        return [conv, top_two[..., 1] - top_two[..., 0]]
