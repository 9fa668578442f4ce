"""Preflight of a PyTorch model: ``loss_fn(model(X), y)``.

Imported only when a torch model is passed. Every check runs on deep copies of the
model, X and y, so the user's module, tensors and hooks are never touched; the global
state a forward pass can change (RNG states, grad mode, default dtype) is saved first and
restored at the end, and a snapshot of the model restores it bit for bit should the loss
function reach into it (a regularisation term over ``model.parameters()``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from nbgradcheck.api.check import check
from nbgradcheck.api.preflight_rules import (
    ADAM_BETAS,
    ADAM_EPS,
    GRADIENT_SAMPLE,
    LEAK_TOLERANCE,
    OVERFIT_LEARNING_RATES,
    ActivationSite,
    ParameterGradient,
    PreflightFindings,
    Verdict,
    init_loss_skipped_without_classes,
    judge_dead_units,
    judge_gradient_check,
    judge_gradient_flow,
    judge_init_loss,
    judge_leak,
    judge_overfit,
    listed,
    overfit_ratio,
    run_timed,
)
from nbgradcheck.errors import GradCheckError, LossError

# Activations whose units pass no gradient where they are inactive (output 0): a unit
# inactive on every example is dead. (Leaky ReLU, ELU, GELU, SiLU keep a gradient there.)
RELU_LIKE = frozenset({"relu", "relu_", "relu6"})
# Models smaller than this run on one CPU thread during preflight: on tiny tensors torch's
# intra-op threads cost more than they save, 10-30× on a busy CPU (measured on the
# 20-64-64-10 MLP of the tests: 0.2-0.4 s on one thread, 4-6 s on two, under load 4).
SINGLE_THREAD_PARAMETERS = 1_000_000
# Same loss as the cross-entropy of the outputs when within this relative difference.
CROSS_ENTROPY_MATCH = 1e-4


def run_torch(
    model: nn.Module,
    loss_fn: Callable,
    X: Any,
    y: Any,
    classes: int | None,
    steps: int,
    seed: int,
) -> PreflightFindings:
    """All the checks on a torch model; nothing the user owns changes, whatever happens."""
    saved_globals = GlobalState.capture()
    saved_model = ModelState.capture(model)
    try:
        if sum(p.numel() for p in model.parameters()) < SINGLE_THREAD_PARAMETERS:
            torch.set_num_threads(1)
        with torch.enable_grad():
            return TorchPreflight(model, loss_fn, X, y, seed).run(classes, steps)
    finally:
        saved_model.restore()
        saved_globals.restore()


# -- what must not change ------------------------------------------------------------------


@dataclass
class GlobalState:
    """RNG states (torch CPU and CUDA, NumPy, Python), grad mode, default dtype, threads."""

    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None
    numpy_rng: Any
    python_rng: Any
    grad_enabled: bool
    default_dtype: torch.dtype
    threads: int

    @classmethod
    def capture(cls) -> GlobalState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return cls(
            torch.get_rng_state(),
            cuda,
            np.random.get_state(),
            random.getstate(),
            torch.is_grad_enabled(),
            torch.get_default_dtype(),
            torch.get_num_threads(),
        )

    def restore(self) -> None:
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        np.random.set_state(self.numpy_rng)
        random.setstate(self.python_rng)
        torch.set_grad_enabled(self.grad_enabled)
        torch.set_default_dtype(self.default_dtype)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)


@dataclass
class TensorEntry:
    """One parameter or buffer slot of a module, with its object and exact contents."""

    table: dict  # the module's _parameters or _buffers
    key: str
    tensor: torch.Tensor | None
    data: torch.Tensor | None
    grad: torch.Tensor | None
    requires_grad: bool

    @classmethod
    def capture(cls, table: dict, key: str) -> TensorEntry:
        tensor = table[key]
        if tensor is None:
            return cls(table, key, None, None, None, False)
        grad = tensor.grad.detach().clone() if tensor.grad is not None else None
        return cls(table, key, tensor, tensor.detach().clone(), grad, tensor.requires_grad)

    def restore(self) -> None:
        self.table[self.key] = self.tensor
        if self.tensor is None or self.data is None:
            return
        with torch.no_grad():
            if not same_bits(self.tensor.data, self.data):
                self.tensor.data = self.data.clone()
        if self.tensor.requires_grad != self.requires_grad and self.tensor.is_leaf:
            self.tensor.requires_grad_(self.requires_grad)
        if self.grad is None:
            self.tensor.grad = None
        elif self.tensor.grad is None or not same_bits(self.tensor.grad, self.grad):
            self.tensor.grad = self.grad.clone()


@dataclass
class ModelState:
    """Every module's parameters, buffers, training flag and hook tables."""

    entries: list[TensorEntry] = field(default_factory=list)
    flags: list[tuple[nn.Module, bool]] = field(default_factory=list)
    hooks: list[tuple[nn.Module, str, dict]] = field(default_factory=list)

    @classmethod
    def capture(cls, model: nn.Module) -> ModelState:
        state = cls()
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                state.entries += [TensorEntry.capture(table, key) for key in list(table)]
            state.flags.append((module, module.training))
            for attribute, table in vars(module).items():
                if attribute.endswith("_hooks") and isinstance(table, dict):
                    state.hooks.append((module, attribute, dict(table)))
        return state

    def restore(self) -> None:
        for entry in self.entries:
            entry.restore()
        for module, training in self.flags:
            module.training = training
        for module, attribute, table in self.hooks:
            current = getattr(module, attribute)
            if current != table:
                current.clear()
                current.update(table)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    if a.is_floating_point():
        integer = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
        integer_type = integer[a.element_size()]
        return torch.equal(a.contiguous().view(integer_type), b.contiguous().view(integer_type))
    return torch.equal(a, b)


