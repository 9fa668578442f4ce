"""Stall detection: known plateaus of real training runs, noise, convergence, divergence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from training_runs import (
    deep_linear_run,
    deep_linear_task,
    mode_plateaus,
    xor_run,
    xor_saddle_epochs,
)

from nbgradcheck.training.stalls import (
    CAUSES,
    STALL_COLUMNS,
    _fit_windows,
    _noise_level,
    analyze_stalls,
    find_stalls,
)


def overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Intersection over union of two inclusive integer spans."""
    inter = min(a[1], b[1]) - max(a[0], b[0]) + 1
    union = max(a[1], b[1]) - min(a[0], b[0]) + 1
    return max(inter, 0) / union


def spans(table: pd.DataFrame) -> list[tuple[float, float]]:
    return list(zip(table["start"], table["end"], strict=True))


# ---------------------------------------------------------------------------- deep linear


@pytest.fixture(scope="module", params=[0, 1], ids=["seed0", "seed1"])
def deep_linear(request):
    seed = request.param
    return deep_linear_run(deep_linear_task(seed=seed), seed=seed + 10)


def test_deep_linear_plateaus_match_the_mode_learning_times(deep_linear):
    run = deep_linear
    plateaus, drops = mode_plateaus(run.extra["modes"], run.extra["strengths"], run.epoch)
    assert len(plateaus) == 3  # one before each of the three modes is learnt
    report = analyze_stalls(run.loss, epochs=run.epoch, grad_norms=run.grad_norm)
    detected = spans(report.stalled)
    assert len(detected) == len(plateaus)
    for measured, found in zip(plateaus, detected, strict=True):
        assert overlap(measured, found) >= 0.7, (measured, found)
    for first, last in drops:  # no stall covers the middle of a sudden drop
        middle = (first + last) / 2
        assert not any(start <= middle <= end for start, end in detected)


def test_deep_linear_stalls_recover_and_look_like_saddles(deep_linear):
    report = analyze_stalls(
        deep_linear.loss, epochs=deep_linear.epoch, grad_norms=deep_linear.grad_norm
    )
    table = report.table
    assert table["recovered"].all()
    assert (table["recovered_at"] > table["end"]).all()
    assert (table["likely_cause"] == "saddle/plateau").all()
    assert (table["rel_improvement"].abs() < 0.1).all()
    assert (table["length"] == table["end"] - table["start"] + 1).all()


def test_deep_linear_run_ends_converged_at_its_noise_floor(deep_linear):
    run = deep_linear
    _, drops = mode_plateaus(run.extra["modes"], run.extra["strengths"], run.epoch)
    table = find_stalls(run.loss, epochs=run.epoch)
    assert table.attrs["verdict"] == "converged"
    last_drop_end = drops[-1][1]
    assert last_drop_end - 10 <= table.attrs["converged_from"] <= last_drop_end + 30


def test_full_batch_deep_linear_per_step_finds_the_same_plateaus():
    task = deep_linear_task(seed=2)
    run = deep_linear_run(task, batch_size=task.x.shape[1], epochs=1000, seed=5)
    plateaus, _ = mode_plateaus(run.extra["modes"], run.extra["strengths"], run.epoch)
    table = find_stalls(run.loss)  # one loss per step, no epochs
    assert table.attrs["unit"] == "step"
    assert len(table) == len(plateaus)
    for measured, found in zip(plateaus, spans(table), strict=True):
        assert overlap(measured, found) >= 0.7


# ---------------------------------------------------------------------------- XOR


@pytest.fixture(scope="module")
def xor():
    return xor_run()


def test_xor_plateau_is_the_symmetric_saddle(xor):
    saddle = xor_saddle_epochs(xor.extra["outputs"])
    report = analyze_stalls(xor.loss, grad_norms=xor.grad_norm)
    assert len(report.table) == 1
    row = report.table.iloc[0]
    assert overlap(saddle, (row["start"], row["end"])) >= 0.7
    assert row["recovered"]
    assert row["likely_cause"] == "saddle/plateau"
    assert report.verdict == "improving"  # still learning when the run stops


