"""A two-layer network with dropout after the ReLU (the original form: units dropped while
training, activations scaled at test time). The mask is drawn from NumPy's global RNG
inside the loss, so the loss is random unless the RNG is re-seeded before every
evaluation (``check(..., seed=0)``)."""

from __future__ import annotations

import numpy as np

from .relu import PRE_ACTIVATIONS, TwoLayerNet

KEEP = 0.85
SEED = 0  # the seed the corpus checks this model with


def dropout_mask(seed: int = SEED, shape: tuple[int, int] = (4, 5)) -> np.ndarray:
    """The keep mask (True: kept) the loss draws right after ``np.random.seed(seed)``."""
    return np.random.RandomState(seed).rand(*shape) < KEEP


class DropoutNet(TwoLayerNet):
    """X (4, 3) → W1 (3, 5), b1 (5,) → ReLU → dropout (keep 0.85) → W2 (5, 3), b2 (3,) →
    softmax loss. Every pre-activation is positive (no unit is off), so the mask alone
    decides which hidden values are zeroed: with seed 0, units 2, 3 and 4 of some
    examples."""

    name = "dropout"

    def __init__(self, dtype=np.float64) -> None:
        super().__init__(dtype, pre_activations=np.abs(PRE_ACTIVATIONS))

    def forward_backward(self, params, backward):
        X = self.data(self.X)
        a1, affine1 = self.affine_forward(X, params["W1"], params["b1"])
        h1, relu1 = self.relu_forward(a1)
        d1, drop1 = self.dropout_forward(h1, KEEP)
        scores, affine2 = self.affine_forward(d1, params["W2"], params["b2"])
        loss, dscores = self.softmax_loss(scores, self.y)
        if not backward:
            return loss, None
        dd1, dW2, db2 = self.affine_backward(dscores, affine2)
        dh1 = self.dropout_backward(dd1, drop1)
        da1 = self.relu_backward(dh1, relu1)
        _, dW1, db1 = self.affine_backward(da1, affine1)
        return loss, {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}
