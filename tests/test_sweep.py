"""The epsilon curve: the classic θ³ numbers, slopes, the best step, restored parameters."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import frozen

from nbgradcheck.api import sweep as sweeps
from nbgradcheck.api.sweep import EpsSweep, sweep_eps
from nbgradcheck.demo import course_network
from nbgradcheck.errors import LossError


def cube():
    """J(θ) = θ³ at θ = 1: J'(1) = 3."""
    return (
        (lambda p: float(p["theta"][0] ** 3)),
        {"theta": np.array([1.0])},
        {"theta": np.array([3.0])},
    )


@pytest.fixture(scope="module")
def demo_sweep():
    net = course_network()
    before = frozen(net.parameters)
    result = sweep_eps(net.loss, net.parameters, net.gradients)
    assert frozen(net.parameters) == before
    return result


def test_classic_cube_example_central_and_one_sided():
    loss, params, grads = cube()
    result = sweep_eps(loss, params, grads, eps=[0.01])
    central = result.result("central", 0.01).tensor("theta")
    forward = result.result("forward", 0.01).tensor("theta")
    assert central.numeric[0] == pytest.approx(3.0001, abs=1e-12)
    assert forward.numeric[0] == pytest.approx(3.0301, abs=1e-12)
    errors = result.frame.set_index("method")["max_abs_error"]
    assert errors["central"] == pytest.approx(1e-4, rel=1e-6)
    assert errors["forward"] == pytest.approx(0.0301, rel=1e-9)


def test_cube_slopes_are_two_central_and_one_forward():
    loss, params, grads = cube()
    result = sweep_eps(loss, params, grads, methods=("central", "forward", "backward"))
    assert result.slope("central") == pytest.approx(2.0, abs=0.05)
    assert result.slope("forward") == pytest.approx(1.0, abs=0.05)
    assert result.slope("backward") == pytest.approx(1.0, abs=0.05)
    assert params["theta"][0] == 1.0


def test_demo_network_sweep_finds_both_regions(demo_sweep):
    frame = demo_sweep.frame
    assert len(frame) == 2 * 23 and set(frame["method"]) == {"central", "forward"}
    slopes = demo_sweep.slopes
    assert slopes["central"] == pytest.approx(2.0, abs=0.15)
    assert slopes["forward"] == pytest.approx(1.0, abs=0.15)
    best = demo_sweep.best
    assert 1e-7 <= best.loc["central", "eps"] <= 1e-3
    assert best.loc["forward", "eps"] < best.loc["central", "eps"]
    assert best.loc["central", "difference"] < 1e-9
    assert demo_sweep.roundoff_below == best.loc["forward", "eps"]
    # round-off: the error grows as ε shrinks below the optimum
    _, errors = demo_sweep.curve("central")
    assert errors[0] > 100 * best.loc["central", "difference"]
    assert not demo_sweep.gradient_wrong and "gradient is right" in demo_sweep.note


def test_plot_shows_curves_fits_best_steps_and_roundoff_region(demo_sweep):
    figure = demo_sweep.plot()
    ax = figure.axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    central = lines[next(label for label in lines if label.startswith("central: best"))]
    np.testing.assert_allclose(central.get_ydata(), demo_sweep.curve("central")[1])
    assert any("slope 2.0" in label for label in lines)
    assert any("slope 1.0" in label for label in lines)
    stars = [line for line in ax.lines if line.get_marker() == "*"]
    assert sorted(star.get_xdata()[0] for star in stars) == sorted(demo_sweep.best["eps"])
    shaded = [patch for patch in ax.patches if patch.get_label().startswith("round-off")]
    assert len(shaded) == 1
    assert shaded[0].get_x() + shaded[0].get_width() == pytest.approx(demo_sweep.roundoff_below)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert figure._repr_png_().startswith(b"\x89PNG")


def test_wrong_gradient_gives_a_flat_curve(buggy_net):
    result = sweep_eps(
        buggy_net.loss, buggy_net.parameters, buggy_net.gradients, eps=np.logspace(-9, -2, 8)
    )
    assert result.gradient_wrong
    assert "the analytic gradient is wrong" in result.note
    assert np.isnan(result.slope("central"))
    assert result.roundoff_below is None
    ax = result.plot().axes[0]
    assert not [line for line in ax.lines if line.get_marker() == "*"]
    assert not ax.patches


