"""preflight(): each planted bug fails the check planted for it, correct models pass.

The models come from test_preflight_zoo.py. Before/after state: test_preflight_state.py;
the magic: test_preflight_magics.py; the notebook: test_preflight_notebook.py.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_preflight_zoo import (
    CLASSES,
    CULPRITS,
    NUMPY_BUGS,
    NUMPY_CULPRITS,
    TORCH_BUGS,
    numpy_batch,
    numpy_model,
    torch_batch,
    torch_model,
)
from torch import nn

import nbgradcheck as ng
from nbgradcheck.api.preflight_rules import CHECK_NAMES, STATUSES
from nbgradcheck.api.result import GradCheckResult
from nbgradcheck.errors import GradCheckError, LossError


@functools.cache
def torch_report(bug: str | None) -> ng.PreflightReport:
    X, y = torch_batch()
    return ng.preflight(torch_model(bug), F.cross_entropy, X, y)


@functools.cache
def numpy_report(bug: str | None) -> ng.PreflightReport:
    loss, params, grads = numpy_model(bug)
    X, y = numpy_batch()
    return ng.preflight(loss, params, X, y, grads=grads, classes=CLASSES)


def statuses(report: ng.PreflightReport) -> dict[str, str]:
    return dict(report.checks["status"])


# -- the planted bugs ------------------------------------------------------------------------


@pytest.mark.parametrize("bug", [b for b, check in TORCH_BUGS.items() if check is None])
def test_correct_torch_models_pass_every_check(bug):
    report = torch_report(bug)
    assert statuses(report) == dict.fromkeys(CHECK_NAMES, "pass"), report
    assert report.ok and report.failed == []
    assert not report.errors


@pytest.mark.parametrize("bug", [b for b, check in TORCH_BUGS.items() if check is not None])
def test_each_torch_bug_fails_its_check_and_names_the_culprit(bug):
    report = torch_report(bug)
    check = TORCH_BUGS[bug]
    assert report.status(check) == "fail", report
    assert check in report.failed and not report.ok
    assert CULPRITS.get(bug, "") in report.finding(check)
    assert not report.errors, report.errors


def test_correct_numpy_model_passes_and_skips_dead_units_with_the_reason():
    report = numpy_report(None)
    expected = dict.fromkeys(CHECK_NAMES, "pass") | {"dead_units": "skip"}
    assert statuses(report) == expected, report
    assert "NumPy" in report.finding("dead_units")
    assert report.ok


@pytest.mark.parametrize("bug", [b for b, check in NUMPY_BUGS.items() if check is not None])
def test_each_numpy_bug_fails_its_check_and_names_the_culprit(bug):
    report = numpy_report(bug)
    check = NUMPY_BUGS[bug]
    assert report.status(check) == "fail", report
    assert NUMPY_CULPRITS.get(bug, "") in report.finding(check)
    assert not report.errors, report.errors


def test_the_wrong_sign_fails_overfitting_because_the_loss_rises():
    for report in (torch_report("wrong_sign"), numpy_report("wrong_sign")):
        assert "rose" in report.finding("overfit_batch")
        curve = report.overfit_curve
        assert curve[-1] > curve[0]
        assert report.status("gradients") == "fail"


def test_a_dead_layer_is_named_and_its_zero_gradient_flagged():
    report = torch_report("dead_relu")
    dead = report.activations
    assert dead.loc["relu after fc1", "dead_share"] == 1.0
    assert dead.loc["relu after fc1", "status"] == "fail"
    assert report.status("gradient_flow") == "fail"
    assert "fc1.weight" in report.finding("gradient_flow")


def test_a_detached_layer_gets_no_gradient():
    report = torch_report("detach")
    gradients = report.gradients
    assert np.isnan(gradients.loc["fc1.weight", "grad_norm"])
    assert gradients.loc["fc1.weight", "status"] == "fail"
    assert gradients.loc["fc2.weight", "status"] == "pass"
    assert "no gradient" in report.finding("gradient_flow")


def test_batchnorm_in_training_mode_is_tested_in_evaluation_mode():
    report = torch_report("batchnorm")
    finding = report.finding("batch_independence")
    assert report.status("batch_independence") == "pass"
    assert "norm" in finding and "evaluation mode" in finding


def test_the_layer_that_mixes_the_batch_is_named():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 10), nn.LogSoftmax(dim=0))
    X, y = torch_batch()
    report = ng.preflight(model, F.nll_loss, X, y)
    assert report.status("batch_independence") == "fail"
    assert "3 (LogSoftmax)" in report.finding("batch_independence")


# -- no false alarms ------------------------------------------------------------------------


@settings(max_examples=6, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    depth=st.integers(1, 3),
    hidden=st.sampled_from([32, 64]),
    batch=st.integers(8, 64),
    classes=st.integers(2, 10),
    batchnorm=st.booleans(),
    dropout=st.booleans(),
)
def test_correct_torch_mlps_raise_no_alarm(seed, depth, hidden, batch, classes, batchnorm, dropout):
    torch.manual_seed(seed)
    layers, width = [], 12
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        layers += [nn.BatchNorm1d(hidden)] if batchnorm else []
        layers += [nn.Dropout(0.1)] if dropout else []
        width = hidden
    model = nn.Sequential(*layers, nn.Linear(width, classes))
    X, y = torch.randn(batch, 12), torch.randint(0, classes, (batch,))
    report = ng.preflight(model, F.cross_entropy, X, y, steps=100, seed=seed)
    assert report.ok, report
    for check in ("init_loss", "batch_independence", "gradient_flow", "gradients"):
        assert report.status(check) == "pass", report


@settings(max_examples=6, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(2, 64),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_correct_numpy_models_raise_no_alarm(seed, batch, dtype):
    loss, params, grads = numpy_model(seed=seed)
    params = {k: v.astype(dtype) for k, v in params.items()}
    X, y = numpy_batch(seed=seed, size=batch)
    report = ng.preflight(loss, params, X.astype(dtype), y, grads=grads, classes=CLASSES)
    assert report.ok, report
    for check in ("batch_independence", "gradient_flow", "gradients"):
        assert report.status(check) == "pass", report


# -- init_loss: classes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss_fn",
    [F.cross_entropy, nn.CrossEntropyLoss(), lambda out, y: F.nll_loss(out.log_softmax(-1), y)],
    ids=["function", "module", "nll_of_log_softmax"],
)
def test_classes_are_inferred_from_a_cross_entropy_over_integer_labels(loss_fn):
    X, y = torch_batch()
    report = ng.preflight(torch_model(), loss_fn, X, y, steps=5)
    assert report.status("init_loss") == "pass"
    assert f"ln({CLASSES})" in report.finding("init_loss")


def test_a_summed_cross_entropy_is_compared_with_the_summed_chance_loss():
    X, y = torch_batch()
    report = ng.preflight(torch_model(), nn.CrossEntropyLoss(reduction="sum"), X, y, steps=5)
    assert report.status("init_loss") == "pass"
    assert f"× {len(y)} targets" in report.finding("init_loss")


@pytest.mark.parametrize(
    ("loss_fn", "targets", "reason"),
    [
        (nn.CrossEntropyLoss(label_smoothing=0.2), None, "not the cross-entropy"),
        (nn.MSELoss(), "float", "integer class labels"),
    ],
    ids=["label_smoothing", "regression"],
)
def test_init_loss_is_skipped_with_the_reason_when_classes_cannot_be_inferred(
    loss_fn, targets, reason
):
    X, y = torch_batch()
    model = torch_model()
    if targets == "float":
        y = torch.randn(len(X), CLASSES)
    report = ng.preflight(model, loss_fn, X, y, steps=5)
    assert report.status("init_loss") == "skip"
    assert reason in report.finding("init_loss") and "classes=" in report.finding("init_loss")


def test_given_classes_are_used_even_where_they_cannot_be_inferred():
    X, y = torch_batch()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    report = ng.preflight(torch_model("large_init"), loss_fn, X, y, classes=CLASSES, steps=5)
    assert report.status("init_loss") == "fail"


def test_numpy_init_loss_needs_classes():
    loss, params, grads = numpy_model("large_init")
    X, y = numpy_batch()
    report = ng.preflight(loss, params, X, y, grads=grads, steps=5)
    assert report.status("init_loss") == "skip"
    assert "classes=" in report.finding("init_loss")


# -- batch_independence: inputs without a gradient -------------------------------------------


def test_token_inputs_are_tested_from_the_embedding_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(40, 10))
    tokens = torch.randint(0, 50, (32, 5))
    y = torch.randint(0, 10, (32,))
    report = ng.preflight(model, F.cross_entropy, tokens, y, steps=5)
    assert report.status("batch_independence") == "pass"
    assert "0 (Embedding)" in report.finding("batch_independence")


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(20, 10)

    def forward(self, x):
        return self.fc(x.detach().round())


def test_no_gradient_reaching_the_input_warns_and_is_not_called_a_leak():
    X, y = torch_batch()
    torch.manual_seed(0)
    report = ng.preflight(Detached(), F.cross_entropy, X.round(), y, steps=5)
    assert report.status("batch_independence") == "warn"
    assert "no gradient reaches" in report.finding("batch_independence")


def test_an_output_that_is_not_a_batch_is_skipped():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10), nn.Flatten(0))
    X, y = torch_batch(size=8)
    report = ng.preflight(model, lambda out, _: out.pow(2).mean(), X, y, steps=5)
    assert report.status("batch_independence") == "skip"
    assert "batch size" in report.finding("batch_independence")


# -- gradient_flow: vanishing gradients ------------------------------------------------------


def test_a_vanishing_gradient_warns_and_round_off_is_not_a_wrong_gradient():
    torch.manual_seed(0)
    layers = [nn.Linear(20, 32), nn.Sigmoid()]
    for _ in range(8):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, CLASSES))
    X, y = torch_batch()
    report = ng.preflight(model, F.cross_entropy, X, y, steps=5)
    assert report.status("gradient_flow") == "warn"
    assert "vanishes" in report.finding("gradient_flow")
    assert report.status("gradients") == "pass"
    assert report.status("dead_units") == "skip"  # sigmoid units are not ReLU-like


# -- the report ------------------------------------------------------------------------------


def test_the_report_table_and_its_display():
    report = torch_report("dead_relu")
    checks = report.checks
    assert list(checks.index) == list(CHECK_NAMES)
    assert {"status", "finding"} <= set(checks.columns)
    assert set(checks["status"]) <= set(STATUSES)
    assert all(isinstance(text, str) and text for text in checks["finding"])
    bundle = report._repr_mimebundle_()
    assert "Preflight FAILED" in bundle["text/plain"]
    assert all(name in bundle["text/plain"] for name in CHECK_NAMES)
    html = bundle["text/html"]
    assert "<table" in html and "data:image/png;base64," in html
    assert "relu after fc1" in html
    assert isinstance(report.gradcheck, GradCheckResult)
    assert report.figure() is not None


def test_only_the_requested_mime_types_are_rendered():
    report = numpy_report(None)
    assert set(report._repr_mimebundle_(include={"text/plain"})) == {"text/plain"}
    assert set(report._repr_mimebundle_(exclude={"text/plain"})) == {"text/html"}


def test_a_check_that_raises_fails_with_the_exception_kept():
    class Float32Only(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(20, 10)

        def forward(self, x):
            if x.dtype != torch.float32:  # breaks the float64 gradient check
                raise TypeError(f"float32 inputs only, not {x.dtype}")
            return self.fc(x)

    torch.manual_seed(0)
    X, y = torch_batch()
    report = ng.preflight(Float32Only(), F.cross_entropy, X, y, steps=5)
    assert report.status("gradients") == "fail"
    assert "TypeError" in report.finding("gradients")
    assert isinstance(report.errors["gradients"], TypeError)
    assert report.status("init_loss") == "pass"


# -- what the user passed --------------------------------------------------------------------


def test_mistakes_in_the_call_are_one_clear_error():
    X, y = torch_batch()
    model = torch_model()
    loss, params, grads = numpy_model()
    Xn, yn = numpy_batch()
    with pytest.raises(GradCheckError, match="y holds 3"):
        ng.preflight(model, F.cross_entropy, X, y[:3])
    with pytest.raises(GradCheckError, match="grads="):
        ng.preflight(loss, params, Xn, yn)
    with pytest.raises(GradCheckError, match="autograd"):
        ng.preflight(model, F.cross_entropy, X, y, grads=grads)
    with pytest.raises(GradCheckError, match="steps"):
        ng.preflight(model, F.cross_entropy, X, y, steps=0)
    with pytest.raises(GradCheckError, match="classes"):
        ng.preflight(model, F.cross_entropy, X, y, classes=1)
    with pytest.raises(GradCheckError, match=r"nn\.Module"):
        ng.preflight(params, loss, Xn, yn, grads=grads)


def test_a_loss_that_is_not_a_scalar_is_refused():
    X, y = torch_batch()
    with pytest.raises(LossError, match="scalar"):
        ng.preflight(torch_model(), lambda out, t: F.cross_entropy(out, t, reduction="none"), X, y)
