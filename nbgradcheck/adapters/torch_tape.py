"""A torch loss replayed for a batch of one-element changes, carrying each change forward.

The loss runs once, unperturbed, under a :class:`TapeRecorder` (a ``TorchFunctionMode``)
that keeps every torch call whose arguments depend on the parameter under check, with its
result. :func:`replay` then evaluates J for B perturbed copies at once by recomputing
those calls only (the rest of the loss is reused from the tape), and keeps each copy's
change in a compact form for as long as the calls allow:

- :class:`ElementChange`: the parameter itself, one element per copy changed;
- :class:`ColumnChange`: a tensor that differs from its recorded value in one slice along
  its last dimension per copy. ``F.linear`` (or ``@``) with one changed weight or bias
  element changes one output column; elementwise functions keep it a column;
- :class:`DenseChange`: the change spread over the tensor, (B, *shape): after the next
  ``F.linear`` (a rank-one update of the recorded output, not a matrix product), every
  call runs batched, under ``torch.func.vmap`` where it needs to.

So checking an element of layer k of an MLP costs elementwise functions on one column,
a rank-one update of layer k+1's output and the layers after it: neither the layers
before (taken from the tape) nor layer k+1's matrix product.

One recorded forward pass gives every parameter's tape. A tape is refused (the caller
then batches the whole loss under vmap, or loops) when replaying could differ from
running the loss: a value that depends on the parameter read into Python (``.item()``,
``if x > 0``), an in-place change of a tensor that other calls saw, random numbers
drawn, or no dependence on the parameter at all. Custom ``autograd.Function``s need no
vmap rule here: their forward's torch calls are recorded one by one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

# Functions acting element by element on their one tensor argument (other arguments are
# Python numbers or options): a column (or an element) maps to a column (an element).
ELEMENTWISE = frozenset(
    """tanh sigmoid relu relu6 gelu silu elu selu celu leaky_relu softplus mish hardtanh
    hardswish hardsigmoid logsigmoid softsign tanhshrink exp exp2 expm1 log log1p log2
    log10 sin cos tan sinh cosh asinh atan abs neg __neg__ negative __pos__ positive square
    sqrt rsqrt reciprocal erf erfc clamp clip clamp_min clamp_max float double to
    contiguous clone detach""".split()  # noqa: SIM905
)
# Binary functions applied element by element with broadcasting.
BINARY = frozenset(
    """add sub subtract mul multiply div divide true_divide rsub __add__ __radd__ __sub__
    __rsub__ __mul__ __rmul__ __truediv__ __rtruediv__ __div__ __rdiv__ __pow__ __rpow__
    pow maximum minimum fmax fmin atan2 hypot""".split()  # noqa: SIM905
)
# Reading these from a tensor that depends on the parameter reads no value.
METADATA = frozenset(
    """shape dtype device ndim layout requires_grad is_cuda is_sparse is_leaf grad_fn _version
    names size dim ndimension numel nelement stride is_contiguous is_floating_point
    is_complex element_size __len__ get_device storage_offset""".split()  # noqa: SIM905
)
# Elementwise functions whose torch.* form writes into ``out=`` (the batched result of a
# call is then written into that call's own buffer).
WITH_OUT = frozenset({"tanh", "sigmoid", "exp", "log", "sin", "cos", "erf", "sqrt", "abs"})
RESHAPES = frozenset({"view", "reshape", "flatten", "view_as", "reshape_as"})
TRANSPOSES = frozenset({"t", "T", "transpose", "mT"})
LINEAR = "linear"
MATMUL = frozenset({"matmul", "__matmul__", "mm"})
IN_PLACE_OPERATORS = {"__iadd__": "__add__", "__isub__": "__sub__", "__imul__": "__mul__"}
IN_PLACE_OPERATORS |= {"__itruediv__": "__truediv__", "__ipow__": "__pow__"}
CROSS_ENTROPY = inspect.signature(torch.nn.functional.cross_entropy)


# -- recording ------------------------------------------------------------------------------


@dataclass(repr=False)
class Call:
    """A torch call that depends on the parameter, and its recorded result."""

    func: Callable[..., Any]
    name: str
    args: tuple
    kwargs: dict
    output: Any  # the recorded result (as it was then, should a later call change it)
    keys: list[int]  # ids of the result's tensors, as later calls receive them
    positions: frozenset[int]  # the parameters it depends on
    scratch: torch.Tensor | None = None  # this call's batched result, reused by replays


def function_name(func: Any) -> str:
    """``tanh`` for torch.tanh, Tensor.tanh and F.tanh; ``shape`` for a property getter."""
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def tensors_in(value: Any) -> list[torch.Tensor]:
    return [leaf for leaf in tree_flatten(value)[0] if isinstance(leaf, torch.Tensor)]


class TapeRecorder(TorchFunctionMode):
    """Records the torch calls that depend on any of ``markers`` (see the module
    docstring), with the positions of the markers each depends on."""

    def __init__(self, markers: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.markers = {id(marker): position for position, marker in markers.items()}
        self.depends: dict[int, frozenset[int]] = {
            id(marker): frozenset([position]) for position, marker in markers.items()
        }
        self.calls: list[Call] = []
        # constants that dependent calls saw, with their versions and the calls' positions
        self.watched: list[tuple[torch.Tensor, int, frozenset[int]]] = []
        self.refusals: dict[int, str] = {}  # position → why its tape cannot be replayed

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        inputs = tensors_in((args, kwargs))
        positions = frozenset().union(*(self.depends.get(id(t), ()) for t in inputs))
        if not positions:
            return func(*args, **kwargs)
        name = function_name(func)
        replay_func, replay_kwargs = self.out_of_place(func, name, args, kwargs, positions)
        for tensor in inputs:
            if id(tensor) not in self.depends:
                self.watched.append((tensor, tensor._version, positions))
        output = func(*args, **kwargs)
        outputs = tensors_in(output)
        if not outputs:
            if name not in METADATA:
                self.refuse(positions, f"{name}() reads a value that depends on the parameter")
            return output
        self.depends.update((id(t), positions) for t in outputs)
        keys = [id(t) for t in outputs]
        self.calls.append(Call(replay_func, name, args, replay_kwargs, output, keys, positions))
        return output

    def out_of_place(
        self, func: Any, name: str, args: tuple, kwargs: dict, positions: frozenset[int]
    ) -> tuple[Callable[..., Any], dict]:
        """The function to replay: an in-place call's out-of-place twin. The tensor it
        changes keeps its value for the calls recorded before (a copy is put there)."""
        twin = None
        if kwargs.get("inplace") is True:
            twin, kwargs = func, {**kwargs, "inplace": False}
        elif name in IN_PLACE_OPERATORS:
            twin = getattr(torch.Tensor, IN_PLACE_OPERATORS[name], None)
        elif name.endswith("_") and not name.endswith("__"):
            owner = torch.Tensor if hasattr(torch.Tensor, name) else torch
            twin = getattr(owner, name[:-1], None)
        elif "out" not in kwargs:
            return func, kwargs
        target = args[0] if args else kwargs.get("input")
        if twin is None or not isinstance(target, torch.Tensor) or id(target) in self.markers:
            self.refuse(positions, f"{name}() changes a tensor in place")
        elif self.depends.get(id(target)) != positions:
            reason = f"{name}() writes values depending on the parameter into a constant"
            self.refuse(positions, reason)
        else:
            self.keep_value_before_change(target, name, positions)
        return twin or func, kwargs

    def keep_value_before_change(
        self, target: torch.Tensor, name: str, positions: frozenset[int]
    ) -> None:
        storage = target.untyped_storage().data_ptr()
        saved = target.detach().clone()
        for call in self.calls:
            if call.output is target:
                call.output = saved
                continue
            for tensor in tensors_in(call.output):
                if tensor is target:
                    self.refuse(positions, f"{name}() changes a tensor returned in a container")
                elif tensor.untyped_storage().data_ptr() == storage:
                    self.refuse(positions, f"{name}() changes a tensor that another one views")

    def refuse(self, positions: frozenset[int], reason: str) -> None:
        for position in positions:
            self.refusals.setdefault(position, reason)


@dataclass(repr=False)
class Tape:
    """One parameter's recorded calls, and the loss they produce."""

    marker: torch.Tensor
    calls: list[Call]
    output: torch.Tensor
    bytes_per_copy: int = 0  # memory one perturbed copy needs at most (replay's ``sizes``)


