"""The corpus: every model unmodified, then one planted bug at a time, each with what a
gradient check should report about it.

A bug is one or more source edits (method, old text, new text; see :func:`base.plant`)
plus its expectations: the tensors that must fail, the wrong elements where the model was
built so that they are known, and the diagnosis (kind, factor or L2 coefficient, words
the report must contain).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from itertools import product

import numpy as np

from . import autograd, dropout, relu
from .affine import AffineRegression
from .autograd import AutogradMLP
from .base import Model, plant
from .batchnorm import BatchNormNet
from .conv import ConvNet
from .dropout import DropoutNet
from .mlp import EXAMPLES, TwoLayerL2Net
from .relu import TwoLayerNet
from .rnn import CharRNN
from .softmax import SoftmaxClassifier

MODELS: dict[str, Callable[..., Model]] = {
    "softmax": SoftmaxClassifier,
    "affine": AffineRegression,
    "affine_row_bias": partial(AffineRegression, row_bias=True),
    "relu": TwoLayerNet,
    "relu_blank": partial(TwoLayerNet, blank=True),
    "batchnorm": BatchNormNet,
    "conv": ConvNet,
    "conv_zero_bias": partial(ConvNet, zero_bias=True),
    "conv_faint": partial(ConvNet, zero_bias=True, faint=1e-3),
    "rnn": CharRNN,
    "mlp": TwoLayerL2Net,
    "mlp_l2": partial(TwoLayerL2Net, lambd=0.7),
    "dropout": DropoutNet,
    "autograd": AutogradMLP,
}
# Models whose loss draws random numbers: checked with this seed.
SEEDS = {"dropout": dropout.SEED}

Elements = dict[str, tuple[tuple[int, ...], ...]]


@dataclass(frozen=True)
class Expectation:
    """What the check should report. ``kinds`` (accepted diagnosis kinds of each failing
    tensor; empty: any kind that names a bug), ``overall`` (accepted kinds of the
    whole-check diagnosis, where one cause behind several tensors must be named as one),
    ``factor`` (analytic ≈ factor × numeric), ``l2`` (the missing coefficient κ = λ/m),
    ``words`` (regular expressions, matched case-insensitively against the whole
    report)."""

    failing: tuple[str, ...] = ()
    elements: Elements | None = None
    kinds: tuple[str, ...] = ()
    overall: tuple[str, ...] = ()
    factor: float | None = None
    l2: float | None = None
    words: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    """A model, unmodified (``category`` 'correct') or with one planted bug."""

    name: str
    model: str
    category: str
    description: str
    edits: tuple[tuple[str, str, str], ...] = ()
    expect: Expectation = field(default_factory=Expectation)

    @property
    def is_bug(self) -> bool:
        return bool(self.edits)

    @property
    def seed(self) -> int | None:
        return SEEDS.get(self.model)

    def build(self, dtype: str | np.dtype = "float64") -> Model:
        """A fresh model instance with this case's bug planted, in ``dtype``."""
        model = MODELS[self.model](dtype=np.dtype(dtype))
        for edit in self.edits:
            plant(model, *edit)
        return model


def columns(shape_rows: int, units: list[int]) -> tuple[tuple[int, ...], ...]:
    """Every element of the given columns of a (shape_rows, ·) matrix."""
    return tuple((row, unit) for unit in units for row in range(shape_rows))


def rows(shape_columns: int, units: list[int]) -> tuple[tuple[int, ...], ...]:
    """Every element of the given rows of a (·, shape_columns) matrix."""
    return tuple((unit, column) for unit in units for column in range(shape_columns))


def dead_unit_elements(weights: str, units: list[int], by_rows: bool, inputs: int) -> Elements:
    """The weights and biases of hidden units whose gradient a wrong mask changes."""
    matrix = rows(inputs, units) if by_rows else columns(inputs, units)
    return {weights: matrix, "b1": tuple((unit,) for unit in units)}


