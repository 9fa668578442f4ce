"""The one evaluation interface: perturbation requests in, loss values out.

Every mode (full, sample, fast) and the epsilon sweep evaluate the loss through an
:class:`Evaluator`:

- ``element_losses(plan, scheme, outputs, tick, chunk)``: J with each planned element set,
  one at a time, to θ+ε and/or θ−ε (as the scheme says), appended to ``outputs``;
- ``group_losses(position, groups, scheme)``: J with a whole group of elements set at once
  to each of its two points (fast mode's directional tests), in order.

Implementations: :class:`InProcessEvaluator` (the loop, or the adapter's vectorized batches
where it offers them) here, and the executor evaluator in :mod:`nbgradcheck.parallel`
(process pools, Dask), which runs an :class:`InProcessEvaluator` on each worker's copy.
Every element or group perturbed is written back exactly, also when the loss raises or
the user presses Ctrl-C; values computed before an interruption stay in ``outputs``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from nbgradcheck.adapters.base import ParameterAdapter
from nbgradcheck.adapters.numpy import element_setter, format_index
from nbgradcheck.errors import LossError

if TYPE_CHECKING:
    from nbgradcheck.core.plan import TensorPlan
    from nbgradcheck.core.schemes import Scheme

Evaluate = Callable[[], Any]
Tick = Callable[[int], None]
Outputs = tuple[list, list]  # J at θ+ε, J at θ−ε, in plan order
# (indices, θ+δ values, θ−δ values) of one group; None for a test not evaluated
GroupPoints = tuple[np.ndarray, np.ndarray, np.ndarray] | None
# A batched call (adapters with batched_losses) gets at least this many elements: a vmap
# call has a fixed cost that only many elements repay; the adapter bounds the memory.
BATCH_ELEMENTS = 1024
# The first words of the note naming the element in flight when the loss raised.
ELEMENT_NOTE = "(nbgradcheck: raised while"


# -- calling the loss -----------------------------------------------------------------------


def takes_argument(loss: Callable[..., Any]) -> bool:
    """True when ``loss`` needs a positional argument (it is then called as loss(params))."""
    try:
        signature = inspect.signature(loss)
    except (TypeError, ValueError):
        return True
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return True
        positional = parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        if positional and parameter.default is parameter.empty:
            return True
    return False


def loss_scalar(value: Any) -> Any:
    """The loss as a Python float (or complex), from whatever the loss returned."""
    if type(value) is tuple:
        if not value:
            raise LossError("the loss returned an empty tuple; return the loss (first)")
        value = value[0]
    if type(value) is float:
        return value
    if isinstance(value, (np.floating, np.integer, int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (complex, np.complexfloating)):
        return complex(value)
    return array_scalar(value)


def array_scalar(value: Any) -> Any:
    if value is None:
        raise LossError("the loss returned None: is a `return` missing?")
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except Exception as exc:
        raise LossError(f"the loss returned a {type(value).__name__}, not a number") from exc
    if array.dtype.kind not in "fiuc":
        raise LossError(
            f"the loss returned a {type(value).__name__} of dtype {array.dtype}, not a number"
        )
    if array.size != 1:
        raise LossError(
            f"the loss returned an array of shape {array.shape}; a gradient check needs a "
            f"scalar: reduce it (e.g. np.mean) or return the cost first in a tuple"
        )
    item = array.reshape(()).item()
    return complex(item) if array.dtype.kind == "c" else float(item)


def loss_dtype(value: Any) -> np.dtype | None:
    """The floating dtype the loss was computed in, when its return value tells."""
    if type(value) is tuple and value:
        value = value[0]
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return None
    try:
        dtype = np.dtype(str(dtype).replace("torch.", ""))
    except TypeError:
        return None
    return dtype if np.issubdtype(dtype, np.inexact) else None


def make_evaluator(
    loss: Callable[..., Any],
    parameters: ParameterAdapter,
    pass_argument: bool,
    seed: int | None,
    argument: Any = None,
) -> Evaluate:
    """A zero-argument function returning J; re-seeds the RNGs first if ``seed`` is set.

    ``argument`` overrides what the loss receives (the complex-step copies).
    """
    if argument is None and parameters.fixed_argument:
        argument = parameters.argument()
    if argument is None:
        current = parameters.argument
        call = (lambda: loss(current())) if pass_argument else loss
    else:
        call = (lambda: loss(argument)) if pass_argument else loss
    if seed is None:
        return lambda: loss_scalar(call())

    def seeded() -> Any:
        parameters.reseed(seed)
        return loss_scalar(call())

    return seeded


# -- the interface --------------------------------------------------------------------------


class Evaluator(Protocol):
    """Evaluates the loss at perturbed parameters (see the module docstring)."""

    workers: int  # evaluations that run at the same time (1 in process)

    def prefetch(self, plans: Sequence[TensorPlan], scheme: Scheme, chunk: int) -> None:
        """The plans the check will ask for, in order (a hint: work may start early)."""

    def element_losses(
        self, plan: TensorPlan, scheme: Scheme, outputs: Outputs, tick: Tick, chunk: int
    ) -> None:
        """Append J at the plan's points to ``outputs``; ``tick(k)`` after k elements."""

    def group_losses(
        self, position: int, groups: Sequence[GroupPoints], scheme: Scheme
    ) -> list[float]:
        """J at each group's two points (those the scheme uses), group after group."""


