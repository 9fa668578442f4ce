"""PyTorch adapter against torch.autograd.gradcheck, in the same process (issue 7).

1. Full element-wise check of every parameter of float64 MLPs of ~5,000 and ~50,000
   parameters: nbgradcheck (vectorized, and the plain loop) against
   ``torch.autograd.gradcheck`` in slow mode on the same parameters through
   ``torch.func.functional_call``. Same verdict; the ratio of CPU times is printed.
2. A planted single-element bug in a ~1,000,000-parameter model: nbgradcheck's fast mode
   finds and localizes it; ``gradcheck(fast_mode=True)`` only reports a mismatch.
3. float32: correct models must pass, planted bugs must fail (counts over random nets).

Times are CPU seconds of this process with one intra-op thread, so that other work on a
busy machine does not distort them. Run::

    python benchmarks/bench_torch.py            # everything (several minutes)
    python benchmarks/bench_torch.py --quick    # smaller models, gradcheck on 5k only
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

import nbgradcheck as ng
from nbgradcheck.adapters.torch import TorchParameters


def cpu_time(function: Callable[[], object]) -> tuple[float, object]:
    started = time.process_time()
    value = function()
    return time.process_time() - started, value


def mlp(sizes: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).to(dtype)


def classification_loss(
    model: nn.Module, inputs: int, classes: int, batch: int, dtype: torch.dtype
) -> Callable[[], torch.Tensor]:
    x = torch.randn(batch, inputs, dtype=dtype)
    y = torch.randint(0, classes, (batch,))
    return lambda: nn.functional.cross_entropy(model(x), y)


def gradcheck_on_parameters(
    model: nn.Module, closure: Callable[[], torch.Tensor], fast_mode: bool
) -> tuple[bool, str]:
    """torch.autograd.gradcheck over the model's parameters via functional_call."""
    names = [name for name, _ in model.named_parameters()]

    wrapper = ClosureModule(model, closure)

    def loss_of(*tensors: torch.Tensor) -> torch.Tensor:
        return functional_call(wrapper, {"model." + n: t for n, t in zip(names, tensors)}, ())

    inputs = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    try:
        return bool(torch.autograd.gradcheck(loss_of, inputs, fast_mode=fast_mode)), ""
    except torch.autograd.gradcheck.GradcheckError as error:
        return False, str(error)