def record(
    loss_of: Callable[[dict[int, torch.Tensor]], torch.Tensor], bases: dict[int, torch.Tensor]
) -> dict[int, Tape | str]:
    """Run ``loss_of`` once with each parameter ``bases[position]`` in place and keep
    what depends on each: its tape, or why a replay could differ from running the loss."""
    markers = {position: base.view_as(base) for position, base in bases.items()}
    generator = torch.get_rng_state()
    recorder = TapeRecorder(markers)
    with torch.no_grad(), recorder:
        output = loss_of(markers)
    draws = not torch.equal(generator, torch.get_rng_state())
    changed = [positions for t, v, positions in recorder.watched if t._version != v]
    reached = recorder.depends.get(id(output), frozenset())
    tapes: dict[int, Tape | str] = {}
    for position, marker in markers.items():
        if draws:
            tapes[position] = "the loss draws random numbers"
        elif position in recorder.refusals:
            tapes[position] = recorder.refusals[position]
        elif any(position in positions for positions in changed):
            tapes[position] = "the loss changes in place a tensor it used with the parameter"
        elif position not in reached:
            tapes[position] = "the loss does not see functional_call's tensors"
        else:
            calls = [call for call in recorder.calls if position in call.positions]
            tapes[position] = Tape(marker, calls, output)
    return tapes