def copy_of(model: nn.Module) -> nn.Module:
    """A deep copy to work on (its .grad cleared)."""
    try:
        duplicate = copy.deepcopy(model)
    except Exception as exc:
        raise GradCheckError(
            f"preflight works on a copy of the model, and copy.deepcopy failed on this "
            f"{type(model).__name__}: {type(exc).__name__}: {exc}"
        ) from exc
    for parameter in duplicate.parameters():
        parameter.grad = None
    return duplicate


def as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    try:
        return torch.as_tensor(np.array(value, copy=True))
    except Exception as exc:
        raise GradCheckError(f"{what} must be a tensor, not {type(value).__name__}") from exc


def primary_output(output: Any) -> Any:
    """The tensor to examine in what the model returned (a tuple's or dict's first)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return primary_output(output[0])
    if isinstance(output, dict) and output:
        return primary_output(next(iter(output.values())))
    return output


# -- watching the forward pass -------------------------------------------------------------


class ActivationWatch(TorchFunctionMode):
    """Sends the outputs of ReLU-like functions (F.relu, nn.ReLU, x.relu(), ...) to a recorder."""

    def __init__(self, recorder: ForwardRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        result = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in RELU_LIKE and isinstance(result, torch.Tensor):
            self.recorder.activation(func.__name__.rstrip("_"), result)
        return result


class ForwardRecorder:
    """Forward hooks on every module of a model (removed on exit), recording the order in
    which layers with parameters run, the ReLU-like activations' units that fire and,
    when asked, every module's output."""

    def __init__(self, model: nn.Module, batch_size: int, keep_outputs: bool = False) -> None:
        self.model = model
        self.batch_size = batch_size
        self.keep_outputs = keep_outputs
        self.stack: list[str] = []
        self.layer_order: list[str] = []
        self.alive: dict[str, torch.Tensor] = {}
        self.outputs: list[tuple[str, torch.Tensor]] = []
        self.handles: list[Any] = []
        self.modules = dict(model.named_modules())
        self.watch = ActivationWatch(self)

    def __enter__(self) -> ForwardRecorder:
        for name, module in self.model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self.entered(name)))
            self.handles.append(module.register_forward_hook(self.finished(name, module)))
        self.watch.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.watch.__exit__(*exc_info)
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def entered(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any) -> None:
            self.stack.append(name)

        return hook

    def finished(self, name: str, module: nn.Module) -> Callable[..., None]:
        has_parameters = any(True for _ in module.parameters(recurse=False))

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if self.stack and self.stack[-1] == name:
                self.stack.pop()
            if has_parameters and name not in self.layer_order:
                self.layer_order.append(name)
            tensor = primary_output(output)
            if self.keep_outputs and isinstance(tensor, torch.Tensor):
                self.outputs.append((name, tensor))

        return hook

    def activation(self, function: str, output: torch.Tensor) -> None:
        if output.ndim == 0 or output.shape[0] != self.batch_size:
            return
        site = self.site_name(function)
        while site in self.alive:
            site = bump(site)
        fired = (output.detach() > 0).reshape(self.batch_size, -1).any(0)
        self.alive[site] = fired

    def site_name(self, function: str) -> str:
        """The activation module's name (``net.1``) or the function's, after the last layer."""
        inner = self.stack[-1] if self.stack else ""
        module = self.modules.get(inner)
        is_activation = inner and module is not None and not any(True for _ in module.parameters())
        name = inner if is_activation else function
        after = self.layer_order[-1] if self.layer_order else ""
        return f"{name} after {after}" if after else name

    def sites(self) -> list[ActivationSite]:
        return [
            ActivationSite(name, int(fired.numel()), int((~fired).sum()))
            for name, fired in self.alive.items()
        ]


