"""nbgradcheck.check (NumPy) against the in-place loop an expert writes, in one process.

The baseline is the least work a full central-difference check can do: for every element
of every array, set it in place to θ+ε, evaluate, to θ−ε, evaluate, restore it, and
compare the numeric gradient with the analytic one (relative difference per array).
nbgradcheck's full check makes the same 2n evaluations of the same loss, plus its own
bookkeeping: exact points and steps in the dtype, round-off floors, kink detection,
refinement of failing elements, the parameters restored bit for bit, the result. The
figure is the ratio of the two (goal ≤ 1.3); the numeric gradients are asserted equal
(to rounding) and the verdicts the same.

Networks: the course's LINEAR→RELU→…→SIGMOID network (nbgradcheck.demo) of about 1e3,
1e4 and 1e5 parameters, 8 examples, full checks. Times are the best CPU time
(time.process_time) of 3 interleaved runs.

Run: python benchmarks/bench_engine.py            (about 1.5 minutes)
     python benchmarks/bench_engine.py --quick    (1e3 and 1e4 only)
"""

from __future__ import annotations

import argparse
import time

from timing import interleaved, load, one_thread

one_thread()

import numpy as np  # noqa: E402

import nbgradcheck as ng  # noqa: E402
from nbgradcheck.demo import course_network  # noqa: E402

SIZES = {  # ~parameters: layer dims (8 examples)
    "1e3": (20, 30, 10, 1),
    "1e4": (64, 100, 32, 1),
    "1e5": (256, 300, 64, 1),
}
EPS = 1e-6
TOL = 1e-5
REPEATS = 3


def in_place_loop(loss, params: dict, eps: float) -> dict[str, np.ndarray]:
    """Two-sided differences, each element perturbed in place and restored."""
    numeric = {}
    for name, array in params.items():
        flat = array.reshape(-1)  # a view: the arrays are contiguous
        out = np.empty(flat.size)
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + eps
            j_plus = loss(params)
            flat[i] = saved - eps
            j_minus = loss(params)
            flat[i] = saved
            out[i] = (j_plus - j_minus) / (2 * eps)
        numeric[name] = out.reshape(array.shape)
    return numeric


def relative_difference(numeric: np.ndarray, analytic: np.ndarray) -> float:
    scale = np.linalg.norm(numeric) + np.linalg.norm(analytic)
    return float(np.linalg.norm(numeric - analytic) / scale) if scale else 0.0


def compare(label: str, dims: tuple[int, ...]) -> None:
    net = course_network(dims, m=8)
    grads = net.gradients(net.parameters)
    times, values = interleaved(
        {
            "check": lambda: ng.check(
                net.loss, net.parameters, grads, mode="full", eps=EPS, progress=False
            ),
            "loop": lambda: in_place_loop(net.loss, net.parameters, EPS),
        },
        REPEATS,
    )
    result, numeric = values["check"], values["loop"]
    analytic = {k: grads["d" + k] for k in net.parameters}
    loop_passes = all(relative_difference(numeric[k], analytic[k]) <= TOL for k in net.parameters)
    assert result.passed == loop_passes, (result.verdict, loop_passes)
    for name in net.parameters:
        np.testing.assert_allclose(
            np.ravel(result.numeric[name]), numeric[name].reshape(-1), rtol=1e-6, atol=1e-9
        )
    ratio = times["check"] / times["loop"]
    print(
        f"{label:>4} | {net.n_parameters:>7,} parameters | {result.n_evaluations:>8,} "
        f"evaluations | check {times['check']:7.2f} s ({result.verdict}) | in-place loop "
        f"{times['loop']:7.2f} s | check/loop {ratio:5.2f} | {load()}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1e3 and 1e4 only")
    quick = parser.parse_args().quick
    started = time.perf_counter()
    print(
        f"nbgradcheck.check vs the in-place two-sided loop (same loss, same process, eps={EPS},"
        f" full checks, best of {REPEATS})"
    )
    for label, dims in SIZES.items():
        if not (quick and label == "1e5"):
            compare(label, dims)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
