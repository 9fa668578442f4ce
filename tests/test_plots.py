"""Heatmaps, tested on the data they draw: panels, colour limits, masks, marks, pooling."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import LogNorm

import nbgradcheck as ng
from nbgradcheck.api.result import GradCheckResult
from nbgradcheck.core.result import TensorCheck
from nbgradcheck.views import figures as plots


def synthetic_tensor(name, shape, *, wrong=(), kinks=(), checked=None, factor=0.5, seed=0):
    """A TensorCheck without running a check: numeric = analytic (1 + 1e-9 noise), except
    ``wrong`` flat indices (numeric = factor × analytic) and ``kinks`` (excused)."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    indices = np.arange(size) if checked is None else np.asarray(checked)
    analytic = rng.uniform(0.5, 1.5, indices.size) * rng.choice([-1, 1], indices.size)
    numeric = analytic * (1 + 1e-9 * rng.standard_normal(indices.size))
    position = {flat: i for i, flat in enumerate(indices.tolist())}
    for flat in wrong:
        numeric[position[flat]] = factor * analytic[position[flat]]
    kink = np.zeros(indices.size, dtype=bool)
    for flat in kinks:
        kink[position[flat]] = True
        numeric[position[flat]] = analytic[position[flat]] + 0.3
    zeros = np.zeros(indices.size)
    return TensorCheck(
        name=name,
        shape=tuple(shape),
        dtype=np.dtype(np.float64),
        checked_indices=indices,
        values=zeros,
        analytic=analytic,
        numeric=numeric,
        steps=zeros + 1e-6,
        round_off=zeros + 1e-14,
        kink=kink,
        analytic_full=np.zeros(shape),
        tol=1e-5,
    )


def synthetic_result(*tensors: TensorCheck) -> GradCheckResult:
    return GradCheckResult(list(tensors), "central", 1e-6, "full", 1e-5, 0, 1.0)


def panel_axes(figure):
    return [ax for ax in figure.axes if ax.get_label().startswith("nbgradcheck:heatmap:")]


def colorbar_axes(figure):
    return [ax for ax in figure.axes if ax.get_label() == plots.COLORBAR_LABEL]


def cells(ax) -> np.ma.MaskedArray:
    return ax.images[0].get_array()


@pytest.fixture
def buggy_result(buggy_net):
    return ng.check(buggy_net.loss, buggy_net.parameters, buggy_net.gradients, mode="full")


# -- panels and colours ----------------------------------------------------------------------


def test_one_panel_per_tensor_or_per_named_tensor(buggy_result):
    assert [ax.get_label().rsplit(":", 1)[1] for ax in panel_axes(buggy_result.heatmap())] == [
        "W1",
        "b1",
        "W2",
        "b2",
        "W3",
        "b3",
    ]
    assert len(panel_axes(buggy_result.heatmap("W2"))) == 1
    assert len(panel_axes(buggy_result.heatmap(["b1", "W2"]))) == 2


def test_log_scale_shares_limits_up_to_relative_error_one(buggy_result):
    figure = buggy_result.heatmap()
    norms = {(im.norm.vmin, im.norm.vmax) for ax in panel_axes(figure) for im in ax.images}
    assert len(norms) == 1
    ((vmin, vmax),) = norms
    assert vmax == 1.0 and plots.LOG_FLOOR <= vmin <= 1e-9
    assert isinstance(panel_axes(figure)[0].images[0].norm, LogNorm)
    assert len(colorbar_axes(figure)) == 1


def test_cells_hold_the_relative_error_of_each_element(buggy_result):
    ax = panel_axes(buggy_result.heatmap("b1"))[0]
    b1 = buggy_result.tensor("b1")
    assert cells(ax).shape == (5, 1)
    # db1 uses 4/m: analytic = 4 × numeric, relative error |4 − 1| / (4 + 1)
    np.testing.assert_allclose(cells(ax).ravel(), b1.rel_error, rtol=1e-9)
    np.testing.assert_allclose(cells(ax).ravel(), 0.6, rtol=1e-6)


def test_verdict_thresholds_are_marked_on_the_colour_bar(buggy_result):
    colorbar = colorbar_axes(buggy_result.heatmap())[0]
    levels = sorted(line.get_ydata()[0] for line in colorbar.lines)
    assert levels == [1e-7, 1e-5, 1e-3]
    band_labels = {text.get_text() for text in colorbar.texts}
    assert band_labels == {"correct", "ok", "suspicious", "wrong"}


