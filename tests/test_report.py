"""Views of a result: styled table, worst elements, exports, JSON round trip, rich display."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import frozen
from test_plots import synthetic_result, synthetic_tensor

import nbgradcheck as ng
from nbgradcheck.api.result import GradCheckResult
from nbgradcheck.views import html as report
from nbgradcheck.views.colours import VERDICT_COLOURS


@pytest.fixture
def buggy_result(buggy_net):
    return ng.check(buggy_net.loss, buggy_net.parameters, buggy_net.gradients, mode="full")


@pytest.fixture
def passing_result(net):
    return ng.check(net.loss, net.parameters, net.gradients, mode="full")


def embedded_pngs(html: str) -> list[bytes]:
    return [
        base64.b64decode(data)
        for data in re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    ]


# -- styled table ----------------------------------------------------------------------------


def test_styled_table_colours_verdicts_and_formats_errors(buggy_result):
    styler = buggy_result.styled_table()
    assert isinstance(styler, pd.io.formats.style.Styler)
    assert isinstance(buggy_result.table, pd.DataFrame)  # the plain table stays plain
    html = styler.to_html()
    assert f"background-color: {VERDICT_COLOURS['wrong']}" in html
    assert f"background-color: {VERDICT_COLOURS['correct']}" in html
    assert f"{buggy_result.tensor('W2').difference:.2e}" in html
    assert ">3×5<" in html and ">[2, 0]<" in html
    for name in buggy_result.names:
        assert f">{name}<" in html


def test_styled_table_shows_a_diagnosis_column_when_the_result_has_one(buggy_result, monkeypatch):
    plain = GradCheckResult.table.fget

    def with_diagnosis(result):
        table = plain(result)
        table["diagnosis"] = ["", "analytic ≈ 4 × numeric <extra 4?>", "", "", "", ""]
        return table

    monkeypatch.setattr(GradCheckResult, "table", property(with_diagnosis))
    html = buggy_result.styled_table().to_html()
    assert "analytic ≈ 4 × numeric &lt;extra 4?&gt;" in html  # escaped
    assert "white-space: normal" in html


def test_styled_table_row_limit_keeps_every_failing_tensor(buggy_result):
    shown = buggy_result.styled_table(max_rows=3).data
    assert list(shown["parameter"]) == ["W1", "b1", "W2"]
    shown = buggy_result.styled_table(max_rows=2).data
    assert list(shown["parameter"]) == ["b1", "W2"]


# -- worst elements and the long frame --------------------------------------------------------


def test_worst_lists_the_largest_errors_across_tensors(buggy_result):
    worst = buggy_result.worst(6)
    assert list(worst.columns) == [
        "parameter",
        "index",
        "analytic",
        "numeric",
        "abs_error",
        "rel_error",
        "kink",
    ]
    assert len(worst) == 6
    assert worst["abs_error"].is_monotonic_decreasing
    everything = buggy_result.to_frame().sort_values("abs_error", ascending=False)
    np.testing.assert_allclose(worst["abs_error"], everything["abs_error"].head(6))
    assert worst.loc[0, "parameter"] == "b1" and worst.loc[0, "index"] == (2, 0)
    by_relative = buggy_result.worst(3, by="rel_error")
    assert set(by_relative["parameter"]) == {"b1"}  # relative error 0.6 against 1/3


def test_worst_leaves_out_kinks_unless_asked():
    tensor = synthetic_tensor("W", (3, 3), wrong=[4], kinks=[0], factor=0.9)
    result = synthetic_result(tensor)
    assert result.worst(1).loc[0, "index"] == (1, 1)
    with_kinks = result.worst(2, include_kinks=True)
    assert with_kinks.loc[0, "index"] == (0, 0) and with_kinks.loc[0, "kink"]


def test_worst_rejects_bad_arguments(buggy_result):
    with pytest.raises(ValueError, match="by must be 'abs_error' or 'rel_error'"):
        buggy_result.worst(3, by="error")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        buggy_result.worst(0)


def test_to_frame_has_one_row_per_checked_element(buggy_result):
    frame = buggy_result.to_frame()
    assert len(frame) == buggy_result.n_checked == 47
    assert frame.groupby("parameter", sort=False).size().to_dict() == {
        "W1": 20,
        "b1": 5,
        "W2": 15,
        "b2": 3,
        "W3": 3,
        "b3": 1,
    }
    row = frame[(frame["parameter"] == "W2") & (frame["index"] == (2, 0))].iloc[0]
    assert row["flat_index"] == 10
    assert row["analytic"] == pytest.approx(2 * row["numeric"], rel=1e-6)


# -- JSON ------------------------------------------------------------------------------------


def test_json_is_strict_and_follows_the_versioned_schema(buggy_result):
    text = buggy_result.to_json()
    data = json.loads(text)
    assert data == buggy_result.to_dict()
    assert data["schema"] == "nbgradcheck.result" and data["schema_version"] == 2
    assert data["verdict"] == "wrong" and data["failing"] == ["b1", "W2"]
    w2 = data["tensors"][2]
    assert w2["name"] == "W2" and w2["shape"] == [3, 5] and w2["worst_index"] == [2, 0]
    assert w2["dtype"] == "float64" and w2["passed"] is False
    assert len(w2["elements"]["numeric"]) == 15
    assert "NaN" not in text and "Infinity" not in text
    assert data["summary"] == buggy_result.summary()


def with_numeric(result, name, position, value):
    """``result`` with one numeric value replaced (a frozen result cannot be edited)."""
    tensors = []
    for t in result.tensors:
        if t.name == name:
            numeric = t.numeric.copy()
            numeric[position] = value
            fields = {f.name: getattr(t, f.name) for f in dataclasses.fields(t)}
            t = type(t)(**{**fields, "numeric": numeric})
        tensors.append(t)
    return dataclasses.replace(result, tensors=tensors)


def test_nan_is_written_as_null_and_read_back_as_nan(buggy_result):
    buggy_result = with_numeric(buggy_result, "W1", 3, np.nan)  # as after an interruption
    data = json.loads(buggy_result.to_json())
    assert data["tensors"][0]["elements"]["numeric"][3] is None
    assert data["tensors"][0]["checked"] == 19
    loaded = GradCheckResult.from_dict(data)
    assert np.isnan(loaded.tensor("W1").numeric[3])


def test_json_round_trip_keeps_every_number_and_view(buggy_result, tmp_path):
    path = tmp_path / "result.json"
    buggy_result.to_json(path, indent=2)
    loaded = GradCheckResult.from_json(path.read_text())
    assert loaded.to_dict() == buggy_result.to_dict()
    pd.testing.assert_frame_equal(loaded.table, buggy_result.table)
    assert loaded.verdict == "wrong" and loaded.failing == ["b1", "W2"]
    np.testing.assert_array_equal(loaded.numeric["W2"], buggy_result.numeric["W2"])
    assert len(loaded.heatmap().axes) > 0
    with pytest.raises(ValueError, match="holds no loss to re-run"):
        loaded.sweep_eps()


def test_summary_only_json_cannot_be_loaded_as_a_result(buggy_result):
    data = buggy_result.to_dict(elements=False)
    assert "elements" not in data["tensors"][0]
    with pytest.raises(ValueError, match="saved without elements"):
        GradCheckResult.from_dict(data)


def test_a_version_1_file_with_per_element_losses_is_still_read(buggy_result):
    """Schema 1 listed J(θ±ε) per element; schema 2 dropped them. Old files load, and the
    result rebuilt from them is the one rebuilt from the new format."""
    data = json.loads(buggy_result.to_json())
    old = copy.deepcopy(data)
    old["schema_version"] = 1
    for tensor in old["tensors"]:
        count = len(tensor["elements"]["numeric"])
        tensor["elements"]["loss_plus"] = [0.5] * count
        tensor["elements"]["loss_minus"] = [0.25] * count
    assert "loss_plus" not in data["tensors"][0]["elements"]
    assert GradCheckResult.from_dict(old).to_dict() == GradCheckResult.from_dict(data).to_dict()


def test_unknown_schema_or_version_is_refused(buggy_result):
    data = buggy_result.to_dict()
    with pytest.raises(ValueError, match="schema version 99 is not supported"):
        GradCheckResult.from_dict({**data, "schema_version": 99})
    with pytest.raises(ValueError, match="not an nbgradcheck result"):
        GradCheckResult.from_dict({"tensors": []})


# -- rich display ----------------------------------------------------------------------------


def test_mimebundle_has_text_and_html_with_table_and_heatmap(buggy_result):
    bundle = buggy_result._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert bundle["text/plain"] == repr(buggy_result)
    html = bundle["text/html"]
    assert "<table" in html and ">W2<" in html
    assert "Gradient check FAILED" in html and ">WRONG<" in html
    assert "worst elements" in html
    pngs = embedded_pngs(html)
    assert len(pngs) == 1 and pngs[0].startswith(b"\x89PNG")
    assert "heatmap of the failing tensors b1, W2" in html
    for note in buggy_result.notes:
        assert note.split(":")[0] in html


def test_mimebundle_respects_include_and_exclude(buggy_result):
    assert set(buggy_result._repr_mimebundle_(include=["text/plain"])) == {"text/plain"}
    assert set(buggy_result._repr_mimebundle_(exclude=["text/html"])) == {"text/plain"}


def test_passing_result_shows_no_heatmap(passing_result):
    html = passing_result._repr_mimebundle_()["text/html"]
    assert "<table" in html and ">CORRECT<" in html
    assert embedded_pngs(html) == [] and "worst elements" not in html


def test_html_stays_light_for_many_tensors():
    tensors = [
        synthetic_tensor(f"layer{i}.weight", (32, 32), wrong=[i] if i % 5 == 0 else [], seed=i)
        for i in range(40)
    ]
    html = synthetic_result(*tensors).to_html()
    assert html.count("<tr>") <= report.HTML_MAX_ROWS + 1 + report.HTML_WORST + 1
    assert "15 more passing tensors not shown" in html
    assert "and 4 more: result.heatmap()" in html
    assert len(html) < 250_000
    assert len(embedded_pngs(html)) == 1


def test_to_html_writes_a_complete_page(buggy_result, tmp_path):
    path = tmp_path / "report.html"
    fragment = buggy_result.to_html(path, heatmap=False)
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and fragment in page
    assert embedded_pngs(fragment) == []


def test_names_and_notes_are_escaped_in_html():
    result = synthetic_result(synthetic_tensor("<script>", (2, 2), wrong=[0]))
    result = dataclasses.replace(result, notes=[*result.notes, "a note with <b>markup</b>"])
    html = result.to_html()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "&lt;b&gt;markup&lt;/b&gt;" in html


# -- delegation to plots and sweep -----------------------------------------------------------


def test_result_sweep_eps_reuses_the_check_and_restores_parameters(net):
    before = frozen(net.parameters)
    result = ng.check(net.loss, net.parameters, net.gradients, mode="sample", sample=3)
    sweep = result.sweep_eps(eps=[1e-6, 1e-3], methods=["central"])
    assert list(sweep.frame["eps"]) == [1e-6, 1e-3]
    assert sweep.result("central", 1e-3).mode == "sample"
    small, large = sweep.result("central", 1e-6), sweep.result("central", 1e-3)
    assert large.n_checked == 16  # 3 of each tensor, 1 of b3
    for a, b in zip(small.tensors, large.tensors):  # the same elements at every ε
        np.testing.assert_array_equal(a.indices, b.indices)
    assert frozen(net.parameters) == before
