"""Fast mode on a 1,000,000-parameter model: localization cost, diagnosis, false alarms.

The model is a random quadratic with a coupling term and a mild non-linearity, spread
over four tensors (W1 400×1000, W2 1000×300, W3 300×600, b 120000):

    J(θ) = Σ ½·dᵢθᵢ² + cᵢθᵢ + α·cos θᵢ  +  ½·(w·θ)²

Its exact gradient is cheap (O(n) per evaluation, like the loss), so bugs can be planted
element by element. Figures printed:

1. one wrong element: fast mode finds it, and only it, in at most 2,000 evaluations
   (a full check needs 2,000,000), asserted; its total time against the time spent
   inside the loss (goal ≤ 3×), with this model's loss (about 20 ms an evaluation) and
   with a cheaper one (one pass over the parameters, about 1 ms: the check's own work
   shows, so the least disturbed of CHEAP_REPEATS runs is reported);
2. k = 1, 2, 4, 8, 16 wrong elements scattered in W1: evaluations against k·log2(n);
3. a whole tensor scaled by 2: flagged and diagnosed "scale 2.0" within 200 evaluations;
4. false alarms on correct models across many seeds: this model, and ReLU networks
   with hand-written backprop in float64 and float32 (kinks, round-off).

Run: python benchmarks/bench_localize.py            (about 3 minutes)
     python benchmarks/bench_localize.py --quick    (fewer seeds, for a smoke test)
"""

from __future__ import annotations

import argparse
import time

from timing import load, one_thread

one_thread()

import numpy as np  # noqa: E402

import nbgradcheck as ng  # noqa: E402
from nbgradcheck.demo import course_network  # noqa: E402

SHAPES = {"W1": (400, 1000), "W2": (1000, 300), "W3": (300, 600), "b": (120_000,)}
COSINE = 0.1
# Timed runs of each check with the 1 ms loss (about 1 s each; the shortest is shown).
CHEAP_REPEATS = 5