def test_verdict_colours_go_from_green_to_red():
    colormap = plots.log_colormap(1e-12, 1.0)
    norm = LogNorm(1e-12, 1.0)
    red, green, _, _ = colormap(norm(1e-9))
    assert green > red
    red, green, _, _ = colormap(norm(1e-1))
    assert red > green


def test_signed_and_absolute_scales_have_their_own_limits_per_panel(buggy_result):
    signed = buggy_result.heatmap(["b1", "W1"], scale="signed")
    (b1_ax, w1_ax) = panel_axes(signed)
    low, high = b1_ax.images[0].get_clim()
    assert low == -high and high == pytest.approx(np.abs(cells(b1_ax)).max())
    assert w1_ax.images[0].get_clim()[1] < 1e-6 < high
    b1 = buggy_result.tensor("b1")
    np.testing.assert_allclose(cells(b1_ax).ravel(), b1.analytic - b1.numeric)
    absolute = panel_axes(buggy_result.heatmap("W2", scale="abs"))[0]
    assert absolute.images[0].get_clim() == (0.0, pytest.approx(cells(absolute).max()))
    assert len(colorbar_axes(signed)) == 2


def test_bad_arguments_give_clear_errors(buggy_result):
    with pytest.raises(ValueError, match="scale must be one of 'log', 'abs', 'signed'"):
        buggy_result.heatmap(scale="linear")
    with pytest.raises(KeyError, match="no parameter 'W9'; parameters are: W1, b1"):
        buggy_result.heatmap("W9")
    with pytest.raises(ValueError, match="empty list"):
        buggy_result.heatmap([])


# -- blanks, kinks, worst element -----------------------------------------------------------


def test_unchecked_elements_are_masked(net):
    result = ng.check(net.loss, net.parameters, net.gradients, mode="sample", sample=4, seed=0)
    w1 = result.tensor("W1")
    image = cells(panel_axes(result.heatmap("W1"))[0])
    expected_checked = np.zeros(w1.size, dtype=bool)
    expected_checked[w1.indices] = True
    np.testing.assert_array_equal(~np.ma.getmaskarray(image).ravel(), expected_checked)
    assert image.count() == 4


def test_kinks_and_the_worst_element_are_marked():
    tensor = synthetic_tensor("W", (4, 6), wrong=[7], kinks=[13, 20])
    ax = panel_axes(synthetic_result(tensor).heatmap())[0]
    marks = {line.get_label(): line for line in ax.lines}
    kink_cells = sorted(zip(marks["kink"].get_ydata(), marks["kink"].get_xdata()))
    assert kink_cells == [(2, 1), (3, 2)]  # 13 → (2, 1), 20 → (3, 2)
    assert (marks["worst"].get_ydata()[0], marks["worst"].get_xdata()[0]) == (1, 1)


def test_passing_tensors_get_no_worst_mark(buggy_result):
    ax = panel_axes(buggy_result.heatmap("W1"))[0]
    assert "worst" not in [line.get_label() for line in ax.lines]


def test_highlight_fades_the_elements_at_or_below_the_threshold():
    tensor = synthetic_tensor("W", (3, 4), wrong=[5])
    figure = synthetic_result(tensor).heatmap(highlight_above=1e-3)
    ax = panel_axes(figure)[0]
    overlay = ax.images[1].get_array()
    faded = overlay[..., 3] > 0
    assert faded.sum() == 11 and not faded[1, 1]
    assert 1e-3 in [line.get_ydata()[0] for line in colorbar_axes(figure)[0].lines]


# -- layouts ---------------------------------------------------------------------------------


def test_one_dimensional_tensor_is_a_strip():
    tensor = synthetic_tensor("b", (40,), wrong=[17])
    ax = panel_axes(synthetic_result(tensor).heatmap())[0]
    assert cells(ax).shape == (1, 40)
    assert np.argmax(cells(ax).filled(0)) == 17
    assert len(ax.get_yticks()) == 0


def test_conv_kernels_are_tiles_by_output_and_input_channel():
    shape = (4, 3, 2, 5)  # out, in, kh, kw
    flat = int(np.ravel_multi_index((2, 1, 1, 3), shape))
    tensor = synthetic_tensor("conv", shape, wrong=[flat])
    ax = panel_axes(synthetic_result(tensor).heatmap())[0]
    assert cells(ax).shape == (4 * 2, 3 * 5)
    row, column = np.unravel_index(np.argmax(cells(ax).filled(0)), cells(ax).shape)
    assert (row, column) == (2 * 2 + 1, 1 * 5 + 3)
    assert ax.get_ylabel() == "output channel"
    assert [label.get_text() for label in ax.get_xticklabels()] == ["0", "1", "2"]


