"""Finite-difference gradient checking of NumPy parameter sets (pure NumPy, no IPython).

Methods and their truncation error for a step ε:

- ``central``:  (J(θ+ε) − J(θ−ε)) / 2ε, error O(ε²); two evaluations per element.
- ``forward``:  (J(θ+ε) − J(θ)) / ε, error O(ε); one evaluation per element.
- ``backward``: (J(θ) − J(θ−ε)) / ε, error O(ε); one evaluation per element.
- ``complex``:  Im J(θ+iε) / ε, error O(ε²) with no subtractive cancellation, so ε can be
  1e-20 and the estimate is exact to machine precision; the loss must accept complex
  arrays and use only complex-analytic operations (no ``abs``, comparisons or ``real``).

Each element is perturbed in place in the user's own array and its saved value written
back after the evaluations, so the arrays are bit-for-bit unchanged afterwards, also when
the loss raises or the user presses Ctrl-C.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nbgradcheck.adapters.numpy import ParameterSet, element_setter, format_index
from nbgradcheck.core.progress import Progress, chunk_size, should_show
from nbgradcheck.core.result import GradCheckResult, TensorCheck
from nbgradcheck.errors import GradCheckError, LossError, NonFiniteLossError, RandomLossError

METHODS = ("central", "forward", "backward", "complex")
MODES = ("full", "sample", "fast", "auto")
DEFAULT_EPS = 1e-6
DEFAULT_COMPLEX_EPS = 1e-20
DEFAULT_SAMPLE = 10
# A batched call (adapters with batched_losses) gets at least this many elements: a vmap
# call has a fixed cost that only many elements repay; the adapter bounds the memory.
BATCH_ELEMENTS = 1024
# Round-off in J grows with the number of operations; this many unit round-offs of |J|
# is taken as the error of one loss evaluation when computing the noise floor.
NOISE_FACTOR = 8.0
# A kink is declared when the analytic value sits this close (relative to the
# discrepancy) to one of the one-sided slopes.
KINK_SIDE_RATIO = 0.1
# Failing elements are re-estimated with steps this many times smaller (up to
# REFINE_LEVELS times) before they are called wrong: a step that crossed several kinks,
# or a large low-precision step, then gets a second chance; a real bug does not.
REFINE_FACTOR = 8
REFINE_LEVELS = 2
REFINE_PROBE = 8

Evaluate = Callable[[], Any]


@dataclass
class CheckSetup:
    """Everything about a check decided before the first perturbation."""

    params: ParameterSet
    analytic: list[np.ndarray]
    evaluate: Evaluate
    loss_value: float
    unit_roundoff: float
    seconds_per_evaluation: float
    notes: list[str]
    runner: Any = None  # evaluates on workers with executor=/n_jobs= (parallel.py)


# -- calling the loss ---------------------------------------------------------------------


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
    parameters: ParameterSet,
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


# -- before the first perturbation ----------------------------------------------------------


def prepare(
    loss: Callable[..., Any],
    parameters: ParameterSet,
    grads: Any,
    seed: int | None,
    snapshot: list[np.ndarray],
) -> CheckSetup:
    """Evaluate J twice (randomness, NaN, mutation checks) and fetch the gradients."""
    pass_argument = takes_argument(loss)
    bind_loss = getattr(parameters, "bind_loss", None)
    if bind_loss is not None:  # framework adapters evaluate perturbations in batches
        bind_loss(loss, pass_argument)
    if seed is not None:
        parameters.reseed(seed)
    fingerprint = rng_fingerprint(parameters)
    raw_first = loss(parameters.argument()) if pass_argument else loss()
    first = loss_scalar(raw_first)
    draws = fingerprint is None or fingerprint != rng_fingerprint(parameters)
    # Re-seeding costs microseconds per evaluation: only for a loss that draws numbers.
    evaluate = make_evaluator(loss, parameters, pass_argument, seed if draws else None)
    started = time.perf_counter()
    second = evaluate()
    seconds = time.perf_counter() - started
    parameters.ensure_unmodified(snapshot, "the loss")
    for value in (first, second):
        reject_complex_loss(value)
        if not np.isfinite(value):
            raise NonFiniteLossError(
                f"the loss is {value} at the unperturbed parameters: fix the forward pass "
                f"(log of 0? overflow in exp?) before checking gradients"
            )
    reject_random_loss(first, second, seed, getattr(parameters, "randomness_hint", ""))
    unit_roundoff = computation_roundoff(parameters, loss_dtype(raw_first))
    analytic, ignored = gradients_at_start(grads, loss, pass_argument, parameters, seed, snapshot)
    notes = [f"ignored gradient keys: {', '.join(ignored)}"] if ignored else []
    notes += getattr(parameters, "notes", [])
    return CheckSetup(parameters, analytic, evaluate, first, unit_roundoff, seconds, notes)


def rng_fingerprint(parameters: ParameterSet) -> tuple | None:
    """The adapter's RNG summary (None when it cannot tell whether the loss draws)."""
    fingerprint = getattr(parameters, "rng_fingerprint", None)
    return fingerprint() if fingerprint is not None else None


