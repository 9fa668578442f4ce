"""Loss plots: checked on the figure's data (axes, shaded spans, scales, markers)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from training_runs import deep_linear_run, xor_run

from nbgradcheck.api.history import LossHistory
from nbgradcheck.api.history import as_loss_history as lossplot_from_value
from nbgradcheck.training.stalls import analyze_stalls
from nbgradcheck.views.lossplot import figure_to_png, plot_loss, stall_table_html


def with_gid(ax, gid):
    return [a for a in (*ax.patches, *ax.lines, *ax.texts) if a.get_gid() == gid]


def plateau_then_drop(n: int = 300, at: int = 150) -> np.ndarray:
    t = np.arange(n)
    return np.where(t < at, 1.0, 0.01 + 0.99 * np.exp(-(t - at) / 5))


@pytest.fixture(scope="module")
def deep_linear():
    return deep_linear_run(epochs=400)


@pytest.fixture(scope="module")
def deep_linear_figure(deep_linear):
    run = deep_linear
    return plot_loss(run.loss, epochs=run.epoch, grad_norms=run.grad_norms)


def test_deep_linear_figure_shades_each_stall_and_the_converged_tail(
    deep_linear, deep_linear_figure
):
    report = analyze_stalls(deep_linear.loss, epochs=deep_linear.epoch)
    loss_ax, grad_ax = deep_linear_figure.axes
    stalls = with_gid(loss_ax, "stall")
    assert len(stalls) == len(report.stalled) == 3
    for patch, row in zip(stalls, report.table.itertuples(), strict=True):
        left, right = patch.get_x(), patch.get_x() + patch.get_width()
        assert left == pytest.approx(row.start - 0.5) and right == pytest.approx(row.end + 0.5)
    assert len(with_gid(loss_ax, "converged")) == 1
    assert len(with_gid(grad_ax, "stall")) == 3  # the same spans, unlabelled, below
    labels = [t.get_text() for t in with_gid(loss_ax, "span-label")]
    assert labels[:2] == ["stall 1", "stall 2"] and labels[-1] == "converged"
    assert "saddle/plateau" in labels[2]
    assert "3 stalls · converged from epoch" in loss_ax.get_title()


def test_deep_linear_figure_has_raw_smoothed_and_recovery_data(deep_linear, deep_linear_figure):
    loss_ax, _ = deep_linear_figure.axes
    assert loss_ax.get_yscale() == "log"  # the loss spans four decades
    raw = with_gid(loss_ax, "raw")[0]
    assert raw.get_ydata().size == deep_linear.loss.size
    np.testing.assert_allclose(raw.get_ydata(), deep_linear.loss)
    epoch_of_step = raw.get_xdata()
    assert np.all(np.abs(epoch_of_step - deep_linear.epoch) <= 0.5)
    smoothed = with_gid(loss_ax, "smoothed")[0]
    assert smoothed.get_xdata().size == 400
    recovery = with_gid(loss_ax, "recovery")[0]
    assert recovery.get_xdata().size == 3
    assert loss_ax.get_xlabel() == "" and deep_linear_figure.axes[1].get_xlabel() == "epoch"


def test_gradient_panel_has_one_line_per_tensor(deep_linear_figure):
    grad_ax = deep_linear_figure.axes[1]
    lines = with_gid(grad_ax, "grad-norm")
    assert [line.get_label() for line in lines] == ["W1", "W2"]
    assert grad_ax.get_yscale() == "log"
    assert all(line.get_xdata().size == 400 for line in lines)  # per-epoch means


def test_plain_losses_give_one_panel_and_linear_scale_on_request():
    figure = plot_loss(plateau_then_drop(), log_scale=False)
    assert isinstance(figure, Figure)
    (ax,) = figure.axes
    assert ax.get_yscale() == "linear"
    assert len(with_gid(ax, "stall")) == 1
    assert len(with_gid(ax, "converged")) == 1
    assert ax.get_xlabel() == "step"


def test_small_range_defaults_to_linear_and_option_forces_log():
    losses = np.linspace(1.0, 0.6, 100)
    assert plot_loss(losses).axes[0].get_yscale() == "linear"
    assert plot_loss(losses, log_scale=True).axes[0].get_yscale() == "log"


def test_show_stalls_false_draws_no_spans():
    figure = plot_loss(plateau_then_drop(), show_stalls=False, title="mine")
    ax = figure.axes[0]
    assert with_gid(ax, "stall") == [] and with_gid(ax, "span-label") == []
    assert ax.get_title() == "mine"


def test_divergence_is_shaded_red_and_labelled():
    loss = np.r_[np.exp(-np.arange(60) / 20), [np.nan] * 10]
    ax = plot_loss(loss).axes[0]
    assert len(with_gid(ax, "diverged")) == 1
    assert [t.get_text() for t in with_gid(ax, "span-label")] == ["NaN/inf"]
    assert ax.get_xlim()[1] >= 69  # the NaN steps are inside the axes


def test_xor_history_plot(tmp_path):
    run = xor_run()
    history = LossHistory()
    for i, loss in enumerate(run.loss):
        history.log(loss, grads={name: norms[i] for name, norms in run.grad_norms.items()})
    figure = plot_loss(history)
    loss_ax, grad_ax = figure.axes
    assert len(with_gid(loss_ax, "stall")) == 1
    assert [line.get_label() for line in with_gid(grad_ax, "grad-norm")] == ["W1", "b1", "W2", "b2"]
    png = figure_to_png(figure)
    assert png.startswith(b"\x89PNG")
    (tmp_path / "xor.png").write_bytes(png)


def test_dataframe_and_series_inputs():
    losses = plateau_then_drop()
    frame = pd.DataFrame({"loss": losses, "epoch": np.arange(300) // 3})
    assert plot_loss(frame).axes[0].get_xlabel() == "epoch"
    assert len(with_gid(plot_loss(pd.Series(losses)).axes[0], "stall")) == 1
    single = pd.DataFrame({"train": losses})
    assert len(with_gid(plot_loss(single).axes[0], "stall")) == 1


def test_very_long_runs_are_decimated_for_drawing():
    losses = np.exp(-np.arange(200_000) / 50_000)
    raw = with_gid(plot_loss(losses).axes[0], "raw")[0]
    assert raw.get_xdata().size <= 20_000
    assert raw.get_xdata()[-1] == 199_999


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: plot_loss(pd.DataFrame({"a": [1.0], "b": [2.0]})), "needs a 'loss' column"),
        (lambda: plot_loss([1.0, 2.0, 3.0], epochs=[0, 1]), "epochs has 2 values"),
        (lambda: plot_loss([1.0, 2.0], grad_norms={"W": [1.0]}), r"grad_norms\['W'\] has 1"),
        (lambda: plot_loss(LossHistory()), "empty"),
        (lambda: plot_loss(LossHistory.from_losses([1.0, 0.5]), epochs=[0, 1]), "come from"),
        (lambda: plot_loss("loss"), "string"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------- %lossplot


def test_lossplot_from_value_accepts_what_the_magic_promises():
    losses = plateau_then_drop()
    history = LossHistory.from_losses(losses)
    assert lossplot_from_value(history) is history
    for value in (
        list(losses),
        tuple(losses),
        losses,
        pd.Series(losses),
        pd.DataFrame({"loss": losses, "other": 1.0})["loss"],
    ):
        shown = lossplot_from_value(value)
        assert isinstance(shown, LossHistory)
        np.testing.assert_array_equal(shown.losses, losses)
        assert len(shown.stalls) == 1


def test_lossplot_from_a_dataframe_keeps_epochs_and_gradient_norms():
    run = xor_run(epochs=400)
    frame = pd.DataFrame({"loss": run.loss, "epoch": run.epoch // 10, "grad_norm": run.grad_norm})
    shown = lossplot_from_value(frame)
    assert shown.report.unit_name == "epoch"
    assert shown.to_frame()["grad_norm"].tolist() == pytest.approx(run.grad_norm.tolist())


@pytest.mark.parametrize(
    "value, error, message",
    [
        ("losses", TypeError, "got str"),
        ({"loss": [1.0]}, TypeError, "got dict"),
        (3.0, TypeError, "got float"),
        (object(), TypeError, "got object"),
        ([], ValueError, "empty"),
        (np.ones((3, 3)), ValueError, "1-D"),
        (["a", "b"], ValueError, "real numbers"),
        (pd.DataFrame({"a": [1.0], "b": [2.0]}), ValueError, "'loss' column"),
        (LossHistory(), ValueError, "empty"),
    ],
)
def test_lossplot_from_value_rejects_wrong_input_clearly(value, error, message):
    with pytest.raises(error, match=message):
        lossplot_from_value(value)


# ---------------------------------------------------------------------------- epoch labels


def logged(epochs: np.ndarray, losses: np.ndarray) -> LossHistory:
    history = LossHistory()
    for epoch, loss in zip(epochs, losses, strict=True):
        history.log(loss, epoch=int(epoch))
    return history


@pytest.mark.parametrize("first", [0, 1])
def test_table_text_html_and_figure_use_the_users_epoch_numbers(first):
    epochs = np.repeat(np.arange(first, first + 100), 3)
    history = logged(epochs, np.repeat(plateau_then_drop(100, 50), 3))
    table = history.stalls
    start, end = int(table["start"][0]), int(table["end"][0])
    assert start == first  # the stall starts at the first epoch the user logged
    converged = table.attrs["converged_from"]
    text = history.summary()
    assert f"1. epochs {start}–{end} " in text and f"converged from epoch {converged}" in text
    assert history.status_line().startswith(f"LossHistory: 300 steps, epoch {first + 99} |")
    html = history._repr_html_()
    cells = re.findall(r"<td>([^<]*)</td>", html)
    assert cells[:3] == [str(start), str(end), str(end - start + 1)]
    figure = plot_loss(history)
    ax = figure.axes[0]
    (stall,) = with_gid(ax, "stall")
    assert stall.get_x() == pytest.approx(start - 0.5)
    assert stall.get_x() + stall.get_width() == pytest.approx(end + 0.5)
    assert f"converged from epoch {converged}" in ax.get_title()
    raw = with_gid(ax, "raw")[0].get_xdata()
    assert first - 0.5 <= raw.min() and raw.max() <= first + 99.5


def test_short_runs_have_whole_number_epoch_ticks():
    figure = plot_loss([1.0, 0.6, 0.5, 0.45, 0.44, 0.44], epochs=[1, 2, 3, 4, 5, 6])
    figure.canvas.draw()
    ticks = [label.get_text() for label in figure.axes[0].get_xticklabels()]
    assert ticks and all(re.fullmatch(r"−?\d+", t) for t in ticks), ticks
    fractional = plot_loss([1.0, 0.6, 0.5, 0.45, 0.44, 0.44], epochs=np.arange(6) / 4)
    assert fractional.axes[0].get_xlabel() == "epoch"


def test_stall_table_scrolls_sideways_and_shows_missing_epochs_as_dashes():
    history = LossHistory.from_losses(0.3 + 0.7 * np.exp(-np.arange(200) / 10))
    history.stall_options["floor"] = 0.0  # stalled at the end: never recovered
    html = stall_table_html(history.report)
    assert html.startswith('<div class="nbgradcheck-stalls-scroll" style="overflow-x:auto">')
    assert html.endswith("</table></div>")
    assert "&lt;NA&gt;" not in html and "<td>–</td>" in html
    assert history._repr_html_().count('style="overflow-x:auto"') == 1
