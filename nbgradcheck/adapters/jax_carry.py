"""A JAX loss evaluated for a batch of one-element changes, carrying each change forward.

The loss is traced once to a jaxpr (``jax.make_jaxpr``); :func:`batched_losses_function`
returns a compiled function that interprets that jaxpr for B perturbed copies of one leaf
at once. Each copy's change is kept in a compact form for as long as the primitives allow:

- :class:`ElementChange`: the leaf itself, one element per copy changed;
- :class:`ColumnChange`: an array that differs from its unperturbed value in one slice
  along its last dimension per copy: ``x @ W`` with one changed element of W (or a bias
  element broadcast and added) changes one output column; elementwise primitives keep it
  a column;
- :class:`DenseChange`: (B, *shape), the change spread everywhere (after the next
  ``dot_general``, a rank-one update of the unperturbed product): every primitive from
  here runs batched under ``jax.vmap``.

The unperturbed values are computed once per call, so the layers before the perturbed
leaf cost one forward pass for the whole batch, and only those a rule reads are computed
(:class:`Deferred`). XLA compiles one program for all the leaves of a check (a branch
each) and one batch size: the caller pads the last chunk to it. Nested jaxprs (``jit``,
``custom_jvp_call``, ``custom_vjp_call``) are interpreted inside, so ``jax.nn.relu`` keeps
a column a column.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jax_core

UNARY = frozenset(
    """tanh logistic exp exp2 log log1p expm1 neg abs sqrt rsqrt cbrt sin cos tan asin acos
    atan sinh cosh asinh acosh atanh erf erfc erf_inv integer_pow square sign floor ceil
    round convert_element_type reduce_precision copy copy_p real imag""".split()  # noqa: SIM905
)
BINARY = frozenset(
    """add sub mul div max min pow atan2 rem add_any nextafter""".split()  # noqa: SIM905
)
# XLA's optimizations cost more time than they save for the few calls of a check. Per
# program of a 50k-parameter MLP: 0.25 s to compile by default, 0.14 s at backend level 0,
# 0.07 s also without the fusion emitters (XLA's older loop emitters) and LLVM's expensive
# passes; the calls run about as fast as at level 0. Options this XLA does not know are
# dropped (see compile_lowered).
COMPILER_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_cpu_use_fusion_emitters": False,
    "xla_llvm_disable_expensive_passes": True,
}
# A program whose evaluations in a check take this many times its (fast) compilation is
# compiled again with XLA's optimizations, which cost about 2.5 times as long to compile
# and save 20 % (an MLP) to 80 % (a small conv net) of the time of each call.
OPTIMIZE_AFTER = 10.0
# Primitives holding a jaxpr that is interpreted in place, and the parameter holding it.
NESTED = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr"}
NESTED |= {"custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr"}
NESTED |= {"custom_vjp_call_jaxpr": "fun_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr"}


class Deferred:
    """An unperturbed value, computed (traced) when a rule or a batched equation first
    reads it: past the point where a change is spread over the whole batch, the loss's
    unperturbed values are not needed, and XLA is not given them to compile."""

    __slots__ = ("aval", "compute", "value")

    def __init__(self, compute: Callable[[], Any], aval: Any) -> None:
        self.compute, self.aval, self.value = compute, aval, None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.aval.shape)

    @property
    def ndim(self) -> int:
        return len(self.aval.shape)

    @property
    def size(self) -> int:
        return math.prod(self.aval.shape)

    def get(self) -> Any:
        if self.value is None:
            self.value = self.compute()
        return self.value


def resolve(value: Any) -> Any:
    """The value itself (a Deferred computed now)."""
    return value.get() if isinstance(value, Deferred) else value


@dataclass
class ElementChange:
    """``base`` with flat element ``index[b]`` set to ``value[b]`` in copy b."""

    base: Any  # an array or a Deferred
    index: Any  # (B,) integers
    value: Any  # (B,)

    @property
    def delta(self) -> Any:
        return self.value - slices(resolve(self.base).reshape(-1), self.index, 0)


@dataclass
class ColumnChange:
    """``base`` with ``base[..., column[b]]`` replaced by ``values[b]`` in copy b."""

    base: Any  # an array or a Deferred
    column: Any  # (B,) integers
    values: Any  # (B, *base.shape[:-1])

    @property
    def delta(self) -> Any:
        return self.values - column_of(resolve(self.base), self.column)


@dataclass
class DenseChange:
    values: Any  # (B, *shape)


Change = ElementChange | ColumnChange | DenseChange


def slices(array: Any, index: Any, axis: int) -> Any:
    """array's slices index[b] along ``axis``, as (B, *other axes): one gather, the
    indices known to be in bounds (jnp.take adds a wrap-around and bounds masking)."""
    shape = array.shape
    others = tuple(range(1, len(shape)))
    numbers = lax.GatherDimensionNumbers(
        offset_dims=others, collapsed_slice_dims=(axis,), start_index_map=(axis,)
    )
    sizes = tuple(1 if d == axis else n for d, n in enumerate(shape))
    return lax.gather(
        array,
        index[:, None],
        numbers,
        sizes,
        mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
        indices_are_sorted=False,
        unique_indices=False,
    )


def column_of(array: Any, column: Any) -> Any:
    """array[..., column[b]] for each b, as (B, *array.shape[:-1])."""
    return slices(array, column, array.ndim - 1)


def divmod_index(index: Any, width: int) -> tuple[Any, Any]:
    """(index // width, index % width) for non-negative indices, one operation each."""
    divisor = np.asarray(width, dtype=index.dtype)
    return lax.div(index, divisor), lax.rem(index, divisor)


def lead_view(vector: Any, dims: int) -> Any:
    """(B,) → (B, 1, ..., 1) broadcasting against (B, *lead)."""
    return vector.reshape(vector.shape[0], *([1] * dims))


def dense(change: Change, count: int) -> Any:
    """The change as (B, *shape) perturbed copies."""
    if isinstance(change, DenseChange):
        return change.values
    base = jnp.asarray(resolve(change.base))
    if isinstance(change, ElementChange):
        flat = base.reshape(1, -1)
        hit = lax.broadcasted_iota(change.index.dtype, (1, base.size), 1) == change.index[:, None]
        value = change.value.astype(base.dtype)[:, None]
        return select(hit, value, flat).reshape(count, *base.shape)
    width = base.shape[-1]
    hit = lax.broadcasted_iota(change.column.dtype, (1, width), 1) == change.column[:, None]
    hit = hit.reshape(count, *([1] * (base.ndim - 1)), width)
    values = jnp.broadcast_to(change.values, (count, *base.shape[:-1]))[..., None]
    return select(hit, values.astype(base.dtype), base)


def select(condition: Any, if_true: Any, if_false: Any) -> Any:
    """jnp.where without its nested jit (one select, the operands broadcast first)."""
    shape = jnp.broadcast_shapes(condition.shape, if_true.shape, if_false.shape)
    return lax.select(
        jnp.broadcast_to(condition, shape),
        jnp.broadcast_to(if_true, shape),
        jnp.broadcast_to(if_false, shape),
    )


# -- the interpreter --------------------------------------------------------------------------


def read(env: dict, var: Any) -> Any:
    """The variable's value, possibly a Deferred."""
    return var.val if isinstance(var, jax_core.Literal) else env[var]


def bind(eqn: Any, values: Sequence[Any]) -> list[Any]:
    """The equation applied to ``values`` (as ``jax.core.eval_jaxpr`` applies it)."""
    result = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
    return list(result) if eqn.primitive.multiple_results else [result]


def deferred(eqn: Any, inputs: list) -> list[Deferred]:
    """The equation's outputs, computed together when one of them is first read."""
    computed: list[list[Any]] = []

    def outputs() -> list[Any]:
        if not computed:
            computed.append(bind(eqn, [resolve(x) for x in inputs]))
        return computed[0]

    return [
        Deferred(lambda position=position: outputs()[position], var.aval)
        for position, var in enumerate(eqn.outvars)
    ]


def interpret(
    jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], changed: dict[int, Change], count: int
) -> tuple[list[Any], list[Change | None]]:
    """The jaxpr's outputs unperturbed (possibly Deferred), and their changes given the
    arguments' changes."""
    env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    changes: dict[Any, Change] = {jaxpr.invars[i]: change for i, change in changed.items()}
    for eqn in jaxpr.eqns:
        inputs = [read(env, v) for v in eqn.invars]
        incoming = [None if isinstance(v, jax_core.Literal) else changes.get(v) for v in eqn.invars]
        if any(change is not None for change in incoming):
            outputs, results = equation_changes(eqn, inputs, incoming, count)
            changes.update((v, c) for v, c in zip(eqn.outvars, results) if c is not None)
        else:
            outputs = deferred(eqn, inputs)
        env.update(zip(eqn.outvars, outputs))
    outputs = [read(env, v) for v in jaxpr.outvars]
    return outputs, [
        None if isinstance(v, jax_core.Literal) else changes.get(v) for v in jaxpr.outvars
    ]