def bump(site: str) -> str:
    """'relu after fc1' → 'relu after fc1 #2' → '… #3' (an activation applied again)."""
    stem, _, number = site.rpartition(" #")
    if stem and number.isdigit():
        return f"{stem} #{int(number) + 1}"
    return f"{site} #2"


@contextlib.contextmanager
def modules_in_eval(modules: list[nn.Module]) -> Iterator[None]:
    flags = [m.training for m in modules]
    try:
        for m in modules:
            m.training = False
        yield
    finally:
        for m, flag in zip(modules, flags):
            m.training = flag


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


def batchnorm_in_training(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]


# -- the checks -----------------------------------------------------------------------------


class TorchPreflight:
    """The checks, on copies of the user's model, X and y."""

    def __init__(self, model: nn.Module, loss_fn: Callable, X: Any, y: Any, seed: int) -> None:
        if not callable(loss_fn):
            raise GradCheckError(f"loss_fn must be callable, not {type(loss_fn).__name__}")
        self.model, self.loss_fn, self.seed = model, loss_fn, seed
        self.X, self.y = as_tensor(X, "X"), as_tensor(y, "y")
        self.batch_size = int(self.X.shape[0]) if self.X.ndim else 0
        self.probe = copy_of(model)
        self.layer_order: list[str] = []  # layers with parameters, in the order they run
        self.findings = PreflightFindings("torch", self.batch_size)

    def reseed(self) -> None:
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        random.seed(self.seed)

    def loss_of(self, model: nn.Module) -> torch.Tensor:
        return self.loss_fn(model(self.X), self.y)

    def run(self, classes: int | None, steps: int) -> PreflightFindings:
        self.reseed()
        with ForwardRecorder(self.probe, self.batch_size) as recorder:
            output = self.probe(self.X)  # an error here is the user's: it propagates
        loss = self.loss_fn(output, self.y)
        value = scalar_loss(loss)
        self.layer_order = recorder.layer_order
        self.findings.activations = recorder.sites()
        self.findings.outcomes = [
            run_timed("init_loss", lambda: self.init_loss(output, value, classes)),
            run_timed("batch_independence", self.batch_independence),
            run_timed("overfit_batch", lambda: self.overfit(steps)),
            run_timed("dead_units", self.dead_units),
            run_timed("gradient_flow", self.gradient_flow),
            run_timed("gradients", self.gradients),
        ]
        return self.findings

    # init_loss
    def init_loss(self, output: Any, value: float, classes: int | None) -> Verdict:
        logits = primary_output(output)
        culprit = self.output_culprit(logits)
        if classes is not None:
            return judge_init_loss(value, classes, culprit=culprit)
        if self.y.is_floating_point() or self.y.is_complex() or self.y.dtype == torch.bool:
            return init_loss_skipped_without_classes(
                "y does not hold integer class labels (regression, or soft/one-hot targets?)"
            )
        chance = cross_entropy_classes(logits, self.y, value)
        if chance.classes is None:
            return init_loss_skipped_without_classes(chance.reason)
        return judge_init_loss(value, chance.classes, chance.targets, culprit, chance.noise)

    def output_culprit(self, logits: Any) -> str:
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            return ""
        spread = float(logits.detach().double().std()) if logits.numel() > 1 else 0.0
        last = f" of the last layer, {self.layer_order[-1]}," if self.layer_order else ""
        return f"the outputs{last} have standard deviation {spread:.2g}"

    # batch_independence
    def batch_independence(self) -> Verdict:
        if self.batch_size < 2:
            return "skip", "needs a batch of at least two examples"
        batchnorms = batchnorm_in_training(self.probe)
        note = (
            f" ({listed([n for n, _ in batchnorms])} tested in evaluation mode: BatchNorm "
            f"in training mode mixes the examples of a batch by design)"
            if batchnorms
            else ""
        )
        with modules_in_eval([m for _, m in batchnorms]):
            status, finding = self.leak_test()
        return status, finding + note

    def leak_test(self) -> Verdict:
        """Gradients of random projections of a few examples' outputs with respect to the
        input batch (for integer inputs: the first layer's output) must stay in their row."""
        self.reseed()
        floating = self.X.is_floating_point()
        inputs = self.X.clone().requires_grad_(True) if floating else self.X
        with ForwardRecorder(self.probe, self.batch_size, keep_outputs=True) as recorder:
            output = primary_output(self.probe(inputs))
        source, origin = inputs, "X"
        if not floating:
            found = first_differentiable(recorder.outputs, self.batch_size)
            if found is None:
                return "warn", (
                    f"X holds {self.X.dtype} values and no layer output carries a gradient: "
                    f"batch independence was not tested"
                )
            name, source = found
            origin = f"{name} ({type(dict(self.probe.named_modules())[name]).__name__})"
        if not isinstance(output, torch.Tensor) or output.ndim == 0:
            return "skip", f"the model returned {type(output).__name__}, not a batch of outputs"
        if output.shape[0] != self.batch_size:
            return "skip", (
                f"the output's first axis has size {output.shape[0]}, not the batch size "
                f"{self.batch_size}: cannot tell which output belongs to which example"
            )
        start = "" if floating else f" (X holds token ids: tested from the output of {origin} on)"
        status, finding = self.leaks_from(source, output, recorder.outputs)
        return status, finding + start

    def leaks_from(
        self, source: torch.Tensor, output: torch.Tensor, outputs: list[tuple[str, torch.Tensor]]
    ) -> Verdict:
        generator = torch.Generator().manual_seed(self.seed)
        examples = sorted({0, self.batch_size // 2, self.batch_size - 1})
        reached = False
        for example in examples:
            leaks = leaking_rows(output, source, example, generator)
            if leaks is None:
                continue
            reached = True
            if leaks:
                return judge_leak(
                    example, leaks, self.batch_size - 1, self.mixing_place(outputs, source, example)
                )
        if not reached:
            return "warn", (
                "no gradient reaches the input from the outputs (the forward detaches or "
                "discretises it, or the units are dead): batch independence was not tested"
            )
        return "pass", (
            f"the outputs of examples {listed([str(e) for e in examples])} depend on their "
            f"own inputs only"
        )

    def mixing_place(
        self, outputs: list[tuple[str, torch.Tensor]], source: torch.Tensor, example: int
    ) -> str:
        generator = torch.Generator().manual_seed(self.seed)
        where = first_mixing_module(outputs, source, example, generator)
        if where:
            module = dict(self.probe.named_modules())[where]
            return f"at the output of {where} ({type(module).__name__})"
        return f"in {type(self.probe).__name__}.forward itself, not in a submodule"

    # overfit_batch
    def overfit(self, steps: int) -> Verdict:
        best: tuple[float, float, float, list[float], float] | None = None
        for learning_rate in OVERFIT_LEARNING_RATES:
            initial, final, curve = self.train_copy(steps, learning_rate)
            ratio = overfit_ratio(initial, final)
            if best is None or ratio < best[0]:
                best = (ratio, initial, final, curve, learning_rate)
            if judge_overfit(initial, final, steps, learning_rate)[0] == "pass":
                break
        assert best is not None
        _, initial, final, curve, learning_rate = best
        self.findings.overfit_curve = [*curve, final]
        self.findings.overfit_learning_rate = learning_rate
        return judge_overfit(initial, final, steps, learning_rate)

    def train_copy(self, steps: int, learning_rate: float) -> tuple[float, float, list[float]]:
        """Adam on a fresh copy; the loss before and after (dropout off), and per step."""
        trainee = copy_of(self.model)
        parameters = [p for p in trainee.parameters() if p.requires_grad]
        optimizer = Adam(parameters, learning_rate)
        self.reseed()
        initial = self.settled_loss(trainee)
        curve: list[float] = []
        for _ in range(steps):
            loss = self.loss_of(trainee)
            curve.append(scalar_loss(loss))
            if not math.isfinite(curve[-1]):
                break
            optimizer.step(gradients_or_none(loss, parameters))
        return initial, self.settled_loss(trainee), curve

    def settled_loss(self, model: nn.Module) -> float:
        """The loss with dropout switched off (BatchNorm as it is)."""
        with modules_in_eval(dropout_modules(model)), torch.no_grad():
            return scalar_loss(self.loss_of(model))

    # dead_units
    def dead_units(self) -> Verdict:
        return judge_dead_units(self.findings.activations, self.batch_size)

    # gradient_flow
    def gradient_flow(self) -> Verdict:
        self.reseed()
        named = [(n, p) for n, p in self.probe.named_parameters() if p.requires_grad]
        if not named:
            return "skip", "the model has no parameters that require grad"
        grads = gradients_or_none(self.loss_of(self.probe), [p for _, p in named])
        self.findings.gradients = [
            ParameterGradient(
                name,
                name.rpartition(".")[0] or name,
                None if grad is None else float(grad.detach().double().norm()),
                float(parameter.detach().double().norm()),
            )
            for (name, parameter), grad in zip(named, grads)
        ]
        return judge_gradient_flow(self.findings.gradients, self.layer_order)

    # gradients
    def gradients(self) -> Verdict:
        if not any(p.requires_grad for p in self.probe.parameters()):
            return "skip", "the model has no parameters that require grad"

        def loss(model: nn.Module) -> Any:
            return self.loss_fn(model(self.X), self.y)

        result = check(
            loss,
            self.probe,
            mode="sample",
            sample=GRADIENT_SAMPLE,
            seed=self.seed,
            progress=False,
        )
        self.findings.gradcheck = result
        return judge_gradient_check(result)


class Adam:
    """Adam written out (as the NumPy runner's): torch.optim's first use costs seconds."""

    def __init__(self, parameters: list[torch.Tensor], learning_rate: float) -> None:
        self.parameters, self.learning_rate = parameters, learning_rate
        self.first = [torch.zeros_like(p) for p in parameters]
        self.second = [torch.zeros_like(p) for p in parameters]
        self.count = 0

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor | None]) -> None:
        self.count += 1
        beta1, beta2 = ADAM_BETAS
        unbias1, unbias2 = 1 - beta1**self.count, 1 - beta2**self.count
        for parameter, grad, m, v in zip(self.parameters, grads, self.first, self.second):
            if grad is None:
                continue
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            parameter.sub_(self.learning_rate * (m / unbias1) / ((v / unbias2).sqrt() + ADAM_EPS))


