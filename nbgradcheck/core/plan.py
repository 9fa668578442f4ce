"""What to evaluate: the mode, the elements of each tensor, the steps and the points.

Everything here is decided from the problem itself (sizes, dtypes, method, workers), never
from a clock, so the same check gives the same report on any machine.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nbgradcheck.adapters.base import ParameterAdapter
from nbgradcheck.adapters.numpy import format_index
from nbgradcheck.core.schemes import Scheme
from nbgradcheck.errors import GradCheckError

MODES = ("full", "sample", "fast", "auto")
DEFAULT_SAMPLE = 10
# mode="auto" runs a full check when it needs at most this many loss evaluations per
# worker (about 20 s for a loss of a millisecond), else fast mode.
AUTO_FULL_EVALUATIONS = 20_000
# Whole-tensor directions of fast mode (see core/localize.py): its cheapest outcome costs
# this many tests per tensor, so a full check never costs more than that is always full.
FAST_DIRECTIONS = 16
# Points are computed for this many elements at a time (checking a plan, measuring).
PLAN_BLOCK = 16384
ALL = slice(None)


@dataclass
class TensorPlan:
    """The elements of one tensor to check, and how to perturb them.

    The points are computed from ``values`` slice by slice (:meth:`points`), never for the
    whole tensor at once: a plan of a million elements holds no arrays of its own beyond
    ``values`` (a view of the snapshot for a full check) and, when not every element is
    checked, ``indices``.
    """

    position: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    indices: np.ndarray | None  # flat C-order indices; None: elements start, start + 1, ...
    values: np.ndarray  # θ at the elements, in the parameter's dtype
    scheme: Scheme
    eps: float | str
    unit_roundoff: float
    divisor: float = 1.0  # steps this many times smaller than the scheme's (refinement)
    start: int = 0  # the first flat index when ``indices`` is None

    @property
    def count(self) -> int:
        return int(self.values.size)

    @property
    def everything(self) -> bool:
        """Every element of the tensor, in order (a full check)."""
        return self.indices is None and self.start == 0 and self.count == math.prod(self.shape)

    def flat_indices(self, part: slice = ALL) -> np.ndarray:
        """Flat indices of the elements in ``part`` (positions into the plan)."""
        if self.indices is not None:
            return self.indices[part]
        first, stop, _ = part.indices(self.count)
        return np.arange(self.start + first, self.start + max(first, stop), dtype=np.int64)

    def values64(self, part: slice = ALL) -> np.ndarray:
        return self.values[part].astype(np.float64, copy=False)

    def steps(self, part: slice = ALL) -> np.ndarray:
        """ε asked for at each element of ``part`` (float64)."""
        steps = self.scheme.step_sizes(self.values64(part), self.eps, self.unit_roundoff)
        return steps / self.divisor if self.divisor != 1 else steps

    def points(self, part: slice = ALL) -> tuple[np.ndarray, np.ndarray]:
        """θ+ε and θ−ε of the elements in ``part``, rounded to the dtype."""
        return self.scheme.points(self.values64(part), self.steps(part), self.dtype)

    def sides(self, part: slice = ALL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ε asked for, (θ+ε) − θ, θ − (θ−ε)) of the elements in ``part``, as rounded."""
        values, steps = self.values64(part), self.steps(part)
        plus, minus = self.scheme.points(values, steps, self.dtype)
        return (steps, *rounded_sides(plus, minus, values))

    def steps_taken(self, part: slice = ALL) -> np.ndarray:
        """The step between the two evaluation points of each element, as rounded."""
        steps, up, down = self.sides(part)
        return self.scheme.width(up, down, steps)

    def subset(self, positions: np.ndarray, divisor: float = 1.0) -> TensorPlan:
        """The elements at ``positions``, with steps ``divisor`` times smaller."""
        return dataclasses.replace(
            self,
            indices=self.start + positions if self.indices is None else self.indices[positions],
            values=self.values[positions],
            divisor=self.divisor * divisor,
            start=0,
        )

    def slice(self, first: int, stop: int) -> TensorPlan:
        """Elements ``first`` to ``stop`` of the plan (one task of a parallel check)."""
        part = slice(first, stop)
        if self.indices is None:
            return dataclasses.replace(self, values=self.values[part], start=self.start + first)
        return dataclasses.replace(self, indices=self.indices[part], values=self.values[part])


