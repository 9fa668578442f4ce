"""Hostile and careless input: the parameters always come back bit-identical, every bad
input gets a one-line error naming the culprit, and no verdict is untrue.

Property tests draw parameter sets (shapes with empty and 0-d arrays, dtypes from float16
to long double, Fortran order, strided, reversed, masked, read-only and broadcast views,
str/int/tuple keys, lists and single arrays) and losses that misbehave at a drawn
evaluation (raise, return NaN or an array, mutate, replace, re-mask or lock a parameter).
Fault injection: Ctrl-C at a drawn evaluation in every mode and method, an executor that
cannot submit, a worker process killed mid-check, two threads checking one array.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import nbgradcheck as ng
from nbgradcheck.adapters.guard import claim, claimed_names
from nbgradcheck.errors import (
    GradCheckError,
    LossError,
    NonFiniteLossError,
    ParameterError,
    ParametersModifiedError,
)

# Losses defined in this module travel by value, so worker processes need not import it.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REAL_DTYPES = (np.float16, np.float32, np.float64, np.longdouble, np.dtype(">f8"))
BAD_DTYPES = (np.complex128, np.int32, np.bool_)
GOOD_LAYOUTS = ("C", "F", "strided", "reversed", "masked", "hard mask")
BAD_LAYOUTS = ("read-only", "broadcast", "zero stride")
# tiny values (subnormal in float16/32), huge ones (the loss overflows: a clear error)
SCALES = (1.0, 1.0, 1.0, 1e-30, 1e-300, 1e30, 1e200)
SHAPES = ((), (0,), (1,), (3,), (2, 3), (0, 2), (2, 1, 2))
# A check starts with two evaluations at the unperturbed parameters.
PREPARE_CALLS = 2


class LossBoom(Exception):
    """The loss's own error: the check must re-raise it as it is."""


# -- the user's parameters, and what "untouched" means --------------------------------------


