"""A corpus of hand-written backprop, correct and with planted bugs, to test verdicts.

Each model (softmax, affine, ReLU net, batchnorm, ConvNet, RNN, two-layer net with L2,
dropout, a scalar autograd engine) exposes ``params``, ``loss(params)``, ``grads(params)``
and ``float32()``. :data:`CASES` holds every model unmodified and with one planted bug at
a time; :func:`judge.judge` runs ``nbgradcheck.check`` on one and says what went wrong;
``python -m tests.corpus.run`` prints the table over every mode and dtype.
"""

from .base import Model, plant
from .cases import BUGS, CASES, CORRECT, DTYPES, MODELS, MODES, Case, Expectation, case

__all__ = [
    "BUGS",
    "CASES",
    "CORRECT",
    "DTYPES",
    "MODELS",
    "MODES",
    "Case",
    "Expectation",
    "Model",
    "case",
    "plant",
]