def test_points_are_measured_at_their_own_step():
    """No refinement with smaller steps: a large ε keeps its large truncation error."""
    loss, params, grads = cube()
    result = sweep_eps(loss, params, grads, eps=[0.1], methods=["central"])
    tensor = result.result("central", 0.1).tensor("theta")
    assert tensor.step[0] == pytest.approx(0.2)
    assert tensor.numeric[0] == pytest.approx(3.01)


def test_exact_zero_errors_are_marked_below_the_axis():
    loss, params, grads = cube()
    result = sweep_eps(loss, params, grads, eps=[1e-12, 1e-3, 1e-2], methods=["central"])
    assert result.frame["difference"].iloc[0] == 0.0
    assert result.best.loc["central", "eps"] == 1e-3  # 0 is luck, not the trend
    labels = [line.get_label() for line in result.plot().axes[0].lines]
    assert "central: exact (0 error), off the log axis" in labels


def test_sample_mode_checks_the_same_elements_at_every_step(net):
    result = sweep_eps(
        net.loss,
        net.parameters,
        net.gradients,
        eps=[1e-6, 1e-4],
        methods=["central"],
        mode="sample",
        sample=2,
    )
    first, second = (result.result("central", e) for e in (1e-6, 1e-4))
    for a, b in zip(first.tensors, second.tensors):
        np.testing.assert_array_equal(a.indices, b.indices)


def test_truncation_region_leaves_out_a_kink_jump():
    eps = np.logspace(-8, -1, 15)
    errors = 1e-16 / eps + 1e-3 * eps**2
    errors[-2] *= 1e3  # a step that crosses a kink jumps off the power law
    errors[-1] = errors[-2] * 2
    region = sweeps.truncation_region(eps, errors)
    assert region.any() and not region[-2:].any()
    fit = np.polyfit(np.log10(eps[region]), np.log10(errors[region]), 1)[0]
    assert fit == pytest.approx(2.0, abs=0.05)


def test_bad_arguments_give_clear_errors(net):
    with pytest.raises(ValueError, match="methods must be taken from central"):
        sweep_eps(net.loss, net.parameters, net.gradients, methods=["secant"])
    with pytest.raises(ValueError, match="eps must be one or more positive finite steps"):
        sweep_eps(net.loss, net.parameters, net.gradients, eps=[1e-3, -1e-3])
    with pytest.raises(ValueError, match="eps must be one or more positive finite steps"):
        sweep_eps(net.loss, net.parameters, net.gradients, eps=[])
    loss, params, grads = cube()
    small = sweep_eps(loss, params, grads, eps=[1e-3], methods="central")
    with pytest.raises(ValueError, match="y must be one of 'difference', 'max_abs_error'"):
        small.plot(y="error")
    with pytest.raises(KeyError, match="no results for method 'forward'"):
        small.result("forward", 1e-3)


def test_repr_and_mimebundle():
    loss, params, grads = cube()
    result = sweep_eps(loss, params, grads, eps=np.logspace(-6, -1, 6))
    assert isinstance(result, EpsSweep)
    text = repr(result)
    assert "central" in text and "expected 2" in text and "expected 1" in text
    bundle = result._repr_mimebundle_()
    assert bundle["text/plain"] == text and bundle["image/png"].startswith(b"\x89PNG")


def test_steps_that_round_away_in_float32_are_unusable_not_fatal():
    net = course_network(dtype=np.float32)
    result = sweep_eps(
        net.loss, net.parameters, net.gradients, eps=[1e-10, 1e-3, 1e-2], methods=["central"]
    )
    row = result.frame.set_index("eps").loc[1e-10]
    assert row["verdict"] == "unusable" and "rounds to θ" in row["problem"]
    assert not result.gradient_wrong  # float32 round-off is allowed for, as in the check
    assert "unusable steps" in result.note and "1e-10" in result.note


def test_a_loss_that_never_works_raises_its_own_error():
    with pytest.raises(LossError, match="returned None"):
        sweep_eps(lambda p: None, {"w": np.ones(2)}, {"w": np.ones(2)}, eps=[1e-3, 1e-2])
