"""The progress bar: shown for long checks only, fed in bounded chunks, closed on Ctrl-C."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import tqdm.auto
from conftest import frozen

import nbgradcheck as ng
from nbgradcheck.core import progress
from nbgradcheck.demo import course_network


class RecordingBar:
    """Stands in for tqdm: records what the check reports."""

    made: ClassVar[list[RecordingBar]] = []

    def __init__(self, total: int, **options) -> None:
        self.total, self.options = total, options
        self.updates: list[int] = []
        self.postfixes: list[str] = []
        self.closed = 0
        RecordingBar.made.append(self)

    def update(self, count: int) -> None:
        self.updates.append(count)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfixes.append(text)

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def bars(monkeypatch):
    RecordingBar.made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    return RecordingBar.made


def cheap_problem(size: int):
    """J = Σ c·θ over ``size`` elements in two tensors: exact gradient c."""
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=size - 3), "b": rng.normal(size=3)}
    weights = {k: rng.normal(size=v.shape) for k, v in params.items()}

    def loss(p):
        return float(p["w"] @ weights["w"] + p["b"] @ weights["b"])

    return loss, params, weights


@pytest.mark.parametrize(
    "requested, seconds, shown",
    [
        (None, 5.0, True),
        (None, 0.2, False),
        (True, 0.0, True),
        (False, 100.0, False),
    ],
)
def test_should_show_follows_the_option_or_the_expected_duration(requested, seconds, shown):
    assert progress.should_show(requested, seconds) is shown


def test_chunks_last_about_a_tick_and_stay_within_bounds():
    assert progress.chunk_size(1e-3) == 100  # 0.1 s of 1 ms elements
    assert progress.chunk_size(10.0) == 1  # slow elements: every element
    for seconds in (1e-9, 1e-7, 0.0, float("nan")):
        assert progress.chunk_size(seconds) == progress.MAX_CHUNK  # cheap: bounded staleness
    sizes = [progress.chunk_size(s) for s in np.logspace(-9, 1, 40)]
    assert sizes == sorted(sizes, reverse=True)


def test_a_long_check_shows_a_text_bar_with_eta(capsys):
    net = course_network()
    ng.check(net.loss, net.parameters, net.gradients, progress=True)
    bar = capsys.readouterr().err
    assert "gradcheck" in bar and "47/47" in bar and "elem/s" in bar
    assert "<" in bar  # tqdm's elapsed<remaining (ETA)


def test_a_short_check_shows_no_bar_unless_it_is_expected_to_be_long(capsys, monkeypatch):
    net = course_network()
    ng.check(net.loss, net.parameters, net.gradients)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress, "AUTO_PROGRESS_SECONDS", 0.0)
    ng.check(net.loss, net.parameters, net.gradients)
    assert "47/47" in capsys.readouterr().err


def test_the_bar_is_fed_in_bounded_chunks_that_add_up(bars, monkeypatch):
    monkeypatch.setattr(progress, "MAX_CHUNK", 64)
    loss, params, weights = cheap_problem(5000)
    result = ng.check(loss, params, weights, progress=True)
    assert result.passed
    (bar,) = bars
    assert bar.total == 5000 and sum(bar.updates) == 5000
    assert max(bar.updates) <= 64
    assert len(bar.updates) <= 5000 / 64 + 2 * len(params)  # not one call per element
    assert bar.postfixes == ["w", "b"] and bar.closed == 1


def test_ctrl_c_closes_the_bar_short_and_restores_parameters(bars, monkeypatch):
    monkeypatch.setattr(progress, "MAX_CHUNK", 16)
    loss, params, weights = cheap_problem(500)
    calls = [0]

    def interrupted(p):
        calls[0] += 1
        if calls[0] == 300:
            raise KeyboardInterrupt
        return loss(p)

    before = frozen(params)
    with pytest.warns(RuntimeWarning, match="INCOMPLETE"):
        result = ng.check(interrupted, params, weights, progress=True)
    (bar,) = bars
    assert not result.complete and bar.closed == 1
    assert 0 < sum(bar.updates) < bar.total
    assert frozen(params) == before


def test_no_bar_object_is_made_when_progress_is_off(bars):
    loss, params, weights = cheap_problem(50)
    ng.check(loss, params, weights, progress=False)
    assert bars == []
