"""What to evaluate: the mode, the elements of each tensor, the steps and the points.

Everything here is decided from the problem itself (sizes, dtypes, method, workers), never
from a clock, so the same check gives the same report on any machine.
"""

from __future__ import annotations

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


@dataclass
class TensorPlan:
    """The elements of one tensor to check and the points to evaluate them at."""

    position: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    indices: np.ndarray  # flat C-order indices
    values: np.ndarray  # θ, in the parameter's dtype
    plus: np.ndarray  # θ+ε rounded to the dtype (θ where the scheme does not use it)
    minus: np.ndarray  # θ−ε likewise
    steps: np.ndarray  # ε asked for (float64)


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
) -> np.ndarray:
    """Flat indices: all of them, or ``sample`` spread over equal strata of the tensor."""
    count = size if mode == "full" else min(size, sample or DEFAULT_SAMPLE)
    if count >= size:
        return np.arange(size, dtype=np.int64)
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


def planned_points(
    scheme: Scheme,
    values: np.ndarray,
    steps: np.ndarray,
    dtype: np.dtype,
    name: str,
    indices: np.ndarray,
    shape: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """The scheme's points for these elements; a clear error where the step rounds away."""
    plus, minus = scheme.points(values, steps, dtype)
    flat = scheme.unresolved(plus, minus)
    if flat.size:
        where = format_index(np.unravel_index(int(indices[flat[0]]), shape))
        raise GradCheckError(
            f"the step is too small for {name}{where} = {values[flat[0]]!r} in "
            f"{np.dtype(dtype).name}: θ±ε rounds to θ; use a larger eps or eps='auto'"
        )
    return plus, minus


def tensor_plan(
    adapter: ParameterAdapter,
    position: int,
    indices: np.ndarray,
    scheme: Scheme,
    eps: float | str,
    unit_roundoff: float,
) -> TensorPlan:
    """The plan for some elements of one tensor at the scheme's default steps."""
    name, shape, dtype = (
        adapter.names[position],
        tuple(adapter.shapes[position]),
        np.dtype(adapter.dtypes[position]),
    )
    values = adapter.flat_values(position, indices)
    values64 = values.astype(np.float64)
    steps = scheme.step_sizes(values64, eps, unit_roundoff)
    plus, minus = planned_points(scheme, values64, steps, dtype, name, indices, shape)
    return TensorPlan(position, name, shape, dtype, indices, values, plus, minus, steps)


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


def sub_plan(
    plan: TensorPlan, positions: np.ndarray, steps: np.ndarray, scheme: Scheme
) -> TensorPlan:
    """The same tensor's elements at ``positions``, with new steps."""
    values = plan.values[positions]
    indices = plan.indices[positions]
    plus, minus = planned_points(
        scheme, values.astype(np.float64), steps, plan.dtype, plan.name, indices, plan.shape
    )
    return TensorPlan(
        plan.position, plan.name, plan.shape, plan.dtype, indices, values, plus, minus, steps
    )
