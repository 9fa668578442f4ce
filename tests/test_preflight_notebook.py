"""notebooks/preflight.ipynb runs in a real kernel and each planted bug fails its check.

Cells tagged ``preflight-expect:CHECK`` plant a bug for CHECK: their report must list CHECK
as failed; cells tagged ``preflight-expect:pass`` show a correct model: their report must
pass. The notebook is executed in memory (the file is not touched) with nbclient.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from conftest import executed_notebook

from nbgradcheck.api.preflight_rules import CHECK_NAMES

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "preflight.ipynb"
TAG = "preflight-expect:"
FAILED_LINE = re.compile(r"^\s+✗ (\w+)\s+fail$", re.MULTILINE)


def expectations(notebook: nbformat.NotebookNode) -> list[tuple[int, str]]:
    """(cell index, expected check or 'pass') for every tagged code cell."""
    found = []
    for index, cell in enumerate(notebook.cells):
        for tag in cell.get("metadata", {}).get("tags", []):
            if tag.startswith(TAG):
                found.append((index, tag.removeprefix(TAG)))
    return found


def report_text(cell: nbformat.NotebookNode) -> str:
    """The text/plain of the preflight report a cell shows."""
    texts = [
        output.data.get("text/plain", "")
        for output in cell.get("outputs", [])
        if output.output_type in ("display_data", "execute_result")
    ]
    reports = [text for text in texts if text.startswith("Preflight ")]
    assert len(reports) == 1, texts
    return reports[0]


@pytest.fixture(scope="module")
def executed() -> nbformat.NotebookNode:
    return executed_notebook(NOTEBOOK)


def test_the_notebook_plants_a_bug_for_every_check():
    planted = {check for _, check in expectations(nbformat.read(NOTEBOOK, as_version=4))}
    assert planted == {*CHECK_NAMES, "pass"}


def test_the_notebook_runs_without_errors(executed):
    errors = [
        f"cell {index}: {output.ename}: {output.evalue}"
        for index, cell in enumerate(executed.cells)
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]
    assert not errors


def test_each_planted_bug_fails_its_check_and_correct_models_pass(executed):
    for index, expected in expectations(executed):
        text = report_text(executed.cells[index])
        failed = set(FAILED_LINE.findall(text))
        if expected == "pass":
            assert text.startswith("Preflight PASSED") and not failed, (index, text)
        else:
            assert expected in failed, (index, text)


def test_the_reports_show_a_checklist_and_plots(executed):
    index, _ = expectations(executed)[0]
    (output,) = executed.cells[index].outputs
    html = output.data["text/html"]
    assert "<table" in html and "data:image/png;base64," in html