def reject_complex_loss(value: Any) -> None:
    if isinstance(value, complex):
        raise LossError("the loss returned a complex number for real parameters")


def reject_random_loss(first: float, second: float, seed: int | None, hint: str = "") -> None:
    """Raise RandomLossError when two evaluations at the same point disagree."""
    if first == second or abs(first - second) <= 4 * np.finfo(float).eps * abs(first):
        return
    if seed is None:
        raise RandomLossError(
            f"the loss returned {first!r} and then {second!r} at the same parameters: it "
            f"is random (dropout, data augmentation, minibatch sampling?). Pass seed=0 to "
            f"re-seed NumPy's RNG before every evaluation (this checks the dropout "
            f"gradient too), or switch the randomness off for the check.{hint}"
        )
    raise RandomLossError(
        f"the loss returned {first!r} and then {second!r} at the same parameters even "
        f"with seed={seed} re-seeding numpy.random and random before every evaluation: it "
        f"draws from a generator nbgradcheck cannot re-seed (a np.random.default_rng made "
        f"outside the loss?). Create the generator inside the loss from a fixed seed, or "
        f"switch the randomness off."
    )


def computation_roundoff(parameters: ParameterSet, returned: np.dtype | None) -> float:
    """Unit round-off of the least precise dtype among the parameters and the loss."""
    dtypes = list(parameters.dtypes)
    if returned is not None:
        dtypes.append(returned)
    return max(float(np.finfo(d).eps) for d in dtypes) / 2


def gradients_at_start(
    grads: Any,
    loss: Callable[..., Any],
    pass_argument: bool,
    parameters: ParameterSet,
    seed: int | None,
    snapshot: list[Any],
) -> tuple[list[np.ndarray], list[str]]:
    """Analytic gradients aligned with the parameters.

    A callable is called once at the unperturbed point; ``None`` asks the framework
    adapter for automatic differentiation of the loss.
    """
    if seed is not None:
        parameters.reseed(seed)
    if grads is None:
        grads = parameters.autograd_gradients(loss, pass_argument)
        parameters.ensure_unmodified(snapshot, "the loss")
    elif callable(grads):
        grads = grads(parameters.argument()) if takes_argument(grads) else grads()
        parameters.ensure_unmodified(snapshot, "the gradient function")
    return parameters.match_gradients(grads)


# -- choosing elements and steps ------------------------------------------------------------


def elements_to_check(
    size: int, mode: str, sample: int | None, rng: np.random.Generator
) -> np.ndarray:
    """Flat indices: all of them, or ``sample`` spread over equal strata of the tensor."""
    count = size if mode == "full" else min(size, sample or DEFAULT_SAMPLE)
    if count >= size:
        return np.arange(size, dtype=np.int64)
    edges = np.linspace(0, size, count + 1).astype(np.int64)
    return edges[:-1] + rng.integers(0, np.diff(edges))


def step_sizes(
    values: np.ndarray, eps: float | str, method: str, unit_roundoff: float
) -> np.ndarray:
    """The step for each element: ``eps``, or for 'auto' the classic optimum scaled by |θ|."""
    if eps != "auto":
        return np.full(values.shape, float(eps))
    machine_eps = 2 * unit_roundoff
    relative = {"central": machine_eps ** (1 / 3), "complex": DEFAULT_COMPLEX_EPS}.get(
        method, machine_eps**0.5
    )
    return relative * np.maximum(1.0, np.abs(values))


