"""A vanilla character-level RNN through time (tanh hidden state, softmax outputs), with
backpropagation through time written out as in the well-known minimal char-RNN."""

from __future__ import annotations

import numpy as np

from .base import Model

VOCABULARY, HIDDEN = 4, 5
INPUTS = [0, 1, 2, 3]
TARGETS = [1, 2, 3, 0]


class CharRNN(Model):
    """Wxh (5, 4), Whh (5, 5), Why (4, 5), bh (5, 1), by (4, 1); four time steps from a
    fixed non-zero initial hidden state; J = Σₜ −log pₜ[targetₜ]."""

    name = "rnn"

    def __init__(self, dtype=np.float64) -> None:
        rng = np.random.RandomState(4)
        self.hprev = 0.5 * rng.randn(HIDDEN, 1)
        self.start = {
            "Wxh": 0.6 * rng.randn(HIDDEN, VOCABULARY),
            "Whh": 0.6 * rng.randn(HIDDEN, HIDDEN),
            "Why": 0.6 * rng.randn(VOCABULARY, HIDDEN),
            "bh": 0.1 * rng.randn(HIDDEN, 1),
            "by": 0.1 * rng.randn(VOCABULARY, 1),
        }
        super().__init__(dtype)

    def initial_params(self) -> dict[str, np.ndarray]:
        return self.start

    def forward_backward(self, params, backward):
        Wxh, Whh, Why, bh, by = (params[k] for k in ("Wxh", "Whh", "Why", "bh", "by"))
        xs, hs, ps = {}, {-1: self.data(self.hprev)}, {}
        loss = 0.0
        for t, index in enumerate(INPUTS):
            xs[t] = np.zeros((VOCABULARY, 1), dtype=self.dtype)
            xs[t][index] = 1
            hs[t] = np.tanh(Wxh @ xs[t] + Whh @ hs[t - 1] + bh)
            ys = Why @ hs[t] + by
            ps[t] = np.exp(ys - ys.max()) / np.sum(np.exp(ys - ys.max()))
            loss += -np.log(ps[t][TARGETS[t], 0])
        if not backward:
            return loss, None
        return loss, self.backward(params, xs, hs, ps)

    def backward(self, params, xs, hs, ps):
        Whh, Why = params["Whh"], params["Why"]
        dWxh, dWhh, dWhy = (np.zeros_like(params[k]) for k in ("Wxh", "Whh", "Why"))
        dbh, dby = np.zeros_like(params["bh"]), np.zeros_like(params["by"])
        dhnext = np.zeros_like(hs[0])
        for t in reversed(range(len(INPUTS))):
            dy = ps[t].copy()
            dy[TARGETS[t]] -= 1
            dWhy += dy @ hs[t].T
            dby += dy
            dh = Why.T @ dy + dhnext
            dhraw = (1 - hs[t] * hs[t]) * dh
            dbh += dhraw
            dWxh += dhraw @ xs[t].T
            dWhh += dhraw @ hs[t - 1].T
            dhnext = Whh.T @ dhraw
        return {"dWxh": dWxh, "dWhh": dWhh, "dWhy": dWhy, "dbh": dbh, "dby": dby}
