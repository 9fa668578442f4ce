"""User mistakes about parameters and gradients: each error names the culprit."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import frozen

import nbgradcheck as ng


def check_quadratic(params, grads, **kwargs):
    def loss(p):
        values = p.values() if isinstance(p, dict) else (p if isinstance(p, list) else [p])
        return float(sum(np.sum(v**2) for v in values))

    return ng.check(loss, params, grads, **kwargs)


def test_plain_and_d_prefixed_keys_are_both_accepted():
    params = {"W1": np.ones((2, 2)), "b1": np.ones(2)}
    plain = check_quadratic(params, {"W1": 2 * np.ones((2, 2)), "b1": 2 * np.ones(2)})
    prefixed = check_quadratic(params, {"dW1": 2 * np.ones((2, 2)), "db1": 2 * np.ones(2)})
    assert plain.passed and prefixed.passed


def test_missing_gradient_names_the_parameter_and_the_keys_seen():
    params = {"W1": np.ones((2, 2)), "b1": np.ones(2)}
    with pytest.raises(ng.GradientError, match=r"no gradient for b1 .*'db1'.*dW1, dZ1"):
        check_quadratic(params, {"dW1": np.ones((2, 2)), "dZ1": np.ones(3)})


def test_gradient_for_a_parameter_not_passed_is_an_error():
    params = {"W1": np.ones(2), "b1": np.ones(2)}
    grads = {"dW1": 2 * np.ones(2), "db1": 2 * np.ones(2), "dW2": np.ones(2), "dA1": np.ones(5)}
    with pytest.raises(ng.GradientError, match=r"'dW2' has no matching parameter"):
        check_quadratic(params, grads)


def test_both_plain_and_prefixed_keys_is_ambiguous():
    params = {"W1": np.ones(2)}
    with pytest.raises(ng.GradientError, match="both 'W1' and 'dW1'"):
        check_quadratic(params, {"W1": np.ones(2), "dW1": np.ones(2)})


def test_shape_mismatch_says_transposed_when_it_is():
    params = {"W1": np.ones((2, 3))}
    with pytest.raises(ng.GradientError, match=r"shape \(3, 2\).*\(2, 3\).*transposed"):
        check_quadratic(params, {"dW1": np.ones((3, 2))})
    with pytest.raises(ng.GradientError, match="same size"):
        check_quadratic(params, {"dW1": np.ones(6)})
    with pytest.raises(ng.GradientError, match=r"shape \(4,\)"):
        check_quadratic(params, {"dW1": np.ones(4)})


def test_nan_in_the_gradient_names_the_element():
    grad = 2 * np.ones((2, 2))
    grad[1, 0] = np.nan
    with pytest.raises(ng.GradientError, match=r"gradient of W contains nan at \[1, 0\]"):
        check_quadratic({"W": np.ones((2, 2))}, {"W": grad})


def test_gradient_structure_must_match_the_parameters():
    with pytest.raises(ng.GradientError, match="grads must be a dict"):
        check_quadratic({"W": np.ones(2)}, [np.ones(2)])
    with pytest.raises(ng.GradientError, match="1 gradients for 2 parameters"):
        check_quadratic([np.ones(2), np.ones(3)], [np.ones(2)])
    with pytest.raises(ng.GradientError, match="list/tuple of 2 arrays"):
        check_quadratic([np.ones(2), np.ones(3)], {"p0": np.ones(2)})
    with pytest.raises(ng.GradientError, match=r"W has dtype <U1: expected real"):
        check_quadratic({"W": np.ones(2)}, {"W": np.array(["a", "b"])})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.arange(4), "W has dtype int64.*astype"),
        ([1.0, 2.0], "W is a list, not a NumPy array"),
        (2.5, "W is a float"),
        (np.array([1.0, np.nan]), r"W contains nan at \[1\]"),
        (np.array([1 + 1j]), "dtype complex128"),
    ],
)
def test_parameters_that_cannot_be_perturbed(value, message):
    with pytest.raises(ng.ParameterError, match=message):
        check_quadratic({"W": value}, {"W": np.ones(np.shape(value))})


def test_read_only_parameter():
    frozen_array = np.ones(3)
    frozen_array.flags.writeable = False
    with pytest.raises(ng.ParameterError, match="W is read-only"):
        check_quadratic({"W": frozen_array}, {"W": 2 * np.ones(3)})


def test_same_array_twice_and_empty_params():
    shared = np.ones(2)
    with pytest.raises(ng.ParameterError, match="W1 and W2 are the same array"):
        check_quadratic({"W1": shared, "W2": shared}, {"W1": shared, "W2": shared})
    with pytest.raises(ng.ParameterError, match="empty"):
        check_quadratic({}, {})
    with pytest.raises(ng.ParameterError, match="not str"):
        check_quadratic("W1", {})


def test_grads_is_required_for_numpy():
    with pytest.raises(ng.GradientError, match="grads is required"):
        ng.check(lambda p: float(np.sum(p**2)), np.ones(2), None)


def test_errors_leave_parameters_untouched():
    params = {"W": np.linspace(-1, 1, 6).reshape(2, 3), "b": np.array([-0.0, 0.1])}
    before = frozen(params)
    with pytest.raises(ng.GradientError):
        check_quadratic(params, {"W": np.ones((3, 2)), "b": np.ones(2)})
    assert frozen(params) == before


def test_gradients_are_copied_so_aliasing_cannot_corrupt_the_check():
    params = {"W": np.array([1.0, 2.0])}
    grad = 2 * params["W"]
    result = check_quadratic(params, {"W": grad})
    grad[:] = 0  # changing the user's gradient afterwards does not change the result
    assert result.passed and result.analytic["W"].tolist() == [2.0, 4.0]
