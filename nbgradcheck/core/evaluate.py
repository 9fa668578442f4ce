"""The one evaluation interface: perturbation requests in, loss values out.

Every mode (full, sample, fast) and the epsilon sweep evaluate the loss through an
:class:`Evaluator`:

- ``element_losses(plan, scheme, outputs, tick, chunk)``: J with each planned element set,
  one at a time, to θ+ε and/or θ−ε (as the scheme says), recorded in ``outputs`` (an
  :class:`Outputs`: preallocated arrays filled in plan order);
- ``group_losses(position, groups, scheme)``: J with a whole group of elements set at once
  to each of its two points (fast mode's directional tests), in order.

Implementations: :class:`InProcessEvaluator` (the loop, or the adapter's vectorized batches
where it offers them) here, and the executor evaluator in :mod:`nbgradcheck.parallel`
(process pools, Dask), which runs an :class:`InProcessEvaluator` on each worker's copy.
Every element or group perturbed is written back exactly, also when the loss raises or
the user presses Ctrl-C; values computed before an interruption stay in ``outputs``, the
others stay NaN.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from nbgradcheck.adapters.base import ParameterAdapter
from nbgradcheck.adapters.numpy import element_setter, format_index
from nbgradcheck.errors import GradCheckError, LossError, NonFiniteLossError

if TYPE_CHECKING:
    from nbgradcheck.core.plan import TensorPlan
    from nbgradcheck.core.schemes import Scheme

Evaluate = Callable[[], Any]
Tick = Callable[[int], None]
# (indices, θ+δ values, θ−δ values) of one group; None for a test not evaluated
GroupPoints = tuple[np.ndarray, np.ndarray, np.ndarray] | None
# A batched call (adapters with batched_losses) gets at least this many elements (both
# sides of each): a batched call has a fixed cost that only many elements repay; the
# adapter splits it further to bound the memory.
BATCH_ELEMENTS = 1024
# The first words of the note naming the element in flight when the loss raised.
ELEMENT_NOTE = "(nbgradcheck: raised while"
# The loops read the plan's arrays as Python lists this many elements at a time.
LOOP_BLOCK = 4096
REAL_FOR_COMPLEX = (
    "with method='complex' the loss returned a real number for complex parameters: "
    "something in it (float(), np.real, .astype(float), abs) drops the imaginary "
    "part; make it complex-safe or use method='central'"
)


class Outputs:
    """J at θ+ε and at θ−ε for the elements of one plan, in plan order.

    Preallocated float arrays (complex for the complex step), NaN until evaluated;
    ``filled`` counts the values recorded on each side, so an interrupted evaluation
    keeps what it computed.
    """

    __slots__ = ("filled", "minus", "plus")

    def __init__(self, count: int, complex_values: bool = False) -> None:
        self.plus = np.full(count, np.nan, dtype=complex if complex_values else float)
        self.minus = np.full(count, np.nan, dtype=float)
        self.filled = [0, 0]

    @classmethod
    def for_plan(cls, plan: TensorPlan, scheme: Scheme) -> Outputs:
        return cls(int(plan.indices.size), complex_values=not scheme.real_steps)

    def extend(self, side: int, values: Any) -> None:
        """Record the next values of one side (0: θ+ε, 1: θ−ε)."""
        values = np.asarray(values)
        target = self.plus if side == 0 else self.minus
        start = self.filled[side]
        target[start : start + values.size] = values
        self.filled[side] = start + values.size

    def recorded(self, side: int) -> np.ndarray:
        """The values of one side recorded so far."""
        return (self.plus, self.minus)[side][: self.filled[side]]

    @property
    def evaluations(self) -> int:
        return self.filled[0] + self.filled[1]


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
        return finite_in_float64(value)
    if isinstance(value, (complex, np.complexfloating)):
        return complex(value)
    return array_scalar(value)


def finite_in_float64(value: Any) -> float:
    """``float(value)``; a clear error for a finite value float64 cannot hold (long double)."""
    converted = float(value)
    if not np.isfinite(converted) and np.isfinite(value):
        raise NonFiniteLossError(
            f"the loss returned {value!r} ({type(value).__name__}), beyond the float64 range "
            f"the check computes in: scale the loss down (e.g. a mean instead of a sum)"
        )
    return converted


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
    return complex(item) if array.dtype.kind == "c" else finite_in_float64(item)


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
        """Record J at the plan's points in ``outputs``; ``tick(k)`` after k elements."""

    def group_losses(
        self, position: int, groups: Sequence[GroupPoints], scheme: Scheme
    ) -> list[float]:
        """J at each group's two points (those the scheme uses), group after group."""