def dropped_units() -> list[int]:
    """Units dropped for at least one example by the seeded dropout mask."""
    return sorted({int(u) for u in np.nonzero(~dropout.dropout_mask())[1]})


SCALE = ("scale",)
SIGN = ("sign",)
MASK = ("partial", "mask")
AXIS = ("axis", "wrong_axis")
# A bug of no simple kind: the diagnosis must not claim one (a factor, a transpose, ...).
NO_PATTERN = ("none_found", "partial")

CORRECT = [
    Case("softmax", "softmax", "correct", "softmax classifier, cross-entropy loss"),
    Case("affine", "affine", "correct", "affine layer, squared error"),
    Case(
        "affine_row_bias",
        "affine_row_bias",
        "correct",
        "bias stored as (1, 5), gradient returned as (5,): accepted, with a note",
        expect=Expectation(words=(r"\(1, 5\)", r"\(5,\)")),
    ),
    Case("relu", "relu", "correct", "two-layer ReLU net, two units off for one example each"),
    Case(
        "relu_blank",
        "relu_blank",
        "correct",
        "zero bias and a blank example: every b1 element sits on a ReLU kink",
    ),
    Case(
        "batchnorm",
        "batchnorm",
        "correct",
        "b1 feeds a batchnorm: its true gradient is exactly zero",
        expect=Expectation(words=(r"b1\b[^\n]*does not depend",)),
    ),
    Case("conv", "conv", "correct", "naive conv - ReLU - max pool, tied pooling windows"),
    Case(
        "conv_zero_bias",
        "conv_zero_bias",
        "correct",
        "zero conv bias: the blank corner sits on ReLU kinks",
    ),
    Case(
        "conv_faint",
        "conv_faint",
        "correct",
        "zero conv bias, faint corner: a float32 step on b crosses 16 kinks at 16 points",
    ),
    Case("rnn", "rnn", "correct", "vanilla RNN, four steps of backpropagation through time"),
    Case("mlp", "mlp", "correct", "two-layer net, examples in columns"),
    Case("mlp_l2", "mlp_l2", "correct", "two-layer net with L2 regularization (λ = 0.7)"),
    Case("dropout", "dropout", "correct", "dropout drawn inside the loss, checked with seed=0"),
    Case("autograd", "autograd", "correct", "scalar autograd engine, MLP with ReLU and tanh"),
]

