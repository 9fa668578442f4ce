"""Check every corpus case in every mode and dtype and print how the verdicts fared.

    python -m tests.corpus.run                      # the table and every mismatch
    python -m tests.corpus.run --mode fast --dtype float32 --case relu
    python -m tests.corpus.run --case mlp.dZ1_times_4 --mode full --dtype float64 -v
    python -m tests.corpus.run --case rnn.no_bptt --mode fast --seed 0   # fast mode, repeatable

The table has one row per mode and dtype: cases checked, false alarms (a correct model
not PASSED), bugs named (failing tensors exactly the wrong ones), elements right (flagged
elements exactly the wrong ones, where the case declares them), diagnoses right (kind,
factor and words as expected, nothing contradicting a verdict), wording clean (no line
naming its tensor twice, no round-off floor above 1). Below it: every mismatch with the
command that reproduces it and the report it got, then wording worth a look.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as a script: python tests/corpus/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "tests.corpus"

from .cases import CASES, DTYPES, MODES
from .judge import WORDING_FAULTS, Outcome, judge

EXAMPLES = 4  # wordings shown for each kind of wording issue
COLUMNS = (
    "mode",
    "dtype",
    "cases",
    "false alarms",
    "bugs named",
    "elements right",
    "diagnoses right",
    "wording clean",
)


def table_rows(outcomes: list[Outcome]) -> list[tuple[str, ...]]:
    """One row per (mode, dtype), in the order checked."""
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome.mode, outcome.dtype), []).append(outcome)
    rows = []
    for (mode, dtype), group in groups.items():
        correct = [o for o in group if not o.case.is_bug]
        bugs = [o for o in group if o.case.is_bug]
        declared = [o for o in bugs if o.elements is not None]
        rows.append(
            (
                mode,
                dtype,
                str(len(group)),
                f"{sum(bool(o.false_alarm) for o in correct)}/{len(correct)}",
                f"{sum(bool(o.named) for o in bugs)}/{len(bugs)}",
                f"{sum(bool(o.elements) for o in declared)}/{len(declared)}",
                f"{sum(o.diagnosed for o in group)}/{len(group)}",
                f"{sum(o.wording_clean for o in group)}/{len(group)}",
            )
        )
    return rows


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) for row in rows]
    header = "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))
    return "\n".join([header, "-" * len(header), *lines])


def indented(text: str) -> str:
    return "\n".join("      " + line for line in text.splitlines())


def mismatch_text(outcome: Outcome) -> str:
    where = f"{outcome.case.name} [{outcome.mode}, {outcome.dtype}]"
    faults = [f"wording: {kind}" for kind, _ in outcome.wording if kind in WORDING_FAULTS]
    problems = "".join(f"\n    - {p}" for p in [*outcome.problems, *dict.fromkeys(faults)])
    return f"{where}{problems}\n    $ {outcome.command}\n{indented(outcome.report)}"


def wording_text(outcomes: list[Outcome]) -> list[str]:
    """Each kind of wording issue once, with how many checks showed it and examples."""
    found: dict[str, dict[str, list[str]]] = {}
    for outcome in outcomes:
        for kind, text in outcome.wording:
            where = f"{outcome.case.name} [{outcome.mode}, {outcome.dtype}]"
            found.setdefault(kind, {}).setdefault(text, []).append(where)
    lines = []
    for kind, texts in found.items():
        count = sum(len(w) for w in texts.values())
        lines.append(f"{kind}: {count} times in {len(texts)} wordings, e.g.")
        for text, where in list(texts.items())[:EXAMPLES]:
            lines.append(f"    {text}\n      ({where[0]}{' and others' if len(where) > 1 else ''})")
    return lines


def select(names: list[str] | None) -> list:
    if not names:
        return CASES
    chosen = [c for c in CASES if any(c.name == n or c.name.startswith(n + ".") for n in names)]
    if not chosen:
        raise SystemExit(f"no case matches {names}; cases: {', '.join(c.name for c in CASES)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", action="append", choices=MODES, help="repeatable")
    parser.add_argument("--dtype", action="append", choices=DTYPES, help="repeatable")
    parser.add_argument(
        "--case", action="append", help="a case, or a model and all its bugs; repeatable"
    )
    parser.add_argument(
        "--seed", type=int, help="seed=… for every check (fixes fast mode's directions)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every full report")
    options = parser.parse_args(argv)
    cases = select(options.case)
    outcomes = []
    for mode in options.mode or MODES:
        for dtype in options.dtype or DTYPES:
            for case in cases:
                outcome = judge(case, mode, dtype, options.seed)
                outcomes.append(outcome)
                if options.verbose:
                    print(f"== {case.name} [{mode}, {dtype}]: {case.description}")
                    print(repr(outcome.result) if outcome.result is not None else outcome.report)
                    print()
    print(format_table(table_rows(outcomes)))
    mismatches = [o for o in outcomes if not o.ok]
    print(f"\n{len(mismatches)} mismatches")
    for outcome in mismatches:
        print("\n" + mismatch_text(outcome))
    wording = wording_text(outcomes)
    if wording:
        print("\nWording worth a look")
        print("\n".join(wording))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
