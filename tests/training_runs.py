"""Small, seeded NumPy training runs with known plateaus, for the stall tests and benchmarks.

* :func:`deep_linear_run`: a two-weight-layer linear network trained from a small
  initialisation on whitened inputs (Saxe, McClelland & Ganguli, 2013). Each singular mode
  of the input-output map is learnt in a sudden drop at a time ~ ln(s/u0) / (2 s lr), so
  the loss shows stage-like plateaus. The run also records the strength of each mode, from
  which the plateaus are measured independently of the loss.
* :func:`xor_run`: a 2-2-1 sigmoid network on XOR, which sits near its symmetric saddle
  (all outputs ≈ 0.5) before it learns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TrainingRun:
    """Per-step records of a training run."""

    loss: np.ndarray
    epoch: np.ndarray
    grad_norm: np.ndarray
    grad_norms: dict[str, np.ndarray]
    extra: dict[str, np.ndarray] = field(default_factory=dict)


# ---------------------------------------------------------------------------- deep linear


@dataclass(frozen=True)
class DeepLinearTask:
    """Whitened inputs X (dim × samples, X Xᵀ / P = I) and targets Y = M X + noise."""

    x: np.ndarray
    y: np.ndarray
    left: np.ndarray  # singular vectors of M (columns)
    right: np.ndarray
    strengths: np.ndarray  # singular values of M


def deep_linear_task(
    strengths: tuple[float, ...] = (3.0, 1.0, 0.4),
    dim: int = 8,
    samples: int = 256,
    noise: float = 0.01,
    seed: int = 0,
) -> DeepLinearTask:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((samples, dim)))
    x = q.T * np.sqrt(samples)  # rows orthonormal: x @ x.T / samples == I
    left, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    right, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    s = np.zeros(dim)
    s[: len(strengths)] = strengths
    target_map = left @ np.diag(s) @ right.T
    y = target_map @ x + noise * rng.standard_normal((dim, samples))
    k = len(strengths)
    return DeepLinearTask(x, y, left[:, :k], right[:, :k], np.asarray(strengths, dtype=float))


def deep_linear_run(
    task: DeepLinearTask | None = None,
    *,
    hidden: int = 8,
    init_scale: float = 1e-4,
    lr: float = 0.02,
    epochs: int = 400,
    batch_size: int = 64,
    seed: int = 1,
) -> TrainingRun:
    """Minibatch SGD on ½‖Y − W2 W1 X‖² / P; records per step and the mode strengths
    ``aᵀ W2 W1 b`` per step in ``extra["modes"]`` (steps × modes)."""
    task = task or deep_linear_task()
    rng = np.random.default_rng(seed)
    dim, samples = task.x.shape
    w1 = init_scale * rng.standard_normal((hidden, dim))
    w2 = init_scale * rng.standard_normal((task.y.shape[0], hidden))
    losses, epoch_of, norms, norms_1, norms_2, modes = [], [], [], [], [], []
    for epoch in range(epochs):
        order = rng.permutation(samples)
        for start in range(0, samples, batch_size):
            batch = order[start : start + batch_size]
            x, y = task.x[:, batch], task.y[:, batch]
            hidden_act = w1 @ x
            error = w2 @ hidden_act - y
            losses.append(0.5 * np.sum(error**2) / batch.size)
            grad_2 = error @ hidden_act.T / batch.size
            grad_1 = w2.T @ error @ x.T / batch.size
            w1 -= lr * grad_1
            w2 -= lr * grad_2
            epoch_of.append(epoch)
            norms_1.append(np.linalg.norm(grad_1))
            norms_2.append(np.linalg.norm(grad_2))
            norms.append(np.hypot(norms_1[-1], norms_2[-1]))
            modes.append(np.einsum("ia,ij,ja->a", task.left, w2 @ w1, task.right))
    return TrainingRun(
        loss=np.asarray(losses),
        epoch=np.asarray(epoch_of),
        grad_norm=np.asarray(norms),
        grad_norms={"W1": np.asarray(norms_1), "W2": np.asarray(norms_2)},
        extra={"modes": np.asarray(modes), "strengths": task.strengths},
    )


def mode_plateaus(
    modes: np.ndarray,
    strengths: np.ndarray,
    epoch: np.ndarray,
    low: float = 0.02,
    high: float = 0.98,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Plateaus and drops measured from the mode strengths, not from the loss.

    An epoch belongs to a *drop* while some mode is between ``low`` and ``high`` of its
    final strength, and to a *plateau* otherwise (every mode either not yet started or
    learnt). Returns inclusive (first, last) epochs of the plateaus and of the drops; the
    final plateau (all modes learnt) is left out of the plateaus: it is convergence.
    """
    progress = modes / strengths
    per_epoch = np.array([progress[epoch == e].mean(axis=0) for e in np.unique(epoch)])
    learning = np.any((per_epoch > low) & (per_epoch < high), axis=1)
    learnt_all = np.all(per_epoch >= high, axis=1)
    plateaus = _runs(~learning & ~learnt_all)
    drops = _runs(learning)
    return plateaus, drops


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.r_[0, mask.astype(int), 0])
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


# ---------------------------------------------------------------------------- XOR


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def xor_run(
    *, epochs: int = 1200, lr: float = 4.0, init_scale: float = 0.5, seed: int = 3
) -> TrainingRun:
    """Full-batch gradient descent of a 2-2-1 sigmoid network on XOR (mean squared error).

    ``extra["outputs"]`` holds the four outputs before each step (epochs × 4).
    """
    rng = np.random.default_rng(seed)
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    y = np.array([0.0, 1.0, 1.0, 0.0])
    w1 = init_scale * rng.standard_normal((2, 2))
    b1 = np.zeros(2)
    w2 = init_scale * rng.standard_normal(2)
    b2 = 0.0
    losses, norms, outputs = [], {"W1": [], "b1": [], "W2": [], "b2": []}, []
    for _ in range(epochs):
        h = _sigmoid(x @ w1.T + b1)
        out = _sigmoid(h @ w2 + b2)
        losses.append(0.5 * np.mean((out - y) ** 2))
        outputs.append(out)
        d_out = (out - y) * out * (1 - out) / y.size
        grads = {
            "W2": h.T @ d_out,
            "b2": np.sum(d_out),
        }
        d_h = np.outer(d_out, w2) * h * (1 - h)
        grads["W1"] = d_h.T @ x
        grads["b1"] = d_h.sum(axis=0)
        for name, grad in grads.items():
            norms[name].append(np.linalg.norm(grad))
        w1 -= lr * grads["W1"]
        b1 -= lr * grads["b1"]
        w2 -= lr * grads["W2"]
        b2 -= lr * grads["b2"]
    per_tensor = {name: np.asarray(values) for name, values in norms.items()}
    total = np.sqrt(sum(values**2 for values in per_tensor.values()))
    return TrainingRun(
        loss=np.asarray(losses),
        epoch=np.arange(epochs),
        grad_norm=total,
        grad_norms=per_tensor,
        extra={"outputs": np.asarray(outputs)},
    )


def xor_saddle_epochs(outputs: np.ndarray, tolerance: float = 0.1) -> tuple[int, int]:
    """First and last epoch of the first stretch in which every output is within
    ``tolerance`` of 0.5: the network sits at its symmetric saddle."""
    near = np.all(np.abs(outputs - 0.5) < tolerance, axis=1)
    return _runs(near)[0]
