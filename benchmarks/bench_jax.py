"""The JAX adapter against the PyTorch adapter: the same float64 tanh MLP, the same data.

Full checks of MLPs of 5,034 and 48,074 parameters (batch 8, mean cross-entropy), the
weights and data identical in both frameworks. JAX evaluates the perturbed losses through
one compiled program for the leaves of a model (see nbgradcheck/adapters/jax_carry.py),
compiled at the first check of a model and reused by the next checks of the same model;
the first figure includes tracing and compiling (JAX itself is warmed up on another model
first; no persistent compilation cache), the second is the best of later checks. Goal:
JAX ≤ 1.5 × torch at 50k parameters, for the first check too.

CPU time (time.process_time), one thread in both (torch.set_num_threads(1); XLA without
its multi-threaded Eigen pool). Same verdict asserted, numeric gradients equal to 1e-6.

Run: python benchmarks/bench_jax.py           (about 1 minute)
     python benchmarks/bench_jax.py --quick   (5k only)
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

from timing import best_time, load, one_thread

one_thread()
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import nbgradcheck as ng  # noqa: E402

jax.config.update("jax_enable_x64", True)
REPEATS = 3


def weights(sizes: tuple[int, ...], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (
            rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in),
            0.1 * rng.standard_normal(fan_out),
        )
        for fan_in, fan_out in itertools.pairwise(sizes)
    ]


def torch_problem(layers, x: np.ndarray, y: np.ndarray):
    modules: list[nn.Module] = []
    for weight, bias in layers:
        linear = nn.Linear(weight.shape[1], weight.shape[0]).double()
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight))
            linear.bias.copy_(torch.from_numpy(bias))
        modules += [linear, nn.Tanh()]
    model = nn.Sequential(*modules[:-1])
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    return model, lambda: nn.functional.cross_entropy(model(inputs), labels)


def jax_problem(layers, x: np.ndarray, y: np.ndarray):
    params = [{"w": jnp.asarray(w.T), "b": jnp.asarray(b)} for w, b in layers]
    inputs, labels = jnp.asarray(x), jnp.asarray(y)

    def loss(p):
        h = inputs
        for i, layer in enumerate(p):
            h = h @ layer["w"] + layer["b"]
            if i < len(p) - 1:
                h = jnp.tanh(h)
        log_p = jax.nn.log_softmax(h)
        return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=1))

    return params, loss


def full_check(loss, params):
    return ng.check(loss, params, mode="full", eps=1e-6, progress=False)


def row(sizes: tuple[int, ...]) -> None:
    layers = weights(sizes)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((8, sizes[0])), rng.integers(0, sizes[-1], 8)
    model, closure = torch_problem(layers, x, y)
    params, loss = jax_problem(layers, x, y)
    count = sum(w.size + b.size for w, b in layers)
    first_s, first = best_time(lambda: full_check(loss, params), 1)
    jax_s, jax_result = best_time(lambda: full_check(loss, params), REPEATS)
    torch_s, torch_result = best_time(lambda: full_check(closure, model), REPEATS)
    assert first.passed and jax_result.passed and torch_result.passed
    for k in range(len(layers)):  # the same numbers, layer by layer
        np.testing.assert_allclose(
            np.ravel(jax_result.numeric[f"{k}.w"]),
            np.ravel(torch_result.numeric[f"{2 * k}.weight"].T),
            rtol=1e-6,
            atol=1e-9,
        )
    print(
        f"MLP {'-'.join(map(str, sizes))} ({count:,} parameters): torch {torch_s:.3f} s | "
        f"JAX first check {first_s:.2f} s (tracing + compiling), later {jax_s:.3f} s → "
        f"JAX/torch {first_s / torch_s:.2f} (first), {jax_s / torch_s:.2f} (later) | {load()}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5k only")
    quick = parser.parse_args().quick
    torch.set_num_threads(1)
    started = time.perf_counter()
    print(f"jax {jax.__version__}, torch {torch.__version__}, CPU time, one thread")
    row((6, 5, 3))  # warms JAX and torch up (tracing machinery, first compile)
    row((40, 64, 32, 10))
    if not quick:
        row((120, 256, 64, 10))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