class QuadraticModel:
    """J = Σ ½dθ² + cθ + α·cos θ + ½(w·θ)² over several tensors, and its exact gradient."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], seed: int) -> None:
        rng = np.random.default_rng(seed)
        total = sum(int(np.prod(s)) for s in shapes.values())
        self.params = {n: rng.standard_normal(s) for n, s in shapes.items()}
        self.curvature = {n: rng.uniform(0.5, 2.0, s) for n, s in shapes.items()}
        self.linear = {n: rng.standard_normal(s) for n, s in shapes.items()}
        self.coupling = {n: rng.standard_normal(s) / np.sqrt(total) for n, s in shapes.items()}

    def loss(self, p: dict[str, np.ndarray]) -> float:
        total = 0.0
        for n, theta in p.items():
            total += float(np.sum((0.5 * self.curvature[n] * theta + self.linear[n]) * theta))
            total += COSINE * float(np.sum(np.cos(theta)))
        return total + 0.5 * self.shared(p) ** 2

    def gradients(self, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shared = self.shared(p)
        return {
            n: self.curvature[n] * theta
            + self.linear[n]
            - COSINE * np.sin(theta)
            + shared * self.coupling[n]
            for n, theta in p.items()
        }

    def cheap_loss(self, p: dict[str, np.ndarray]) -> float:
        """J = Σ ½dθ²: one pass over the parameters (about 1 ms for 1,000,000 of them),
        so fast mode's own work shows."""
        return sum(0.5 * float(np.einsum("i,i,i->", *self.flat(n, p))) for n in p)

    def flat(self, name: str, p: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        theta = p[name].reshape(-1)
        return self.curvature[name].reshape(-1), theta, theta

    def cheap_gradients(self, planted: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The gradient of cheap_loss with the same planted errors as ``planted``."""
        true = self.gradients(self.params)
        return {
            n: self.curvature[n] * theta + (planted[n] - true[n])
            for n, theta in self.params.items()
        }

    def shared(self, p: dict[str, np.ndarray]) -> float:
        return sum(float(np.sum(self.coupling[n] * theta)) for n, theta in p.items())

    @property
    def size(self) -> int:
        return sum(theta.size for theta in self.params.values())


def plant_wrong_elements(
    grads: dict[str, np.ndarray], name: str, count: int, rng: np.random.Generator
) -> set[tuple[int, ...]]:
    """Make ``count`` random elements of ``grads[name]`` wrong; returns their indices."""
    flat = grads[name].reshape(-1)
    chosen = rng.choice(flat.size, count, replace=False)
    flat[chosen] += 0.5 * (1 + np.abs(flat[chosen]))
    return {tuple(int(i) for i in np.unravel_index(k, grads[name].shape)) for k in chosen}


def found_elements(result: ng.GradCheckResult) -> dict[str, set[tuple[int, ...]]]:
    """The elements fast mode checked one by one and found wrong, per tensor."""
    found = {}
    for tensor in result.tensors:
        wrong = tensor.element_failing & ~tensor.kink
        found[tensor.name] = {tensor.multi_index(i) for i in tensor.indices[wrong]}
    return found


class TimedLoss:
    """The loss, with the time spent inside it added up."""

    def __init__(self, loss) -> None:
        self.loss, self.seconds = loss, 0.0

    def __call__(self, params: dict) -> float:
        started = time.perf_counter()
        try:
            return self.loss(params)
        finally:
            self.seconds += time.perf_counter() - started


def timed_check(
    model: QuadraticModel, grads: dict, seed: int, loss=None
) -> tuple[ng.GradCheckResult, float, float]:
    """(result, seconds in all, seconds inside the loss) of a fast-mode check."""
    timed = TimedLoss(loss or model.loss)
    started = time.perf_counter()
    result = ng.check(timed, model.params, grads, mode="fast", seed=seed, progress=False)
    return result, time.perf_counter() - started, timed.seconds


def one_wrong_element(model: QuadraticModel, trials: int) -> None:
    print(
        f"\n1. One wrong element in a {model.size:,}-parameter model "
        f"(a full check: {2 * model.size:,} evaluations; {load()})"
    )
    print(
        f"{'trial':>5} {'tensor':>6} {'element':>12} {'found exactly':>14} "
        f"{'evaluations':>12} {'seconds':>8} {'in loss':>8} {'total/loss':>10}  loss"
    )
    rng = np.random.default_rng(100)
    losses = {"model's": model.loss, "one dot": model.cheap_loss}
    for trial in range(trials):
        grads = model.gradients(model.params)
        name = list(SHAPES)[trial % len(SHAPES)]
        planted = plant_wrong_elements(grads, name, 1, rng)
        kind = list(losses)[trial % 2]
        if kind == "one dot":  # the same gradient: the same J up to a constant
            grads = model.cheap_gradients(grads)
        runs = [
            timed_check(model, grads, seed=trial, loss=losses[kind])
            for _ in range(CHEAP_REPEATS if kind == "one dot" else 1)
        ]
        result, seconds, in_loss = min(runs, key=lambda run: run[1])
        found = found_elements(result)
        exact = found[name] == planted and not any(found[n] for n in found if n != name)
        exact &= result.failing == [name]
        assert exact and result.n_evaluations <= 2000, (name, planted, result.failing)
        print(
            f"{trial:>5} {name:>6} {next(iter(planted))!s:>12} {exact!s:>14} "
            f"{result.n_evaluations:>12,} {seconds:>8.2f} {in_loss:>8.2f} "
            f"{seconds / in_loss:>10.2f}  {kind}"
        )


def k_wrong_elements(model: QuadraticModel, counts: list[int], trials: int) -> None:
    size = model.params["W1"].size
    print(f"\n2. k wrong elements scattered in W1 ({size:,} elements; mean of {trials} trials)")
    print(
        f"{'k':>4} {'all found':>10} {'evaluations':>12} {'per k·log2(n)':>14} "
        f"{'on W1':>8} {'W1 per k·log2(n)':>17} {'seconds':>8}"
    )
    rng = np.random.default_rng(200)
    for k in counts:
        evaluations, per_tensor, seconds, exact = [], [], [], True
        for trial in range(trials):
            grads = model.gradients(model.params)
            planted = plant_wrong_elements(grads, "W1", k, rng)
            result, elapsed, _ = timed_check(model, grads, seed=1000 * k + trial)
            exact &= found_elements(result)["W1"] == planted and result.failing == ["W1"]
            evaluations.append(result.n_evaluations)
            per_tensor.append(result.tensor("W1").directional.evaluations)
            seconds.append(elapsed)
        mean, on_w1 = float(np.mean(evaluations)), float(np.mean(per_tensor))
        scale = k * np.log2(size)
        print(
            f"{k:>4} {exact!s:>10} {mean:>12,.0f} {mean / scale:>14.1f} {on_w1:>8,.0f} "
            f"{on_w1 / scale:>17.1f} {np.mean(seconds):>8.1f}"
        )


def scaled_tensor(model: QuadraticModel) -> None:
    print("\n3. A whole tensor scaled by 2")
    print(f"{'tensor':>6} {'flagged':>8} {'diagnosis':>12} {'evaluations':>12} {'seconds':>8}")
    for trial, name in enumerate(SHAPES):
        grads = model.gradients(model.params)
        grads[name] = 2 * grads[name]
        result, seconds, _ = timed_check(model, grads, seed=trial)
        label = result.diagnoses[name].label if name in result.diagnoses else ""
        print(
            f"{name:>6} {result.failing == [name]!s:>8} {label:>12} "
            f"{result.n_evaluations:>12,} {seconds:>8.1f}"
        )


def false_alarms(seeds: int, big_seeds: int) -> None:
    print("\n4. False alarms on correct models (fast mode, one check per seed)")
    print(f"{'model':>34} {'checks':>7} {'false alarms':>13} {'rate':>7} {'evaluations':>12}")
    cases = [
        ("quadratic, 1,000,000 params", big_seeds, quadratic_case),
        ("ReLU net 64-128-64-1, float64", seeds, network_case(np.float64)),
        ("ReLU net 64-128-64-1, float32", seeds, network_case(np.float32)),
    ]
    for label, count, run in cases:
        alarms, evaluations = 0, []
        for seed in range(count):
            result = run(seed)
            alarms += not result.passed
            evaluations.append(result.n_evaluations)
        print(
            f"{label:>34} {count:>7} {alarms:>13} {alarms / count:>7.1%} "
            f"{np.mean(evaluations):>12,.0f}"
        )


def quadratic_case(seed: int) -> ng.GradCheckResult:
    model = QuadraticModel(SHAPES, seed=10_000 + seed)
    return timed_check(model, model.gradients(model.params), seed=seed)[0]


def network_case(dtype: type):
    def run(seed: int) -> ng.GradCheckResult:
        net = course_network((64, 128, 64, 1), m=32, seed=seed, dtype=dtype)
        return ng.check(
            net.loss, net.parameters, net.gradients, mode="fast", seed=seed, progress=False
        )

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials and seeds")
    quick = parser.parse_args().quick
    started = time.perf_counter()
    model = QuadraticModel(SHAPES, seed=0)
    one_wrong_element(model, trials=2 if quick else 8)
    k_wrong_elements(model, [1, 2, 4, 8, 16], trials=1 if quick else 3)
    scaled_tensor(model)
    false_alarms(seeds=10 if quick else 200, big_seeds=3 if quick else 20)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