def equation_changes(
    eqn: Any, inputs: list, incoming: list, count: int
) -> tuple[list[Any], list[Change | None]]:
    """The equation's unperturbed outputs and their changes: compact where a rule
    applies, else batched. A nested jaxpr is interpreted in place."""
    name = eqn.primitive.name
    if name in NESTED:
        nested = eqn.params[NESTED[name]]
        jaxpr, consts = (nested.jaxpr, nested.consts) if hasattr(nested, "jaxpr") else (nested, [])
        if len(jaxpr.invars) == len(inputs):
            slots = {i: c for i, c in enumerate(incoming) if c is not None}
            return interpret(jaxpr, consts, inputs, slots, count)
    outputs = deferred(eqn, inputs)
    slots = [i for i, change in enumerate(incoming) if change is not None]
    if len(slots) == 1 and not eqn.primitive.multiple_results:
        rule = compact_rule(eqn, inputs, outputs[0], slots[0], incoming[slots[0]])
        if rule is not None:
            return outputs, [rule]
    return outputs, batched(eqn, inputs, incoming, count)


def batched(eqn: Any, inputs: list, incoming: list, count: int) -> list[Change]:
    """The equation under jax.vmap over the perturbed copies of its changed inputs."""
    values = [resolve(x) if c is None else dense(c, count) for x, c in zip(inputs, incoming)]
    axes = [None if c is None else 0 for c in incoming]
    results = jax.vmap(lambda *xs: bind(eqn, xs), in_axes=axes)(*values)
    return [DenseChange(r) for r in results]


