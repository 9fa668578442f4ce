"""PyTorch: a full check against torch.autograd.gradcheck and against the same 2n losses
evaluated by hand in batches; fast mode on a planted bug; float32 verdicts.

1. Full element-wise checks of float64 tanh MLPs (batch 8, cross-entropy) of 5,034 and
   48,074 parameters, three ways, same verdict asserted:

   - ``nbgradcheck.check(closure, model, mode="full")``;
   - ``torch.autograd.gradcheck`` over every parameter (through ``functional_call``; its
     default slow mode perturbs every element: 2n forward passes, and one backward);
   - hand-batched: the same 2n losses as an expert computes them with batched tensor
     ops: the layers before the perturbed one once, perturbed copies of the parameter as a
     leading batch dimension (both signs), the layers after it batched, in chunks (the
     fastest of a few chunk sizes is kept), and the numeric gradient compared per tensor.

   Ratios: gradcheck / nbgradcheck (goal ≥ 30× at 5k, ≥ 15× at 50k) and nbgradcheck /
   hand-batched (goal ≤ 1.0 at 5k, ≤ 0.6 at 50k).
2. A planted single-element bug in a ~1,000,000-parameter model: nbgradcheck's fast mode
   finds and localizes it (asserted); ``gradcheck(fast_mode=True)`` at best reports a
   mismatch (one random projection: a single wrong element can stay within its rtol).
3. float32: correct models must pass, planted bugs must fail (counts over random nets).

Times are the best CPU time (time.process_time) of several interleaved repeats in one
process with one intra-op thread. Run::

    python benchmarks/bench_torch.py            # everything (about 4 minutes)
    python benchmarks/bench_torch.py --quick    # 5k row, smaller planted-bug model
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings
from collections.abc import Callable

from timing import best_time, interleaved, load, one_thread

one_thread()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.autograd.gradcheck import GradcheckError  # noqa: E402
from torch.func import functional_call  # noqa: E402

import nbgradcheck as ng  # noqa: E402
from nbgradcheck.adapters.torch import TorchParameters  # noqa: E402

EPS = 1e-6
TOL = 1e-5


def mlp(sizes: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).to(dtype)


def classification_data(
    inputs: int, classes: int, batch: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, inputs, dtype=dtype), torch.randint(0, classes, (batch,))


# -- the baselines -----------------------------------------------------------------------------


class ClosureModule(nn.Module):
    """The closure as a module holding the model, so functional_call swaps its tensors."""

    def __init__(self, model: nn.Module, closure: Callable[[], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "closure", closure)

    def forward(self) -> torch.Tensor:
        return self.closure()


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
        return bool(torch.autograd.gradcheck(loss_of, inputs, eps=EPS, fast_mode=fast_mode)), ""
    except GradcheckError as error:
        return False, str(error)


def hand_batched_passes(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, chunk: int):
    """The 2n perturbed losses by batched tensor ops, the numeric gradient, the verdict:
    True when every tensor's relative difference to autograd's is within TOL."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        inputs = [x]  # the unperturbed input of each layer
        for k, layer in enumerate(linears[:-1]):
            inputs.append(torch.tanh(layer(inputs[k])))
        for k, layer in enumerate(linears):
            for parameter in (layer.weight, layer.bias):
                numeric = hand_batched_gradient(linears, k, parameter, inputs[k], y, chunk)
                analytic = parameter.grad
                difference = (numeric - analytic).norm() / (numeric.norm() + analytic.norm())
                if not difference <= TOL:
                    return False
    return True


