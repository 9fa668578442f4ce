"""A JAX loss evaluated for a batch of one-element changes, carrying each change forward.

The loss is traced once to a jaxpr (``jax.make_jaxpr``); :func:`batched_losses_function`
returns a jitted function that interprets that jaxpr for B perturbed copies of one leaf at
once. Each copy's change is kept in a compact form for as long as the primitives allow:

- :class:`ElementChange`: the leaf itself, one element per copy changed;
- :class:`ColumnChange`: an array that differs from its unperturbed value in one slice
  along its last dimension per copy: ``x @ W`` with one changed element of W (or a bias
  element broadcast and added) changes one output column; elementwise primitives keep it
  a column;
- :class:`DenseChange`: (B, *shape), the change spread everywhere (after the next
  ``dot_general``, a rank-one update of the unperturbed product): every primitive from
  here runs batched under ``jax.vmap``.

The unperturbed values are computed once per call, so the layers before the perturbed
leaf cost one forward pass for the whole batch. XLA compiles the function once per leaf
and batch size: the caller pads the last chunk to the same size. Nested jaxprs (``jit``,
``custom_jvp_call``, ``custom_vjp_call``) are interpreted inside, so ``jax.nn.relu`` keeps
a column a column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core

UNARY = frozenset(
    """tanh logistic exp exp2 log log1p expm1 neg abs sqrt rsqrt cbrt sin cos tan asin acos
    atan sinh cosh asinh acosh atanh erf erfc erf_inv integer_pow square sign floor ceil
    round convert_element_type reduce_precision copy copy_p real imag""".split()  # noqa: SIM905
)
BINARY = frozenset(
    """add sub mul div max min pow atan2 rem add_any nextafter""".split()  # noqa: SIM905
)
# XLA's backend optimizations cost more time than they save for the few calls of a check:
# level 0 halves compile time (0.25 → 0.13 s per leaf of a 50k-parameter MLP) for 20 %
# slower calls.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
# Primitives holding a jaxpr that is interpreted in place, and the parameter holding it.
NESTED = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr"}
NESTED |= {"custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr"}
NESTED |= {"custom_vjp_call_jaxpr": "fun_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr"}


@dataclass
class ElementChange:
    """``base`` with flat element ``index[b]`` set to ``value[b]`` in copy b."""

    base: Any
    index: Any  # (B,) integers
    value: Any  # (B,)

    @property
    def delta(self) -> Any:
        return self.value - self.base.reshape(-1)[self.index]


@dataclass
class ColumnChange:
    """``base`` with ``base[..., column[b]]`` replaced by ``values[b]`` in copy b."""

    base: Any
    column: Any  # (B,) integers
    values: Any  # (B, *base.shape[:-1])

    @property
    def delta(self) -> Any:
        return self.values - column_of(self.base, self.column)


@dataclass
class DenseChange:
    values: Any  # (B, *shape)


Change = ElementChange | ColumnChange | DenseChange


def column_of(array: Any, column: Any) -> Any:
    """array[..., column[b]] for each b, as (B, *array.shape[:-1])."""
    return jnp.moveaxis(jnp.take(array, column, axis=-1), -1, 0)


def lead_view(vector: Any, dims: int) -> Any:
    """(B,) → (B, 1, ..., 1) broadcasting against (B, *lead)."""
    return vector.reshape(vector.shape[0], *([1] * dims))


def dense(change: Change, count: int) -> Any:
    """The change as (B, *shape) perturbed copies."""
    if isinstance(change, DenseChange):
        return change.values
    base = jnp.asarray(change.base)
    if isinstance(change, ElementChange):
        flat = jnp.broadcast_to(base.reshape(-1), (count, base.size))
        flat = flat.at[jnp.arange(count), change.index].set(change.value.astype(base.dtype))
        return flat.reshape(count, *base.shape)
    width = base.shape[-1]
    hit = jnp.arange(width) == change.column[:, None]  # (B, width)
    hit = hit.reshape(count, *([1] * (base.ndim - 1)), width)
    values = jnp.broadcast_to(change.values, (count, *base.shape[:-1]))[..., None]
    return jnp.where(hit, values.astype(base.dtype), base)


# -- the interpreter --------------------------------------------------------------------------


def read(env: dict, var: Any) -> Any:
    return var.val if isinstance(var, jax_core.Literal) else env[var]


def bind(eqn: Any, values: Sequence[Any]) -> list[Any]:
    """The equation applied to ``values`` (as ``jax.core.eval_jaxpr`` applies it)."""
    result = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
    return list(result) if eqn.primitive.multiple_results else [result]


def interpret(
    jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], changed: dict[int, Change], count: int
) -> tuple[list[Any], list[Change | None]]:
    """The jaxpr's outputs unperturbed, and their changes given the arguments' changes."""
    env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    changes: dict[Any, Change] = {jaxpr.invars[i]: change for i, change in changed.items()}
    for eqn in jaxpr.eqns:
        inputs = [read(env, v) for v in eqn.invars]
        outputs = bind(eqn, inputs)
        env.update(zip(eqn.outvars, outputs))
        incoming = [None if isinstance(v, jax_core.Literal) else changes.get(v) for v in eqn.invars]
        if any(change is not None for change in incoming):
            results = equation_changes(eqn, inputs, outputs, incoming, count)
            changes.update((v, c) for v, c in zip(eqn.outvars, results) if c is not None)
    outputs = [read(env, v) for v in jaxpr.outvars]
    return outputs, [
        None if isinstance(v, jax_core.Literal) else changes.get(v) for v in jaxpr.outvars
    ]


def equation_changes(
    eqn: Any, inputs: list, outputs: list, incoming: list, count: int
) -> list[Change | None]:
    """The changes of an equation's outputs: compact where a rule applies, else batched."""
    name = eqn.primitive.name
    if name in NESTED:
        nested = eqn.params[NESTED[name]]
        jaxpr, consts = (nested.jaxpr, nested.consts) if hasattr(nested, "jaxpr") else (nested, [])
        if len(jaxpr.invars) == len(inputs):
            slots = {i: c for i, c in enumerate(incoming) if c is not None}
            return interpret(jaxpr, consts, inputs, slots, count)[1]
    slots = [i for i, change in enumerate(incoming) if change is not None]
    if len(slots) == 1 and not eqn.primitive.multiple_results:
        rule = compact_rule(eqn, inputs, outputs[0], slots[0], incoming[slots[0]])
        if rule is not None:
            return [rule]
    return batched(eqn, inputs, incoming, count)