def make_array(shape: tuple, dtype: Any, layout: str, seed: int, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = np.array(scale * rng.uniform(-2, 2, size=shape), dtype=dtype)
    if layout == "F":
        return np.asfortranarray(values)
    if layout == "strided" and values.ndim:
        wide = np.zeros((*shape[:-1], 2 * shape[-1]), dtype=dtype)
        wide[..., ::2] = values
        return wide[..., ::2]
    if layout == "reversed" and values.ndim:
        return np.ascontiguousarray(values[::-1])[::-1]
    if layout in ("masked", "hard mask"):
        mask = rng.random(shape) < 0.4
        return np.ma.array(values, mask=mask, fill_value=-7, hard_mask=layout == "hard mask")
    if layout == "read-only":
        values.flags.writeable = False
    if layout == "broadcast":
        return np.broadcast_to(values, (2, *shape))
    if layout == "zero stride":  # writable, yet every row is the same memory
        return np.lib.stride_tricks.as_strided(values, (2, *shape), (0, *values.strides))
    return values


def slots(params: Any) -> list[tuple[Any, Any]]:
    """(key or index, array) pairs of a dict, list, tuple or single array."""
    if isinstance(params, Mapping):
        return list(params.items())
    if isinstance(params, (list, tuple)):
        return list(enumerate(params))
    return [(None, params)]


def value_text(array: np.ndarray) -> list[str]:
    """Every value exactly (shortest round-trip text, so -0.0 and NaN are told apart)."""
    plain = np.ndarray.view(array, np.ndarray)
    return [np.format_float_scientific(x, unique=True) for x in plain.reshape(-1).tolist()]


def plain_bytes(array: np.ndarray) -> bytes:
    """The data's bytes in C order (a masked array's data, under the mask too)."""
    return np.ascontiguousarray(np.ndarray.view(array, np.ndarray)).tobytes()


def describe(array: np.ndarray) -> tuple:
    masked = np.ma.isMaskedArray(array)
    return (
        type(array),
        array.dtype.str,
        array.shape,
        array.strides,
        bool(array.flags.writeable),
        value_text(array) if array.dtype == np.longdouble else plain_bytes(array),
        np.ma.getmaskarray(array).tobytes() if masked else None,
        repr(array._fill_value) if masked else None,
        bool(array.hardmask) if masked else None,
    )


def state(params: Any) -> list[tuple]:
    """Everything the user could observe: the objects in the structure, in order, and each
    one's type, dtype, shape, strides, flags, values, mask and fill value."""
    return [(key, id(array), describe(array)) for key, array in slots(params)]


def float64_gradients(params: Any) -> Any:
    """The exact gradient of :func:`sum_of_squares` in the structure of ``params``."""
    grads = [
        (key, 2 * np.real(np.ndarray.view(a, np.ndarray)).astype(np.float64))
        for key, a in slots(params)
    ]
    if isinstance(params, Mapping):
        return dict(grads)
    if isinstance(params, (list, tuple)):
        return [g for _, g in grads]
    return grads[0][1]


def sum_of_squares(params: Any) -> Any:
    """Σθ² over every element, masked ones included (complex-safe: no abs)."""
    return sum(np.sum(np.asarray(a) * np.asarray(a)) for _, a in slots(params))


# -- losses that misbehave at one evaluation ------------------------------------------------


@dataclass
class HostileLoss:
    """Σθ², except at evaluation number ``at``, where it does ``behaviour``."""

    behaviour: str
    at: int
    user: Any  # the user's structure, to tell it from the check's complex-step copies
    calls: int = 0
    acted: bool = False
    user_arrays: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.user_arrays = [a for _, a in slots(self.user)]

    def __call__(self, params: Any) -> Any:
        self.calls += 1
        if self.calls == self.at:
            result = self.act(params)
            if result is not None:
                return result
        return sum_of_squares(params)

    def act(self, params: Any) -> Any:
        if self.behaviour == "none":
            return None
        if self.behaviour == "raise":
            self.acted = True
            raise LossBoom("the loss's own error")
        if self.behaviour in ("nan", "array"):
            self.acted = True
            return np.nan if self.behaviour == "nan" else np.ones(2)
        if self.behaviour == "replace":
            return self.replace(params)
        target = self.users_array(params)
        if target is None:
            return None
        if self.behaviour == "mutate":
            plain = np.ndarray.view(target, np.ndarray)
            first = (0,) * plain.ndim
            plain[first] = np.nextafter(plain[first], np.inf)  # one ulp: the least change
        elif self.behaviour == "remask":
            if not np.ma.isMaskedArray(target):
                return None
            target.soften_mask()
            target.mask = ~np.ma.getmaskarray(target)
        elif self.behaviour == "lock":
            target.flags.writeable = False
        self.acted = True
        return None

    def users_array(self, params: Any) -> np.ndarray | None:
        """The first non-empty array of the user's own that the loss was given."""
        for _, array in slots(params):
            if array.size and any(array is mine for mine in self.user_arrays):
                return array
        return None

    def replace(self, params: Any) -> None:
        if params is not self.user or not isinstance(params, (dict, list)):
            return None
        key = slots(params)[0][0]
        params[key] = params[key].copy()
        self.acted = True
        return None


BEHAVIOURS = ("none", "raise", "nan", "array", "mutate", "replace", "remask", "lock")
EXPECTED = {
    "raise": LossBoom,
    "nan": NonFiniteLossError,
    "array": LossError,
    "mutate": ParametersModifiedError,
    "replace": ParametersModifiedError,
    "remask": ParametersModifiedError,
    "lock": ParametersModifiedError,
}


def run_check(loss: Any, params: Any, grads: Any, **options: Any) -> Any:
    """The result, or the exception the check raised."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # incomplete results warn
        try:
            return ng.check(loss, params, grads, progress=False, **options)
        except (GradCheckError, LossBoom, KeyboardInterrupt) as error:
            return error


def assert_one_line(outcome: Any) -> None:
    if isinstance(outcome, GradCheckError):
        assert "\n" not in str(outcome), str(outcome)


# -- strategies -----------------------------------------------------------------------------


@st.composite
def arrays(draw: Any, scales: tuple = SCALES) -> tuple:
    shape = draw(st.sampled_from(SHAPES))
    dtype = draw(st.sampled_from(REAL_DTYPES))
    layout = draw(st.sampled_from(GOOD_LAYOUTS))
    scale = draw(st.sampled_from(scales))
    return make_array(shape, dtype, layout, draw(st.integers(0, 2**16)), scale), layout


@st.composite
def parameter_sets(draw: Any, bad: bool = False) -> tuple[Any, list[str]]:
    """(params, layouts): a dict with str, int or tuple keys, a list, a tuple or one array;
    with ``bad``, one array has a dtype or layout the check must refuse."""
    count = draw(st.integers(1, 3))
    drawn = [draw(arrays((1.0,) if bad else SCALES)) for _ in range(count)]
    if bad:
        position = draw(st.integers(0, count - 1))
        if draw(st.booleans()):
            dtype = draw(st.sampled_from(BAD_DTYPES))
            drawn[position] = (make_array((2,), dtype, "C", 0), f"dtype {np.dtype(dtype)}")
        else:
            layout = draw(st.sampled_from(BAD_LAYOUTS))
            drawn[position] = (make_array((3,), np.float64, layout, 1), layout)
    items, layouts = [a for a, _ in drawn], [layout for _, layout in drawn]
    structure = draw(st.sampled_from(("str", "int", "tuple", "list", "tuple of", "array")))
    if structure == "array" and count == 1:
        return items[0], layouts
    if structure == "list":
        return items, layouts
    if structure == "tuple of":
        return tuple(items), layouts
    key = {"str": lambda i: f"W{i}", "int": lambda i: i, "tuple": lambda i: ("layer", i)}.get(
        structure, lambda i: f"W{i}"
    )
    return {key(i): a for i, a in enumerate(items)}, layouts


def mode_and_method() -> Any:
    methods = st.sampled_from(("central", "forward", "backward", "complex"))
    modes = st.sampled_from(("full", "sample", "fast"))
    return st.tuples(modes, methods).filter(lambda pair: pair != ("fast", "complex"))


def options_for(mode: str, method: str) -> dict[str, Any]:
    return {"mode": mode, "method": method, **({"sample": 2} if mode == "sample" else {})}


# -- property: hostile losses on careless parameters ----------------------------------------


@PROPERTY
@given(
    parameter_sets(),
    mode_and_method(),
    st.sampled_from(BEHAVIOURS),
    st.integers(1, 16),
)
def test_any_loss_on_any_parameters_leaves_them_bit_identical(drawn, how, behaviour, at):
    params, _ = drawn
    before, objects = state(params), [a for _, a in slots(params)]
    refusal = expected_refusal(params)
    loss = HostileLoss(behaviour, at, params)
    outcome = run_check(loss, params, float64_gradients(params), **options_for(*how))
    assert state(params) == before
    assert all(a is b for (_, a), b in zip(slots(params), objects))
    assert_one_line(outcome)
    event(f"{behaviour}: {type(outcome).__name__}")
    if refusal is not None and (refusal[0] is ParameterError or not loss.acted):
        assert isinstance(outcome, refusal[0]) and refusal[1] in str(outcome), outcome
    elif step_vanished(outcome, params):
        assert not loss.acted or loss.at > PREPARE_CALLS
    elif loss.acted:  # an overflowing loss may be refused for that first
        refused = refusal is not None and isinstance(outcome, refusal[0])
        assert isinstance(outcome, EXPECTED[behaviour]) or refused, (behaviour, outcome)
    else:
        assert isinstance(outcome, ng.GradCheckResult), outcome
        assert outcome.complete
        # central and complex steps are exact for Σθ²; one-sided ones err by ε per element
        exact = how[1] in ("central", "complex")
        if exact and all(a.dtype in (np.float64, np.longdouble) for a in objects):
            assert outcome.passed, outcome.summary()


def expected_refusal(params: Any) -> tuple[type, str] | None:
    """The error a check of ``params`` with loss Σθ² must give, and words it must use."""
    objects = [np.ndarray.view(a, np.ndarray) for _, a in slots(params)]
    if not all(np.isfinite(a).all() for a in objects):  # a huge value overflowed its dtype
        return ParameterError, "contains"
    if all(a.size == 0 for a in objects):
        return ParameterError, "every parameter is empty"
    with np.errstate(over="ignore"):  # the check computes in float64
        if not np.isfinite(float(np.real(sum_of_squares(params)))):
            return NonFiniteLossError, "the loss"
    return None


def step_vanished(outcome: Any, params: Any) -> bool:
    """The check refused a fixed step that rounds away next to a huge θ (θ ± 1e-6 = θ)."""
    plain = [np.ndarray.view(a, np.ndarray) for _, a in slots(params)]
    huge = any(a.size and float(np.abs(a).max()) > 1e9 for a in plain)
    said = isinstance(outcome, GradCheckError) and "the step is too small" in str(outcome)
    assert huge or not said, outcome
    return said


@PROPERTY
@given(parameter_sets(bad=True))
def test_parameters_that_cannot_be_perturbed_get_one_clear_error(drawn):
    params, layouts = drawn
    before = state(params)
    outcome = run_check(sum_of_squares, params, float64_gradients(params), mode="full")
    assert state(params) == before
    assert isinstance(outcome, ParameterError), outcome
    assert_one_line(outcome)
    reasons = {
        "read-only": "read-only",
        "broadcast": "read-only",
        "zero stride": "share memory",
        "dtype complex128": "dtype complex128",
        "dtype int32": "dtype int32",
        "dtype bool": "dtype bool",
    }
    bad = [layout for layout in layouts if layout in reasons]
    assert reasons[bad[0]] in str(outcome)


# -- fault injection: Ctrl-C anywhere -------------------------------------------------------


@dataclass
class InterruptingLoss:
    """A quadratic loss that raises KeyboardInterrupt at evaluation number ``at``."""

    at: int
    calls: int = 0

    def __call__(self, params: Any) -> Any:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return sum_of_squares(params)


@PROPERTY
@given(
    mode_and_method(),
    st.integers(1, 40),
    st.tuples(st.integers(1, 12), st.integers(1, 12)),
    st.booleans(),
)
# Ctrl-C at the last evaluation: the repeatability probe of a failing check
@example(how=("full", "central"), at=13, sizes=(1, 3), planted_bug=True)
@example(how=("full", "complex"), at=5, sizes=(6, 1), planted_bug=False)
def test_ctrl_c_at_any_evaluation_gives_an_incomplete_result_and_restores(
    how, at, sizes, planted_bug
):
    rng = np.random.default_rng(at)
    params = {"W": rng.uniform(-1, 1, sizes[0]), "b": rng.uniform(-1, 1, sizes[1])}
    grads = float64_gradients(params)
    if planted_bug:
        grads["W"][0] *= 1.5
    before = state(params)
    loss = InterruptingLoss(at)
    outcome = run_check(loss, params, grads, **options_for(*how))
    assert state(params) == before
    interrupted = loss.calls >= at
    event(f"{how}: {'interrupted' if interrupted else 'ran to the end'}")
    if interrupted and at <= PREPARE_CALLS:  # no partial result before the check starts
        assert isinstance(outcome, KeyboardInterrupt)
        return
    assert isinstance(outcome, ng.GradCheckResult), outcome
    assert outcome.complete is not interrupted
    if not interrupted:
        return
    assert not outcome.passed and "PASSED" not in outcome.summary()
    # an element counts as evaluated only if the loss was evaluated for it
    completed = at - 1 - PREPARE_CALLS
    per_element = 2 if how[1] == "central" else 1
    evaluated = sum(int(t.evaluated.sum()) for t in outcome.tensors)
    assert evaluated * per_element <= completed, (evaluated, completed)


# -- fault injection: executors and workers -------------------------------------------------


class CannotSubmit:
    """An executor whose submit raises, as a full queue or a closed client would."""

    def submit(self, fn: Any, *args: Any) -> Any:
        raise RuntimeError("the queue is full")


def quadratic_params() -> dict[str, np.ndarray]:
    return {"W": np.linspace(-1, 1, 6).reshape(2, 3), "b": np.array([0.5, -0.0])}


def test_an_executor_that_cannot_submit_gets_a_clear_error():
    params = quadratic_params()
    before = state(params)
    with pytest.raises(GradCheckError, match="queue is full") as raised:
        ng.check(sum_of_squares, params, float64_gradients(params), executor=CannotSubmit())
    assert state(params) == before
    assert "submit" in str(raised.value) and "\n" not in str(raised.value)


PARENT_PID = os.getpid()


def dies_in_a_worker(params: Any) -> Any:
    """Σθ² in this process; in a worker process, the worker is killed (SIGKILL)."""
    if os.getpid() != PARENT_PID:
        os.kill(os.getpid(), 9)
    return sum_of_squares(params)


def test_a_worker_killed_mid_check_gets_a_clear_error_and_restores():
    params = quadratic_params()
    before = state(params)
    with pytest.raises(GradCheckError, match="worker") as raised:
        ng.check(dies_in_a_worker, params, float64_gradients(params), n_jobs=1, mode="full")
    assert state(params) == before
    message = " ".join([str(raised.value), *getattr(raised.value, "__notes__", [])])
    assert "W[0, 0] was perturbed" not in message  # no element was at fault


# -- two checks of the same arrays ----------------------------------------------------------


class BlockingLoss:
    """Σθ²; at evaluation ``at`` it signals ``inside`` and waits for ``release``."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0
        self.inside, self.release = threading.Event(), threading.Event()

    def __call__(self, params: Any) -> Any:
        self.calls += 1
        if self.calls == self.at:
            self.inside.set()
            self.release.wait(timeout=30)
        return sum_of_squares(params)


@pytest.mark.parametrize("second", ["same dict", "a view"])
def test_a_second_check_of_arrays_being_checked_is_refused(second):
    params = quadratic_params()
    before = state(params)
    loss = BlockingLoss(at=5)
    results: list[Any] = []
    first = threading.Thread(
        target=lambda: results.append(run_check(loss, params, float64_gradients(params))),
        name="first check",
    )
    first.start()
    try:
        assert loss.inside.wait(timeout=30)
        other = params if second == "same dict" else {"V": params["W"][1]}
        outcome = run_check(sum_of_squares, other, float64_gradients(other))
    finally:
        loss.release.set()
        first.join(timeout=60)
    assert isinstance(outcome, ParameterError), outcome
    assert "already being checked" in str(outcome) and "first check" in str(outcome)
    assert ("W" if second == "same dict" else "V (it shares memory with W)") in str(outcome)
    assert results[0].passed and state(params) == before


def test_a_loss_checking_its_own_parameters_is_refused():
    params = quadratic_params()
    before = state(params)

    def recursive(p: Any) -> Any:
        ng.check(sum_of_squares, p, float64_gradients(p))
        return sum_of_squares(p)

    outcome = run_check(recursive, params, float64_gradients(params))
    assert isinstance(outcome, ParameterError) and "this very thread" in str(outcome)
    assert state(params) == before


# -- the guard on its own -------------------------------------------------------------------


def test_claims_cover_views_but_not_disjoint_interleaved_memory():
    buffer = np.zeros(10)
    with claim([buffer[::2]], ["even"]):
        assert claimed_names() == ["even"]
        with claim([buffer[1::2]], ["odd"]):  # interleaved: no byte in common
            pass
        shared = pytest.raises(ParameterError, match=r"tail \(it shares memory with even\)")
        with shared, claim([buffer[4:]], ["tail"]):
            pass
    assert claimed_names() == []
    with claim([buffer[4:]], ["tail"]):  # released, also after the refusal
        pass


def test_a_claim_waits_for_the_holder_when_asked_and_is_released_on_errors():
    array = np.ones(4)
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with claim([array], ["W"]):
            holding.set()
            done.wait(timeout=30)

    holder = threading.Thread(target=hold, name="holder")
    holder.start()
    assert holding.wait(timeout=30)
    refused = pytest.raises(ParameterError, match=r"W is already .*thread 'holder'")
    with refused, claim([array], ["W"]):
        pass
    threading.Timer(0.05, done.set).start()
    with claim([array], ["W"], timeout=30):  # the holder finishes meanwhile
        assert claimed_names() == ["W"]
    holder.join(timeout=30)
    with pytest.raises(LossBoom), claim([array], ["W"]):
        raise LossBoom("inside")
    assert claimed_names() == []


def test_a_claim_never_waits_for_its_own_thread():
    array = np.ones(4)
    refused = pytest.raises(ParameterError, match="this very thread")
    with claim([array], ["W"]), refused, claim([array[:2]], ["W"], timeout=30):
        pass
    empty = np.ones(0)  # holds no memory: claimed twice without conflict
    with claim([empty, array], ["empty", "W"]), claim([empty], ["empty"]):
        assert claimed_names() == ["empty", "W", "empty"]


# -- options given as NumPy scalars, and bad seeds ------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"eps": np.float32(1e-3)},
        {"eps": np.float64(1e-6)},
        {"tol": np.float32(1e-4)},
        {"tol": np.float64(1e-4)},
        {"seed": np.int64(3)},
        {"seed": np.uint32(2**32 - 1)},
        {"mode": "sample", "sample": np.int32(2)},
    ],
    ids=repr,
)
def test_numpy_scalars_are_accepted_as_options(options):
    params = quadratic_params()
    result = ng.check(sum_of_squares, params, float64_gradients(params), **options)
    assert result.passed