def resolve_eps(
    eps: float | str | None, method: str, parameters: ParameterSet, notes: list[str]
) -> float | str:
    """The step to use; notes why when the parameters are not float64."""
    low = [n for n, d in zip(parameters.names, parameters.dtypes) if d != np.float64]
    if eps is None and method == "complex":
        return DEFAULT_COMPLEX_EPS
    chosen = ("auto" if low else DEFAULT_EPS) if eps is None else eps
    if low:
        step = "eps='auto' (a step scaled to the dtype)" if chosen == "auto" else f"eps={eps}"
        notes.append(
            f"{', '.join(low)} {'is' if len(low) == 1 else 'are'} not float64: using {step} "
            f"and verdicts that allow for the round-off floor of the lower precision"
        )
    return "auto" if chosen == "auto" else float(chosen)


def perturbed_values(
    values: np.ndarray,
    steps: np.ndarray,
    dtype: np.dtype,
    method: str,
    name: str,
    indices: np.ndarray,
    shape: tuple,
) -> tuple[np.ndarray, np.ndarray]:
    """θ+ε and θ−ε rounded to the parameter's dtype (θ itself for unused sides)."""
    plus = (values + steps).astype(dtype) if method in ("central", "forward") else values
    minus = (values - steps).astype(dtype) if method in ("central", "backward") else values
    flat = np.flatnonzero(plus == minus) if method != "complex" else np.array([], int)
    if flat.size:
        where = format_index(np.unravel_index(int(indices[flat[0]]), shape))
        raise GradCheckError(
            f"the step is too small for {name}{where} = {values[flat[0]]!r} in "
            f"{np.dtype(dtype).name}: θ±ε rounds to θ; use a larger eps or eps='auto'"
        )
    return np.asarray(plus, dtype), np.asarray(minus, dtype)


# -- the evaluation loops -------------------------------------------------------------------


def evaluate_two_sided(
    set_element: Callable,
    evaluate: Evaluate,
    indices: list[int],
    plus: list,
    minus: list,
    original: list,
    out_plus: list,
    out_minus: list,
    tick: Callable[[int], None],
    chunk: int,
) -> None:
    """Append J(θ+ε) and J(θ−ε) for each element to ``out_plus`` / ``out_minus``."""
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
    tick: Callable[[int], None],
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


@dataclass
class TensorPlan:
    """The elements of one tensor to check and the points to evaluate them at."""

    position: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    indices: np.ndarray
    values: np.ndarray  # in the parameter's dtype
    plus: np.ndarray
    minus: np.ndarray
    steps: np.ndarray


def plan_tensors(
    setup: CheckSetup,
    eps: float | str,
    method: str,
    mode: str,
    sample: int | None,
    seed: int | None,
) -> list[TensorPlan]:
    rng = np.random.default_rng(seed)
    plans = []
    params = setup.params
    for position, (name, shape, dtype) in enumerate(
        zip(params.names, params.shapes, params.dtypes)
    ):
        size = int(np.prod(shape, dtype=np.int64))
        indices = elements_to_check(size, mode, sample, rng)
        values = params.flat_values(position, indices)
        steps = step_sizes(values.astype(np.float64), eps, method, setup.unit_roundoff)
        plus, minus = perturbed_values(
            values.astype(np.float64), steps, dtype, method, name, indices, shape
        )
        plans.append(
            TensorPlan(position, name, tuple(shape), dtype, indices, values, plus, minus, steps)
        )
    return plans


def run_check(
    setup: CheckSetup,
    loss: Callable[..., Any],
    eps: float | str | None,
    method: str,
    mode: str,
    sample: int | None,
    tol: float,
    seed: int | None,
    progress: bool | None,
) -> GradCheckResult:
    from nbgradcheck.core.localize import choose_mode, fast_check, probe_repeatability

    notes = list(setup.notes)
    eps = resolve_eps(eps, method, setup.params, notes)
    mode = choose_mode(mode, method, setup, notes)
    if mode == "fast":
        return fast_check(setup, eps, method, tol, seed, progress, notes)
    plans = plan_tensors(setup, eps, method, mode, sample, seed)
    total = sum(p.indices.size for p in plans)
    per_element = setup.seconds_per_evaluation * (2 if method == "central" else 1)
    bar = Progress(total, should_show(progress, per_element * total))
    chunk = chunk_size(per_element)
    if setup.runner is not None:
        setup.runner.prefetch(plans, setup, method, chunk)
    evaluator = complex_evaluator(loss, setup, seed) if method == "complex" else None
    tensors, evaluations, complete = [], 2, True
    try:
        for plan in plans:
            bar.describe(plan.name)
            outputs: tuple[list, list] = ([], [])
            try:
                if complete:
                    run_tensor(plan, setup, method, evaluator, outputs, bar.advance, chunk)
            except KeyboardInterrupt:
                complete = False
            evaluations += len(outputs[0]) + len(outputs[1])
            tensor = measure_tensor(plan, setup, method, outputs, tol)
            try:
                if complete and method != "complex":
                    evaluations += refine_failing(plan, tensor, setup, method, chunk, tol)
            except KeyboardInterrupt:
                complete = False
            tensors.append(tensor)
    finally:
        bar.close()
    evaluations += probe_repeatability(tensors, setup) if complete else 0
    notes += result_notes(tensors, setup, method)
    return GradCheckResult(
        tensors,
        method,
        eps,
        mode,
        tol,
        evaluations,
        setup.loss_value,
        complete=complete,
        notes=notes,
    )