def batched(eqn: Any, inputs: list, incoming: list, count: int) -> list[Change]:
    """The equation under jax.vmap over the perturbed copies of its changed inputs."""
    values = [x if c is None else dense(c, count) for x, c in zip(inputs, incoming)]
    axes = [None if c is None else 0 for c in incoming]
    results = jax.vmap(lambda *xs: bind(eqn, xs), in_axes=axes)(*values)
    return [DenseChange(r) for r in results]


def compact_rule(eqn: Any, inputs: list, output: Any, slot: int, change: Change) -> Change | None:
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
        return DenseChange(output + change.delta.reshape(change.delta.shape[0], -1).sum(1))
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
    other = inputs[1 - slot]

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
        partner = jnp.broadcast_to(other, output.shape).reshape(-1)[change.index]
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
        index = (change.index % columns) * rows + change.index // columns
        return ElementChange(output, index, change.value)
    return None


def dot_rule(eqn: Any, inputs: list, output: Any, slot: int, change: Change) -> Change | None:
    """x @ W (W two-dimensional, contracted on either axis) with one element of W, or one
    column of x, changed."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    x, weight = inputs
    if lhs_batch or rhs_batch or weight.ndim != 2 or len(rhs_contract) != 1:
        return None
    if tuple(lhs_contract) != (x.ndim - 1,):
        return None
    contract = rhs_contract[0]  # 0: W is (K, N); 1: W is (N, K)
    width = weight.shape[1]
    lead = output.ndim - 1
    if slot == 1 and isinstance(change, ElementChange):
        row, column = change.index // width, change.index % width
        k, n = (row, column) if contract == 0 else (column, row)
        shift = lead_view(change.delta, lead) * column_of(x, k)
        return ColumnChange(output, n, column_of(output, n) + shift)
    if slot == 0 and isinstance(change, ColumnChange):
        rows = jnp.take(weight, change.column, axis=contract)  # (B, N) or (N, B)
        rows = rows if contract == 0 else rows.T
        rows = rows.reshape(rows.shape[0], *([1] * lead), -1)
        return DenseChange(output + change.delta[..., None] * rows)
    return None


# -- the batched loss -------------------------------------------------------------------------


def batched_losses_function(closed_jaxpr: Any, position: int, count: int) -> Callable:
    """A compiled function (consts, leaves, index, value) → J for each of ``count``
    copies, copy b with element index[b] of leaf ``position`` set to value[b]. Compiled at
    its first call, with COMPILER_OPTIONS."""
    jaxpr = closed_jaxpr.jaxpr

    def losses(consts: list, leaves: list, index: Any, value: Any) -> Any:
        change = ElementChange(leaves[position], index, value)
        outputs, changes = interpret(jaxpr, consts, leaves, {position: change}, count)
        if changes[0] is None:  # the loss does not depend on this leaf
            return jnp.broadcast_to(jnp.reshape(outputs[0], ()), (count,))
        return jnp.reshape(dense(changes[0], count), (count,))

    jitted = jax.jit(losses)
    executable: list[Any] = []

    def call(consts: list, leaves: list, index: Any, value: Any) -> Any:
        if not executable:
            lowered = jitted.lower(consts, leaves, index, value)
            executable.append(lowered.compile(compiler_options=COMPILER_OPTIONS))
        return executable[0](consts, leaves, index, value)

    return call