@pytest.mark.parametrize("seed", ["0", -1, 2**32, 1.5, True, np.float64(2.0), [0]], ids=repr)
def test_a_bad_seed_gets_one_clear_error(seed):
    params = quadratic_params()
    before = state(params)
    with pytest.raises(GradCheckError, match=r"^seed must be") as raised:
        ng.check(sum_of_squares, params, float64_gradients(params), seed=seed)
    assert "\n" not in str(raised.value) and repr(seed) in str(raised.value)
    assert state(params) == before


# -- verdicts and messages that must be true ------------------------------------------------


class NanAtTheEnd:
    """Σθ², except that the third evaluation at the unperturbed point returns NaN (the
    check's repeatability probe, after the two evaluations it starts with)."""

    def __init__(self, params: dict[str, np.ndarray]) -> None:
        self.original = {k: v.copy() for k, v in params.items()}
        self.unperturbed_calls = 0

    def __call__(self, params: Any) -> Any:
        if all(np.array_equal(params[k], v) for k, v in self.original.items()):
            self.unperturbed_calls += 1
            if self.unperturbed_calls == PREPARE_CALLS + 1:
                return np.nan
        return sum_of_squares(params)


def test_nan_at_the_final_repeatability_probe_is_a_non_finite_loss_error():
    params = quadratic_params()
    grads = float64_gradients(params)
    grads["W"][0, 1] *= 3  # a failing tensor: the check re-evaluates J at the end
    loss = NanAtTheEnd(params)
    with pytest.raises(NonFiniteLossError, match="nan"):
        ng.check(loss, params, grads, mode="full")
    assert loss.unperturbed_calls == PREPARE_CALLS + 1


