"""nbgradcheck.check against the course-style per-coordinate loop, in the same process.

The baseline is the loop students copy from the classic exercise: flatten θ into one
vector, and for every coordinate copy the vector, perturb it, rebuild the parameter
dict from it and evaluate (O(n) extra work per coordinate). The second figure is the
check's overhead over the bare 2n loss evaluations it cannot avoid.

Times are the best CPU time (time.process_time) of 3 runs of each.

Run: python benchmarks/bench_engine.py            (about 1 minute)
     python benchmarks/bench_engine.py --quick    (smaller, for a smoke test)
"""

from __future__ import annotations

import argparse
import os
import time

# One BLAS thread: CPU time then measures this process's work only (idle BLAS threads
# spin and would inflate it), and both sides of every comparison run alike.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402

import nbgradcheck as ng  # noqa: E402
from nbgradcheck.demo import course_network, forward  # noqa: E402

SIZES = {  # ~parameters: (layer dims, examples m)
    "1e3": ((20, 30, 10, 1), 8),
    "1e4": ((64, 100, 32, 1), 8),
    "1e5": ((256, 300, 64, 1), 8),
}


def dictionary_to_vector(parameters: dict) -> tuple[np.ndarray, list]:
    keys = list(parameters)
    vector = np.concatenate([parameters[k].reshape(-1, 1) for k in keys])
    return vector, [(k, parameters[k].shape) for k in keys]


def vector_to_dictionary(theta: np.ndarray, layout: list) -> dict:
    parameters, start = {}, 0
    for key, shape in layout:
        size = int(np.prod(shape))
        parameters[key] = theta[start : start + size].reshape(shape)
        start += size
    return parameters


def naive_gradient_check(X, Y, parameters, coordinates, epsilon=1e-6) -> np.ndarray:
    """The course loop: copy θ, perturb one coordinate, rebuild the dict, evaluate."""
    values, layout = dictionary_to_vector(parameters)
    approx = np.zeros(len(coordinates))
    for j, i in enumerate(coordinates):
        theta_plus = np.copy(values)
        theta_plus[i][0] += epsilon
        j_plus, _ = forward(X, Y, vector_to_dictionary(theta_plus, layout))
        theta_minus = np.copy(values)
        theta_minus[i][0] -= epsilon
        j_minus, _ = forward(X, Y, vector_to_dictionary(theta_minus, layout))
        approx[j] = (j_plus - j_minus) / (2 * epsilon)
    return approx


def bare_evaluations(net, count: int) -> None:
    for _ in range(count):
        net.loss(net.parameters)


REPEATS = 3


def timed(function, *args, **kwargs) -> tuple[float, object]:
    """Best CPU time of REPEATS runs (robust to other processes sharing the cores)."""
    best, value = float("inf"), None
    for _ in range(REPEATS):
        started = time.process_time()
        value = function(*args, **kwargs)
        best = min(best, time.process_time() - started)
    return best, value


def compare(label: str, dims: tuple, m: int, max_coordinates: int | None) -> None:
    net = course_network(dims, m=m)
    n = net.n_parameters
    sample = None
    if max_coordinates and n > max_coordinates:
        sample = max_coordinates // (len(dims) - 1) // 2
    kwargs = {"mode": "sample", "sample": sample, "seed": 0} if sample else {"mode": "full"}
    check_seconds, result = timed(
        ng.check, net.loss, net.parameters, net.gradients, progress=False, **kwargs
    )
    checked = result.n_checked
    offsets = np.cumsum([0] + [t.size for t in result.tensors[:-1]])
    coordinates = np.concatenate([o + t.indices for o, t in zip(offsets, result.tensors)])
    naive_seconds, approx = timed(naive_gradient_check, net.X, net.Y, net.parameters, coordinates)
    numeric = np.concatenate([t.numeric for t in result.tensors])
    assert np.allclose(approx, numeric, rtol=1e-6, atol=1e-9), "baseline disagrees"
    bare_seconds, _ = timed(bare_evaluations, net, result.n_evaluations)
    scope = "all" if checked == n else f"{checked} sampled"
    print(
        f"{label:>4} | {n:>7,} params | {scope:>12} coords | check {check_seconds:7.2f} s | "
        f"course loop {naive_seconds:7.2f} s | speed-up {naive_seconds / check_seconds:5.2f}x"
        f" | overhead over bare evals {100 * (check_seconds / bare_seconds - 1):+5.1f} %"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument(
        "--max-coordinates",
        type=int,
        default=6000,
        help="above this many parameters, time a stratified sample",
    )
    args = parser.parse_args()
    sizes = {"1e3": SIZES["1e3"]} if args.quick else SIZES
    print(
        "nbgradcheck.check vs the course per-coordinate loop (same coordinates, same "
        "process; central differences, eps=1e-6)"
    )
    for label, (dims, m) in sizes.items():
        compare(label, dims, m, args.max_coordinates)


if __name__ == "__main__":
    main()