def rounded_sides(
    plus: np.ndarray, minus: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(θ+ε) − θ and θ − (θ−ε) as the points were rounded (real parts for complex)."""
    up = np.real(plus).astype(np.float64, copy=False) - values
    down = values - np.real(minus).astype(np.float64, copy=False)
    return up, down


# -- the mode ---------------------------------------------------------------------------------


def choose_mode(
    mode: str, scheme: Scheme, shapes: Sequence[tuple[int, ...]], workers: int, notes: list[str]
) -> str:
    """Resolve ``mode="auto"`` from the problem's size: full when cheap, else fast.

    Full when 2n evaluations (n for one-sided methods) cost no more than fast mode's own
    minimum or at most ``AUTO_FULL_EVALUATIONS`` per worker; always full for a scheme
    without real steps (the complex step).
    """
    if mode != "auto":
        return mode
    sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
    evaluations = sum(sizes) * scheme.evaluations_per_element
    fast_minimum = FAST_DIRECTIONS * len(sizes) * scheme.evaluations_per_element
    budget = AUTO_FULL_EVALUATIONS * max(workers, 1)
    if not scheme.real_steps or evaluations <= max(fast_minimum, budget):
        return "full"
    notes.append(
        f"mode='auto' chose fast: a full check needs {evaluations:,} loss evaluations (more "
        f"than {budget:,}); fast mode tests random directions per tensor and localizes the "
        f"wrong elements (mode='full' checks every element)"
    )
    return "fast"


# -- elements, steps and points ---------------------------------------------------------------


def elements_to_check(
    size: int, mode: str, sample: int | None, rng: np.random.Generator
) -> np.ndarray | None:
    """Flat indices of ``sample`` elements spread over equal strata of the tensor; None
    for all of them."""
    count = size if mode == "full" else min(size, sample or DEFAULT_SAMPLE)
    if count >= size:
        return None
    edges = np.linspace(0, size, count + 1).astype(np.int64)
    return edges[:-1] + rng.integers(0, np.diff(edges))


def resolve_eps(
    eps: float | str | None, scheme: Scheme, adapter: ParameterAdapter, notes: list[str]
) -> float | str:
    """The step to use; notes why when the parameters are not float64."""
    low = [n for n, d in zip(adapter.names, adapter.dtypes) if d != np.float64]
    if eps is None and not scheme.real_steps:
        return scheme.default_eps(bool(low))
    chosen = scheme.default_eps(bool(low)) if eps is None else eps
    if low:
        step = "eps='auto' (a step scaled to the dtype)" if chosen == "auto" else f"eps={eps}"
        notes.append(
            f"{', '.join(low)} {'is' if len(low) == 1 else 'are'} not float64: using {step} "
            f"and verdicts that allow for the round-off floor of the lower precision"
        )
    return "auto" if chosen == "auto" else float(chosen)


def blocks(count: int, size: int = PLAN_BLOCK) -> list[slice]:
    """Slices of ``size`` elements covering ``count``: per-element work on a large tensor
    goes block by block, so its temporaries stay small."""
    return [slice(first, first + size) for first in range(0, count, size)]


def ensure_resolved(plan: TensorPlan) -> TensorPlan:
    """``plan``; a clear error naming the first element where the step rounds away."""
    for part in blocks(plan.count):
        flat = plan.scheme.unresolved(*plan.points(part))
        if flat.size:
            j = part.start + int(flat[0])
            index = int(plan.flat_indices(slice(j, j + 1))[0])
            raise step_too_small(plan.name, plan.shape, plan.dtype, index, plan.values[j])
    return plan


def planned_points(
    scheme: Scheme,
    values: np.ndarray,
    steps: np.ndarray,
    dtype: np.dtype,
    name: str,
    indices: np.ndarray,
    shape: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """The scheme's points for these elements at once (fast mode's whole-tensor
    directions); a clear error where the step rounds away."""
    plus, minus = scheme.points(values, steps, dtype)
    flat = scheme.unresolved(plus, minus)
    if flat.size:
        raise step_too_small(name, shape, dtype, int(indices[flat[0]]), values[flat[0]])
    return plus, minus


def step_too_small(
    name: str, shape: tuple[int, ...], dtype: np.dtype, flat: int, value: object
) -> GradCheckError:
    where = format_index(np.unravel_index(flat, shape))
    return GradCheckError(
        f"the step is too small for {name}{where} = {value!r} in "
        f"{np.dtype(dtype).name}: θ±ε rounds to θ; use a larger eps or eps='auto'"
    )


def tensor_plan(
    adapter: ParameterAdapter,
    position: int,
    indices: np.ndarray | None,
    scheme: Scheme,
    eps: float | str,
    unit_roundoff: float,
) -> TensorPlan:
    """The plan for some elements (None: all) of one tensor at the scheme's steps."""
    name, shape, dtype = (
        adapter.names[position],
        tuple(adapter.shapes[position]),
        np.dtype(adapter.dtypes[position]),
    )
    if indices is None:
        values = adapter.values_at_start(position)
    else:
        values = adapter.flat_values(position, indices)
    plan = TensorPlan(position, name, shape, dtype, indices, values, scheme, eps, unit_roundoff)
    return ensure_resolved(plan)


def plan_tensors(
    adapter: ParameterAdapter,
    scheme: Scheme,
    eps: float | str,
    mode: str,
    sample: int | None,
    seed: int | None,
    unit_roundoff: float,
) -> list[TensorPlan]:
    """One plan per tensor: every element (full) or a stratified sample."""
    rng = np.random.default_rng(seed)
    plans = []
    for position, shape in enumerate(adapter.shapes):
        size = int(np.prod(shape, dtype=np.int64))
        indices = elements_to_check(size, mode, sample, rng)
        plans.append(tensor_plan(adapter, position, indices, scheme, eps, unit_roundoff))
    return plans


def sub_plan(plan: TensorPlan, positions: np.ndarray, divisor: float) -> TensorPlan:
    """The same tensor's elements at ``positions``, with steps ``divisor`` times smaller;
    a clear error where such a step rounds away."""
    return ensure_resolved(plan.subset(positions, divisor))