def hand_batched_gradient(
    linears: list[nn.Linear],
    k: int,
    parameter: torch.Tensor,
    layer_input: torch.Tensor,
    y: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """(J(θ + ε eᵢ) − J(θ − ε eᵢ)) / 2ε for every element of one parameter of layer k."""
    layer = linears[k]
    size = parameter.numel()
    numeric = torch.empty(size, dtype=parameter.dtype)
    for start in range(0, size, chunk):
        index = torch.arange(start, min(start + chunk, size))
        count = 2 * index.numel()
        copies = parameter.reshape(1, -1).repeat(count, 1)
        shift = torch.cat([torch.full_like(index, 1), torch.full_like(index, -1)]) * EPS
        copies[torch.arange(count), index.repeat(2)] += shift.to(parameter.dtype)
        if parameter is layer.weight:  # (2B, out, in): batched matrix product
            weights = copies.view(count, *parameter.shape)
            z = torch.matmul(layer_input, weights.transpose(1, 2)) + layer.bias
        else:
            z = nn.functional.linear(layer_input, layer.weight) + copies.unsqueeze(1)
        for later in linears[k + 1 :]:
            z = nn.functional.linear(torch.tanh(z), later.weight, later.bias)
        losses = nn.functional.cross_entropy(
            z.reshape(-1, z.shape[-1]), y.repeat(count), reduction="none"
        )
        losses = losses.view(count, -1).mean(1)
        half = index.numel()
        numeric[index] = (losses[:half] - losses[half:]) / (2 * EPS)
    return numeric.view_as(parameter)


# -- 1. full checks ----------------------------------------------------------------------------


def full_check_row(
    sizes: tuple[int, ...],
    batch: int,
    repeats: int,
    gradcheck_repeats: int,
    chunks: tuple[int, ...],
):
    model = mlp(sizes, torch.float64)
    x, y = classification_data(sizes[0], sizes[-1], batch, torch.float64)

    def closure() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y)

    count = sum(p.numel() for p in model.parameters())
    tried = {c: best_time(lambda c=c: hand_batched_passes(model, x, y, c), 1) for c in chunks}
    chunk = min(tried, key=lambda c: tried[c][0])  # the expert's choice of chunk
    functions = {
        "nbgradcheck": lambda: ng.check(closure, model, mode="full", eps=EPS, progress=False),
        "hand": lambda: hand_batched_passes(model, x, y, chunk),
    }
    times, values = interleaved(functions, repeats)
    hand = min(times["hand"], tried[chunk][0])
    gradcheck_s, (gradcheck_passed, _) = best_time(
        lambda: gradcheck_on_parameters(model, closure, fast_mode=False), gradcheck_repeats
    )
    result = values["nbgradcheck"]
    verdicts = {result.passed, gradcheck_passed, values["hand"], *(v for _, v in tried.values())}
    assert verdicts == {True}, f"verdicts differ: {verdicts}"
    check_s = times["nbgradcheck"]
    print(
        f"MLP {'-'.join(map(str, sizes))} ({count:,} parameters, batch {batch}): "
        f"nbgradcheck {check_s:.3f} s ({result.verdict}) | gradcheck {gradcheck_s:.2f} s "
        f"(pass) → {gradcheck_s / check_s:.1f}× | hand-batched {hand:.3f} s (chunk {chunk}, "
        f"pass) → "
        f"nbgradcheck/hand {check_s / hand:.2f} | {load()}",
        flush=True,
    )


# -- 2. a planted bug in a ~1M-parameter model -------------------------------------------------


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
    x, y = classification_data(inputs, 10, 32, torch.float64)

    def closure() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y)

    count = sum(p.numel() for p in model.parameters())
    fast_s, result = best_time(
        lambda: ng.check(closure, model, mode="fast", seed=0, progress=False), 1
    )
    tensor = result.tensor("fc1.weight")
    found = [tensor.multi_index(int(i)) for i in tensor.indices[tensor.element_failing]]
    assert result.failing == ["fc1.weight"] and found == [(123, 45)], (result.failing, found)
    print(
        f"planted bug in fc1.weight[123, 45] of a {count:,}-parameter model: "
        f"nbgradcheck fast mode {fast_s:.1f} s, failing {result.failing}, "
        f"elements {found}, {result.n_evaluations} loss evaluations",
        flush=True,
    )
    gradcheck_s, (passed, message) = best_time(
        lambda: gradcheck_on_parameters(model, closure, fast_mode=True), 1
    )
    summary = message.strip().splitlines()[0] if message else "no mismatch reported"
    print(
        f"  torch.autograd.gradcheck(fast_mode=True) {gradcheck_s:.1f} s: "
        f"{'pass' if passed else 'FAIL'} — {summary[:110]}",
        flush=True,
    )


# -- 3. float32 verdicts -----------------------------------------------------------------------


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
    x, y = classification_data(8, 4, 4, torch.float64)
    closure = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    ng.check(closure, model, mode="full", progress=False)
    gradcheck_on_parameters(model, closure, fast_mode=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5k row, smaller models")
    options = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)
    started = time.perf_counter()
    print(f"torch {torch.__version__}, nbgradcheck {ng.__version__}, CPU time, 1 thread")
    warm_up()
    full_check_row((40, 64, 32, 10), 8, 5, 3, chunks=(128, 512, 2048))  # 5,034 parameters
    if not options.quick:
        full_check_row((120, 256, 64, 10), 8, 2, 2, chunks=(256, 1024))  # 48,074
    if options.quick:
        planted_bug_row(200, 1024)  # 470,810 parameters
    else:
        planted_bug_row(784, 1024)  # 1,068,810 parameters
    for factor in (1.5, 1.05, 1.01):
        float32_row(5 if options.quick else 20, factor)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
