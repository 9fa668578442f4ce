"""JSON of a result: round trips in every mode, and malformed files refused with one clear
error naming the field, whatever is wrong and however large the shape they declare."""

from __future__ import annotations

import copy
import json
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbgradcheck as ng
from nbgradcheck.api.result import GradCheckResult
from nbgradcheck.core.serialize import ResultFormatError, from_dict
from nbgradcheck.demo import course_network


@pytest.fixture(scope="module")
def saved():
    """A small failing full check as to_dict() data."""
    net = course_network(bugs=("scale_dW2",))
    return ng.check(net.loss, net.parameters, net.gradients, mode="full").to_dict()


@pytest.fixture(scope="module")
def saved_fast():
    """A failing fast check with directional tests (W1: 48 elements), as to_dict() data."""
    net = course_network((8, 6, 4, 1), m=4, bugs=("scale_dW2",), seed=3)
    data = ng.check(net.loss, net.parameters, net.gradients, mode="fast", seed=0).to_dict()
    assert data["tensors"][0]["directional"]["tests"]["numeric"]
    return data


def with_change(data, path, value=None, delete=False):
    """A deep copy of ``data`` with the item at ``path`` (keys and list positions)
    replaced by ``value`` or deleted."""
    changed = copy.deepcopy(data)
    *parents, last = path
    target = changed
    for key in parents:
        target = target[key]
    if delete:
        del target[last]
    else:
        target[last] = value
    return changed


@pytest.mark.parametrize("mode", ["sample", "fast"])
def test_round_trip_keeps_every_number_verdict_and_diagnosis(mode):
    net = course_network((8, 6, 4, 1), m=4, bugs=("scale_dW2",), seed=3)
    result = ng.check(net.loss, net.parameters, net.gradients, mode=mode, seed=0)
    loaded = GradCheckResult.from_json(result.to_json())
    assert isinstance(loaded, GradCheckResult) and not loaded.rerun
    assert loaded.to_dict() == result.to_dict()
    assert loaded.summary() == result.summary()
    assert {n: d.sentence for n, d in loaded.diagnoses.items()} == {
        n: d.sentence for n, d in result.diagnoses.items()
    }
    if mode == "fast":
        assert len(loaded.tensor("W1").directional.tests) == len(
            result.tensor("W1").directional.tests
        )


def test_the_schema_name_is_stable_and_the_interim_name_is_read(saved):
    assert saved["schema"] == "nbgradcheck.result"
    interim = GradCheckResult.from_dict({**saved, "schema": "nbgradcheck.core.result"})
    assert interim.failing == ["W2"]


MALFORMED = [
    (("method",), None, True, r"method: missing"),
    (("tol",), "1e-5", False, r"tol: expected a positive number, got str"),
    (("tensors",), {"W1": {}}, False, r"tensors: expected a list, got dict"),
    (("tensors", 0), [1, 2], False, r"tensors\[0\]: expected an object"),
    (("tensors", 0, "shape"), "5x4", False, r"tensors\[0\].shape: expected a list"),
    (("tensors", 0, "shape", 0), -5, False, r"tensors\[0\].shape\[0\]: expected an integer ≥ 0"),
    (("tensors", 0, "dtype"), "int64", False, r"tensors\[0\].dtype: expected a floating dtype"),
    (("tensors", 0, "dtype"), "banana", False, r"tensors\[0\].dtype: expected a floating dtype"),
    (("tensors", 0, "name"), 7, False, r"tensors\[0\].name: expected a string"),
    (("tensors", 0, "elements", "numeric"), None, True, r"tensors\[0\].elements.numeric: missing"),
    (("tensors", 2, "elements", "numeric", 3), "0.5", False, r"tensors\[2\].elements.numeric\[3\]"),
    (("tensors", 2, "elements", "analytic"), [0.5], False, r"expected 15 values .* got 1"),
    (
        ("tensors", 2, "elements", "kink", 0),
        0,
        False,
        r"elements.kink\[0\]: expected true or false",
    ),
    (
        ("tensors", 1, "elements", "flat_index", 0),
        99,
        False,
        r"flat_index\[0\]: expected a flat index from 0 to 4",
    ),
    (("tensors", 1, "elements", "flat_index", 1), 0, False, r"each flat index at most once"),
    (("tensors", 0, "size"), 21, False, r"tensors\[0\].size: 21 does not agree with the shape"),
    (("complete",), "yes", False, r"complete: expected true or false"),
    (("n_evaluations",), 1.5, False, r"n_evaluations: expected an integer"),
    (("notes",), "a note", False, r"notes: expected a list"),
    (("eps",), "big", False, r"eps: expected a number or 'auto'"),
    (("tensors", 0, "repeatable"), "no", False, r"repeatable: expected true, false or null"),
]


@pytest.mark.parametrize(("path", "value", "delete", "message"), MALFORMED)
def test_malformed_data_raises_one_clear_error_naming_the_field(
    saved, path, value, delete, message
):
    with pytest.raises(ResultFormatError, match=message) as caught:
        GradCheckResult.from_dict(with_change(saved, path, value, delete))
    assert isinstance(caught.value, ng.GradCheckError) and "invalid nbgradcheck result" in str(
        caught.value
    )


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "null", '"nbgradcheck.result"', b"\xff\xfe"])
def test_text_that_is_not_a_result_is_refused(text):
    with pytest.raises(ResultFormatError, match="not an nbgradcheck result"):
        GradCheckResult.from_json(text)


def test_a_huge_declared_shape_allocates_nothing_or_is_refused(saved):
    huge = with_change(saved, ("tensors", 1, "shape"), [10**9])
    del huge["tensors"][1]["size"]
    with pytest.raises(ResultFormatError, match=r"a full check of shape \[1000000000\] lists all"):
        GradCheckResult.from_dict(huge)  # full mode lists every element: the shape disagrees
    sampled = {**huge, "mode": "sample"}  # a sample of 5 elements is a valid description
    text = json.dumps(sampled)
    tracemalloc.start()
    try:
        loaded = GradCheckResult.from_json(text)
        repr(loaded), loaded.to_dict()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert loaded.tensor("b1").size == 10**9
    assert peak < 50 * len(text) + 5_000_000  # in proportion to the file, not the shape
    beyond = with_change(sampled, ("tensors", 1, "shape"), [2**40, 2**40])
    with pytest.raises(ResultFormatError, match="more elements than an array can hold"):
        GradCheckResult.from_dict(beyond)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 10**12)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


def paths(data, prefix=()):
    """Every path to an item of nested dicts and lists."""
    items = (
        data.items()
        if isinstance(data, dict)
        else enumerate(data)
        if isinstance(data, list)
        else ()
    )
    for key, value in items:
        yield (*prefix, key)
        yield from paths(value, (*prefix, key))


def corrupt_and_load(saved, data):
    every = sorted(paths(saved), key=str)
    path = data.draw(st.sampled_from(every))
    delete = isinstance(path[-1], str) and data.draw(st.booleans())
    value = None if delete else data.draw(JSON_VALUES)
    try:
        loaded = from_dict(with_change(saved, path, value, delete))
    except ResultFormatError:
        return
    repr(loaded)  # whatever loads is a usable result


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(st.data())
def test_any_corruption_loads_or_raises_the_one_error(saved, data):
    corrupt_and_load(saved, data)


@FUZZ
@given(st.data())
def test_any_corruption_of_a_fast_result_loads_or_raises_the_one_error(saved_fast, data):
    corrupt_and_load(saved_fast, data)
