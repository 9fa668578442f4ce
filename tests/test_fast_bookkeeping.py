"""Fast mode's bookkeeping: exact points, random directions, reused buffers and the group
setter's tamper detection (what makes a test of a large tensor cheap changes nothing)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import frozen

import nbgradcheck as ng
from nbgradcheck.adapters.numpy import ParameterSet
from nbgradcheck.core.localize import Scratch, random_signs
from nbgradcheck.core.schemes import BACKWARD, CENTRAL, FORWARD
from nbgradcheck.errors import ParametersModifiedError

SCHEMES = {"central": CENTRAL, "forward": FORWARD, "backward": BACKWARD}


def random_bits(rng: np.random.Generator, size: int, dtype: type) -> np.ndarray:
    """Any bit patterns of ``dtype``: signed zeros, subnormals, infinities, NaN payloads."""
    width = np.dtype(dtype).itemsize
    return rng.integers(0, 2 ** (8 * width), size, dtype=f"u{width}").view(dtype)


def bits(array: np.ndarray) -> tuple:
    return array.dtype.str, array.shape, array.tobytes()


@pytest.mark.parametrize("buffers", [False, True], ids=["fresh", "buffers"])
@pytest.mark.parametrize("method", SCHEMES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_directional_points_select_the_planned_points_bit_for_bit(dtype, method, buffers):
    scheme, rng = SCHEMES[method], np.random.default_rng(0)
    plus, minus, values = (random_bits(rng, 1001, dtype) for _ in range(3))
    signs = rng.integers(0, 2, 1001, dtype=np.int8) * 2 - 1
    out = (np.empty_like(plus), np.empty_like(plus)) if buffers else None
    up, down = scheme.directional_points(plus, minus, values, signs, out)
    integers = f"u{np.dtype(dtype).itemsize}"
    high, low = plus.view(integers), minus.view(integers)
    expected_up = np.where(signs > 0, high, low) if scheme.plus else values.view(integers)
    expected_down = np.where(signs > 0, low, high) if scheme.minus else values.view(integers)
    assert bits(up.view(integers)) == bits(expected_up)
    assert bits(down.view(integers)) == bits(expected_down)
    if buffers:  # written where asked, not into fresh arrays
        assert not scheme.plus or up is out[0]
        assert not scheme.minus or down is out[1]


@pytest.mark.parametrize("method", SCHEMES)
def test_directional_points_of_long_doubles_are_the_planned_points(method):
    scheme, rng = SCHEMES[method], np.random.default_rng(1)
    values = rng.standard_normal(50).astype(np.longdouble)
    plus, minus = values + np.longdouble(1e-9), values - np.longdouble(1e-9)
    signs = rng.integers(0, 2, 50, dtype=np.int8) * 2 - 1
    up, down = scheme.directional_points(plus, minus, values, signs)
    assert np.array_equal(up, np.where(signs > 0, plus, minus) if scheme.plus else values)
    assert np.array_equal(down, np.where(signs > 0, minus, plus) if scheme.minus else values)


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 1001])
def test_random_signs_are_the_directions_integers_draws(size):
    """A seeded fast check keeps its directions: the signs are those of
    rng.integers(0, 2) * 2 - 1, and the generator is left in the same state."""
    for seed in range(5):
        mine, theirs = np.random.default_rng(seed), np.random.default_rng(seed)
        for _ in range(3):
            signs = random_signs(mine, size)
            expected = theirs.integers(0, 2, size, dtype=np.int8) * 2 - 1
            assert signs.dtype == np.int8 and signs.tolist() == expected.tolist()
        assert mine.integers(2**62) == theirs.integers(2**62)


def test_scratch_gives_disjoint_point_slots_while_they_fit():
    scratch = Scratch(10, np.dtype(np.float32))
    slots = scratch.point_slots([4, 5, 2, 1])
    assert [slot is None for slot in slots] == [False, False, True, False]
    views = [view for slot in slots if slot is not None for view in slot]
    assert [view.size for view in views] == [4, 4, 5, 5, 1, 1]
    for i, first in enumerate(views):
        assert not any(np.shares_memory(first, second) for second in views[i + 1 :])


# -- the group setter -------------------------------------------------------------------


def watched(array: np.ndarray) -> ParameterSet:
    params = ParameterSet.from_user({"W": array})
    params.snapshot()
    return params


@pytest.mark.parametrize("change", ["one ulp", "signed zero"])
def test_the_group_setter_notices_any_change_to_the_group_between_writes(change):
    array = np.arange(12.0)
    params = watched(array)
    set_group, indices = params.group_setter(0), np.arange(2, 10)
    set_group(indices, np.zeros(8))
    assert not params.tampered
    if change == "one ulp":  # what a loss updating the parameters in place does
        array[5] = np.nextafter(array[5], np.inf)
    else:  # the same value, other bits
        array[5] = -0.0
    set_group(indices, np.ones(8))
    assert params.tampered == {"W"}


def test_the_group_setter_notices_a_change_before_the_first_write():
    array = np.arange(12.0)
    params = watched(array)
    array[3] += 1.0
    params.group_setter(0)(np.arange(2, 6), np.zeros(4))
    assert params.tampered == {"W"}


@pytest.mark.parametrize("values", ["float64", "overlapping view"])
def test_the_group_setter_raises_no_false_alarm_on_values_it_cannot_keep(values):
    array = np.arange(12, dtype=np.float32)
    params = watched(array)
    set_group, indices = params.group_setter(0), np.arange(0, 4)
    if values == "float64":  # stored as float32: what was written differs from them
        set_group(indices, np.linspace(0.1, 0.4, 4))
    else:  # a view of the parameter that this very write changes
        set_group(indices, array[2:6])
    set_group(indices, np.zeros(4, dtype=np.float32))
    assert not params.tampered


@pytest.mark.parametrize("indices", [[0, 2, 1, 3], [0, 0, 2], [5, 6, 7], [4]])
def test_flat_values_reads_the_elements_asked_for_in_their_order(indices):
    array = np.arange(10.0) * 1.5
    values = ParameterSet.from_user({"W": array}).flat_values(0, np.array(indices))
    assert values.tolist() == array[indices].tolist()
    values[0] = -1.0  # a copy
    assert array.tolist() == (np.arange(10.0) * 1.5).tolist()


@pytest.mark.parametrize("method", SCHEMES)
@pytest.mark.parametrize("during", [1, 2])
def test_a_loss_changing_a_perturbed_tensor_is_caught_and_undone(method, during):
    """Every element is perturbed in a whole-tensor test, so writing the group back
    would hide the change: the group setter must catch it."""
    rng = np.random.default_rng(2)
    weights = rng.standard_normal(200)
    original, before, calls = weights.copy(), frozen({"W": weights}), [0]

    def loss(params):
        w = params["W"]
        if np.all(w != original):  # in a whole-tensor test
            calls[0] += 1
            if calls[0] == during:
                w[7] = np.nextafter(w[7], np.inf)
        return float(np.sum(w**3))

    with pytest.raises(ParametersModifiedError, match="changed W in place"):
        ng.check(loss, {"W": weights}, {"W": 3 * original**2}, mode="fast", method=method)
    assert frozen({"W": weights}) == before
