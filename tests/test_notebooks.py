"""Every notebook in notebooks/ runs top to bottom in a real kernel and shows what it should.

Each notebook is executed in memory with nbclient (the file on disk is not touched) in a
python3 kernel of this interpreter, with the notebook's folder as working directory.
The test fails on any error output or traceback, and checks that the outputs readers
should see are there: the report tables (text/html), the figures (image/png), the
inspector widget (a widget view). The notebooks are committed without outputs, so diffs
stay clean; that is checked too.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))

# Seconds one cell may run (the notebooks take seconds; CI machines can be slow and busy).
CELL_TIMEOUT = 180
KERNEL_STARTUP_TIMEOUT = 120

HTML = "text/html"
PNG = "image/png"
WIDGET = "application/vnd.jupyter.widget-view+json"
# What each notebook must show. A notebook not listed must still run cleanly and show at
# least one rich output.
EXPECTED_MIME_TYPES = {
    "quickstart.ipynb": {HTML, WIDGET},
    "theory.ipynb": {HTML, PNG},
    "regularization_dropout.ipynb": {HTML},
    "training_stalls.ipynb": {PNG},
    "pytorch_custom_function.ipynb": {HTML},
}
# Text a notebook's outputs must contain: the numbers its prose is about.
EXPECTED_TEXT = {
    "theory.ipynb": [
        "forward: 3.030100",
        "central: 3.000100",
        "Gradient check PASSED",
        "extrapolation from two steps",
        "the analytic gradient is wrong",
    ],
    "regularization_dropout.ipynb": [
        "failing: W1, W2, W3",
        "λ/m = 0.1400",
        "RandomLossError",
        "Gradient check PASSED",
        "['W1', 'b1']",
    ],
}
EXCEPTION_LINE = re.compile(r"^\w*(Error|Exception)\b.*:", re.MULTILINE)


def notebook_id(path: Path) -> str:
    return path.stem


def execute(path: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        startup_timeout=KERNEL_STARTUP_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    return notebook


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def error_outputs(notebook: nbformat.NotebookNode) -> list[str]:
    """Error outputs and tracebacks written to stderr, with the cell they come from."""
    problems = []
    for number, cell in enumerate(code_cells(notebook), start=1):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                problems.append(f"code cell {number}: {output.ename}: {output.evalue}")
            elif output.output_type == "stream" and output.name == "stderr":
                text = output.text
                if "Traceback" in text or EXCEPTION_LINE.search(text):
                    problems.append(f"code cell {number} wrote to stderr:\n{text}")
    return problems


def mime_types(notebook: nbformat.NotebookNode) -> set[str]:
    found = set()
    for cell in code_cells(notebook):
        for output in cell.get("outputs", []):
            if output.output_type in ("display_data", "execute_result", "update_display_data"):
                found.update(output.data)
    return found


def output_text(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in code_cells(notebook):
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif "data" in output:
                parts.append(output.data.get("text/plain", ""))
    return "\n".join(parts)


def test_the_notebooks_are_found():
    names = {path.name for path in NOTEBOOKS}
    assert {"theory.ipynb", "regularization_dropout.ipynb"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    dirty = [
        number
        for number, cell in enumerate(code_cells(notebook), start=1)
        if cell.get("outputs") or cell.get("execution_count") is not None
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} hold outputs or execution counts; "
        f"clear them before committing (jupyter nbconvert --clear-output "
        f"--inplace {path.relative_to(NOTEBOOKS_DIR.parent)})"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_notebook_runs_cleanly(path):
    notebook = execute(path)

    problems = error_outputs(notebook)
    assert not problems, f"{path.name}:\n" + "\n".join(problems)
    unexecuted = [
        number
        for number, cell in enumerate(code_cells(notebook), start=1)
        if cell.source.strip() and cell.get("execution_count") is None
    ]
    assert not unexecuted, f"{path.name}: code cells {unexecuted} did not run"

    shown = mime_types(notebook)
    expected = EXPECTED_MIME_TYPES.get(path.name)
    if expected is None:
        assert shown - {"text/plain"}, f"{path.name} shows no table, figure or widget"
    else:
        missing = expected - shown
        assert not missing, f"{path.name} showed {sorted(shown)}, not {sorted(missing)}"
    text = output_text(notebook)
    absent = [line for line in EXPECTED_TEXT.get(path.name, []) if line not in text]
    assert not absent, f"{path.name}: the outputs do not show {absent}"