def compact_rule(eqn: Any, inputs: list, output: Any, slot: int, change: Change) -> Change | None:
    """The output's change in compact form, or None (then batched). ``output`` is the
    unperturbed output, a Deferred: read only where the new change needs it."""
    name = eqn.primitive.name
    if isinstance(change, DenseChange):
        return None
    if name in UNARY and len(inputs) == 1:
        return mapped(change, output, lambda v: eqn.primitive.bind(v, **eqn.params))
    if name in BINARY and len(inputs) == 2:
        return binary_rule(eqn, inputs, output, slot, change)
    if name == "dot_general":
        return dot_rule(eqn, inputs, output, slot, change)
    if isinstance(change, ElementChange):
        return element_rule(eqn, output, change)
    if name == "reduce_sum" and len(eqn.params["axes"]) == change.base.ndim:
        delta = change.delta
        return DenseChange(resolve(output) + delta.reshape(delta.shape[0], -1).sum(1))
    return None


def mapped(change: Change, output: Any, function: Callable) -> Change | None:
    """An elementwise primitive applied to the changed values only."""
    if output.shape != change.base.shape:
        return None
    if isinstance(change, ElementChange):
        return ElementChange(output, change.index, function(change.value))
    return ColumnChange(output, change.column, function(change.values))


def binary_rule(eqn: Any, inputs: list, output: Any, slot: int, change: Change) -> Change | None:
    """a ∘ b with one operand changed, evaluated on the changed column (or element)."""
    other = resolve(inputs[1 - slot])

    def apply(values: Any, partner: Any) -> Any:
        operands = [partner, partner]
        operands[slot] = values
        return eqn.primitive.bind(*operands, **eqn.params)

    if jnp.ndim(other) == 0:
        return mapped(change, output, lambda v: apply(v, other))
    base = change.base
    if output.ndim == 0 or base.ndim != output.ndim or base.shape[-1] != output.shape[-1]:
        return None
    if isinstance(change, ElementChange):
        if base.shape != output.shape:
            return None
        partner = slices(jnp.broadcast_to(other, output.shape).reshape(-1), change.index, 0)
        return ElementChange(output, change.index, apply(change.value, partner))
    lead = (change.values.shape[0], *output.shape[:-1])
    partner = column_of(jnp.broadcast_to(other, output.shape), change.column)
    return ColumnChange(
        output, change.column, apply(jnp.broadcast_to(change.values, lead), partner)
    )


def element_rule(eqn: Any, output: Any, change: ElementChange) -> Change | None:
    """Structural primitives on the perturbed leaf itself."""
    name, base = eqn.primitive.name, change.base
    if name == "broadcast_in_dim" and base.ndim == 1 and output.ndim >= 1:
        last = (output.ndim - 1,)
        if tuple(eqn.params["broadcast_dimensions"]) == last and output.shape[-1] == base.shape[0]:
            values = jnp.broadcast_to(
                lead_view(change.value, output.ndim - 1),
                (change.value.shape[0], *output.shape[:-1]),
            )
            return ColumnChange(output, change.index, values)
    if name in ("reshape", "squeeze", "expand_dims") and output.size == base.size:
        return ElementChange(output, change.index, change.value)
    if name == "transpose" and base.ndim == 2 and tuple(eqn.params["permutation"]) == (1, 0):
        rows, columns = base.shape
        row, column = divmod_index(change.index, columns)
        return ElementChange(output, column * rows + row, change.value)
    return None


