"""The inspector widget, driven through its controls' values (no kernel needed)."""

from __future__ import annotations

import dataclasses
import html

import numpy as np
import pytest
from conftest import frozen
from IPython.testing.globalipapp import start_ipython

import nbgradcheck as ng
from nbgradcheck.demo import course_network, forward
from nbgradcheck.views.inspector import Inspector, inspect, recheck_tensor

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def buggy():
    """dW2 doubled and db1 four times too large."""
    return course_network(bugs=("scale_dW2", "db1_4_over_m"))


@pytest.fixture(scope="module")
def result(buggy):
    return ng.check(buggy.loss, buggy.parameters, buggy.gradients)


@pytest.fixture
def inspector(result):
    return inspect(result)


def heatmap_axes(figure):
    return [ax for ax in figure.axes if ax.get_label().startswith("nbgradcheck:heatmap:")]


def faded_cells(figure) -> int:
    """Cells the heatmap covers as 'at or below the threshold'."""
    (ax,) = heatmap_axes(figure)
    overlay = ax.images[1].get_array()
    return int((overlay[..., 3] > 0).sum())


def test_selector_lists_tensors_worst_first_with_badges(inspector):
    labels = [label for label, _ in inspector.selector.options]
    assert [name for _, name in inspector.selector.options][:2] == ["b1", "W2"]
    assert labels[0].startswith("✘ b1 · wrong · 6.0e-01")
    assert labels[1].startswith("✘ W2 · wrong · 3.3e-01")
    assert all(label.startswith("✔") and "correct" in label for label in labels[2:])
    assert inspector.selector.value == "b1"


def test_initial_views_show_the_worst_tensor(inspector):
    assert bytes(inspector.heatmap.value).startswith(PNG_SIGNATURE)
    (ax,) = heatmap_axes(inspector.figure)
    assert ax.get_title(loc="left").startswith("b1")
    assert "Worst elements of b1" in inspector.table.value
    assert "analytic ÷ numeric = 4" in inspector.diagnosis.value
    assert "5 of 5 checked above 1e-05" in inspector.table.value
    assert "ignored gradient keys" in inspector.diagnosis.value  # the result's notes


def test_selecting_a_tensor_redraws_every_view(inspector):
    before = inspector.heatmap.value
    inspector.selector.value = "W2"
    (ax,) = heatmap_axes(inspector.figure)
    assert ax.get_title(loc="left") == "W2  (3×5)"
    assert inspector.heatmap.value != before
    assert "Worst elements of W2" in inspector.table.value
    assert "analytic ÷ numeric = 2" in inspector.diagnosis.value
    assert inspector.recheck_button.description == "Re-check W2"
    assert list(inspector.worst_elements.columns[:3]) == ["index", "analytic", "numeric"]
    assert len(inspector.worst_elements) == 15


def test_scale_toggle_changes_the_plotted_quantity_and_the_threshold_column(inspector):
    inspector.selector.value = "W1"
    colorbar = [ax for ax in inspector.figure.axes if ax not in heatmap_axes(inspector.figure)]
    assert colorbar[0].get_ylabel() == "relative error"
    inspector.scale.value = "abs"
    colorbar = [ax for ax in inspector.figure.axes if ax not in heatmap_axes(inspector.figure)]
    assert colorbar[0].get_ylabel() == "|analytic − numeric|"
    assert inspector.threshold.description == "highlight |a − n| >"
    errors = inspector.worst_elements["abs_error"].to_numpy()
    assert (np.diff(errors) <= 0).all()  # worst first by the plotted error
    inspector.scale.value = "signed"
    assert "signed" in inspector.figure.get_suptitle()


def test_threshold_highlights_elements_above_it(inspector, result):
    inspector.selector.value = "W1"  # correct: relative errors around 1e-9
    errors = result.tensor("W1").rel_error
    inspector.threshold.value = float(np.median(errors))
    threshold = inspector.threshold.value  # the slider's step rounds it
    above = int((errors > threshold).sum())
    assert 0 < above < 20
    assert faded_cells(inspector.figure) == 20 - above
    assert f"{above} of 20 checked above {threshold:.0e}" in inspector.table.value
    shown = inspector.worst_elements.head(10)
    assert inspector.table.value.count("#ffd8d8") > 0
    assert (shown["rel_error"] > threshold).sum() == min(above, 10)
    inspector.threshold.value = 1e-5
    assert faded_cells(inspector.figure) == 20
    assert "0 of 20 checked above 1e-05" in inspector.table.value
    assert "#ffd8d8" not in inspector.table.value