BUGS = [
    Case(
        "softmax.no_1_over_m",
        "softmax",
        "missing 1/m",
        "dscores not divided by the number of examples (5): W and b both ×5",
        (("softmax_loss", "dscores = (probs - onehot) / num_train", "dscores = probs - onehot"),),
        Expectation(failing=("W", "b"), kinds=SCALE, overall=SCALE, factor=5.0, words=("1/m",)),
    ),
    Case(
        "softmax.sign",
        "softmax",
        "sign",
        "dscores = onehot − probs: W and b both have the wrong sign",
        (("softmax_loss", "(probs - onehot)", "(onehot - probs)"),),
        Expectation(failing=("W", "b"), kinds=SIGN, overall=SIGN, factor=-1.0, words=("sign",)),
    ),
    Case(
        "affine.transpose",
        "affine",
        "transpose",
        "dw = doutᵀ·x: the square weight's gradient transposed",
        (
            (
                "affine_backward",
                "dw = x.reshape(x.shape[0], -1).T @ dout",
                "dw = dout.T @ x.reshape(x.shape[0], -1)",
            ),
        ),
        Expectation(failing=("W",), kinds=("transpose",), factor=1.0, words=("transpose",)),
    ),
    Case(
        "affine.wrong_axis",
        "affine",
        "wrong axis",
        "db = dout.sum(axis=1) instead of axis=0 (same shape: 5 examples, 5 outputs)",
        (("affine_backward", "db = dout.sum(axis=0)", "db = dout.sum(axis=1)"),),
        Expectation(failing=("b",), kinds=AXIS, words=("axis",)),
    ),
    Case(
        "affine.half",
        "affine",
        "factor",
        "dout = 0.5·(out − T)/N: the ½ of the loss applied twice, W and b both ×0.5",
        (
            (
                "forward_backward",
                "dout = (out - T) / num_examples",
                "dout = 0.5 * (out - T) / num_examples",
            ),
        ),
        Expectation(failing=("W", "b"), kinds=SCALE, overall=SCALE, factor=0.5),
    ),
    Case(
        "relu.mask_ge",
        "relu",
        "wrong mask",
        "ReLU backward mask out >= 0 for out > 0: wrong exactly where the output is an exact "
        "zero (unit 2 of example 1, unit 4 of example 3)",
        (("relu_backward", "(out > 0)", "(out >= 0)"),),
        Expectation(
            failing=("W1", "b1"),
            elements=dead_unit_elements("W1", [u for _, u in relu.DEAD_UNITS], False, 3),
            kinds=MASK,
            overall=MASK,
            words=("mask",),
        ),
    ),
    Case(
        "batchnorm.dbeta_axis",
        "batchnorm",
        "wrong axis",
        "dbeta = dout.sum(axis=1) instead of axis=0 (5 examples, 5 units)",
        (("batchnorm_backward", "dbeta = dout.sum(axis=0)", "dbeta = dout.sum(axis=1)"),),
        Expectation(failing=("beta",), kinds=AXIS, words=("axis",)),
    ),
    Case(
        "batchnorm.no_variance_path",
        "batchnorm",
        "other",
        "batchnorm backward without the path through the batch variance: W1 wrong, b1 "
        "still exactly zero",
        (("batchnorm_backward", " - xhat * (dxhat * xhat).mean(axis=0)", ""),),
        Expectation(failing=("W1",), kinds=NO_PATTERN),
    ),
    Case(
        "conv.pool_ties",
        "conv",
        "wrong mask",
        "max-pool backward sends the gradient to every maximum of a tied window (the blank "
        "corner's four equal values): b 4× too much there",
        (
            (
                "max_pool_backward",
                "mask = np.arange(size * size) == windows.argmax(axis=-1)[..., None]",
                "mask = windows == windows.max(axis=-1, keepdims=True)",
            ),
        ),
        Expectation(failing=("b",), elements={"b": ((0,), (1,))}, kinds=(*MASK, "none_found")),
    ),
    Case(
        "rnn.dWhh_transpose",
        "rnn",
        "transpose",
        "dWhh += h_{t−1}·dhrawᵀ: the recurrent weight's gradient transposed",
        (("backward", "dWhh += dhraw @ hs[t - 1].T", "dWhh += hs[t - 1] @ dhraw.T"),),
        Expectation(failing=("Whh",), kinds=("transpose",), factor=1.0, words=("transpose",)),
    ),
    Case(
        "rnn.no_bptt",
        "rnn",
        "other",
        "dhnext never added: no backpropagation through time",
        (("backward", "dh = Why.T @ dy + dhnext", "dh = Why.T @ dy"),),
        Expectation(failing=("Wxh", "Whh", "bh"), kinds=NO_PATTERN),
    ),
    Case(
        "mlp.dW2_times_2",
        "mlp",
        "factor",
        "dW2 = 2/m·dZ2·A1ᵀ (the gradient-checking exercise's planted ×2)",
        (("backward", "dW2 = 1.0 / m * (dZ2 @ A1.T)", "dW2 = 2.0 / m * (dZ2 @ A1.T)"),),
        Expectation(failing=("W2",), kinds=SCALE, factor=2.0),
    ),
    Case(
        "mlp.db2_times_2",
        "mlp",
        "factor",
        "db2 = 2/m·Σ dZ2: a one-element tensor (b2 is (1, 1)) off by 2",
        (("backward", "db2 = 1.0 / m * np.sum(dZ2", "db2 = 2.0 / m * np.sum(dZ2"),),
        Expectation(failing=("b2",), kinds=SCALE, factor=2.0),
    ),
    Case(
        "mlp.db1_no_1_over_m",
        "mlp",
        "missing 1/m",
        f"db1 = Σ dZ1 without 1/m (m = {EXAMPLES}): b1 ×{EXAMPLES}",
        (("backward", "db1 = 1.0 / m * np.sum(dZ1", "db1 = np.sum(dZ1"),),
        Expectation(failing=("b1",), kinds=SCALE, factor=float(EXAMPLES), words=("1/m",)),
    ),
    Case(
        "mlp.dZ1_times_4",
        "mlp",
        "shared upstream",
        "dZ1 ×4: W1 and b1 both off by 4, the error is in the gradient flowing into layer 1",
        (("backward", "dZ1 = dA1 * (A1 > 0)", "dZ1 = 4 * dA1 * (A1 > 0)"),),
        Expectation(
            failing=("W1", "b1"),
            kinds=SCALE,
            overall=SCALE,
            factor=4.0,
            words=("dZ1", r"layer 1\b"),
        ),
    ),
    Case(
        "mlp_l2.no_l2_W1",
        "mlp_l2",
        "missing L2",
        "dW1 without the λ/m·W1 term",
        (("backward", " + lambd / m * W1", ""),),
        Expectation(failing=("W1",), kinds=("missing_l2",), l2=0.7 / EXAMPLES, words=("L2",)),
    ),
    Case(
        "mlp_l2.no_l2",
        "mlp_l2",
        "missing L2",
        "no λ/m·W term in any weight gradient (the cost has the penalty)",
        (("backward", " + lambd / m * W1", ""), ("backward", " + lambd / m * W2", "")),
        Expectation(
            failing=("W1", "W2"),
            kinds=("missing_l2",),
            overall=("missing_l2",),
            l2=0.7 / EXAMPLES,
            words=("L2",),
        ),
    ),
    Case(
        "dropout.mask_backward",
        "dropout",
        "wrong mask",
        "dropout backward returns dout unmasked: wrong for the units dropped (seed 0: units "
        f"{', '.join(map(str, dropped_units()))})",
        (("dropout_backward", "return dout * mask", "return dout"),),
        Expectation(
            failing=("W1", "b1"),
            elements=dead_unit_elements("W1", dropped_units(), False, 3),
            kinds=MASK,
            overall=MASK,
            words=("mask",),
        ),
    ),
    Case(
        "autograd.relu_ge",
        "autograd",
        "wrong mask",
        "Value.relu backward passes the gradient where out.data >= 0: wrong for the units "
        "that are off (unit 1 of example 0, unit 3 of example 2)",
        (("Value.relu", "(out.data > 0)", "(out.data >= 0)"),),
        Expectation(
            failing=("W1", "b1"),
            elements=dead_unit_elements("W1", [u for _, u in autograd.DEAD_UNITS], True, 2),
            kinds=MASK,
            overall=MASK,
            words=("mask",),
        ),
    ),
    Case(
        "autograd.grad_overwritten",
        "autograd",
        "other",
        "Value.__mul__ backward assigns self.grad instead of accumulating it: a weight used "
        "by several examples keeps one example's gradient",
        (("Value.__mul__", "self.grad += other.data", "self.grad = other.data"),),
        Expectation(failing=("W1", "W2"), kinds=NO_PATTERN),
    ),
]

CASES = CORRECT + BUGS
MODES = ("full", "fast", "auto")
DTYPES = ("float64", "float32")


def case(name: str) -> Case:
    for candidate in CASES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no case {name!r}; cases: {', '.join(c.name for c in CASES)}")


def combinations(cases: list[Case] = CASES) -> list[tuple[str, str, Case]]:
    """(mode, dtype, case) for every check the corpus runs."""
    return [(mode, dtype, c) for mode, dtype, c in product(MODES, DTYPES, cases)]
