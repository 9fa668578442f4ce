"""PyTorch adapter: check the parameters of an ``nn.Module``, a list or a dict of tensors.

``check(closure, model)`` perturbs each parameter element in place (under
``torch.no_grad()``, through ``.data``, on any device) and writes the saved value back, so
parameters are bit-for-bit unchanged afterwards; buffers (BatchNorm running statistics)
and the ``.grad`` attributes the user had are restored too. Analytic gradients come from
one backward pass of the closure (or from the user's ``grads``).

Where the model allows it, many perturbations are evaluated at once: replayed from a
recording of the loss's torch calls, each one-element change carried through the layers
after the parameter (:mod:`nbgradcheck.adapters.torch_tape`; custom
``autograd.Function``s included, vmap rule or not), else in one call of
``torch.func.vmap`` over ``torch.func.functional_call``. A loss that allows neither
(random draws, ``.item()`` or Python branches on values computed from the parameters, a
closure holding its own reference to a parameter) is detected on the first try (batched
values are checked against the loop) and evaluated one element at a time instead;
:attr:`TorchParameterSet.evaluation_notes` then says why and how to batch it.

float32, float16 and bfloat16 models are checked in float64 by default (promoted for the
check, restored exactly afterwards: see :class:`TorchParameters`); with ``float64=False``
in their own dtype, with the engine's round-off-aware verdicts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from nbgradcheck.adapters.base import ParameterAdapter
from nbgradcheck.adapters.numpy import (
    SINGLE_ARRAY_NAME,
    format_index,
    gradient_key,
    looks_like_parameter_gradient,
    validated_gradient,
)
from nbgradcheck.adapters.torch_tape import Tape, record, replay
from nbgradcheck.errors import (
    GradCheckError,
    GradientError,
    LossError,
    ParameterError,
    ParametersModifiedError,
)

NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
# Fewer elements than this are evaluated by the loop: a batched call has a fixed cost
# (tracing, verification) that only many elements repay.
MIN_BATCH = 16
# A replay from the tape holds about this many bytes of perturbed activations per array
# (as its first replay measures them): small enough to stay in cache, large enough to
# repay a replay's fixed cost (tanh MLPs of 5k-50k parameters: 1-1.5 MiB best, 0.25 MiB
# and 2 MiB or more up to 1.4× slower).
BATCH_MEMORY_BYTES = 2**20
# A batched call evaluates at most this many perturbations (the rest of the working set
# grows with the count too: indices, values, losses).
MAX_BATCH = 8192
# The first replay of a tape has this many copies: it measures what one copy needs.
FIRST_BATCH = 64
# Under vmap of the whole loss (no tape) one call holds this many bytes of perturbed
# copies of the parameter (measured best among 1-128 MiB on 5k-50k-parameter MLPs).
VMAP_MEMORY_BYTES = 16 * 2**20
# Elements of a chunk evaluated both ways, the first time a tensor is batched, to confirm
# that the batched call sees the perturbation the way the loop does.
VERIFY_ELEMENTS = 3
# Batched and looped J may differ by rounding (bmm against mm): this many unit round-offs
# of |J|, plus this share of the change the perturbation itself makes.
VERIFY_ROUNDOFF = 64.0
VERIFY_SHARE = 0.01


class TorchParameters(Mapping):
    """The named tensors of a model, list or dict, with options for the check.

    ``check(closure, TorchParameters(model, dropout=False))`` switches the model's dropout
    modules to evaluation mode for the check (their modes are restored afterwards), so
    J is deterministic without ``seed=``.

    ``float64=True`` (the default) checks a float32, float16 or bfloat16 model in float64:
    parameters and floating buffers are promoted for the check (their ``.data`` swapped
    for float64 copies), every torch operation promotes its low-precision tensor
    arguments (the inputs the closure holds) and so does ``autograd.Function.apply``
    (inputs a custom Function saves for backward); afterwards the original tensors are
    put back, untouched. In float32 a wrong element is visible only above the round-off
    floor (a 5 % error in one element of a small MLP is missed 37 times in 40, see
    ``benchmarks/bench_torch.py``); in float64 it is found. ``float64=False`` checks the
    model as it is, with verdicts that allow for the floor: for float32-only kernels, and
    with ``executor=``/``n_jobs=``, whose workers cannot promote (refused there with a
    clear error).

    ``vectorize=False`` forces the element-by-element loop. The loss still receives
    ``model`` itself when it takes an argument.
    """

    def __init__(
        self, params: Any, *, dropout: bool = True, float64: bool = True, vectorize: bool = True
    ) -> None:
        self.params = params
        self.dropout = dropout
        self.float64 = float64
        self.vectorize = vectorize
        self.names, self.tensors, self.kind = named_tensors(params, float64)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[self.names.index(name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def torch_parameter_set(params: Any) -> TorchParameterSet:
    """The engine's view of a module, tensor, list/tuple or dict of tensors."""
    options = params if isinstance(params, TorchParameters) else TorchParameters(params)
    return TorchParameterSet(options)


