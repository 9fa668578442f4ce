"""%preflight in a real IPython shell: the report, its display, every user mistake."""

from __future__ import annotations

import pytest
import torch.nn.functional as F
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from test_preflight_zoo import numpy_batch, numpy_model, torch_batch, torch_model
from torch import nn

import nbgradcheck
from nbgradcheck.api.preflight import PreflightReport

TORCH = "%preflight --steps 20 model F.cross_entropy X y"
NUMPY = "%preflight --steps 20 --classes 10 --grads grads loss params Xn yn"


@pytest.fixture(scope="module")
def names(ip):
    X, y = torch_batch()
    loss, params, grads = numpy_model("wrong_backward")
    Xn, yn = numpy_batch()
    ip.push(
        {
            "F": F,
            "nn": nn,
            "model": torch_model(),
            "dead": torch_model("dead_relu"),
            "X": X,
            "y": y,
            "loss": loss,
            "params": params,
            "grads": grads,
            "Xn": Xn,
            "yn": yn,
        }
    )


def run(ip, source: str):
    with capture_output() as captured:
        outcome = ip.run_cell(source)
    return outcome, captured


def usage_message(ip, source: str) -> str:
    outcome, captured = run(ip, source)
    error = outcome.error_in_exec
    assert isinstance(error, UsageError), (source, error)
    assert "Traceback" not in captured.stderr + captured.stdout
    assert "\n" not in str(error)
    return str(error)


def test_the_magic_returns_stores_and_shows_the_report_once(ip, names):
    for source in (TORCH, "r = " + TORCH, TORCH + "\nx = 1"):
        outcome, captured = run(ip, source)
        assert outcome.success, outcome.error_in_exec
        assert len(captured.outputs) == 1, source
        assert "Preflight PASSED" in captured.outputs[0].data["text/plain"]
        assert "text/html" in captured.outputs[0].data
        assert "Preflight" not in captured.stdout  # not shown again as Out[n]
    assert isinstance(ip.user_ns["r"], PreflightReport)
    assert ip.user_ns["_preflight"].ok


def test_quiet_and_semicolon_show_nothing_and_output_stores(ip, names):
    for source in (TORCH.replace("--steps", "-q -o found --steps"), TORCH + ";"):
        outcome, captured = run(ip, source)
        assert outcome.success
        assert captured.outputs == [] and "Preflight" not in captured.stdout
    assert isinstance(ip.user_ns["found"], PreflightReport)


def test_a_report_shown_later_displays_normally(ip, names):
    run(ip, "r = " + TORCH)
    _, captured = run(ip, "r")
    assert "Preflight PASSED" in captured.stdout


def test_numpy_models_and_quoted_expressions(ip, names):
    report = ip.run_line_magic("preflight", "-q " + NUMPY.removeprefix("%preflight "))
    assert report.failed == ["gradients"]
    assert "W2" in report.finding("gradients")
    quoted = '%preflight -q --steps 20 dead "lambda out, t: F.cross_entropy(out, t)" X y'
    outcome, _ = run(ip, "r = " + quoted)
    assert outcome.success
    assert "dead_units" in ip.user_ns["r"].failed


MISTAKES = {
    "three expressions": ("%preflight model F.cross_entropy X", "needs four expressions"),
    "unquoted spaces": (
        "%preflight model lambda o, t: F.cross_entropy(o, t) X y",
        "quote an expression",
    ),
    "misspelt name": ("%preflight modle F.cross_entropy X y", "NameError in MODEL: name 'modle'"),
    "syntax error": ("%preflight model F.cross_entropy X 'y +'", "Y is not valid Python"),
    "bad option value": ("%preflight --classes 1 model F.cross_entropy X y", "at least 2"),
    "unknown option": ("%preflight --bogus model F.cross_entropy X y", "--bogus"),
    "batch mismatch": ("%preflight model F.cross_entropy X y[:5]", "y holds 5"),
    "numpy without grads": ("%preflight loss params Xn yn", "grads="),
    "bad output name": ("%preflight -o 2r model F.cross_entropy X y", "variable name"),
}


@pytest.mark.parametrize(("source", "expected"), MISTAKES.values(), ids=MISTAKES.keys())
def test_user_mistakes_are_one_line_usage_errors(ip, names, source, expected):
    assert expected in usage_message(ip, source)


def test_an_error_inside_the_users_model_keeps_its_traceback(ip, names):
    ip.run_cell(
        "class Broken(nn.Module):\n"
        "    def forward(self, x):\n"
        "        raise RuntimeError('boom')\n"
        "broken = Broken()"
    )
    outcome, captured = run(ip, "%preflight broken F.cross_entropy X y")
    assert isinstance(outcome.error_in_exec, RuntimeError)
    assert "boom" in captured.stdout + captured.stderr


def test_help_and_registration(ip, names):
    assert "preflight" in ip.magics_manager.magics["line"]
    with capture_output() as captured:
        ip.run_cell("%preflight?")
    assert "MODEL LOSS_FN X Y" in captured.stdout
    assert callable(nbgradcheck.preflight)