def refine_failing(
    plan: TensorPlan, tensor: TensorCheck, setup: CheckSetup, method: str, chunk: int, tol: float
) -> int:
    """Re-estimate failing elements with smaller steps; adopt estimates that agree.

    A probe of a few failing elements goes first: when smaller steps do not fix most of
    them (a real bug), the rest are left alone, so a wrong tensor costs little extra.
    Returns the number of extra loss evaluations.
    """
    evaluations = 0
    for level in range(1, REFINE_LEVELS + 1):
        candidates = np.flatnonzero(tensor.element_failing & ~tensor.kink)
        probe = candidates[
            np.linspace(0, candidates.size - 1, min(candidates.size, REFINE_PROBE)).astype(int)
        ]
        fixed, spent = re_estimate(plan, tensor, probe, level, setup, method, chunk, tol)
        evaluations += spent
        if not probe.size or fixed < probe.size / 2:
            break
        rest = np.setdiff1d(candidates, probe)
        evaluations += re_estimate(plan, tensor, rest, level, setup, method, chunk, tol)[1]
    return evaluations


def re_estimate(
    plan: TensorPlan,
    tensor: TensorCheck,
    positions: np.ndarray,
    level: int,
    setup: CheckSetup,
    method: str,
    chunk: int,
    tol: float,
) -> tuple[int, int]:
    """Central/one-sided estimates at steps REFINE_FACTOR**level times smaller.

    Returns (elements now agreeing, loss evaluations spent).
    """
    if not positions.size:
        return 0, 0
    try:
        sub = sub_plan(plan, positions, plan.steps[positions] / REFINE_FACTOR**level, method)
    except GradCheckError:  # the smaller step rounds away in this dtype
        return 0, 0
    outputs: tuple[list, list] = ([], [])
    run_tensor(sub, setup, method, None, outputs, lambda _: None, chunk)
    refined = measure_tensor(sub, setup, method, outputs, tol)
    agreeing = ~refined.element_failing
    tensor.adopt(positions, refined, agreeing)
    return int(agreeing.sum()), len(outputs[0]) + len(outputs[1])


def sub_plan(plan: TensorPlan, positions: np.ndarray, steps: np.ndarray, method: str) -> TensorPlan:
    """The same tensor's elements at ``positions``, with new steps."""
    values = plan.values[positions]
    indices = plan.indices[positions]
    plus, minus = perturbed_values(
        values.astype(np.float64), steps, plan.dtype, method, plan.name, indices, plan.shape
    )
    return TensorPlan(
        plan.position, plan.name, plan.shape, plan.dtype, indices, values, plus, minus, steps
    )


def complex_evaluator(
    loss: Callable[..., Any], setup: CheckSetup, seed: int | None
) -> Callable[[int, np.ndarray], Evaluate]:
    """For method='complex': J evaluated on the structure with one array made complex."""
    if not takes_argument(loss):
        raise GradCheckError(
            "method='complex' needs a loss that takes the parameters as its argument, "
            "loss(params): the user's real arrays cannot hold complex values"
        )

    if not hasattr(setup.params, "with_replacement"):
        raise GradCheckError("method='complex' is available for NumPy parameters only")

    def for_tensor(position: int, complex_copy: np.ndarray) -> Evaluate:
        argument = setup.params.with_replacement(position, complex_copy)
        return make_evaluator(loss, setup.params, True, seed, argument=argument)

    return for_tensor


