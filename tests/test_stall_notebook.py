"""The training-stalls notebook says what its outputs show.

The notebook is executed in memory with nbclient in a real python3 kernel. Every verdict
its prose claims is checked against the verdict the executed output prints: in markdown
an emphasized verdict ("the run *converged*") or a negated one ("not converged"), about
the next code cell; in a comment any verdict word ("stalled, not converged"), about its
own cell. Epochs in the outputs are whole numbers, and the
stall table of the rich display scrolls sideways instead of being cut off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from conftest import executed_notebook

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "training_stalls.ipynb"
WORDS = {
    "converged": "converged",
    "convergence": "converged",
    "stalled": "stalled",
    "diverged": "diverged",
    "divergence": "diverged",
    "improving": "improving",
}
_WORD = "(" + "|".join(WORDS) + ")"
CLAIM = re.compile(r"\b(not\s+(?:a\s+)?)?" + _WORD + r"\b", re.IGNORECASE)
MARKDOWN_CLAIM = re.compile(
    r"(?:\*{1,2}|_)" + _WORD + r"(?:\*{1,2}|_)|\b(not\s+(?:a\s+)?)" + _WORD + r"\b",
    re.IGNORECASE,
)
SHOWN = re.compile(r"verdict: (\w+)|^'(\w+)'$", re.MULTILINE)


@dataclass(frozen=True)
class Claim:
    cell: int  # index of the code cell the claim is about
    verdict: str
    holds: bool  # False for "not converged"
    text: str


def claims_in(text: str, cell: int) -> list[Claim]:
    """Every verdict word of a comment; ``not`` before it claims the opposite."""
    return [
        Claim(cell, WORDS[m.group(2).lower()], m.group(1) is None, m.group(0))
        for m in CLAIM.finditer(text)
    ]


def markdown_claims(text: str, cell: int) -> list[Claim]:
    """Emphasized verdict words, and negated ones, of a markdown cell."""
    claims = []
    for m in MARKDOWN_CLAIM.finditer(text):
        emphasized, negated = m.group(1), m.group(3)
        word = emphasized or negated
        claims.append(Claim(cell, WORDS[word.lower()], negated is None, m.group(0)))
    return claims


def comments(source: str) -> str:
    return "\n".join(line.split("#", 1)[1] for line in source.splitlines() if "#" in line)


def notebook_claims(notebook: nbformat.NotebookNode) -> list[Claim]:
    """Markdown claims about the next code cell; comment claims about their own cell."""
    claims, pending = [], []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "markdown":
            pending.append(cell.source)
        elif cell.cell_type == "code":
            for text in pending:
                claims += markdown_claims(text, index)
            claims += claims_in(comments(cell.source), index)
            pending = []
    return claims


def output_texts(cell: nbformat.NotebookNode) -> list[str]:
    texts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            texts.append(output.text)
        elif "data" in output:
            texts.append(output.data.get("text/plain", ""))
    return texts


def shown_verdicts(cell: nbformat.NotebookNode) -> set[str]:
    found = set()
    for text in output_texts(cell):
        found |= {a or b for a, b in SHOWN.findall(text)}
    return found


def mismatches(notebook: nbformat.NotebookNode) -> list[str]:
    problems = []
    for claim in notebook_claims(notebook):
        shown = shown_verdicts(notebook.cells[claim.cell])
        if not shown:
            problems.append(f"cell {claim.cell}: {claim.text!r} but the output shows no verdict")
        elif (claim.verdict in shown) != claim.holds:
            problems.append(f"cell {claim.cell}: {claim.text!r} but the output says {shown}")
    return problems


@pytest.fixture(scope="module")
def executed() -> nbformat.NotebookNode:
    return executed_notebook(NOTEBOOK)


def test_every_claimed_verdict_is_the_verdict_shown(executed):
    claims = notebook_claims(executed)
    assert {claim.verdict for claim in claims} >= {"converged", "stalled"}
    assert len(claims) >= 5  # the checker reads the prose (it is not vacuously true)
    assert mismatches(executed) == []


def test_the_checker_catches_a_comment_that_contradicts_the_output():
    cell = nbformat.v4.new_code_cell(
        "# the final plateau is a stall, not convergence\nfind_stalls(x).attrs['verdict']"
    )
    cell.outputs = [
        nbformat.v4.new_output("execute_result", {"text/plain": "'converged'"}, execution_count=1)
    ]
    notebook = nbformat.v4.new_notebook(cells=[cell])
    assert mismatches(notebook) == ["cell 0: 'not convergence' but the output says {'converged'}"]


def test_epochs_in_the_outputs_are_whole_numbers(executed):
    text = "\n".join(t for cell in executed.cells for t in output_texts(cell))
    assert re.search(r"from epoch \d+\b", text)
    assert not re.search(r"epochs? \d+\.0\b", text)
    tables = [
        output.data["text/html"]
        for cell in executed.cells
        for output in cell.get("outputs", [])
        if "text/html" in output.get("data", {}) and "<th>start</th>" in output.data["text/html"]
    ]
    assert tables
    for table in tables:
        assert not re.search(r"<td>\d+\.0</td>", table)  # start, end, recovered_at


def test_the_stall_table_of_the_rich_display_scrolls_sideways(executed):
    html = [
        output.data["text/html"]
        for cell in executed.cells
        for output in cell.get("outputs", [])
        if "nbgradcheck-losshistory" in output.get("data", {}).get("text/html", "")
    ]
    assert html
    for page in html:
        assert re.search(
            r'<div [^>]*style="overflow-x:auto"[^>]*>\s*<table[^>]*nbgradcheck-stalls', page
        )