# -- naming and validating the user's tensors ------------------------------------------------


def named_tensors(params: Any, float64: bool = True) -> tuple[list[str], list[torch.Tensor], str]:
    """(names, tensors, kind) for a module, one tensor, a dict or a sequence of tensors."""
    if isinstance(params, nn.Module):
        named = [(n, p) for n, p in params.named_parameters() if p.requires_grad]
        if not named:
            raise ParameterError(
                f"the {type(params).__name__} has no parameters with requires_grad=True: "
                f"there is nothing to check"
            )
        names, tensors, kind = [n for n, _ in named], [p for _, p in named], "module"
    elif isinstance(params, torch.Tensor):
        names, tensors, kind = [SINGLE_ARRAY_NAME], [params], "tensor"
    elif isinstance(params, Mapping):
        names, tensors, kind = [str(k) for k in params], list(params.values()), "dict"
    elif isinstance(params, (list, tuple)):
        names, tensors, kind = [f"p{i}" for i in range(len(params))], list(params), "sequence"
    else:
        raise ParameterError(
            f"params must be an nn.Module, a tensor, a dict or a list of tensors, not "
            f"{type(params).__name__} (for model.parameters() pass list(model.parameters()) "
            f"or the model itself)"
        )
    if not tensors:
        raise ParameterError("params is empty: there is nothing to check")
    for name, tensor in zip(names, tensors):
        validate_tensor(name, tensor, float64)
    reject_repeated_tensors(names, tensors)
    return names, tensors, kind


def validate_tensor(name: str, tensor: Any, float64: bool = True) -> None:
    """Raise ParameterError unless ``tensor`` is a finite dense float tensor."""
    if not isinstance(tensor, torch.Tensor):
        raise ParameterError(f"parameter {name} is a {type(tensor).__name__}, not a tensor")
    promotable = float64 and tensor.dtype == torch.bfloat16
    if tensor.dtype not in NUMPY_DTYPES and not promotable:
        hint = (
            "check it in float64 with TorchParameters(..., float64=True), or convert "
            f"it once with {name}.data = {name}.data.float()"
            if tensor.is_floating_point()
            else "only floating-point tensors can hold a small perturbation"
        )
        raise ParameterError(f"parameter {name} has dtype {tensor.dtype}: {hint}")
    if tensor.layout != torch.strided:
        raise ParameterError(f"parameter {name} is a {tensor.layout} tensor: use a dense one")
    finite = torch.isfinite(tensor.detach())
    if not bool(finite.all()):
        where = np.unravel_index(int(torch.argmin(finite.reshape(-1).int())), tensor.shape)
        raise ParameterError(
            f"parameter {name} contains {tensor.detach()[where].item()} at "
            f"{format_index(where)}: a gradient check needs finite parameters"
        )


def reject_repeated_tensors(names: list[str], tensors: list[torch.Tensor]) -> None:
    seen: dict[int, str] = {}
    for name, tensor in zip(names, tensors):
        if id(tensor) in seen:
            raise ParameterError(
                f"parameters {seen[id(tensor)]} and {name} are the same tensor: pass it once"
            )
        seen[id(tensor)] = name