class ClosureModule(nn.Module):
    """The closure as a module holding the model, so functional_call swaps its tensors."""

    def __init__(self, model: nn.Module, closure: Callable[[], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "closure", closure)

    def forward(self) -> torch.Tensor:
        return self.closure()


# -- 1. full checks against gradcheck slow mode ----------------------------------------------


def full_check_row(sizes: tuple[int, ...], batch: int, run_gradcheck: bool) -> None:
    model = mlp(sizes, torch.float64)
    closure = classification_loss(model, sizes[0], sizes[-1], batch, torch.float64)
    count = sum(p.numel() for p in model.parameters())
    vectorized_s, vectorized = cpu_time(
        lambda: ng.check(closure, TorchParameters(model), None, mode="full", progress=False)
    )
    loop_s, looped = cpu_time(
        lambda: ng.check(
            closure, TorchParameters(model, vectorize=False), None, mode="full", progress=False
        )
    )
    line = (
        f"MLP {'-'.join(map(str, sizes))} ({count:,} parameters, batch {batch}): "
        f"nbgradcheck vectorized {vectorized_s:.1f} s ({vectorized.verdict}), "
        f"loop {loop_s:.1f} s ({looped.verdict})"
    )
    if run_gradcheck:
        gradcheck_s, (passed, _) = cpu_time(
            lambda: gradcheck_on_parameters(model, closure, fast_mode=False)
        )
        line += (
            f"; gradcheck slow {gradcheck_s:.1f} s ({'pass' if passed else 'FAIL'})"
            f" → {gradcheck_s / vectorized_s:.1f}× (vectorized), "
            f"{gradcheck_s / loop_s:.1f}× (loop)"
        )
    print(line, flush=True)


# -- 2. a planted bug in a ~1M-parameter model -----------------------------------------------


class MarkedLinear(torch.autograd.Function):
    """x Wᵀ + b with a hand-written backward that gets one element of dW wrong."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return x @ weight.t() + bias

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_weight = grad.t() @ x
        grad_weight[123, 45] += 0.5 * grad_weight.abs().max()  # the planted bug
        return grad @ weight, grad_weight, grad.sum(0)


class BigNet(nn.Module):
    def __init__(self, inputs: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, hidden // 4)
        self.out = nn.Linear(hidden // 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(MarkedLinear.apply(x, self.fc1.weight, self.fc1.bias))
        return self.out(torch.tanh(self.fc2(h)))


def planted_bug_row(inputs: int, hidden: int) -> None:
    torch.manual_seed(0)
    model = BigNet(inputs, hidden, 10).double()
    closure = classification_loss(model, inputs, 10, 32, torch.float64)
    count = sum(p.numel() for p in model.parameters())
    fast_s, result = cpu_time(
        lambda: ng.check(closure, TorchParameters(model), None, mode="fast", seed=0, progress=False)
    )
    tensor = result.tensor("fc1.weight")
    found = [tensor.multi_index(int(i)) for i in tensor.indices[tensor.element_failing]]
    print(
        f"planted bug in fc1.weight[123, 45] of a {count:,}-parameter model: "
        f"nbgradcheck fast mode {fast_s:.1f} s, failing {result.failing}, "
        f"elements {found}, {result.n_evaluations} loss evaluations",
        flush=True,
    )
    gradcheck_s, (passed, message) = cpu_time(
        lambda: gradcheck_on_parameters(model, closure, fast_mode=True)
    )
    summary = message.strip().splitlines()[0] if message else "no mismatch reported"
    print(
        f"  torch.autograd.gradcheck(fast_mode=True) {gradcheck_s:.1f} s: "
        f"{'pass' if passed else 'FAIL'} — {summary[:150]}",
        flush=True,
    )


# -- 3. float32 verdicts ---------------------------------------------------------------------


class ElementBug(torch.autograd.Function):
    """Identity on a weight whose backward scales one element by ``factor``."""

    @staticmethod
    def forward(ctx, weight, factor):
        ctx.factor = factor
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        grad[1, 2] *= ctx.factor
        return grad, None


def float32_row(nets: int, factor: float) -> None:
    """Correct and buggy float32 nets, checked in float32 and with float64=True."""
    counts = {False: [0, 0], True: [0, 0]}  # float64 → [false alarms, missed bugs]
    for seed in range(nets):
        model = mlp((8, 16, 4), torch.float32, seed=seed)
        x = torch.randn(32, 8)
        y = torch.randint(0, 4, (32,))

        def closure(bug: float = 1.0, model=model, x=x, y=y) -> torch.Tensor:
            weight = ElementBug.apply(model[0].weight, bug)
            hidden = torch.tanh(nn.functional.linear(x, weight, model[0].bias))
            return nn.functional.cross_entropy(model[2](hidden), y)

        for float64 in (False, True):
            params = TorchParameters(model, float64=float64)
            correct = ng.check(closure, params, None, mode="full", progress=False)
            buggy = ng.check(lambda c=closure: c(factor), params, None, mode="full", progress=False)
            counts[float64][0] += not correct.passed
            counts[float64][1] += buggy.failing != ["0.weight"]
    for float64, (false_alarms, missed) in counts.items():
        print(
            f"float32 MLPs 8-16-4 (batch 32), {nets} nets, checked "
            f"{'with float64=True' if float64 else 'in float32'}: {false_alarms} correct "
            f"models called wrong; {missed} of {nets} single-element bugs "
            f"(dW[1, 2] × {factor}) missed",
            flush=True,
        )


def warm_up() -> None:
    """Pay the one-time costs (vmap's first call, autograd's) before anything is timed."""
    model = mlp((8, 16, 4), torch.float64)
    closure = classification_loss(model, 8, 4, 4, torch.float64)
    ng.check(closure, TorchParameters(model), None, mode="full", progress=False)
    gradcheck_on_parameters(model, closure, fast_mode=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller models")
    options = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    print(f"torch {torch.__version__}, nbgradcheck {ng.__version__}, CPU time, 1 thread")
    warm_up()
    # Gradient checks are run on a few examples (the loss of a small batch); batch 32
    # shows the other end, where one forward pass is dominated by arithmetic.
    for batch in (4, 32):
        full_check_row((40, 64, 32, 10), batch, run_gradcheck=True)  # 5,034 parameters
    for batch in (4,) if options.quick else (4, 32):
        full_check_row((120, 256, 64, 10), batch, run_gradcheck=True)  # 48,074
    if options.quick:
        planted_bug_row(200, 1024)  # 470,810 parameters
    else:
        planted_bug_row(784, 1024)  # 1,068,810 parameters
    for factor in (1.5, 1.05, 1.01):
        float32_row(10 if options.quick else 40, factor)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
