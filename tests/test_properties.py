"""Property tests: random polynomial losses with exact gradients."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import frozen
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import nbgradcheck as ng

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def polynomial_problems(draw):
    """Parameters and the loss J = Σ_t Σ (a x + b x² + c x³) + d (Σ x₀)(Σ x_last)."""
    n_tensors = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    params, coefficients = {}, {}
    for t in range(n_tensors):
        shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
        params[f"W{t}"] = rng.uniform(-2, 2, size=shape)
        coefficients[f"W{t}"] = rng.uniform(-2, 2, size=(3, *shape))
    coupling = rng.uniform(-1, 1)
    first, last = "W0", f"W{n_tensors - 1}"

    def loss(p):
        total = sum(
            np.sum(c[0] * p[k] + c[1] * p[k] ** 2 + c[2] * p[k] ** 3)
            for k, c in coefficients.items()
        )
        return total + coupling * np.sum(p[first]) * np.sum(p[last])

    def gradients(p):
        grads = {k: c[0] + 2 * c[1] * p[k] + 3 * c[2] * p[k] ** 2 for k, c in coefficients.items()}
        grads[first] = grads[first] + coupling * np.sum(p[last])
        grads[last] = grads[last] + coupling * np.sum(p[first])
        return grads

    return params, loss, gradients


@SETTINGS
@given(polynomial_problems())
def test_exact_gradients_of_random_polynomials_pass(problem):
    params, loss, gradients = problem
    grads = gradients(params)
    assume(all(np.linalg.norm(g) > 1e-2 for g in grads.values()))
    before = frozen(params)
    result = ng.check(loss, params, grads, mode="full")
    assert result.passed, result
    assert result.failing == []
    assert frozen(params) == before


@SETTINGS
@given(polynomial_problems(), st.data(), st.sampled_from([2.0, 0.5, -1.0, 3.0, -2.0]))
def test_a_planted_scale_or_sign_error_is_flagged_on_exactly_that_tensor(problem, data, factor):
    params, loss, gradients = problem
    grads = gradients(params)
    assume(all(np.linalg.norm(g) > 1e-2 for g in grads.values()))
    culprit = data.draw(st.sampled_from(sorted(params)))
    grads[culprit] = factor * grads[culprit]
    result = ng.check(loss, params, grads, mode="full")
    assert result.failing == [culprit]
    assert result.tensor(culprit).difference == pytest.approx(
        abs(factor - 1) / (abs(factor) + 1), rel=1e-4
    )


@pytest.mark.filterwarnings("ignore:Gradient check:RuntimeWarning")
@SETTINGS
@given(
    polynomial_problems(),
    st.integers(1, 60),
    st.sampled_from(["raise", "interrupt"]),
    st.sampled_from(["central", "forward", "backward", "complex"]),
)
def test_parameters_are_always_restored_bit_for_bit(problem, fail_at, how, method):
    params, loss, gradients = problem
    grads = gradients(params)
    before = frozen(params)
    calls = {"n": 0}

    def failing_loss(p):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise KeyboardInterrupt if how == "interrupt" else RuntimeError("bad luck")
        return loss(p)

    try:
        ng.check(failing_loss, params, grads, method=method, mode="full")
    except (RuntimeError, KeyboardInterrupt):
        pass
    except ng.GradCheckError:
        pass  # e.g. a loss whose randomness check saw an exception first
    assert frozen(params) == before