def run_tensor(
    plan: TensorPlan,
    setup: CheckSetup,
    method: str,
    evaluator: Any,
    outputs: tuple[list, list],
    tick: Callable[[int], None],
    chunk: int,
) -> None:
    """Evaluate J at the planned points of one tensor, appending to ``outputs``."""
    indices = plan.indices.tolist()
    original = plan.values.tolist()
    batched = setup.params.batched_losses if getattr(setup.params, "can_batch", False) else None
    set_element = None if method == "complex" else setup.params.element_setter(plan.position)
    try:
        if setup.runner is not None:
            setup.runner.run_tensor(plan, setup, method, outputs, tick, chunk)
        elif method == "complex":
            complex_copy = setup.params.arrays[plan.position].astype(np.complex128)
            shifted = (plan.values + 1j * plan.steps).tolist()
            evaluate_one_sided(
                element_setter(complex_copy),
                evaluator(plan.position, complex_copy),
                indices,
                shifted,
                original,
                outputs[0],
                tick,
                chunk,
            )
        elif batched is not None:
            evaluate_batched(batched, plan, method, outputs, tick, max(chunk, BATCH_ELEMENTS))
        elif method == "central":
            evaluate_two_sided(
                set_element,
                setup.evaluate,
                indices,
                plan.plus.tolist(),
                plan.minus.tolist(),
                original,
                outputs[0],
                outputs[1],
                tick,
                chunk,
            )
        else:
            side = plan.plus if method == "forward" else plan.minus
            out = outputs[0] if method == "forward" else outputs[1]
            evaluate_one_sided(
                set_element, setup.evaluate, indices, side.tolist(), original, out, tick, chunk
            )
    except LossError:
        raise
    except Exception as error:
        # the element in flight: θ−ε values are recorded last in central differences
        done = len(outputs[1]) if method in ("central", "backward") else len(outputs[0])
        where = plan.name + format_index(
            np.unravel_index(indices[min(done, len(indices) - 1)], plan.shape)
        )
        if hasattr(error, "add_note"):
            error.add_note(
                f"(nbgradcheck: raised while {where} was perturbed; parameters restored)"
            )
        raise


def evaluate_batched(
    batched: Callable,
    plan: TensorPlan,
    method: str,
    outputs: tuple[list, list],
    tick: Callable[[int], None],
    chunk: int,
) -> None:
    """Vectorized evaluation through the adapter's ``batched_losses``, chunk by chunk.

    ``batched_losses(position, indices, values)`` returns J with each listed element set
    to its value (one at a time, the others unperturbed) and leaves the parameters as
    they were. Adapters that offer it set ``can_batch = True``.
    """
    sides = [(plan.plus, outputs[0])] if method != "backward" else []
    if method in ("central", "backward"):
        sides.append((plan.minus, outputs[1]))
    for start in range(0, plan.indices.size, chunk):
        stop = start + chunk
        for shifted, out in sides:
            out.extend(
                np.asarray(
                    batched(plan.position, plan.indices[start:stop], shifted[start:stop]),
                    dtype=float,
                ).tolist()
            )
        tick(min(stop, plan.indices.size) - start)


# -- from loss values to measurements -------------------------------------------------------


def measure_tensor(
    plan: TensorPlan, setup: CheckSetup, method: str, outputs: tuple[list, list], tol: float
) -> TensorCheck:
    """Numeric gradient, round-off floor and kinks from the recorded loss values."""
    count = plan.indices.size
    reject_non_finite(plan, outputs)
    if method == "complex" and outputs[0] and not isinstance(outputs[0][0], complex):
        raise LossError(
            "with method='complex' the loss returned a real number for complex parameters: "
            "something in it (float(), np.real, .astype(float), abs) drops the imaginary "
            "part; make it complex-safe or use method='central'"
        )
    j0 = setup.loss_value
    values = plan.values.astype(np.float64)
    up = plan.plus.astype(np.float64) - values
    down = values - plan.minus.astype(np.float64)
    loss_minus = padded(outputs[1], count)
    loss_plus = padded(outputs[0], count, complex if method == "complex" else float)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "central":
            numeric, step = (loss_plus - loss_minus) / (up + down), up + down
        elif method == "forward":
            numeric, step = (loss_plus - j0) / up, up
        elif method == "backward":
            numeric, step = (j0 - loss_minus) / down, down
        else:
            numeric, step, loss_plus = loss_plus.imag / plan.steps, plan.steps, loss_plus.real
    noise = noise_floor(method, setup.unit_roundoff, j0, loss_plus, loss_minus, up, down)
    analytic_full = setup.analytic[plan.position]
    analytic = analytic_full.reshape(-1)[plan.indices]
    kink = np.zeros(count, dtype=bool)
    if method == "central":
        kink = kink_crossings(numeric, analytic, j0, loss_plus, loss_minus, up, down, noise, tol)
    return TensorCheck(
        plan.name,
        plan.shape,
        plan.dtype,
        plan.indices,
        values,
        analytic,
        numeric,
        step,
        loss_plus,
        loss_minus,
        noise,
        kink,
        analytic_full,
        tol,
    )