def in_flight(plan: TensorPlan, scheme: Scheme, outputs: Outputs) -> str:
    """The element being perturbed when evaluation stopped, as 'W1[2, 3]'.

    The side a scheme records last (θ−ε for central and backward) counts the elements
    finished; the next one was in flight.
    """
    done = len(outputs[1]) if scheme.minus else len(outputs[0])
    flat = int(plan.indices[min(done, plan.indices.size - 1)])
    return plan.name + format_index(np.unravel_index(flat, plan.shape))


def add_element_note(error: BaseException, where: str) -> None:
    """Say which element was perturbed when ``error`` was raised (and that it is undone)."""
    error.add_note(f"{ELEMENT_NOTE} {where} was perturbed; parameters restored)")


# -- in this process ------------------------------------------------------------------------


class InProcessEvaluator:
    """The loss evaluated here: element by element, or in the adapter's batches."""

    workers = 1

    def __init__(
        self,
        adapter: ParameterAdapter,
        loss: Callable[..., Any],
        pass_argument: bool,
        seed: int | None,
        evaluate: Evaluate | None = None,
        batch: bool = True,
    ) -> None:
        self.adapter, self.loss, self.pass_argument, self.seed = adapter, loss, pass_argument, seed
        self.evaluate = evaluate or make_evaluator(loss, adapter, pass_argument, seed)
        self.batch = batch
        adapter.bind_loss(loss, pass_argument)

    def prefetch(self, plans: Sequence[TensorPlan], scheme: Scheme, chunk: int) -> None:
        return None

    # -- one element at a time ---------------------------------------------------------
    def element_losses(
        self, plan: TensorPlan, scheme: Scheme, outputs: Outputs, tick: Tick, chunk: int
    ) -> None:
        try:
            if np.iscomplexobj(plan.plus):
                self.complex_losses(plan, outputs, tick, chunk)
            elif self.batch and self.adapter.can_batch:
                self.batched_losses(plan, scheme, outputs, tick, max(chunk, BATCH_ELEMENTS))
            elif scheme.plus and scheme.minus:
                evaluate_two_sided(
                    self.adapter.element_setter(plan.position),
                    self.evaluate,
                    plan.indices.tolist(),
                    plan.plus.tolist(),
                    plan.minus.tolist(),
                    plan.values.tolist(),
                    outputs,
                    tick,
                    chunk,
                )
            else:
                side, out = (plan.plus, outputs[0]) if scheme.plus else (plan.minus, outputs[1])
                evaluate_one_sided(
                    self.adapter.element_setter(plan.position),
                    self.evaluate,
                    plan.indices.tolist(),
                    side.tolist(),
                    plan.values.tolist(),
                    out,
                    tick,
                    chunk,
                )
        except LossError:
            raise
        except Exception as error:
            add_element_note(error, in_flight(plan, scheme, outputs))
            raise

    def batched_losses(
        self, plan: TensorPlan, scheme: Scheme, outputs: Outputs, tick: Tick, chunk: int
    ) -> None:
        """Through the adapter's ``batched_losses``, chunk by chunk."""
        sides = [(plan.plus, outputs[0])] if scheme.plus else []
        sides += [(plan.minus, outputs[1])] if scheme.minus else []
        for start in range(0, plan.indices.size, chunk):
            stop = start + chunk
            for shifted, out in sides:
                losses = self.adapter.batched_losses(
                    plan.position, plan.indices[start:stop], shifted[start:stop]
                )
                out.extend(np.asarray(losses, dtype=float).tolist())
            tick(min(stop, plan.indices.size) - start)

    def complex_losses(self, plan: TensorPlan, outputs: Outputs, tick: Tick, chunk: int) -> None:
        """J(θ+iε): the loss gets the structure with this tensor as a complex copy."""
        if not self.pass_argument:
            raise LossError(
                "method='complex' needs a loss that takes the parameters as its argument, "
                "loss(params): the user's real arrays cannot hold complex values"
            )
        size = int(np.prod(plan.shape, dtype=np.int64))
        flat = self.adapter.flat_values(plan.position, np.arange(size, dtype=np.int64))
        complex_copy = flat.astype(np.complex128).reshape(plan.shape)
        argument = self.adapter.with_replacement(plan.position, complex_copy)
        evaluate = make_evaluator(self.loss, self.adapter, True, self.seed, argument=argument)
        evaluate_one_sided(
            element_setter(complex_copy),
            evaluate,
            plan.indices.tolist(),
            plan.plus.tolist(),
            plan.values.tolist(),
            outputs[0],
            tick,
            chunk,
        )

    # -- groups of elements --------------------------------------------------------------
    def group_losses(
        self, position: int, groups: Sequence[GroupPoints], scheme: Scheme
    ) -> list[float]:
        set_group = self.adapter.group_setter(position)
        values: list[float] = []
        for group in groups:
            if group is None:
                continue
            indices, up, down = group
            original = self.adapter.flat_values(position, indices)
            try:
                if scheme.plus:
                    set_group(indices, up)
                    values.append(self.evaluate())
                if scheme.minus:
                    set_group(indices, down)
                    values.append(self.evaluate())
            except LossError:
                raise
            except Exception as error:
                name = self.adapter.names[position]
                error.add_note(
                    f"{ELEMENT_NOTE} {indices.size} elements of {name} were perturbed; "
                    f"parameters restored)"
                )
                raise
            finally:
                set_group(indices, original)
        return values