def test_recheck_reruns_only_the_selected_tensor_with_new_step_and_method(inspector, buggy):
    before = frozen(buggy.parameters)
    inspector.selector.value = "W1"
    inspector.step.value = 1e-4
    inspector.method.value = "forward"
    inspector.recheck_button.click()
    rechecked = inspector.latest["W1"]
    assert rechecked is not inspector.result
    assert rechecked.names == ["W1"]
    assert (rechecked.method, rechecked.eps) == ("forward", 1e-4)
    assert rechecked.tensor("W1").verdict == "ok"  # O(ε) truncation error
    assert "re-checked W1 (forward, ε=1e-4)" in inspector.status.value
    assert "correct → " in inspector.status.value
    assert "numbers from the re-check" in inspector.diagnosis.value
    assert "(forward, ε=1e-4)" in inspector.diagnosis.value
    label = dict((name, label) for label, name in inspector.selector.options)["W1"]
    assert "W1 · ok" in label
    assert inspector.selector.value == "W1"
    assert inspector.latest["W2"] is inspector.result  # other tensors keep their numbers
    assert frozen(buggy.parameters) == before


def test_recheck_with_complex_steps_passes_the_whole_dict_to_the_loss(inspector):
    inspector.selector.value = "W2"
    inspector.method.value = "complex"
    inspector.step.value = 1e-10
    inspector.recheck_button.click()
    tensor = inspector.latest["W2"].tensor("W2")
    assert tensor.verdict == "wrong"  # the bug is real, whatever the method
    assert tensor.difference == pytest.approx(1 / 3, rel=1e-9)


def test_recheck_errors_are_shown_not_raised(buggy):
    start_ipython()  # with a shell, `with Output():` swallows exceptions, as in a kernel
    net = buggy

    def closure_loss():
        return forward(net.X, net.Y, net.parameters)

    result = ng.check(closure_loss, net.parameters, net.gradients)
    inspector = Inspector(result)
    inspector.method.value = "complex"
    inspector.recheck_button.click()
    status = html.unescape(inspector.status.value)
    assert "re-check failed: GradCheckError" in status
    assert "method='complex' needs a loss that takes the parameters" in status
    assert not inspector.recheck_button.disabled
    assert inspector.latest["b1"] is result


def test_recheck_of_list_parameters_keeps_the_tensor_name():
    net = course_network(bugs=("scale_dW2",))
    keys = ["W1", "b1", "W2", "b2", "W3", "b3"]
    params = [net.parameters[k] for k in keys]

    def loss(p):
        return forward(net.X, net.Y, dict(zip(keys, p)))[0]

    grads = net.gradients(net.parameters)
    result = ng.check(loss, params, [grads["d" + k] for k in keys])
    rechecked = recheck_tensor(result, "p2", method="backward")
    assert rechecked.names == ["p2"] and rechecked.tensor("p2").verdict == "wrong"
    assert recheck_tensor(result, "p0").tensor("p0").verdict == "correct"


def test_a_result_without_its_loss_cannot_be_rechecked(result):
    inspector = Inspector(dataclasses.replace(result, rerun={}))  # e.g. loaded from JSON
    assert inspector.recheck_button.disabled
    inspector.recheck_selected()
    assert "holds no loss to re-run" in inspector.status.value


def test_displays_as_widget_with_the_static_report_as_fallback():
    net = course_network()
    result = ng.check(net.loss, net.parameters, net.gradients)
    inspector = inspect(result)
    bundle = inspector._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == inspector.model_id
    assert bundle["text/plain"] == repr(result)
    assert "Gradient check PASSED" in bundle["text/html"]


def test_the_worst_elements_follow_one_order_in_every_scale():
    """The table's first row is the element named as worst and the one boxed in the
    heatmap: ranked by the plotted error (relative on the log scale, absolute otherwise)."""
    from test_plots import synthetic_result, synthetic_tensor

    tensor = synthetic_tensor("W", (3, 4))
    tensor.analytic[5], tensor.numeric[5] = 10.0, 8.0  # the largest |a − n|: W[1, 1]
    tensor.analytic[9], tensor.numeric[9] = 0.5, -0.5  # the largest relative error: W[2, 1]
    inspector = inspect(synthetic_result(tensor))
    for scale, worst in (("log", (2, 1)), ("abs", (1, 1)), ("signed", (1, 1))):
        inspector.scale.value = scale
        assert inspector.worst_elements.loc[0, "index"] == worst, scale
        assert f"worst element W[{worst[0]}, {worst[1]}]" in inspector.diagnosis.value, scale
        (ax,) = heatmap_axes(inspector.figure)
        box = next(line for line in ax.lines if line.get_label() == "worst")
        assert (box.get_ydata()[0], box.get_xdata()[0]) == worst, scale