def bitwise(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bits as integers, so that comparison is exact (NaN, −0.0)."""
    if tensor.is_floating_point() or tensor.is_complex():
        integer = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
        if tensor.is_complex():
            tensor = torch.view_as_real(tensor)
        return tensor.view(integer[tensor.element_size()])
    return tensor


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bitwise(a), bitwise(b))


@dataclass
class TorchSnapshot:
    """Exact copies of the parameters, the module's buffers and the parameters' ``.grad``."""

    params: list[torch.Tensor]
    buffers: list[torch.Tensor]
    grads: list[torch.Tensor | None]


# -- the parameter set ---------------------------------------------------------------------


class TorchParameterSet(ParameterAdapter):
    """The engine's interface (see :class:`nbgradcheck.adapters.numpy.ParameterSet`) for torch."""

    fixed_argument = True  # the loss sees the in-place perturbations through the model

    def __init__(self, options: TorchParameters) -> None:
        self.options = options
        self.names = options.names
        self.tensors = options.tensors
        self.kind = options.kind
        self.original = options.params
        module = options.params if options.kind == "module" else None
        self.module: nn.Module | None = module
        self.buffers = [b for b in module.buffers()] if module is not None else []
        self.loss: Callable[..., Any] | None = None
        self.pass_argument = False
        self.seed: int | None = None  # set by reseed: the loop fallback re-seeds likewise
        self.batch_fallback: str | None = None  # why vectorized evaluation was given up
        self.verified: set[int] = set()
        self.tapes: dict[int, Tape | str] = {}  # position → its tape, or why none
        self.promoted: list[torch.Tensor] | None = None  # float64 baseline while promoted
        self.unperturbed: float | None = None

    # -- description -------------------------------------------------------------------
    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(t.shape) for t in self.tensors]

    @property
    def dtypes(self) -> list[np.dtype]:
        """NumPy dtypes of the parameters as checked (float64 while promoted)."""
        return [np.dtype(NUMPY_DTYPES[t.dtype]) for t in self.tensors]

    def perturbed_buffers(self) -> list[Any]:
        """The tensors the check writes into (claimed against concurrent checks)."""
        return list(self.tensors)

    def argument(self) -> Any:
        """What ``loss(params)`` receives: the user's model, list or dict."""
        return self.original

    # -- reading and perturbing elements ---------------------------------------------------
    def flat_values(self, position: int, indices: np.ndarray) -> np.ndarray:
        self.ensure_promoted()
        flat = self.tensors[position].detach().reshape(-1)
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=flat.device)
        return flat[index].cpu().numpy()

    def element_setter(self, position: int) -> Callable[[int, Any], None]:
        """Set one element by flat C-order index, in place (a NumPy view on the CPU)."""
        self.ensure_promoted()
        data = self.tensors[position].data
        if data.device.type == "cpu" and data.dtype in NUMPY_DTYPES:
            array = data.numpy()
            if array.flags.c_contiguous:
                return array.reshape(-1).__setitem__
            return array.flat.__setitem__
        shape = tuple(data.shape)

        def set_element(flat_index: int, value: Any) -> None:
            with torch.no_grad():
                data[np.unravel_index(flat_index, shape)] = value

        return set_element

    def group_setter(self, position: int) -> Callable[[np.ndarray, np.ndarray], None]:
        """Set several elements (flat C-order indices) at once, in place (fast mode)."""
        self.ensure_promoted()
        data = self.tensors[position].data
        if data.device.type == "cpu":
            array = data.numpy()
            target = array.reshape(-1) if array.flags.c_contiguous else array.flat

            def set_on_cpu(indices: np.ndarray, values: np.ndarray) -> None:
                target[indices] = values

            return set_on_cpu
        shape = tuple(data.shape)

        def set_on_device(indices: np.ndarray, values: np.ndarray) -> None:
            where = tuple(
                torch.as_tensor(i, device=data.device)
                for i in np.unravel_index(np.asarray(indices), shape)
            )
            with torch.no_grad():
                data[where] = torch.as_tensor(
                    np.asarray(values), dtype=data.dtype, device=data.device
                )

        return set_on_device

    # -- randomness and global state -------------------------------------------------------
    randomness_hint = (
        " With torch, seed= re-seeds torch's generators too (CPU and CUDA). To switch "
        "dropout off for the check instead, pass TorchParameters(model, dropout=False) "
        "(from nbgradcheck.adapters.torch): it puts only the dropout modules in eval mode "
        "and restores them afterwards (model.eval() would change BatchNorm too)."
    )

    def reseed(self, seed: int) -> None:
        """Re-seed torch (all devices), NumPy and Python: dropout masks then repeat."""
        self.seed = seed
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    def rng_fingerprint(self) -> tuple:
        """Cheap summary of the global RNG states: changes whenever a draw is made."""
        states = [torch.get_rng_state()]
        if torch.cuda.is_initialized():
            states += torch.cuda.get_rng_state_all()
        _, key, position, has_gauss, gauss = np.random.get_state()
        return (
            tuple(hash(s.numpy().tobytes()) for s in states),
            position,
            int(key[0]),
            has_gauss,
            gauss,
            hash(random.getstate()),
        )

    def rng_state(self) -> Callable[[], None]:
        """Save the RNG states, switch dropout off and promote to float64 if asked;
        returns the function that undoes all of it.

        The engine calls this once before the first evaluation and the returned function
        once at the end, also on errors, so it brackets the whole check.
        """
        torch_state = torch.get_rng_state()
        cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        numpy_state, python_state = np.random.get_state(), random.getstate()
        modes = self.switch_dropout_off() if not self.options.dropout else []
        demote = self.promote() if self.needs_promotion() else None

        def restore() -> None:
            if demote is not None:
                demote()
            for module, training in modes:
                module.training = training
            torch.set_rng_state(torch_state)
            if cuda_states is not None:
                torch.cuda.set_rng_state_all(cuda_states)
            np.random.set_state(numpy_state)
            random.setstate(python_state)

        return restore

    def switch_dropout_off(self) -> list[tuple[nn.Module, bool]]:
        """Put every dropout module in evaluation mode; returns (module, old mode) pairs."""
        if self.module is None:
            raise ParameterError("dropout=False needs an nn.Module to find the dropout in")
        modes = [
            (m, m.training)
            for m in self.module.modules()
            if isinstance(m, nn.modules.dropout._DropoutNd)
        ]
        for module, _ in modes:
            module.training = False
        return modes

    def needs_promotion(self) -> bool:
        return self.options.float64 and any(t.dtype != torch.float64 for t in self.tensors)

    @property
    def notes(self) -> list[str]:
        """What the result should say about how the check was made."""
        if self.promoted is None:
            return []
        return [
            "checked in float64: the model's low-precision parameters, buffers and "
            "inputs were promoted for the check and restored afterwards "
            "(TorchParameters(model, float64=False) checks it as it is)"
        ]

    def ensure_promoted(self) -> None:
        """Refuse to perturb a model that should be, but is not, promoted."""
        if self.promoted is None and self.needs_promotion():
            raise GradCheckError(
                "float64 promotion happens inside check(), between rng_state() and its undo; "
                "here it did not (executor=/n_jobs= workers cannot promote): pass "
                "TorchParameters(model, float64=False) to check the model in its own dtype"
            )

    def promote(self) -> Callable[[], None]:
        """Parameters and floating buffers as float64 copies; returns the undo function.

        The user's tensors keep their objects: only ``.data`` is swapped, and the
        original data tensors (never written to) are swapped back.
        """
        tensors = self.tensors + [b for b in self.buffers if b.is_floating_point()]
        originals = [t.data for t in tensors]
        grads = [t.grad for t in self.tensors]
        for tensor in self.tensors:
            tensor.grad = None
        for tensor, data in zip(tensors, originals):
            tensor.data = data.to(torch.float64)
        self.promoted = [t.detach().clone() for t in self.tensors]
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        mode = Float64Mode()
        mode.__enter__()
        unpatch = promote_function_inputs()

        def demote() -> None:
            unpatch()
            mode.__exit__(None, None, None)
            torch.set_default_dtype(default)
            for tensor in self.tensors:
                tensor.grad = None
            for tensor, data in zip(tensors, originals):
                tensor.data = data
            for tensor, grad in zip(self.tensors, grads):
                tensor.grad = grad
            self.promoted = None

        return demote

    # -- exact restore ---------------------------------------------------------------------
    def snapshot(self) -> TorchSnapshot:
        """Copies of parameters, buffers and ``.grad`` attributes, for an exact restore."""
        return TorchSnapshot(
            [t.detach().clone() for t in self.tensors],
            [b.detach().clone() for b in self.buffers],
            [None if t.grad is None else t.grad.detach().clone() for t in self.tensors],
        )

    def modified_names(self, snapshot: TorchSnapshot) -> list[str]:
        """Names of the parameters whose bits differ from ``snapshot`` (from the float64
        baseline while promoted)."""
        saved_params = self.promoted if self.promoted is not None else snapshot.params
        return [
            name
            for name, tensor, saved in zip(self.names, self.tensors, saved_params)
            if not same_bits(tensor.detach(), saved)
        ]

    def restore(self, snapshot: TorchSnapshot) -> None:
        """Write parameters, buffers and ``.grad`` back, bit for bit."""
        saved_params = self.promoted if self.promoted is not None else snapshot.params
        with torch.no_grad():
            for tensor, saved in zip(self.tensors, saved_params):
                tensor.data.copy_(saved)
        self.restore_side_state(snapshot)

    def restore_side_state(self, snapshot: TorchSnapshot) -> None:
        """Buffers and ``.grad``: a forward pass in training mode updates running
        statistics and a closure may call backward, so they are put back silently."""
        with torch.no_grad():
            for buffer, saved in zip(self.buffers, snapshot.buffers):
                if not same_bits(buffer, saved):
                    buffer.copy_(saved)
        for tensor, saved in zip(self.tensors, snapshot.grads):
            if saved is None or self.promoted is not None:  # promoted: put back by demote
                tensor.grad = None
            elif tensor.grad is None or not same_bits(tensor.grad, saved):
                tensor.grad = saved.clone()

    def ensure_unmodified(self, snapshot: TorchSnapshot, culprit: str) -> None:
        """Restore buffers and grads; restore and raise if ``culprit`` changed parameters."""
        self.restore_side_state(snapshot)
        changed = self.modified_names(snapshot)
        if changed:
            self.restore(snapshot)
            raise ParametersModifiedError(
                f"{culprit} changed {', '.join(changed)} in place (an optimizer step or an "
                f"in-place operation on a parameter?). The parameters were restored; make "
                f"{culprit} leave them unchanged."
            )

    # -- gradients -------------------------------------------------------------------------
    def match_gradients(self, grads: Any) -> tuple[list[np.ndarray], list[str]]:
        """Align ``grads`` (dict by name, or a list in parameter order) with the parameters."""
        if isinstance(grads, Mapping) and self.kind != "tensor":
            raw, ignored = self.gradients_by_name(grads)
        elif self.kind == "tensor" and not isinstance(grads, (Mapping, list, tuple)):
            raw, ignored = [grads], []
        elif isinstance(grads, (list, tuple)):
            raw, ignored = self.gradients_in_order(grads), []
        else:
            raise GradientError(
                f"grads must be a dict keyed by parameter name ({', '.join(self.names[:3])}"
                f"{', ...' if len(self.names) > 3 else ''}) or a list in parameter order, "
                f"not {type(grads).__name__}"
            )
        matched = [validated_gradient(n, g, t) for n, g, t in zip(self.names, raw, self.tensors)]
        return matched, ignored

    def gradients_by_name(self, grads: Mapping) -> tuple[list[Any], list[str]]:
        keys = [gradient_key(name, grads) for name in self.names]
        missing = [n for n, k in zip(self.names, keys) if k is None]
        if missing:
            raise GradientError(
                f"no gradient for {', '.join(missing)}; gradient keys are: "
                f"{', '.join(map(str, grads)) or '(none)'}"
            )
        unused = [str(k) for k in grads if k not in set(keys)]
        orphans = [
            k
            for k in unused
            if k.lstrip("d") in self.all_parameter_names()
            or looks_like_parameter_gradient(k, self.names)
        ]
        if orphans:
            raise GradientError(
                f"gradient {', '.join(map(repr, orphans))} has no matching parameter being "
                f"checked (frozen, or left out of params?); parameters are: "
                f"{', '.join(self.names)}"
            )
        return [grads[k] for k in keys], unused

    def all_parameter_names(self) -> set[str]:
        if self.module is None:
            return set()
        return {name for name, _ in self.module.named_parameters()}

    def gradients_in_order(self, grads: list | tuple) -> list[Any]:
        if len(grads) != len(self.tensors):
            raise GradientError(
                f"{len(grads)} gradients for {len(self.tensors)} parameters "
                f"({', '.join(self.names)}): give one per parameter, in the same order"
            )
        return list(grads)

    def autograd_gradients(
        self, loss: Callable[..., Any], pass_argument: bool
    ) -> list[torch.Tensor]:
        """One backward pass of the loss; the ``.grad`` attributes are left as they were."""
        self.bind_loss(loss, pass_argument)
        untracked = [n for n, t in zip(self.names, self.tensors) if not t.requires_grad]
        if untracked:
            raise GradientError(
                f"{', '.join(untracked)} {'does' if len(untracked) == 1 else 'do'} not "
                f"require grad, so autograd cannot give the analytic gradient: call "
                f".requires_grad_() on {'it' if len(untracked) == 1 else 'them'} before "
                f"building the loss, or pass grads="
            )
        saved = [t.grad for t in self.tensors]
        try:
            for tensor in self.tensors:
                tensor.grad = None
            with torch.enable_grad():
                value = first_of(loss(self.original) if pass_argument else loss())
                return self.backward(value)
        finally:
            for tensor, grad in zip(self.tensors, saved):
                tensor.grad = grad if self.promoted is None else None

    def backward(self, value: Any) -> list[torch.Tensor]:
        """Gradients of ``value``: from autograd, or the ``.grad`` a closure filled itself."""
        if any(t.grad is not None for t in self.tensors):  # the closure called backward()
            return [
                torch.zeros_like(t) if t.grad is None else t.grad.detach().clone()
                for t in self.tensors
            ]
        if not isinstance(value, torch.Tensor):
            raise GradientError(
                f"the loss returned a {type(value).__name__}, not a tensor, so autograd "
                f"cannot differentiate it: return the loss tensor (not loss.item()), or "
                f"pass grads="
            )
        if value.numel() != 1:
            raise LossError(
                f"the loss returned a tensor of shape {tuple(value.shape)}; "
                f"a gradient check needs a scalar: reduce it (e.g. .mean())"
            )
        if not value.requires_grad:
            raise GradientError(
                "the loss tensor does not require grad (computed under torch.no_grad(), "
                "detached, or from tensors without requires_grad?): autograd cannot give "
                "the analytic gradient; pass grads= or build the loss from the parameters"
            )
        grads = torch.autograd.grad(value.reshape(()), self.tensors, allow_unused=True)
        return [
            torch.zeros_like(t) if g is None else g.detach() for g, t in zip(grads, self.tensors)
        ]

    # -- vectorized evaluation -------------------------------------------------------------
    def bind_loss(self, loss: Callable[..., Any], pass_argument: bool) -> None:
        """Remember the loss, so that perturbations can be evaluated in batches."""
        self.loss, self.pass_argument = loss, pass_argument

    @property
    def can_batch(self) -> bool:
        """True while vectorized evaluation is possible and has not failed.

        A loss that draws random numbers (dropout) fails under ``vmap(randomness="error")``
        and is then evaluated by the loop, re-seeded like the engine's loop.
        """
        if not self.options.vectorize or self.loss is None:
            return False
        if self.module is None and not self.pass_argument:
            return False  # a closure over loose tensors: nothing to substitute them in
        return self.batch_fallback is None

    @property
    def evaluation_notes(self) -> list[str]:
        """Why the loss was evaluated one element at a time, and how to batch it."""
        if self.batch_fallback is None:
            return []
        return [
            f"evaluated one element at a time (slower than in batches): batched evaluation "
            f"failed ({self.batch_fallback[:200]}). Batching needs a loss torch.func.vmap can "
            f"run: no .item() or Python branch on a value computed from the parameters, no "
            f"random draws (TorchParameters(model, dropout=False)), custom "
            f"autograd.Function with setup_context and generate_vmap_rule = True"
        ]

    def batched_losses(self, position: int, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """J with each listed element set to its value in turn; parameters unchanged."""
        indices = np.asarray(indices, dtype=np.int64)
        values = np.asarray(values)
        if self.batch_fallback is None and indices.size >= MIN_BATCH:
            try:
                losses = self.vmapped_losses(position, indices, values)
                if position not in self.verified:
                    self.verify_batched(position, indices, values, losses)
                return losses
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as error:  # the model does not allow vmap: use the loop
                self.batch_fallback = f"{type(error).__name__}: {error}"
        return self.looped_losses(position, indices, values)

    def vmapped_losses(self, position: int, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """J for each (index, value), in batches sized by the memory one copy needs.

        Replayed from the loss's tape where it allows (see
        :mod:`nbgradcheck.adapters.torch_tape`: the change is carried through the layers
        after the parameter, the layers before it are not recomputed), else
        ``torch.func.vmap`` over perturbed copies of the parameter.
        """
        base = self.tensors[position].detach()
        tape = self.tape_for(position)
        out, start = [], 0
        with torch.no_grad():
            if isinstance(tape, Tape) and not tape.bytes_per_copy:  # measured on a few
                start = min(FIRST_BATCH, indices.size)
                out.append(self.replayed(tape, base, indices[:start], values[:start]))
            if isinstance(tape, Tape):
                chunk = batch_size(tape.bytes_per_copy, BATCH_MEMORY_BYTES)
            else:
                chunk = batch_size(base.numel() * base.element_size(), VMAP_MEMORY_BYTES)
            rest = indices.size - start
            chunk = -(-rest // -(-rest // chunk)) if rest else 1  # equal batches, none tiny
            for begin in range(start, indices.size, chunk):
                part = slice(begin, begin + chunk)
                if isinstance(tape, Tape):
                    out.append(self.replayed(tape, base, indices[part], values[part]))
                else:
                    batched = torch.func.vmap(self.scalar_loss_with(position), randomness="error")
                    losses = batched(perturbed_copies(base, indices[part], values[part]))
                    out.append(losses.detach().to("cpu", torch.float64))
        return torch.cat(out).numpy()

    @staticmethod
    def replayed(
        tape: Tape, base: torch.Tensor, indices: np.ndarray, values: np.ndarray
    ) -> torch.Tensor:
        """J for each (index, value) from the tape; the first replay measures the memory
        one copy needs (Tape.bytes_per_copy)."""
        index = torch.as_tensor(indices, device=base.device)
        value = torch.as_tensor(values, dtype=base.dtype, device=base.device)
        sizes: list[int] | None = None if tape.bytes_per_copy else []
        losses = replay(tape, index, value, sizes)
        if sizes is not None:
            tape.bytes_per_copy = max(1, max(sizes, default=1) // max(1, indices.size))
        return losses.detach().to("cpu", torch.float64)

    def tape_for(self, position: int) -> Tape | str:
        """The loss's tape for this parameter, or why there is none. One recorded forward
        pass gives every parameter's tape."""
        if not self.tapes:
            bases = {p: t.detach() for p, t in enumerate(self.tensors)}
            self.tapes = record(self.loss_with_tensors, bases)
        return self.tapes[position]

    def scalar_loss_with(self, position: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """J (a 0-d tensor) with parameter ``position`` replaced by a given tensor."""
        return lambda tensor: self.loss_with_tensors({position: tensor})

    def loss_with_tensors(self, tensors: dict[int, torch.Tensor]) -> torch.Tensor:
        """J (a 0-d tensor) with the parameters at the given positions replaced by the
        given tensors (not in place)."""
        if self.module is not None:
            wrapper = LossModule(self.module, self.loss, self.pass_argument)
            swapped = {"model." + self.names[p]: t for p, t in tensors.items()}
            value = torch.func.functional_call(wrapper, swapped, (), strict=False)
        else:
            argument = self.original
            for position, tensor in tensors.items():
                argument = replaced(argument, self.kind, position, tensor)
            value = self.loss(argument)
        result = first_of(value)
        if not isinstance(result, torch.Tensor) or result.numel() != 1:
            raise LossError("the loss does not return a scalar tensor")
        return result.reshape(())

    def verify_batched(
        self, position: int, indices: np.ndarray, values: np.ndarray, losses: np.ndarray
    ) -> None:
        """Compare a few batched values with the loop; raise when they disagree."""
        picks = np.unique(
            np.linspace(0, indices.size - 1, min(VERIFY_ELEMENTS, indices.size)).astype(int)
        )
        looped = self.looped_losses(position, indices[picks], values[picks])
        j0 = self.unperturbed_loss()
        roundoff = VERIFY_ROUNDOFF * float(np.finfo(self.dtypes[position]).eps)
        for batched_value, loop_value in zip(losses[picks], looped):
            allowed = VERIFY_SHARE * abs(loop_value - j0) + roundoff * max(abs(j0), 1e-30)
            if not abs(batched_value - loop_value) <= allowed:
                raise RuntimeError(
                    f"batched J = {batched_value!r} but looped J = {loop_value!r} for "
                    f"{self.names[position]}: the loss does not see functional_call's tensors"
                )
        self.verified.add(position)

    def unperturbed_loss(self) -> float:
        if self.unperturbed is None:
            self.unperturbed = self.call_loss()
        return self.unperturbed

    def call_loss(self) -> float:
        value = first_of(self.loss(self.original) if self.pass_argument else self.loss())
        return (
            float(value.detach().reshape(()).cpu())
            if isinstance(value, torch.Tensor)
            else float(value)
        )

    def looped_losses(self, position: int, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The same values one evaluation at a time, restoring each element after use."""
        set_element = self.element_setter(position)
        originals = self.flat_values(position, indices).tolist()
        out = np.empty(indices.size)
        for j, (index, value) in enumerate(zip(indices.tolist(), values.tolist())):
            set_element(index, value)
            try:
                if self.seed is not None:
                    self.reseed(self.seed)
                out[j] = self.call_loss()
            finally:
                set_element(index, originals[j])
        return out


LOW_PRECISION = (torch.float16, torch.bfloat16, torch.float32)
NARROWING_METHODS = (torch.Tensor.float, torch.Tensor.half, torch.Tensor.bfloat16)


class Float64Mode(TorchFunctionMode):
    """Every torch function gets float64 for its low-precision tensors and dtypes."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if func in NARROWING_METHODS:  # x.float() stays float64
            return args[0].to(torch.float64)
        try:
            return func(*to_float64(args), **to_float64(kwargs or {}))
        except Exception as error:
            note = (
                "(nbgradcheck: this ran in float64, promoted from the model's dtype; "
                "TorchParameters(model, float64=False) checks it as it is)"
            )
            if hasattr(error, "add_note") and note not in getattr(error, "__notes__", []):
                error.add_note(note)
            raise


def promote_function_inputs() -> Callable[[], None]:
    """Make ``autograd.Function.apply`` promote its inputs; returns the undo function.

    A custom Function saves its inputs for backward, which runs outside the torch
    function mode: a float32 input saved there would meet float64 gradients.
    """
    function = torch.autograd.Function
    original = function.__dict__["apply"]

    def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
        with torch._C.DisableTorchFunction():  # read the true dtypes, not the mode's
            args, kwargs = to_float64(args), to_float64(kwargs)
        return original.__func__(cls, *args, **kwargs)

    function.apply = classmethod(apply)

    def undo() -> None:
        function.apply = original

    return undo


def to_float64(value: Any) -> Any:
    """``value`` with float16/bfloat16/float32 tensors and dtypes made float64."""
    if isinstance(value, torch.Tensor):
        return value.to(torch.float64) if value.dtype in LOW_PRECISION else value
    if isinstance(value, torch.dtype):
        return torch.float64 if value in LOW_PRECISION else value
    if type(value) in (list, tuple):
        return type(value)(to_float64(v) for v in value)
    if type(value) is dict:
        return {k: to_float64(v) for k, v in value.items()}
    return value


class LossModule(nn.Module):
    """The loss as a module holding the model, so ``functional_call`` can swap tensors."""

    def __init__(self, model: nn.Module, loss: Callable[..., Any], pass_argument: bool) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "loss_function", loss)
        self.pass_argument = pass_argument

    def forward(self) -> Any:
        return self.loss_function(self.model) if self.pass_argument else self.loss_function()


def batch_size(bytes_per_copy: int, budget: int) -> int:
    """Perturbations per batched call: ``budget`` bytes of them, 1 to MAX_BATCH."""
    return int(min(MAX_BATCH, max(1, budget // max(1, bytes_per_copy))))


def perturbed_copies(base: torch.Tensor, indices: np.ndarray, values: np.ndarray) -> torch.Tensor:
    """len(indices) copies of ``base``, copy k with element indices[k] set to values[k]."""
    count = len(indices)
    copies = base.reshape(1, -1).repeat(count, 1)
    rows = torch.arange(count, device=base.device)
    columns = torch.as_tensor(indices, device=base.device)
    copies[rows, columns] = torch.as_tensor(values, dtype=base.dtype, device=base.device)
    return copies.reshape(count, *base.shape)


def replaced(original: Any, kind: str, position: int, tensor: torch.Tensor) -> Any:
    """A copy of the user's list/dict (or the tensor itself) with one tensor swapped."""
    if kind == "tensor":
        return tensor
    if kind == "sequence":
        items = list(original)
        items[position] = tensor
        return type(original)(items) if isinstance(original, tuple) else items
    swapped = dict(original)
    swapped[list(original)[position]] = tensor
    return swapped


def first_of(value: Any) -> Any:
    """The loss from a return value that may be a ``(loss, ...)`` tuple."""
    if type(value) is tuple:
        if not value:
            raise LossError("the loss returned an empty tuple; return the loss (first)")
        return value[0]
    return value
