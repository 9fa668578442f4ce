"""User mistakes about parameters and gradients: each error names the culprit."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import frozen

import nbgradcheck as ng
from nbgradcheck.adapters.numpy import ParameterSet
from nbgradcheck.views.inspector import recheck_tensor


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


# -- careless parameters: masks, long doubles, empty arrays, shared memory, odd keys ---------


def masked_quadratic(p):
    return np.ma.sum(p["W"] * p["W"]) + np.sum(p["b"] * p["b"])


def masked_gradients(p):
    return {"W": 2 * p["W"].filled(0), "b": 2 * p["b"]}


@pytest.mark.parametrize(
    ("mode", "method", "hard"),
    [("full", "central", False), ("fast", "central", False), ("full", "complex", True)],
)
def test_a_masked_array_keeps_its_mask_fill_value_and_hardness(mode, method, hard):
    weights = np.ma.array(
        np.linspace(-1, 1, 6).reshape(2, 3),
        mask=[[0, 1, 0], [0, 0, 1]],
        fill_value=-9.0,
        hard_mask=hard,
    )
    params = {"W": weights, "b": np.array([0.5, -0.25])}
    data, mask = weights.data.copy(), weights.mask.copy()
    result = ng.check(masked_quadratic, params, masked_gradients(params), mode=mode, method=method)
    assert result.passed, result.summary()
    assert params["W"] is weights and weights.hardmask == hard
    assert np.array_equal(weights.mask, mask) and weights.fill_value == -9.0
    assert weights.data.tobytes() == data.tobytes()
    # masked elements do not move the loss: their numeric gradient is zero, as given
    assert np.all(result.numeric["W"][mask] == 0)


def test_long_double_parameters_pass_and_padding_bytes_do_not_count_as_changes():
    params = {"W": np.linspace(-1, 1, 5, dtype=np.longdouble)}
    result = check_quadratic(params, {"W": 2 * params["W"].astype(np.float64)})
    assert result.passed
    parameters = ParameterSet.from_user(params)
    snapshot = parameters.snapshot()
    itemsize = params["W"].itemsize
    x87 = np.finfo(np.longdouble).nmant == 63 and np.little_endian
    value_size = 10 if x87 else itemsize  # x87: 80 bits of value, then padding
    params["W"].view(np.uint8).reshape(5, itemsize)[:, value_size:] ^= 0xFF
    assert parameters.modified_names(snapshot) == []
    params["W"][2] = np.nextafter(params["W"][2], np.longdouble(1))
    assert parameters.modified_names(snapshot) == ["W"]


def test_only_empty_parameters_are_refused_and_an_empty_one_among_others_is_noted():
    with pytest.raises(ng.ParameterError, match=r"every parameter is empty \(W \(0, 3\), b \(0,\)"):
        check_quadratic({"W": np.ones((0, 3)), "b": np.ones(0)}, {"W": np.ones((0, 3)), "b": []})
    params = {"W": np.ones(2), "b": np.ones(0)}
    result = check_quadratic(params, {"W": 2 * np.ones(2), "b": np.ones(0)})
    assert result.passed and result.n_checked == 2
    assert any("b is empty" in note for note in result.notes)


def test_views_of_one_buffer_are_refused_naming_both():
    buffer = np.linspace(-1, 1, 8)
    shared = {"A": buffer[:5], "B": buffer[3:]}
    with pytest.raises(ng.ParameterError, match="parameters A and B share memory"):
        check_quadratic(shared, {"A": 2 * shared["A"], "B": 2 * shared["B"]})
    interleaved = {"even": buffer[::2], "odd": buffer[1::2]}  # disjoint bytes: fine
    grads = {k: 2 * v for k, v in interleaved.items()}
    assert check_quadratic(interleaved, grads).passed


def test_views_whose_elements_overlap_are_refused():
    row = np.ones(3)
    repeated = np.lib.stride_tricks.as_strided(row, (4, 3), (0, 8))  # writable, yet shared
    with pytest.raises(ng.ParameterError, match=r"W has elements that share memory"):
        check_quadratic({"W": repeated}, {"W": 2 * np.ones((4, 3))})


def test_integer_and_tuple_keys_find_their_gradients_by_key_or_by_name():
    params = {0: np.array([1.0, 2.0]), ("enc", "b"): np.array([3.0])}

    def loss(p):
        return float(np.sum(p[0] ** 2) + np.sum(p[("enc", "b")] ** 2))

    by_key = {0: 2 * params[0], ("enc", "b"): 2 * params[("enc", "b")]}
    by_name = {"d0": 2 * params[0], "('enc', 'b')": 2 * params[("enc", "b")]}
    for grads in (by_key, by_name):
        result = ng.check(loss, params, grads)
        assert result.passed and result.names == ["0", "('enc', 'b')"]
    with pytest.raises(ng.GradientError, match=r"no gradient for 0 \(looked for 0 or '0' or 'd0'"):
        ng.check(loss, params, {("enc", "b"): np.ones(1)})
    with pytest.raises(ng.ParameterError, match=r"keys 1 and '1' both read as '1'"):
        check_quadratic({1: np.ones(2), "1": np.ones(2)}, {})


def test_a_loss_replacing_a_parameter_gets_the_original_back_and_an_error():
    params = {"W": np.ones(3), "b": np.zeros(2)}
    original = params["W"]

    def replacing(p):
        p["W"] = p["W"] * 2
        return float(np.sum(p["W"] ** 2))

    with pytest.raises(ng.ParametersModifiedError, match=r"replaced params\['W'\]"):
        ng.check(replacing, params, {"W": 2 * np.ones(3), "b": np.zeros(2)})
    assert params["W"] is original and list(params) == ["W", "b"]
    assert np.array_equal(original, np.ones(3))


def test_a_loss_adding_or_removing_keys_is_undone_and_named():
    params = {"W": np.ones(3)}

    def adding(p):
        p["extra"] = 1
        return float(np.sum(p["W"] ** 2))

    with pytest.raises(ng.ParametersModifiedError, match=r"added params\['extra'\]"):
        ng.check(adding, params, {"W": 2 * np.ones(3)})
    assert list(params) == ["W"]
    listed = [np.ones(2), np.ones(3)]
    first = listed[0]

    def popping(p):
        if len(p) == 2:
            p.pop()
        return 1.0

    with pytest.raises(ng.ParametersModifiedError, match=r"removed params\[1\]"):
        ng.check(popping, listed, [np.zeros(2), np.zeros(3)])
    assert len(listed) == 2 and listed[0] is first


class LateWriter:
    """Σθ², except that at evaluation ``at`` it adds 1 to W[target] in place."""

    def __init__(self, at, target):
        self.at, self.target, self.calls, self.original = at, target, 0, None

    def __call__(self, p):
        self.calls += 1
        if self.calls == self.at:
            moved = np.flatnonzero(p["W"] != self.original)
            index = moved[0] if self.target == "in flight" else p["W"].size - 1
            p["W"].reshape(-1)[index] += 1
        return float(np.sum(p["W"] ** 2) + np.sum(p["b"] ** 2))


@pytest.mark.parametrize("mode", ["full", "fast"])
@pytest.mark.parametrize("target", ["in flight", "not perturbed yet"])
def test_an_in_place_change_late_in_the_check_is_reported_not_undone_silently(mode, target):
    params = {"W": np.linspace(-1, 1, 12).reshape(3, 4), "b": np.array([0.5, -0.5])}
    before = frozen(params)
    loss = LateWriter(at=5, target=target)
    loss.original = params["W"].copy()
    grads = {"W": 2 * params["W"], "b": 2 * params["b"]}
    with pytest.raises(ng.ParametersModifiedError, match="changed W in place"):
        ng.check(loss, params, grads, mode=mode)
    assert frozen(params) == before


def test_a_loss_reshaping_or_locking_a_parameter_in_place_is_undone():
    params = {"W": np.linspace(-1, 1, 6).reshape(2, 3)}

    def reshaping(p):
        p["W"].shape = (6,)
        p["W"].flags.writeable = False
        return float(np.sum(p["W"] ** 2))

    with pytest.raises(ng.ParametersModifiedError, match="shape, dtype or flags of W"):
        ng.check(reshaping, params, {"W": 2 * params["W"]})
    assert params["W"].shape == (2, 3) and params["W"].flags.writeable


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_a_matrix_parameter_stays_a_matrix_also_for_complex_steps():
    params = {"M": np.matrix([[1.0, 2.0], [3.0, -1.0]])}
    seen = set()

    def loss(p):
        seen.add(type(p["M"]))
        return np.sum(np.multiply(p["M"], p["M"]))

    for method in ("central", "complex"):
        result = ng.check(loss, params, {"M": 2 * np.asarray(params["M"])}, method=method)
        assert result.passed
    assert seen == {np.matrix} and type(params["M"]) is np.matrix


def test_parameters_from_a_generator_can_be_rechecked():
    arrays = [np.array([1.0, -2.0]), np.array([0.5])]

    def loss(p):
        return float(sum(np.sum(a**2) for a in p))

    result = ng.check(loss, (a for a in arrays), [2 * a for a in arrays])
    assert result.passed and result.recheck(eps=1e-5).passed
    assert recheck_tensor(result, "p1", eps=1e-4).passed


def test_a_gradient_differing_only_in_unit_dimensions_is_accepted_with_a_note():
    import nbgradcheck as ng

    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(3, 5)), "b": rng.normal(size=(1, 5))}
    x = rng.normal(size=(4, 3))

    def loss(p):
        return float(np.sum(np.tanh(x @ p["W"] + p["b"])))

    z = 1 - np.tanh(x @ params["W"] + params["b"]) ** 2
    grads = {"W": x.T @ z, "b": z.sum(axis=0)}  # b's gradient as (5,)
    result = ng.check(loss, params, grads)
    assert result.passed
    assert any("(5,)" in note and "(1, 5)" in note for note in result.notes)
    wrong = dict(grads, b=grads["b"][:4])
    with pytest.raises(ng.GradientError, match="shape"):
        ng.check(loss, params, wrong)