def test_xor_stuck_forever_is_stalled_not_converged():
    run = xor_run(epochs=600, lr=0.5, init_scale=0.3, seed=0)
    report = analyze_stalls(run.loss, grad_norms=run.grad_norm)
    assert report.verdict == "stalled"
    assert len(report.table) == 1
    row = report.table.iloc[0]
    assert not row["recovered"]
    # its gradient shrank a hundredfold from where it started: a saddle, not a small step
    assert row["likely_cause"] == "saddle/plateau"


# ---------------------------------------------------------------------------- noise


@pytest.mark.parametrize("noise", [0.02, 0.1, 0.3])
@pytest.mark.parametrize("per_epoch", [True, False])
def test_no_stall_on_noisy_exponential_decay(noise, per_epoch):
    rng = np.random.default_rng(7)
    steps = np.arange(4000)
    epochs = steps // 40
    loss = np.exp(-steps / 800) * np.exp(noise * rng.standard_normal(steps.size))
    table = find_stalls(loss, epochs=epochs if per_epoch else None)
    assert table.empty
    assert table.attrs["verdict"] == "improving"


@pytest.mark.parametrize("noise", [0.02, 0.1, 0.3])
def test_noisy_plateau_is_found_whole(noise):
    rng = np.random.default_rng(11)
    steps = np.arange(6000)
    epochs = steps // 50
    level = np.where(epochs < 60, 1.0, 0.05 + 0.95 * np.exp(-(steps - 3000) / 150))
    loss = level * np.exp(noise * rng.standard_normal(steps.size))
    table = find_stalls(loss, epochs=epochs)
    assert len(table) == 1
    assert overlap((0, 59), (table["start"][0], table["end"][0])) >= 0.9
    assert table["recovered"][0]
    assert table.attrs["verdict"] == "converged"


def test_converged_curve_is_converged_not_stalled():
    rng = np.random.default_rng(3)
    t = np.arange(300)
    loss = 0.2 + 2.0 * np.exp(-t / 20) + 0.01 * rng.standard_normal(t.size)
    report = analyze_stalls(loss)
    assert report.table.empty
    assert report.verdict == "converged"
    assert 40 <= report.converged_from <= 120
    assert report.converged_span[1] == 299


def test_floor_decides_between_converged_and_stalled():
    t = np.arange(200)
    loss = 0.3 + 0.7 * np.exp(-t / 10)  # falls by 70%, then flat at 0.3
    assert find_stalls(loss).attrs["verdict"] == "converged"
    stuck = find_stalls(loss, floor=0.0)  # but the attainable loss is 0
    assert stuck.attrs["verdict"] == "stalled"
    assert len(stuck) == 1 and stuck["end"][0] == 199
    assert find_stalls(loss, floor=0.29).attrs["verdict"] == "converged"


def test_loss_falling_at_the_threshold_rate_is_not_flat():
    t = np.arange(400)
    report = analyze_stalls(np.exp(-0.003 * t), window=11)  # 3% per 10 steps
    assert report.table.empty
    report = analyze_stalls(np.exp(-0.001 * t), window=11)  # 1% per 10 steps
    assert report.verdict == "stalled"


# ---------------------------------------------------------------------------- divergence


def test_nan_divergence_is_reported():
    loss = np.r_[np.exp(-np.arange(60) / 20), [np.nan] * 5, [np.inf] * 5]
    table = find_stalls(loss)
    assert table.attrs["verdict"] == "diverged"
    row = table.iloc[-1]
    assert (row["start"], row["end"], row["length"]) == (60, 69, 10)
    assert row["likely_cause"] == "divergence"
    assert not row["recovered"]
    assert row["loss_start"] == pytest.approx(loss[59])


def test_rising_loss_before_nan_is_divergence():
    loss = np.r_[np.exp(-np.arange(100) / 20), np.exp(np.arange(40) / 4) * 0.01, [np.nan] * 3]
    table = find_stalls(loss)
    assert table.attrs["verdict"] == "diverged"
    assert set(table["likely_cause"]) == {"divergence"}
    assert table["loss_end"].iloc[0] > 10 * table["loss_start"].iloc[0]