# -- helpers --------------------------------------------------------------------------------


def scalar_loss(loss: Any) -> float:
    """The loss as a float; a LossError unless it is a one-element tensor or number."""
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise LossError(
                f"loss_fn(model(X), y) returned a tensor of shape {tuple(loss.shape)}: "
                f"preflight needs a scalar (reduce it with .mean())"
            )
        return float(loss.detach().reshape(()).item())
    if isinstance(loss, (int, float)):
        return float(loss)
    raise LossError(f"loss_fn(model(X), y) returned a {type(loss).__name__}, not a scalar tensor")


def gradients_or_none(loss: Any, parameters: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """d loss / d parameters (None where the loss does not reach a parameter)."""
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        return [None] * len(parameters)
    return list(torch.autograd.grad(loss.reshape(()), parameters, allow_unused=True))


class ChanceLoss(NamedTuple):
    """What a cross-entropy loss at initialisation should be compared with."""

    classes: int | None  # None: the loss is not the outputs' cross-entropy (see reason)
    targets: int = 1  # the loss sums over this many targets (1: a mean)
    noise: float = 0.0  # standard error of the mean per-target loss over the batch
    reason: str = ""


def cross_entropy_classes(logits: Any, y: torch.Tensor, value: float) -> ChanceLoss:
    """The output's last dimension as the number of classes, when the loss equals the mean
    (or summed) cross-entropy of the outputs against y."""
    if not isinstance(logits, torch.Tensor) or logits.ndim < 2 or logits.shape[-1] < 2:
        return ChanceLoss(None, reason="the output has no class dimension (its last axis)")
    classes = int(logits.shape[-1])
    flat = logits.detach().double().reshape(-1, classes)
    labels = y.reshape(-1).long().to(flat.device)
    if labels.numel() != flat.shape[0] or bool(((labels < 0) | (labels >= classes)).any()):
        return ChanceLoss(
            None, reason=f"y's integer labels do not match the output's {classes} classes"
        )
    each = F.cross_entropy(flat, labels, reduction="none")
    noise = float(each.std() / math.sqrt(each.numel())) if each.numel() > 1 else 0.0
    for targets, expected in ((1, float(each.mean())), (labels.numel(), float(each.sum()))):
        if abs(value - expected) <= CROSS_ENTROPY_MATCH * max(1.0, abs(expected)):
            return ChanceLoss(classes, targets, noise)
    return ChanceLoss(
        None,
        reason="y holds integer labels but the loss is not the cross-entropy of the outputs "
        "(label smoothing, class weights, an extra term?)",
    )


def leaking_rows(
    output: torch.Tensor, inputs: torch.Tensor, example: int, generator: torch.Generator
) -> list[int] | None:
    """Rows of X, other than ``example``, that example's output depends on (through the
    gradient of a random projection of it); None when no gradient reaches X."""
    if not output.requires_grad:
        return None
    row = output[example]
    weights = torch.randn(row.shape, generator=generator, dtype=torch.float64)
    projection = (row * weights.to(row.device, row.dtype)).sum()
    (grad,) = torch.autograd.grad(projection, inputs, retain_graph=True, allow_unused=True)
    if grad is None:
        return None
    size = grad.reshape(grad.shape[0], -1).abs().amax(1).double()
    largest = float(size.max())
    if largest == 0.0:
        return None
    return [
        int(r) for r in torch.nonzero(size > LEAK_TOLERANCE * largest).flatten() if r != example
    ]


def first_differentiable(
    outputs: list[tuple[str, torch.Tensor]], batch_size: int
) -> tuple[str, torch.Tensor] | None:
    """The first module output (in forward order) that is a float batch carrying a gradient."""
    for name, tensor in outputs:
        batched = tensor.ndim > 0 and tensor.shape[0] == batch_size
        if name and batched and tensor.is_floating_point() and tensor.requires_grad:
            return name, tensor
    return None


def first_mixing_module(
    outputs: list[tuple[str, torch.Tensor]],
    inputs: torch.Tensor,
    example: int,
    generator: torch.Generator,
) -> str:
    """The first module, in forward order, whose output for ``example`` depends on other
    examples ('' when it cannot be told)."""
    batch_size = inputs.shape[0]
    for name, tensor in outputs:
        if tensor.ndim == 0 or tensor.shape[0] != batch_size:
            continue
        if leaking_rows(tensor, inputs, example, generator):
            return name
    return ""