def test_three_dimensional_tensor_is_a_mosaic_of_tiles():
    layout = plots.layout_for((6, 3, 3))
    assert layout.kind == "tiles" and layout.tiles == (2, 3)
    assert layout.grid.shape == (6, 9)
    assert sorted(layout.grid.ravel().tolist()) == list(range(54))
    assert layout.grid[3, 0] == 27  # tile 3 starts the second row of tiles


def test_layout_of_scalars_and_higher_dimensions():
    assert plots.layout_for(()).grid.tolist() == [[0]]
    layout = plots.layout_for((2, 3, 4, 5, 6))
    assert layout.kind == "tiles" and layout.grid.size >= 720
    assert sorted(v for v in layout.grid.ravel().tolist() if v >= 0) == list(range(720))


# -- pooling ---------------------------------------------------------------------------------


def test_pooling_keeps_the_worst_element_of_a_million():
    worst = 654_321
    tensor = synthetic_tensor("big", (1000, 1000), wrong=[worst], factor=-1.0)
    ax = panel_axes(synthetic_result(tensor).heatmap())[0]
    image = cells(ax)
    pixels = plots.panel_pixels(100)
    assert image.shape[0] <= pixels[0] and image.shape[1] <= pixels[1]
    assert image.max() == pytest.approx(1.0)  # numeric = −analytic: relative error 1
    rows, columns = -(-1000 // image.shape[0]), -(-1000 // image.shape[1])
    row, column = np.unravel_index(np.argmax(image.filled(0)), image.shape)
    assert (row, column) == (654 // rows, 321 // columns)
    marks = {line.get_label(): line for line in ax.lines}
    assert abs(marks["worst"].get_ydata()[0] - 654) < rows
    assert abs(marks["worst"].get_xdata()[0] - 321) < columns
    assert "max-pooled" in ax.get_xlabel()


def test_pooling_can_be_switched_off():
    tensor = synthetic_tensor("big", (600, 500))
    image = cells(panel_axes(synthetic_result(tensor).heatmap(pool_above=None))[0])
    assert image.shape == (600, 500)


def test_block_max_ignores_blanks_and_keeps_the_sign_of_the_largest_magnitude():
    image = np.array(
        [[1.0, np.nan, -5.0, 2.0], [np.nan, 3.0, 4.0, 1.0], [np.nan, np.nan, 0.5, np.nan]]
    )
    np.testing.assert_array_equal(plots.block_max(image, (2, 2)), [[3.0, 4.0], [np.nan, 0.5]])
    np.testing.assert_array_equal(
        plots.block_max(image, (2, 2), signed=True), [[3.0, -5.0], [np.nan, 0.5]]
    )


def test_pooling_fits_the_image_to_the_panel_pixels():
    pixels = (180, 250)
    assert plots.pool_block((1, 5000), pixels, plots.POOL_ABOVE) == (1, 20)
    assert plots.pool_block((150, 200), pixels, plots.POOL_ABOVE) == (1, 1)
    assert plots.pool_block((784, 128), pixels, plots.POOL_ABOVE) == (5, 1)
    assert plots.pool_block((1000, 1000), pixels, plots.POOL_ABOVE) == (6, 4)
    assert plots.pool_block((150, 200), pixels, 10_000) == (1, 1)  # fits: one cell a pixel
    assert plots.pool_block((1000, 1000), pixels, None) == (1, 1)
    assert plots.panel_pixels(200)[0] > 2 * plots.panel_pixels(80)[0]


# -- display ---------------------------------------------------------------------------------


def test_figure_shows_itself_as_png_without_pyplot(buggy_result):
    figure = buggy_result.heatmap("W2")
    assert figure._repr_png_().startswith(b"\x89PNG")
    legend = " ".join(text.get_text() for text in figure.texts)
    assert "□ largest relative error" in legend and "a: analytic, n: numeric" in legend
    signed = " ".join(t.get_text() for t in buggy_result.heatmap("W2", scale="signed").texts)
    assert "□ largest |n − a|" in signed  # the box marks the element the scale ranks first