def test_a_passing_nan_is_recorded_and_analysis_goes_on():
    t = np.arange(400)
    loss = np.where(t < 200, 1.0, 0.05 + np.exp(-(t - 200) / 10))
    loss[100] = np.nan
    table = find_stalls(loss)
    assert table.attrs["verdict"] == "converged"
    divergence = table[table["likely_cause"] == "divergence"]
    assert spans(divergence) == [(100, 100)] and divergence["recovered"].all()
    stall = table[table["likely_cause"] != "divergence"]
    assert overlap((0, 199), spans(stall)[0]) > 0.9


# ---------------------------------------------------------------------------- causes


def plateau_then_drop(n: int = 300, at: int = 150) -> np.ndarray:
    t = np.arange(n)
    return np.where(t < at, 1.0, 0.01 + 0.99 * np.exp(-(t - at) / 5))


def test_causes_from_gradient_norms_and_update_ratios():
    loss = plateau_then_drop()
    healthy = np.full(loss.size, 0.5)
    tiny = np.where(np.arange(loss.size) < 150, 1e-9, 0.5)
    assert find_stalls(loss)["likely_cause"][0] == "unknown"
    assert find_stalls(loss, grad_norms=tiny)["likely_cause"][0] == "vanishing gradients"
    small_steps = np.full(loss.size, 1e-7)
    by_update = find_stalls(loss, grad_norms=healthy, update_ratios=small_steps)
    assert by_update["likely_cause"][0] == "learning rate too small"
    assert by_update["update_ratio"][0] == pytest.approx(1e-7)
    assert find_stalls(loss, grad_norms=healthy)["likely_cause"][0] == "saddle/plateau"


def test_slow_progress_with_healthy_gradients_is_a_small_learning_rate():
    t = np.arange(300)
    loss = np.exp(-0.0005 * t)
    table = find_stalls(loss, grad_norms=np.full(t.size, 0.3))
    assert table.attrs["verdict"] == "stalled"
    assert table["likely_cause"][0] == "learning rate too small"
    assert table["grad_norm"][0] == pytest.approx(0.3)
    assert set(table["likely_cause"]) <= set(CAUSES)


# ---------------------------------------------------------------------------- aggregation


def test_epochs_in_any_order_give_the_same_stalls():
    rng = np.random.default_rng(5)
    epochs = np.repeat(np.arange(100), 20)
    loss = np.repeat(plateau_then_drop(100, 50), 20) * np.exp(0.05 * rng.standard_normal(2000))
    order = rng.permutation(loss.size)
    expected = find_stalls(loss, epochs=epochs)
    shuffled = find_stalls(loss[order], epochs=epochs[order])
    pd.testing.assert_frame_equal(expected, shuffled)
    assert overlap((0, 49), spans(expected)[0]) > 0.9


def test_long_series_are_binned_and_reported_in_steps():
    n = 300_000
    t = np.arange(n)
    loss = np.where(t < 100_000, 1.0, 0.01 + np.exp(-(t - 100_000) / 2000))
    report = analyze_stalls(loss)
    assert len(report.units) <= 10_000
    row = report.table.iloc[0]
    assert row["start"] == 0 and abs(row["end"] - 99_999) < 500
    assert row["length"] == row["end"] + 1
    assert report.verdict == "converged"


def test_steps_label_the_table():
    steps = np.arange(0, 3000, 10)
    table = find_stalls(plateau_then_drop(), steps=steps)
    assert table["start"][0] == 0 and table["end"][0] % 10 == 0
    assert table["recovered_at"][0] > table["end"][0]


def test_negative_losses_are_analysed_on_a_linear_scale():
    loss = plateau_then_drop() * 3 - 2  # from 1 down to -1.97
    report = analyze_stalls(loss)
    assert report.settings["scale"] == "linear"
    assert overlap((0, 149), spans(report.table)[0]) > 0.9


def test_window_fits_match_polyfit():
    rng = np.random.default_rng(0)
    z = np.cumsum(rng.standard_normal(500)) + 100
    fits = _fit_windows(z, half=6)
    for k in (0, 77, 300, fits.centers.size - 1):
        c = fits.centers[k]
        slope, intercept = np.polyfit(np.arange(-6, 7), z[c - 6 : c + 7], 1)
        assert fits.slope[k] == pytest.approx(slope, rel=1e-9, abs=1e-9)
        assert fits.mean[k] == pytest.approx(intercept, rel=1e-12)