# -- the loops ------------------------------------------------------------------------------


def evaluate_two_sided(
    set_element: Callable,
    evaluate: Evaluate,
    indices: list[int],
    plus: list,
    minus: list,
    original: list,
    outputs: Outputs,
    tick: Tick,
    chunk: int,
) -> None:
    """Append J(θ+ε) and J(θ−ε) for each element to ``outputs``."""
    out_plus, out_minus = outputs
    j = -1
    try:
        for j, i in enumerate(indices):
            set_element(i, plus[j])
            out_plus.append(evaluate())
            set_element(i, minus[j])
            out_minus.append(evaluate())
            set_element(i, original[j])
            if (j + 1) % chunk == 0:
                tick(chunk)
    finally:
        if j >= 0:
            set_element(indices[j], original[j])
    tick(len(indices) % chunk)


def evaluate_one_sided(
    set_element: Callable,
    evaluate: Evaluate,
    indices: list[int],
    shifted: list,
    original: list,
    out: list,
    tick: Tick,
    chunk: int,
) -> None:
    """Append J at the shifted value of each element to ``out``."""
    j = -1
    try:
        for j, i in enumerate(indices):
            set_element(i, shifted[j])
            out.append(evaluate())
            set_element(i, original[j])
            if (j + 1) % chunk == 0:
                tick(chunk)
    finally:
        if j >= 0:
            set_element(indices[j], original[j])
    tick(len(indices) % chunk)
