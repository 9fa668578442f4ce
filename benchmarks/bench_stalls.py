"""find_stalls on 1,000,000 training steps, against what an expert writes by hand.

The run: 1000 epochs of 1000 minibatch steps, with two plateaus and sudden drops, and 20%
multiplicative minibatch noise. The baselines, in the same process, aggregate per epoch
(``np.bincount``, or a pandas ``groupby``) and apply PyTorch's ``ReduceLROnPlateau`` rule
(``rel`` mode, threshold 1e-4, patience 10) to the epoch means: the plateaus are the runs
of epochs where the rule fires. They say *when* the loss was flat, not whether a stall
ended, how much it lost, or that the run converged; find_stalls says all of that.

Asserted: every stall find_stalls reports overlaps a plateau of the baseline, and the
baseline's last plateau runs to the end and starts within a few patience periods of the
epoch find_stalls says training converged from (the same verdict). Times are the best
wall-clock time of 7 interleaved runs.

Run: python benchmarks/bench_stalls.py      (a few seconds)
"""

from __future__ import annotations

import time

from timing import interleaved, load, one_thread

one_thread()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nbgradcheck.training.stalls import find_stalls  # noqa: E402

STEPS = 1_000_000
STEPS_PER_EPOCH = 1000
REPEATS = 7
PATIENCE = 10


def synthetic_run(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-step losses: plateau, drop, plateau, drop, converged floor; and their epochs."""
    rng = np.random.default_rng(seed)
    epoch = np.arange(STEPS) // STEPS_PER_EPOCH
    t = np.arange(STEPS) / STEPS_PER_EPOCH
    drop1 = 1 / (1 + np.exp(-(t - 200) / 8))
    drop2 = 1 / (1 + np.exp(-(t - 600) / 15))
    level = 5.0 - 4.4 * drop1 - 0.55 * drop2
    return level * np.exp(0.2 * rng.standard_normal(STEPS)), epoch


def plateau_epochs(means: np.ndarray, threshold: float = 1e-4) -> list[int]:
    """Epochs at which ReduceLROnPlateau (mode='min', threshold_mode='rel') would fire."""
    best, bad, fired = float("inf"), 0, []
    for epoch, loss in enumerate(means.tolist()):
        if loss < best * (1 - threshold):
            best, bad = loss, 0
        else:
            bad += 1
        if bad > PATIENCE:
            fired.append(epoch)
            bad = 0
    return fired


def plateaus(fired: list[int]) -> list[tuple[int, int]]:
    """Runs of firings (at most 2 patience periods apart) as (first flat epoch, last)."""
    spans: list[list[int]] = []
    for epoch in fired:
        if spans and epoch - spans[-1][1] <= 2 * (PATIENCE + 1):
            spans[-1][1] = epoch
        else:
            spans.append([epoch - PATIENCE, epoch])
    return [(max(0, a), b) for a, b in spans]


def with_bincount(losses: np.ndarray, epochs: np.ndarray) -> list[tuple[int, int]]:
    means = np.bincount(epochs, weights=losses) / np.bincount(epochs)
    return plateaus(plateau_epochs(means))


def with_groupby(losses: np.ndarray, epochs: np.ndarray) -> list[tuple[int, int]]:
    means = pd.Series(losses).groupby(epochs).mean().to_numpy()
    return plateaus(plateau_epochs(means))


def overlaps(span: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    return any(a <= span[1] and span[0] <= b for a, b in spans)


def main() -> None:
    started = time.perf_counter()
    losses, epochs = synthetic_run()
    times, values = interleaved(
        {
            "find_stalls": lambda: find_stalls(losses, epochs=epochs),
            "bincount": lambda: with_bincount(losses, epochs),
            "groupby": lambda: with_groupby(losses, epochs),
        },
        REPEATS,
        clock=time.perf_counter,
    )
    table, spans = values["find_stalls"], values["bincount"]
    assert values["groupby"] == spans
    stalls = [(int(a), int(b)) for a, b in zip(table["start"], table["end"], strict=True)]
    assert stalls and all(overlaps(stall, spans) for stall in stalls), (stalls, spans)
    converged, last = table.attrs["converged_from"], spans[-1]
    assert table.attrs["verdict"] == "converged" and last[1] >= epochs[-1] - 2 * (PATIENCE + 1)
    assert abs(last[0] - converged) <= 3 * (PATIENCE + 1), (converged, last)
    print(f"1,000,000 steps, 1000 epochs ({load()})")
    print(
        f"  find_stalls (epochs given)            {times['find_stalls'] * 1e3:7.1f} ms: "
        f"stalls {stalls}, verdict {table.attrs['verdict']} from epoch {converged}"
    )
    for name in ("bincount", "groupby"):
        print(
            f"  per-epoch {name:<8} + ReduceLROnPlateau {times[name] * 1e3:7.1f} ms: "
            f"plateaus {spans} → find_stalls/{name} {times['find_stalls'] / times[name]:.1f}"
        )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