@pytest.mark.parametrize("method", ["forward", "backward"])
def test_one_sided_steps_do_not_call_a_zero_gradient_wrong(method):
    """At θ = 0, J = Σθ² has gradient 0 and curvature 2: a one-sided estimate is ε, its
    truncation error, and shrinks with the step; that is no bug in the gradient."""
    params = {"b": np.zeros(3), "W": np.linspace(0.5, 1, 3)}
    result = ng.check(sum_of_squares, params, float64_gradients(params), method=method)
    assert result.passed, result.summary()


def test_a_long_double_loss_beyond_the_float64_range_is_not_blamed_on_the_forward_pass():
    params = {"W": np.full(3, 1e200, dtype=np.longdouble)}  # Σθ² ≈ 3e400: finite here
    with pytest.raises(LossError, match="float64") as raised:
        ng.check(sum_of_squares, params, float64_gradients(params), eps="auto")
    assert "fix the forward pass" not in str(raised.value)


def test_nan_returned_for_a_complex_step_is_reported_as_nan():
    params = quadratic_params()
    loss = HostileLoss("nan", PREPARE_CALLS + 1, params)  # the first complex step
    with pytest.raises(NonFiniteLossError, match="nan"):
        ng.check(loss, params, float64_gradients(params), method="complex", mode="full")
    assert loss.acted


