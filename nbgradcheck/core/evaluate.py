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
from nbgradcheck.errors import (
    GradCheckError,
    LossError,
    NonFiniteLossError,
    ParametersModifiedError,
)

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


Measure = Callable[[int, np.ndarray, np.ndarray], None]


class Outputs:
    """J at θ+ε and at θ−ε for the elements of one plan, arriving in plan order.

    ``extend(side, values)`` records the next values of one side; ``filled`` counts them,
    so an interrupted evaluation keeps what it computed. With ``measure``, each run of
    elements whose sides are all recorded is handed on as ``measure(first, J+, J−)`` (J
    of an unused side is NaN), in runs that start and end at multiples of ``align`` until
    :meth:`finish` hands on the rest, and forgotten: a million-element tensor never holds
    its losses at once. Without it the values are kept (``recorded``): a worker's task.
    """

    __slots__ = ("align", "dtypes", "filled", "measure", "measured", "pending", "sides")

    def __init__(
        self,
        sides: tuple[bool, bool] = (True, True),
        complex_values: bool = False,
        measure: Measure | None = None,
        align: int = 1,
    ) -> None:
        self.sides, self.measure, self.align = sides, measure, align
        self.dtypes = (complex if complex_values else float, float)
        self.filled, self.measured = [0, 0], 0
        self.pending: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])

    @classmethod
    def for_plan(cls, scheme: Scheme, measure: Measure | None = None, align: int = 1) -> Outputs:
        return cls((scheme.plus, scheme.minus), not scheme.real_steps, measure, align)

    def extend(self, side: int, values: Any) -> None:
        """Record the next values of one side (0: θ+ε, 1: θ−ε)."""
        values = np.asarray(values, dtype=self.dtypes[side]).reshape(-1)
        if not values.size:
            return
        self.pending[side].append(values)
        self.filled[side] += values.size
        if self.measure is not None:
            self.hand_on()

    def finish(self) -> None:
        """Hand on every element recorded on all its sides (the end, or an interruption)."""
        if self.measure is not None:
            self.hand_on(aligned=False)

    def hand_on(self, aligned: bool = True) -> None:
        """Measure the elements whose every used side is now recorded."""
        ready = min(self.filled[side] for side in (0, 1) if self.sides[side])
        if aligned:
            ready -= ready % self.align
        count = ready - self.measured
        if count <= 0:
            return
        plus, minus = (
            self.take(side, count) if self.sides[side] else np.full(count, np.nan)
            for side in (0, 1)
        )
        first, self.measured = self.measured, ready
        self.measure(first, plus, minus)

    def take(self, side: int, count: int) -> np.ndarray:
        """The oldest ``count`` pending values of one side, removed from the queue."""
        queue, taken, need = self.pending[side], [], count
        while need:
            head = queue[0]
            if head.size <= need:
                taken.append(queue.pop(0))
                need -= head.size
            else:
                taken.append(head[:need])
                queue[0], need = head[need:], 0
        return taken[0] if len(taken) == 1 else np.concatenate(taken)

    def recorded(self, side: int) -> np.ndarray:
        """The values of one side recorded (and not yet measured)."""
        queue = self.pending[side]
        return np.concatenate(queue) if queue else np.empty(0, dtype=self.dtypes[side])

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
    at = min(done, plan.count - 1)
    flat = int(plan.flat_indices(slice(at, at + 1))[0])
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
            if not scheme.real_steps:
                self.complex_losses(plan, scheme, outputs, tick, chunk)
            elif self.batch and self.adapter.can_batch:
                self.batched_losses(plan, scheme, outputs, tick, max(chunk, BATCH_ELEMENTS))
            else:
                set_element = self.adapter.element_setter(plan.position)
                evaluate_elements(set_element, self.evaluate, plan, scheme, outputs, tick, chunk)
        except GradCheckError:  # nbgradcheck's own verdict on the loss: no culprit element
            raise
        except Exception as error:
            add_element_note(error, in_flight(plan, scheme, outputs))
            raise

    def batched_losses(
        self, plan: TensorPlan, scheme: Scheme, outputs: Outputs, tick: Tick, chunk: int
    ) -> None:
        """Through the adapter's ``batched_losses``: both sides of a chunk in one call."""
        sides = [side for side, used in enumerate((scheme.plus, scheme.minus)) if used]
        for start in range(0, plan.count, chunk):
            part = slice(start, min(start + chunk, plan.count))
            indices, points = plan.flat_indices(part), plan.points(part)
            values = np.concatenate([points[side] for side in sides])
            losses = self.adapter.batched_losses(
                plan.position, np.tile(indices, len(sides)), values
            )
            losses = np.asarray(losses, dtype=float)
            for k, side in enumerate(sides):
                outputs.extend(side, losses[k * indices.size : (k + 1) * indices.size])
            tick(indices.size)

    def complex_losses(
        self, plan: TensorPlan, scheme: Scheme, outputs: Outputs, tick: Tick, chunk: int
    ) -> None:
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
        evaluate_elements(
            element_setter(complex_copy),
            complex_only(evaluate),
            plan,
            scheme,
            outputs,
            tick,
            chunk,
        )
        if not (
            np.array_equal(complex_copy.real.reshape(-1), flat) and not complex_copy.imag.any()
        ):
            raise ParametersModifiedError(
                f"the loss changed {plan.name} (the complex copy method='complex' passed it) "
                f"while the check ran: its estimates are unreliable. Make the loss leave the "
                f"parameters it is given unchanged"
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


def evaluate_elements(
    set_element: Callable,
    evaluate: Evaluate,
    plan: TensorPlan,
    scheme: Scheme,
    outputs: Outputs,
    tick: Tick,
    chunk: int,
) -> None:
    """Record J at each element's points in ``outputs``, element after element.

    The points are computed and turned into Python lists LOOP_BLOCK elements at a time
    (lists of Python floats cost 32 bytes an element), or a progress tick's worth when
    that is less; each block's losses go to ``outputs`` as the block ends, or as far as
    they got when the loss raised or the user pressed Ctrl-C. The two-sided and one-sided
    loops stay apart: one branch less per evaluation on the hot path."""
    block = min(LOOP_BLOCK, chunk)
    for start in range(0, plan.count, block):
        part = slice(start, min(start + block, plan.count))
        plus, minus = plan.points(part)
        where = plan.flat_indices(part).tolist()
        saved = plan.values[part].tolist()
        if scheme.plus and scheme.minus:
            up, down = plus.tolist(), minus.tolist()
            two_sided_block(set_element, evaluate, where, up, down, saved, outputs)
        else:
            side = 0 if scheme.plus else 1
            moved = (plus if scheme.plus else minus).tolist()
            one_sided_block(set_element, evaluate, where, moved, saved, outputs, side)
        tick(part.stop - start)


def two_sided_block(
    set_element: Callable,
    evaluate: Evaluate,
    where: list,
    up: list,
    down: list,
    saved: list,
    outputs: Outputs,
) -> None:
    """J(θ+ε) and J(θ−ε) for one block of elements, recorded when the block ends."""
    out_plus, out_minus = [], []
    j = -1
    try:
        for j, i in enumerate(where):
            set_element(i, up[j])
            out_plus.append(evaluate())
            set_element(i, down[j])
            out_minus.append(evaluate())
            set_element(i, saved[j])
    finally:
        if j >= 0:
            set_element(where[j], saved[j])
        outputs.extend(0, out_plus)
        outputs.extend(1, out_minus)


def one_sided_block(
    set_element: Callable,
    evaluate: Evaluate,
    where: list,
    moved: list,
    saved: list,
    outputs: Outputs,
    side: int,
) -> None:
    """J at the shifted value of each element of one block (side 0: θ+ε, 1: θ−ε)."""
    out = []
    j = -1
    try:
        for j, i in enumerate(where):
            set_element(i, moved[j])
            out.append(evaluate())
            set_element(i, saved[j])
    finally:
        if j >= 0:
            set_element(where[j], saved[j])
        outputs.extend(side, out)
