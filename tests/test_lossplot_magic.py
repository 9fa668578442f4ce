"""%lossplot in a real IPython shell, loaded the way users load it: %load_ext nbgradcheck."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from nbgradcheck import LossHistory

PLATEAU = np.concatenate(
    [
        np.linspace(2.0, 1.0, 30),
        np.full(40, 1.0) + 1e-4 * np.sin(np.arange(40)),
        np.linspace(1.0, 0.05, 30),
    ]
)


def shown(ip, source: str):
    with capture_output() as captured:
        outcome = ip.run_cell(source)
    assert outcome.error_in_exec is None, outcome.error_in_exec
    return captured.outputs


def test_load_ext_registers_both_magics(ip):
    assert {"gradcheck", "lossplot"} <= set(ip.magics_manager.magics["line"])
    assert "gradcheck" in ip.magics_manager.magics["cell"]


@pytest.mark.parametrize(
    "value", [list(PLATEAU), PLATEAU, pd.Series(PLATEAU), pd.DataFrame({"loss": PLATEAU})]
)
def test_lossplot_shows_the_plot_and_stall_table(ip, value):
    ip.push({"losses": value})
    outputs = shown(ip, "%lossplot losses")
    assert len(outputs) == 1
    bundle = outputs[0].data
    assert "<img" in bundle["text/html"] and "image/png" in bundle["text/html"]


def test_lossplot_log_axis_and_output_variable(ip):
    ip.push({"history": LossHistory.from_losses(PLATEAU)})
    outputs = shown(ip, "%lossplot --log -o spans history")
    figure = outputs[0].data
    assert "image/png" in figure
    spans = ip.user_ns["spans"]
    assert len(spans) >= 1 and spans["start"].iloc[0] >= 25


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("%lossplot", "needs the losses"),
        ("%lossplot nowhere", "nowhere"),
        ("%lossplot 'text'", "str"),
        ("%lossplot []", "empty"),
        ("%lossplot --bogus losses", "unrecognized"),
    ],
)
def test_lossplot_mistakes_are_one_line_usage_errors(ip, source, message):
    ip.push({"losses": list(PLATEAU)})
    with capture_output():
        outcome = ip.run_cell(source)
    error = outcome.error_in_exec
    assert isinstance(error, UsageError) and message in str(error)
    assert "\n" not in str(error)


def test_lossplot_log_shows_the_scrolling_stall_table_numbered_as_the_figure(ip):
    ip.push({"history": LossHistory.from_losses(PLATEAU, epochs=np.arange(1, 101))})
    figure, table = shown(ip, "%lossplot --log history")
    assert "image/png" in figure.data
    assert 'style="overflow-x:auto"' in table.data["text/html"]
    assert "<th>1</th>" in table.data["text/html"]  # stall 1, as labelled in the figure
    start = ip.user_ns["history"].stalls["start"][0]
    assert f"1. epochs {start}–" in table.data["text/plain"]
