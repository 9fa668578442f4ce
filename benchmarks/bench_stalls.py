"""find_stalls on 1,000,000 training steps, against a plain ReduceLROnPlateau loop.

The run: 1000 epochs of 1000 minibatch steps, with two plateaus and sudden drops, and 20%
multiplicative minibatch noise. find_stalls is timed with epochs (per-epoch aggregation)
and without (the steps are binned). The baseline, computed in the same process, is the
loop of PyTorch's ``ReduceLROnPlateau`` (``rel`` mode, threshold 1e-4, patience 10) in
pure Python over the same per-step losses: the rule most training scripts apply, which
only says *when* a plateau was hit, not where stalls were, whether they ended or why.

Times are the best wall-clock time (time.perf_counter) of 5 runs of each.

Run: python benchmarks/bench_stalls.py
"""

from __future__ import annotations

import os
import time

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402

from nbgradcheck.training.stalls import find_stalls  # noqa: E402

STEPS = 1_000_000
STEPS_PER_EPOCH = 1000
REPEATS = 5


def synthetic_run(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-step losses: plateau, drop, plateau, drop, converged floor; and their epochs."""
    rng = np.random.default_rng(seed)
    epoch = np.arange(STEPS) // STEPS_PER_EPOCH
    t = np.arange(STEPS) / STEPS_PER_EPOCH
    drop1 = 1 / (1 + np.exp(-(t - 200) / 8))
    drop2 = 1 / (1 + np.exp(-(t - 600) / 15))
    level = 5.0 - 4.4 * drop1 - 0.55 * drop2
    return level * np.exp(0.2 * rng.standard_normal(STEPS)), epoch


def reduce_lr_on_plateau_loop(
    losses: list[float], threshold: float = 1e-4, patience: int = 10
) -> list[int]:
    """Steps at which ReduceLROnPlateau (mode='min', threshold_mode='rel') would fire."""
    best = float("inf")
    bad_steps = 0
    fired = []
    for step, loss in enumerate(losses):
        if loss < best * (1 - threshold):
            best = loss
            bad_steps = 0
        else:
            bad_steps += 1
        if bad_steps > patience:
            fired.append(step)
            bad_steps = 0
    return fired


def best_time(function, *args, **kwargs) -> tuple[float, object]:
    times, result = [], None
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    losses, epochs = synthetic_run()
    with_epochs, table = best_time(find_stalls, losses, epochs=epochs)
    without_epochs, _ = best_time(find_stalls, losses)
    baseline, fired = best_time(reduce_lr_on_plateau_loop, losses.tolist())
    print(f"find_stalls on {STEPS:,} steps")
    print(f"  with epochs (per-epoch means)   {with_epochs * 1e3:8.1f} ms")
    print(f"  steps only (binned)             {without_epochs * 1e3:8.1f} ms")
    print(f"ReduceLROnPlateau loop (Python)   {baseline * 1e3:8.1f} ms   ({len(fired)} firings)")
    print(f"ratio loop / find_stalls (epochs) {baseline / with_epochs:8.1f} x")
    print(
        f"stalls found: {list(zip(table['start'], table['end'], strict=True))}, "
        f"verdict {table.attrs['verdict']} from epoch {table.attrs['converged_from']}"
    )


if __name__ == "__main__":
    main()