# -- the changes ----------------------------------------------------------------------------


@dataclass
class ElementChange:
    """``base`` with flat element ``index[b]`` set to ``value[b]`` in copy b."""

    base: torch.Tensor
    index: torch.Tensor  # (B,) int64
    value: torch.Tensor  # (B,)

    @property
    def delta(self) -> torch.Tensor:
        return self.value - self.base.reshape(-1)[self.index]


@dataclass
class ColumnChange:
    """``base`` with ``base[..., column[b]]`` replaced by ``values[b]`` in copy b."""

    base: torch.Tensor
    column: torch.Tensor  # (B,) int64
    values: torch.Tensor  # (B, *base.shape[:-1])

    @property
    def delta(self) -> torch.Tensor:
        return self.values - column_of(self.base, self.column)


@dataclass
class DenseChange:
    values: torch.Tensor  # (B, *shape)


Change = ElementChange | ColumnChange | DenseChange


def held_bytes(change: Change) -> int:
    values = change.value if isinstance(change, ElementChange) else change.values
    return values.numel() * values.element_size()


def column_of(tensor: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """tensor[..., column[b]] for each b, as (B, *tensor.shape[:-1]), contiguous (with
    the copies' dimension innermost, as index_select leaves it, every result computed
    from it would be laid out so, and a matrix product would loop over the copies)."""
    return tensor.index_select(-1, column).movedim(-1, 0).contiguous()


def lead_view(vector: torch.Tensor, lead_dims: int) -> torch.Tensor:
    """(B,) → (B, 1, ..., 1) broadcasting against (B, *lead)."""
    return vector.reshape(vector.shape[0], *([1] * lead_dims))


def dense(change: Change, count: int) -> torch.Tensor:
    """The change as (B, *shape) perturbed copies."""
    if isinstance(change, DenseChange):
        return change.values
    base = change.base
    if isinstance(change, ElementChange):
        copies = base.reshape(1, -1).repeat(count, 1)
        copies[torch.arange(count, device=base.device), change.index] = change.value
        return copies.reshape(count, *base.shape)
    lead = base.shape[:-1]
    copies = base.unsqueeze(0).expand(count, *base.shape).clone()
    where = lead_view(change.column, len(lead) + 1).expand(count, *lead, 1)
    return copies.scatter_(-1, where, change.values.unsqueeze(-1))


# -- replaying ------------------------------------------------------------------------------


def replay(
    tape: Tape, index: torch.Tensor, value: torch.Tensor, sizes: list[int] | None = None
) -> torch.Tensor:
    """J for each copy b: the loss with the parameter's element index[b] set to value[b].
    ``sizes`` collects the bytes of every change held (dense arrays count whole, columns
    and elements only what changed): what the batch needs in memory."""
    count = int(index.shape[0])
    changes: dict[int, Change] = {id(tape.marker): ElementChange(tape.marker, index, value)}
    with torch.no_grad():
        for call in tape.calls:
            result = replay_call(call, changes, count)
            if not isinstance(result, (ElementChange, ColumnChange, DenseChange)):
                result = [DenseChange(batched) for batched in tensors_in(result)]
            for key, change in zip(call.keys, result if isinstance(result, list) else [result]):
                changes[key] = change
                if sizes is not None:
                    sizes.append(held_bytes(change))
    return dense(changes[id(tape.output)], count).reshape(count).clone()  # not a buffer


def replay_call(call: Call, changes: dict[int, Change], count: int) -> Any:
    """The call's result for every copy: compact where a rule applies, else batched.

    The recorded arguments are used detached: a parameter requiring grad stops
    torch.matmul from folding a batch into one matrix product (a loop of small ones)."""
    leaves, spec = tree_flatten((call.args, call.kwargs))
    slots = [
        i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor) and id(leaf) in changes
    ]
    tensor_count = sum(isinstance(leaf, torch.Tensor) for leaf in leaves)
    if len(slots) == 1 and isinstance(call.output, torch.Tensor):
        changed = leaves[slots[0]]
        rule = compact_rule(call, changed, changes[id(changed)], tensor_count)
        if rule is not None:
            return rule
    return batched_call(call, leaves, spec, slots, changes, count)