def test_noise_level_estimates_the_point_scatter():
    rng = np.random.default_rng(1)
    z = np.linspace(0, -5, 20_000) + 0.3 * rng.standard_normal(20_000)
    z[5000:5010] -= 3  # a sudden drop does not inflate it
    assert _noise_level(z) == pytest.approx(0.3, rel=0.05)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "losses, message",
    [
        ([], "empty"),
        (np.array([]), "empty"),
        (["a", "b", "c"], "real numbers; found 'a'"),
        ([1.0, None, 2.0], "real numbers; found None"),
        ([1.0, [2.0, 3.0], 4.0], "flat sequence of numbers"),
        ([1.0, "x", 2.0], "real numbers; found 'x'"),
        (np.ones((10, 2)), r"1-D .*shape \(10, 2\)"),
        (np.float64(1.0), "1-D"),
        (np.ones(5, dtype=complex), "real numbers"),
        (np.ones(5, dtype=bool), "real numbers"),
        ("1234", "string"),
        (pd.DataFrame({"loss": [1.0, 2.0]}), r"DataFrame.*df\['loss'\]"),
    ],
)
def test_bad_losses_raise_clear_errors(losses, message):
    with pytest.raises(ValueError, match=message):
        find_stalls(losses)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": np.arange(5)}, "epochs has 5 values but losses has 10"),
        ({"steps": np.arange(11)}, "steps has 11 values"),
        ({"grad_norms": np.ones(3)}, "grad_norms has 3 values"),
        ({"update_ratios": [[1.0]] * 10}, "update_ratios must be 1-D"),
        ({"epochs": [0] * 9 + [np.nan]}, "epochs must be finite"),
        ({"threshold": 0}, "threshold must be between 0 and 1"),
        ({"recovery_drop": 1.5}, "recovery_drop must be between 0 and 1"),
        ({"confidence": 1.0}, "confidence"),
        ({"window": 2}, "window must be at least 3"),
        ({"scale": "sqrt"}, "scale must be"),
        ({"max_points": 10}, "max_points"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        find_stalls(np.linspace(1, 0.5, 10), **kwargs)


def test_log_scale_refuses_negative_losses():
    with pytest.raises(ValueError, match="non-negative"):
        find_stalls([1.0, -1.0, 0.5, 0.2, 0.1], scale="log")


def test_short_and_empty_results_keep_the_columns():
    table = find_stalls([1.0, 0.9])
    assert list(table.columns) == list(STALL_COLUMNS)
    assert table.empty and table.attrs["verdict"] == "too short"
    table = find_stalls(np.exp(-np.arange(50) / 5))
    assert list(table.columns) == list(STALL_COLUMNS) and table.empty


def test_summary_reads_well():
    text = analyze_stalls(plateau_then_drop(), grad_norms=np.full(300, 0.5)).summary()
    assert text.startswith("verdict: converged from step")
    assert "1. steps 0–" in text and "recovered at" in text and "saddle/plateau" in text


# ---------------------------------------------------------------------------- properties


finite_losses = arrays(
    np.float64,
    st.integers(1, 400),
    elements=st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(finite_losses)
def test_any_positive_series_gives_ordered_disjoint_spans(losses):
    report = analyze_stalls(losses)
    table = report.table
    assert report.verdict in ("converged", "stalled", "diverged", "improving", "too short")
    starts, ends = table["start"].to_numpy(), table["end"].to_numpy()
    assert np.all(starts <= ends)
    assert np.all(ends[:-1] < starts[1:])
    assert np.all((starts >= 0) & (ends < losses.size))
    if report.window:
        assert np.all(table["length"] >= report.window)


@settings(max_examples=40, deadline=None)
@given(finite_losses, st.floats(1e-3, 1e3))
def test_stalls_do_not_depend_on_the_units_of_the_loss(losses, factor):
    a = find_stalls(losses)
    b = find_stalls(losses * factor)
    assert spans(a) == spans(b)
    assert a.attrs["verdict"] == b.attrs["verdict"]


# ---------------------------------------------------------------------------- tensors


def test_tensors_that_require_grad_are_detached():
    import torch

    weight = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    values = plateau_then_drop()
    losses = [weight * float(v) for v in values]  # each loss is part of a graph
    assert all(loss.requires_grad for loss in losses)
    expected = find_stalls(2.0 * values)
    pd.testing.assert_frame_equal(find_stalls(losses), expected)
    as_tensor = torch.tensor(values) * weight  # one 1-D tensor that requires grad
    with_norms = find_stalls(as_tensor, grad_norms=[weight] * values.size)
    assert spans(with_norms) == spans(expected) and with_norms["grad_norm"][0] == 2.0
    epochs = [torch.tensor(i // 3) for i in range(values.size)]
    assert find_stalls(losses, epochs=epochs)["start"][0] == 0


# ---------------------------------------------------------------------------- labels


def test_whole_number_epochs_stay_integers_with_missing_values_as_na():
    table = find_stalls(plateau_then_drop(), epochs=np.arange(300) // 2)
    assert table.attrs["verdict"] == "converged"
    assert {str(table[c].dtype) for c in ("start", "end", "recovered_at")} == {"Int64"}
    assert isinstance(table.attrs["converged_from"], int)
    report = analyze_stalls(plateau_then_drop(), epochs=np.arange(300) // 2)
    assert str(report.units["x_first"].dtype) == "Int64"
    assert all(isinstance(v, int) for v in report.converged_span)
    stuck = find_stalls(0.3 + 0.7 * np.exp(-np.arange(200) / 10), floor=0.0)
    assert stuck["recovered_at"].isna().all() and str(stuck["recovered_at"].dtype) == "Int64"


def test_fractional_epochs_stay_floats():
    epochs = np.arange(300) / 4 + 0.5
    table = find_stalls(plateau_then_drop(), epochs=epochs)
    assert table["start"].dtype == np.float64
    assert table["start"][0] == 0.5


def test_the_users_epoch_numbers_label_every_row():
    loss = plateau_then_drop()
    from_zero = find_stalls(loss, epochs=np.arange(300))
    from_one = find_stalls(loss, epochs=np.arange(1, 301))
    assert from_zero["start"][0] == 0 and from_one["start"][0] == 1
    assert (from_one["end"] - from_zero["end"]).tolist() == [1]
    assert from_one.attrs["converged_from"] == from_zero.attrs["converged_from"] + 1
    assert analyze_stalls(loss, epochs=np.arange(1, 301)).summary().count("1. epochs 1–") == 1


# ---------------------------------------------------------------------------- culprits


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"losses": [1.0, 0.5, "x"]}, r"losses must be real numbers; found 'x' at position 2$"),
        ({"losses": [1.0, None]}, r"found None at position 1$"),
        ({"losses": [1.0, np.ones(2), 0.5]}, r"found shape \(2,\) at position 1$"),
        ({"epochs": [0, 1, np.nan, 3, 4]}, r"epochs must be finite .*epochs\[2\] is nan$"),
        ({"steps": [0, 1, 2, np.inf, 4]}, r"steps\[3\] is inf$"),
        ({"epochs": [0, 1, 2]}, r"^epochs has 3 values but losses has 5$"),
        ({"grad_norms": ["big"] * 5}, r"grad_norms must be real numbers; found 'big'"),
        ({"losses": pd.Series([1.0, 0.5, 0.2, 0.1, 0.1], dtype="Float64").astype(bool)}, "dtype"),
    ],
)
def test_bad_inputs_name_the_culprit_in_one_line(kwargs, message):
    arguments = {"losses": [1.0, 0.8, 0.6, 0.5, 0.5], **kwargs}
    with pytest.raises(ValueError, match=message) as raised:
        find_stalls(**arguments)
    assert "\n" not in str(raised.value)


def test_nan_losses_are_divergence_and_nullable_series_are_accepted():
    losses = pd.Series([1.0, 0.9, None, 0.5, 0.4, 0.3], dtype="Float64")  # <NA> like NaN
    table = find_stalls(losses, epochs=pd.Series(range(6), dtype="Int64"))
    assert table["likely_cause"].tolist() == ["divergence"]
    assert (table["start"][0], table["end"][0], table["recovered_at"][0]) == (2, 2, 3)