def padded(values: list, count: int, dtype: type = float) -> np.ndarray:
    """``values`` as an array of length ``count``, NaN after an interruption."""
    out = np.full(count, np.nan, dtype=dtype)
    out[: len(values)] = values[:count]
    return out


def reject_non_finite(plan: TensorPlan, outputs: tuple[list, list]) -> None:
    """Raise NonFiniteLossError naming the first element whose perturbation broke J."""
    for losses, side, shifted in zip(outputs, ("+ε", "−ε"), (plan.plus, plan.minus)):
        finite = np.isfinite(np.asarray(losses, dtype=complex))
        if finite.all():
            continue
        j = int(np.argmin(finite))
        where = format_index(np.unravel_index(int(plan.indices[j]), plan.shape))
        raise NonFiniteLossError(
            f"the loss became {losses[j]} when {plan.name}{where} was perturbed "
            f"({side}) from {plan.values[j]!r} to {shifted[j]!r}; parameters restored"
        )


def noise_floor(
    method: str,
    unit_roundoff: float,
    j0: float,
    loss_plus: np.ndarray,
    loss_minus: np.ndarray,
    up: np.ndarray,
    down: np.ndarray,
) -> np.ndarray:
    """How far round-off in J alone can move each numeric estimate."""
    error = NOISE_FACTOR * unit_roundoff
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "central":
            return error * (np.abs(loss_plus) + np.abs(loss_minus)) / (up + down)
        if method == "forward":
            return error * (np.abs(loss_plus) + abs(j0)) / up
        if method == "backward":
            return error * (abs(j0) + np.abs(loss_minus)) / down
    return np.zeros_like(loss_plus)


def kink_crossings(
    numeric: np.ndarray,
    analytic: np.ndarray,
    j0: float,
    loss_plus: np.ndarray,
    loss_minus: np.ndarray,
    up: np.ndarray,
    down: np.ndarray,
    noise: np.ndarray,
    tol: float,
) -> np.ndarray:
    """Elements whose discrepancy a slope jump between θ−ε and θ+ε explains.

    At a kink the left and right slopes differ by the jump, the central estimate is
    their average, and the analytic gradient equals one of them; in a smooth region
    both slopes agree with the central estimate to O(ε·J'').
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        left = (j0 - loss_minus) / down
        right = (loss_plus - j0) / up
    error = np.abs(numeric - analytic)
    failing = error > np.maximum(tol * (np.abs(numeric) + np.abs(analytic)), noise)
    near_a_side = np.minimum(np.abs(analytic - left), np.abs(analytic - right))
    jump = np.abs(right - left)
    return failing & (near_a_side <= KINK_SIDE_RATIO * error) & (jump >= error) & (jump > 4 * noise)


def result_notes(tensors: list[TensorCheck], setup: CheckSetup, method: str) -> list[str]:
    notes = []
    kinks = sum(int((t.kink & t.evaluated).sum()) for t in tensors)
    if kinks:
        notes.append(
            f"{kinks} element{'s' if kinks > 1 else ''} crossed a kink (ReLU, max, abs, "
            f"hinge) between θ−ε and θ+ε: the numeric value averages two slopes there, so "
            f"{'they are' if kinks > 1 else 'it is'} not counted as failing; see result.kinks"
        )
    refined = {t.name: t.refined for t in tensors if t.refined}
    if refined:
        where = ", ".join(f"{count} in {name}" for name, count in refined.items())
        notes.append(
            f"re-estimated with a smaller step ({where}): the first step gave a discrepancy "
            f"that a step ε/{REFINE_FACTOR} or ε/{REFINE_FACTOR**2} removed (kinks, "
            f"curvature or round-off, not a bug); their steps are in result.tensor(name).step"
        )
    floor = max((t.floor for t in tensors if t.evaluated.any()), default=0.0)
    if floor > 1e-6 and method != "complex":
        notes.append(
            f"round-off floor of this check: relative difference up to {floor:.1e} can "
            f"come from floating-point noise alone (unit round-off {setup.unit_roundoff:.1e})"
            f"; verdicts allow for it"
        )
    return notes