def mutates_its_complex_copy(params: Any) -> Any:
    """Σθ², and changes W when it is the complex copy method='complex' passes."""
    if np.iscomplexobj(params["W"]):
        params["W"][0, 0] += 1e-3
    return sum_of_squares(params)


def test_a_loss_changing_the_complex_copy_it_is_given_is_an_error():
    params = quadratic_params()
    before = state(params)
    with pytest.raises(ParametersModifiedError, match=r"changed W \(the complex copy"):
        ng.check(mutates_its_complex_copy, params, float64_gradients(params), method="complex")
    assert state(params) == before


CALLER = os.getpid()


def mutates_in_workers(params: Any) -> Any:
    """Σθ², and changes b's first element whenever it runs in another process."""
    if os.getpid() != CALLER:
        params["b"][0] += 1e-3
    return sum_of_squares(params)


def test_a_loss_changing_a_workers_copy_is_the_same_error_as_in_process():
    params = quadratic_params()
    before = state(params)
    with pytest.raises(ParametersModifiedError, match="the loss changed b in place"):
        ng.check(mutates_in_workers, params, float64_gradients(params), mode="full", n_jobs=2)
    assert state(params) == before
    # the same loss run here: the same error
    with pytest.raises(ParametersModifiedError, match="the loss changed b in place"):
        ng.check(
            lambda p: (p["b"].__setitem__(0, p["b"][0] + 1e-3), sum_of_squares(p))[1],
            params,
            float64_gradients(params),
            mode="full",
        )
    assert state(params) == before


@pytest.mark.parametrize("method", ["central", "forward", "backward"])
@pytest.mark.parametrize("theta", [5.47846749e-31, 1e-200, 0.0])
def test_a_zero_gradient_at_a_tiny_loss_passes_with_every_method(method, theta):
    """J = θ² near θ = 0: J(θ) underflows against J(θ±ε) ≈ ε², the numeric estimate is
    all truncation (or extrapolated to 0); the round-off floors of the losses actually
    measured, not of J(θ) alone, say it is zero within round-off (found by hypothesis)."""
    params = {"W0": np.array(theta)}
    result = ng.check(sum_of_squares, params, float64_gradients(params), method=method)
    assert result.passed and result.verdict in ("ok", "correct"), result.summary()