def dot_rule(eqn: Any, inputs: list, output: Any, slot: int, change: Change) -> Change | None:
    """x @ W (W two-dimensional, contracted on either axis) with one element of W, or one
    column of x, changed."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    x_shape, weight_shape = (var.aval.shape for var in eqn.invars)
    if lhs_batch or rhs_batch or len(weight_shape) != 2 or len(rhs_contract) != 1:
        return None
    if tuple(lhs_contract) != (len(x_shape) - 1,):
        return None
    contract = rhs_contract[0]  # 0: W is (K, N); 1: W is (N, K)
    lead = output.ndim - 1
    if slot == 1 and isinstance(change, ElementChange):
        row, column = divmod_index(change.index, weight_shape[1])
        k, n = (row, column) if contract == 0 else (column, row)
        shift = lead_view(change.delta, lead) * column_of(resolve(inputs[0]), k)
        return ColumnChange(output, n, column_of(resolve(output), n) + shift)
    if slot == 0 and isinstance(change, ColumnChange):
        rows = slices(resolve(inputs[1]), change.column, contract)  # (B, N)
        rows = rows.reshape(rows.shape[0], *([1] * lead), -1)
        return DenseChange(resolve(output) + change.delta[..., None] * rows)
    return None


# -- the batched loss -------------------------------------------------------------------------


def batched_losses_function(
    closed_jaxpr: Any,
    positions: Sequence[int],
    count: int,
    leaves: Sequence[Any],
    dtype: Any,
    copies: int,
) -> BatchedLosses:
    """A compiled function (slot, consts, leaves, index, value) → J for each of ``count``
    copies, copy b with element index[b] of leaf ``positions[slot]`` set to value[b]
    (``value`` of ``dtype``; ``leaves`` like these); a check evaluates about ``copies``.

    One program holds every listed leaf, as the branches of a ``lax.switch``: XLA
    compiles them in one go (a program has a fixed cost to trace, lower and compile, and
    the leaves of a model have different shapes, so they cannot share one)."""
    jaxpr = closed_jaxpr.jaxpr

    def branch(position: int) -> Callable:
        def losses(consts: list, leaves: list, index: Any, value: Any) -> Any:
            change = ElementChange(leaves[position], index, value)
            outputs, changes = interpret(jaxpr, consts, leaves, {position: change}, count)
            if changes[0] is None:  # the loss does not depend on this leaf
                return jnp.broadcast_to(jnp.reshape(resolve(outputs[0]), ()), (count,))
            return jnp.reshape(dense(changes[0], count), (count,))

        return losses

    branches = [branch(position) for position in positions]

    def switched(slot: Any, consts: list, leaves: list, index: Any, value: Any) -> Any:
        if len(branches) == 1:
            return branches[0](consts, leaves, index, value)
        return lax.switch(slot, branches, consts, leaves, index, value)

    example = (
        np.int32(0),
        list(closed_jaxpr.consts),
        list(leaves),
        np.zeros(count, dtype=np.int64),
        np.zeros(count, dtype=dtype),
    )
    return BatchedLosses(jax.jit(switched).lower(*example), copies, count)


class BatchedLosses:
    """The compiled batched loss, called as (slot, consts, leaves, index, value).

    Compiled first with COMPILER_OPTIONS (fast to compile, slower to run). The first call
    is timed (CPU time: a busy machine does not stretch it): when the evaluations a
    check makes would take more than OPTIMIZE_AFTER times as long as that compilation,
    the program is compiled again with XLA's usual optimizations and the call repeated,
    so that every value comes from the program that stays.
    """

    def __init__(self, lowered: Any, copies: int, count: int) -> None:
        self.lowered: Any = lowered
        started = time.process_time()
        self.executable = compile_lowered(lowered)
        self.compile_seconds = time.process_time() - started
        self.copies, self.count = copies, count
        self.optimized = False

    def __call__(self, slot: int, consts: list, leaves: list, index: Any, value: Any) -> Any:
        arguments = (np.int32(slot), consts, leaves, index, value)
        if self.lowered is None:
            return self.executable(*arguments)
        lowered, self.lowered = self.lowered, None
        started = time.process_time()
        losses = jax.block_until_ready(self.executable(*arguments))
        evaluating = (time.process_time() - started) / self.count * self.copies
        if evaluating <= OPTIMIZE_AFTER * self.compile_seconds:
            return losses
        self.executable, self.optimized = lowered.compile(), True
        return self.executable(*arguments)


def compile_lowered(lowered: Any) -> Any:
    """``lowered.compile`` with COMPILER_OPTIONS, less those this XLA does not know."""
    options = dict(COMPILER_OPTIONS)
    while True:
        try:
            return lowered.compile(compiler_options=options)
        except Exception as error:  # XLA's error type differs between versions
            unknown = [name for name in options if f"'{name}'" in str(error)]
            if "No such compile option" not in str(error) or not unknown:
                raise
            del options[unknown[0]]