def compact_rule(
    call: Call, changed: torch.Tensor, change: Change, tensor_count: int
) -> Change | None:
    """The result as an element or column change (or a batch computed without vmap), when
    ``call`` allows it; None otherwise. ``changed`` is the argument ``change`` is about."""
    name, output = call.name, call.output
    first = bool(call.args) and call.args[0] is changed
    if name == LINEAR:
        return linear_rule(call, changed, change)
    if name in MATMUL and len(call.args) == 2 and not call.kwargs:
        return matmul_rule(call, changed, change)
    if isinstance(change, DenseChange):
        return dense_rule(call, changed, change, tensor_count)
    if name in ELEMENTWISE and tensor_count == 1 and first:
        return map_values(change, output, lambda v: call.func(v, *call.args[1:], **call.kwargs))
    if name in BINARY and len(call.args) == 2 and not call.kwargs:
        return binary_rule(call, 0 if first else 1, change)
    if isinstance(change, ElementChange) and tensor_count == 1 and first:
        if name in RESHAPES and output.numel() == change.base.numel():
            return ElementChange(output, change.index, change.value)
        if name in TRANSPOSES and change.base.dim() == 2 and output.dim() == 2:
            rows, columns = change.base.shape
            if tuple(output.shape) == (columns, rows):
                index = (change.index % columns) * rows + change.index // columns
                return ElementChange(output, index, change.value)
    if name in ("sum", "mean") and len(call.args) == 1 and first and not call.kwargs:
        total = change.delta.reshape(change.delta.shape[0], -1).sum(1)
        scale = 1.0 if name == "sum" else 1.0 / max(1, change.base.numel())
        return DenseChange(output + total * scale)
    return None


def map_values(change: Change, output: torch.Tensor, function: Callable) -> Change | None:
    """An elementwise function applied to the changed values only."""
    if output.shape != change.base.shape:
        return None
    if isinstance(change, ElementChange):
        return ElementChange(output, change.index, function(change.value))
    return ColumnChange(output, change.column, function(change.values))


def binary_rule(call: Call, slot: int, change: Change) -> Change | None:
    """a ∘ b with one operand changed: evaluated on the changed column (or element) only."""
    output = call.output
    other = call.args[1 - slot]
    if not isinstance(other, torch.Tensor) or other.dim() == 0:
        operands = list(call.args)

        def function(values: torch.Tensor) -> torch.Tensor:
            operands[slot] = values
            return call.func(*operands)

        return map_values(change, output, function)
    if output.dim() == 0:
        return None
    if isinstance(change, ElementChange):  # a bias vector added along the last dimension
        if change.base.dim() != 1 or change.base.shape[0] != output.shape[-1]:
            return None
        values = lead_view(change.value, output.dim() - 1)
        column = change.index
    else:
        if output.shape != change.base.shape:
            return None
        values, column = change.values, change.column
    partner = column_of(other.expand(output.shape), column)
    operands = [partner, partner]
    operands[slot] = values.expand_as(partner)
    return ColumnChange(output, column, call.func(*operands))


def linear_rule(call: Call, changed: torch.Tensor, change: Change) -> Change | None:
    """F.linear(x, W, b) with one of x, W, b changed."""
    names = ("input", "weight", "bias")
    bound = dict(zip(names, call.args)) | call.kwargs
    x, weight, bias = (bound.get(n) for n in names)
    output = call.output
    if isinstance(change, ElementChange) and changed is weight and weight.dim() == 2:
        row, column = change.index // weight.shape[1], change.index % weight.shape[1]
        lead = output.dim() - 1
        shift = lead_view(change.delta, lead) * column_of(x, column)
        return ColumnChange(output, row, column_of(output, row) + shift)
    if isinstance(change, ElementChange) and changed is bias:
        lead = output.dim() - 1
        return ColumnChange(
            output, change.index, column_of(output, change.index) + lead_view(change.delta, lead)
        )
    if isinstance(change, ColumnChange) and changed is x:
        return rank_one(call, output, change, weight.index_select(1, change.column).T)
    if isinstance(change, DenseChange) and changed is x:
        bias = None if bias is None else bias.detach()
        return DenseChange(torch.nn.functional.linear(change.values, weight.detach(), bias))
    return None