def in_flight(plan: TensorPlan, scheme: Scheme, outputs: Outputs) -> str:
    """The element being perturbed when evaluation stopped, as 'W1[2, 3]'.

    The side a scheme records last (θ−ε for central and backward) counts the elements
    finished; the next one was in flight.
    """
    done = outputs.filled[1] if scheme.minus else outputs.filled[0]
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
                    plan.indices,
                    plan.plus,
                    plan.minus,
                    plan.values,
                    outputs,
                    tick,
                    chunk,
                )
            else:
                side = 0 if scheme.plus else 1
                evaluate_one_sided(
                    self.adapter.element_setter(plan.position),
                    self.evaluate,
                    plan.indices,
                    plan.plus if scheme.plus else plan.minus,
                    plan.values,
                    outputs,
                    side,
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
        """Through the adapter's ``batched_losses``: both sides of a chunk in one call."""
        sides = [side for side, used in enumerate((scheme.plus, scheme.minus)) if used]
        points = (plan.plus, plan.minus)
        for start in range(0, plan.indices.size, chunk):
            stop = min(start + chunk, plan.indices.size)
            indices = plan.indices[start:stop]
            values = np.concatenate([points[side][start:stop] for side in sides])
            losses = self.adapter.batched_losses(
                plan.position, np.tile(indices, len(sides)), values
            )
            losses = np.asarray(losses, dtype=float)
            for k, side in enumerate(sides):
                outputs.extend(side, losses[k * indices.size : (k + 1) * indices.size])
            tick(stop - start)

    def complex_losses(self, plan: TensorPlan, outputs: Outputs, tick: Tick, chunk: int) -> None:
        """J(θ+iε): the loss gets the structure with this tensor as a complex copy."""
        if not self.pass_argument:
            raise GradCheckError(
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
            complex_only(evaluate),
            plan.indices,
            plan.plus,
            plan.values,
            outputs,
            0,
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


def complex_only(evaluate: Evaluate) -> Evaluate:
    """``evaluate``, refusing a real J where the complex step needs a complex one."""

    def checked() -> Any:
        value = evaluate()
        if type(value) is not complex and np.isfinite(value):  # NaN: the non-finite check
            raise LossError(REAL_FOR_COMPLEX)
        return value

    return checked


def evaluate_two_sided(
    set_element: Callable,
    evaluate: Evaluate,
    indices: np.ndarray,
    plus: np.ndarray,
    minus: np.ndarray,
    original: np.ndarray,
    outputs: Outputs,
    tick: Tick,
    chunk: int,
) -> None:
    """Record J(θ+ε) and J(θ−ε) for each element in ``outputs``.

    The arrays are turned into Python lists LOOP_BLOCK elements at a time (lists of
    Python floats cost 32 bytes an element)."""
    out_plus, out_minus = outputs.plus, outputs.minus
    offset = outputs.filled[0]
    done_plus = done_minus = 0
    for start in range(0, indices.size, LOOP_BLOCK):
        part = slice(start, start + LOOP_BLOCK)
        where, up, down, saved = (a[part].tolist() for a in (indices, plus, minus, original))
        at = offset + start
        j = -1
        try:
            for j, i in enumerate(where):
                set_element(i, up[j])
                out_plus[at + j] = evaluate()
                done_plus = start + j + 1
                set_element(i, down[j])
                out_minus[at + j] = evaluate()
                done_minus = done_plus
                set_element(i, saved[j])
                if done_minus % chunk == 0:
                    tick(chunk)
        finally:
            outputs.filled[0], outputs.filled[1] = offset + done_plus, offset + done_minus
            if j >= 0:
                set_element(where[j], saved[j])
    tick(indices.size % chunk)


def evaluate_one_sided(
    set_element: Callable,
    evaluate: Evaluate,
    indices: np.ndarray,
    shifted: np.ndarray,
    original: np.ndarray,
    outputs: Outputs,
    side: int,
    tick: Tick,
    chunk: int,
) -> None:
    """Record J at the shifted value of each element in ``outputs`` (side 0: θ+ε, 1: θ−ε)."""
    out = outputs.plus if side == 0 else outputs.minus
    offset = outputs.filled[side]
    done = 0
    for start in range(0, indices.size, LOOP_BLOCK):
        part = slice(start, start + LOOP_BLOCK)
        where, moved, saved = (a[part].tolist() for a in (indices, shifted, original))
        at = offset + start
        j = -1
        try:
            for j, i in enumerate(where):
                set_element(i, moved[j])
                out[at + j] = evaluate()
                done = start + j + 1
                set_element(i, saved[j])
                if done % chunk == 0:
                    tick(chunk)
        finally:
            outputs.filled[side] = offset + done
            if j >= 0:
                set_element(where[j], saved[j])
    tick(indices.size % chunk)