def matmul_rule(call: Call, changed: torch.Tensor, change: Change) -> Change | None:
    """x @ W (W two-dimensional) with x or one element of W changed."""
    x, weight = call.args
    output = call.output
    two_dimensional = isinstance(weight, torch.Tensor) and weight.dim() == 2
    if not two_dimensional or not isinstance(x, torch.Tensor) or x.dim() < 1 or x is weight:
        return None
    if isinstance(change, ElementChange) and changed is weight:
        row, column = change.index // weight.shape[1], change.index % weight.shape[1]
        lead = output.dim() - 1
        shift = lead_view(change.delta, lead) * column_of(x, row)
        return ColumnChange(output, column, column_of(output, column) + shift)
    if isinstance(change, ColumnChange) and changed is x:
        return rank_one(call, output, change, weight.index_select(0, change.column))
    if isinstance(change, DenseChange) and changed is x:
        return DenseChange(torch.matmul(change.values, weight.detach()))
    return None


def rank_one(
    call: Call, output: torch.Tensor, change: ColumnChange, rows: torch.Tensor
) -> DenseChange:
    """The recorded product plus (changed column of the input) ⊗ (its row of the weight):
    ``rows`` is (B, N), the weight's entries for each copy's column."""
    lead = output.dim() - 1
    rows = rows.reshape(rows.shape[0], *([1] * lead), -1)
    target = scratch(call, (rows.shape[0], *output.shape), output)
    return DenseChange(torch.addcmul(output, change.delta.unsqueeze(-1), rows, out=target))


def scratch(call: Call, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """The call's own buffer for a batched result (a fresh large array costs page faults
    on every replay: up to a quarter of its time)."""
    buffer = call.scratch
    if buffer is None or buffer.shape != shape or buffer.dtype != like.dtype:
        buffer = call.scratch = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buffer


def cross_entropy_rule(call: Call, changed: torch.Tensor, change: DenseChange) -> Change | None:
    """F.cross_entropy of perturbed logits (N, C) against class indices: one call over
    all copies' rows, summed per copy (the default options only)."""
    try:
        bound = CROSS_ENTROPY.bind(*call.args, **call.kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    options = bound.arguments
    logits, target, reduction = options["input"], options["target"], options["reduction"]
    plain = (
        options["weight"] is None
        and options["size_average"] is None
        and options["reduce"] is None
        and options["label_smoothing"] == 0.0
        and reduction in ("mean", "sum")
    )
    if not plain or changed is not logits or logits.dim() != 2 or target.dim() != 1:
        return None
    if target.is_floating_point():
        return None
    count, rows = change.values.shape[0], logits.shape[0]
    losses = torch.nn.functional.cross_entropy(
        change.values.reshape(count * rows, -1),
        target.repeat(count),
        ignore_index=options["ignore_index"],
        reduction="none",
    )
    total = losses.view(count, rows).sum(1)
    if reduction == "mean":
        total = total / (target != options["ignore_index"]).sum()
    return DenseChange(total)


def dense_rule(
    call: Call, changed: torch.Tensor, change: DenseChange, tensor_count: int
) -> Change | None:
    """Elementwise functions on perturbed copies need no vmap: the batch dimension leads,
    and broadcasting aligns the other operand's trailing dimensions."""
    name, values = call.name, change.values
    first = bool(call.args) and call.args[0] is changed
    if name == "cross_entropy":
        return cross_entropy_rule(call, changed, change)
    if name in ELEMENTWISE and first and tensor_count == 1:
        if name in WITH_OUT and call.func is getattr(torch, name) and not call.kwargs:
            target = scratch(call, tuple(values.shape), values)
            return DenseChange(call.func(values, *call.args[1:], out=target))
        return DenseChange(call.func(values, *call.args[1:], **call.kwargs))
    if name in BINARY and len(call.args) == 2 and not call.kwargs:
        slot = 0 if first else 1
        other = call.args[1 - slot]
        if isinstance(other, torch.Tensor) and other.dim() >= values.dim():
            return None
        operands = list(call.args)
        operands[slot] = values
        return DenseChange(call.func(*operands))
    return None


def batched_call(
    call: Call, leaves: list, spec: Any, slots: list[int], changes: dict, count: int
) -> Any:
    """The call under torch.func.vmap over the perturbed copies of its changed inputs."""

    def one(*inputs: torch.Tensor) -> Any:
        substituted = [x.detach() if isinstance(x, torch.Tensor) else x for x in leaves]
        for i, tensor in zip(slots, inputs):
            substituted[i] = tensor
        args, kwargs = tree_unflatten(substituted, spec)
        return call.func(*args, **kwargs)

    copies = [dense(changes[id(leaves[i])], count) for i in slots]
    return torch.func.vmap(one, randomness="error")(*copies)
