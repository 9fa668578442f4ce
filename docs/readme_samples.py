"""The README's sample outputs, produced by the code that prints them.

README.md marks each sample with a comment on the line above its fenced block::

    <!-- sample: demo -->
    ```text
    ...what `python -m nbgradcheck demo` prints...
    ```

:data:`SAMPLES` says what each named sample runs and which part of its output is shown.

    python docs/readme_samples.py --write   # rewrite README.md's samples from the code
    python docs/readme_samples.py --check   # list where they differ; exit status 1 if any

``--check`` compares the README with the output after normalising both, the same way on
every machine, so it reports the same differences everywhere:

* Round-off is masked: a number in scientific notation below 1e-6 in magnitude (the
  difference of a correct tensor, its largest error, its round-off floor) becomes
  ``#.##e-##``, since its digits depend on the BLAS, the CPU's fused multiply-adds and
  NumPy's summation order. So does an element index right after a masked number (the
  ``worst_index`` after ``max_abs_error``): where the largest round-off error lies is
  round-off too. The widths stay, so the columns of a table are still compared.
* Spaces at the end of a line are dropped (pandas pads the last column; editors strip them),
  by ``--write`` too.

Everything else must match exactly: counts, verdicts, diagnoses, the numbers that measure a
bug (1.01e-01), the column layout.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ROUND_OFF = 1e-6
CUT_MARK = "..."

SAMPLE_BLOCK = re.compile(
    r"^<!-- sample: (?P<name>[\w-]+) -->\n```[^\n]*\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
# A number in scientific notation, and the element index that may follow it.
NUMBER = re.compile(
    r"(?<![\w.])(?P<number>[-+]?\d+(?:\.\d+)?e[-+]?\d+)(?![\w.])"
    r"(?P<index>\s+[(\[]\d+(?:,\s*\d+)*,?[)\]])?"
)


class SampleError(RuntimeError):
    """A sample's command failed, or its output lacks what the README shows of it."""


@dataclass(frozen=True)
class Sample:
    """A command whose output the README shows.

    Args:
        arguments: what follows ``python`` on the command line (run with this interpreter).
        shown_until: the README shows the output up to the first line starting with this
            text, then a line ``...``; None shows all of it.
    """

    arguments: tuple[str, ...]
    shown_until: str | None = None

    @property
    def command(self) -> str:
        return " ".join(("python", *self.arguments))

    def output(self) -> str:
        """What the command prints (stdout), in the environment every machine gives it."""
        environment = {**os.environ, "PYTHONIOENCODING": "utf-8", "MPLBACKEND": "Agg"}
        completed = subprocess.run(
            [sys.executable, *self.arguments],
            capture_output=True,
            cwd=ROOT,
            env=environment,
            timeout=300,
            check=False,
        )
        if completed.returncode != 0:
            raise SampleError(
                f"`{self.command}` exited with {completed.returncode}:\n"
                + completed.stderr.decode("utf-8", "replace")
            )
        return completed.stdout.decode("utf-8")

    def shown(self) -> str:
        """The part of the output the README shows, without trailing spaces."""
        lines = [line.rstrip() for line in self.output().splitlines()]
        if self.shown_until is not None:
            cut = next(
                (i for i, line in enumerate(lines) if line.startswith(self.shown_until)), None
            )
            if cut is None:
                raise SampleError(
                    f"`{self.command}` printed no line starting with {self.shown_until!r}; "
                    f"update SAMPLES in {Path(__file__).name}"
                )
            lines = [*lines[:cut], CUT_MARK]
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines) + "\n"


SAMPLES = {
    # The check of the buggy network; the check of the fixed one follows in the output.
    "demo": Sample(("-m", "nbgradcheck", "demo"), shown_until="The same network with the bugs"),
}


def _mask_round_off(match: re.Match[str]) -> str:
    """``#.##e-##`` (index digits too) for round-off, else the text unchanged."""
    if abs(float(match.group("number"))) < ROUND_OFF:
        return re.sub(r"\d", "#", match.group(0))
    return match.group(0)


def normalise(text: str) -> str:
    """The text with round-off masked and trailing spaces dropped (see the module docstring)."""
    return "\n".join(NUMBER.sub(_mask_round_off, line.rstrip()) for line in text.splitlines())


def sample_blocks(readme: str) -> dict[str, re.Match[str]]:
    """The README's sample blocks by name."""
    blocks: dict[str, re.Match[str]] = {}
    for block in SAMPLE_BLOCK.finditer(readme):
        name = block.group("name")
        if name not in SAMPLES:
            raise SampleError(f"README.md has a sample {name!r}, which SAMPLES does not define")
        if name in blocks:
            raise SampleError(f"README.md has the sample {name!r} twice")
        blocks[name] = block
    return blocks


def differences(readme: str) -> list[str]:
    """One report per sample that differs from what its command prints now (normalised)."""
    blocks = sample_blocks(readme)
    reports = []
    for name, sample in SAMPLES.items():
        if name not in blocks:
            reports.append(f"README.md has no sample block `<!-- sample: {name} -->`")
            continue
        expected, shown = normalise(sample.shown()), normalise(blocks[name].group("body"))
        if expected != shown:
            diff = difflib.unified_diff(
                shown.splitlines(),
                expected.splitlines(),
                f"README.md, sample {name!r}",
                f"what `{sample.command}` prints",
                lineterm="",
            )
            reports.append("\n".join(diff))
    return reports


def rewrite(readme: str) -> str:
    """The README with every sample block replaced by what its command prints now."""
    blocks = sample_blocks(readme)
    missing = sorted(set(SAMPLES) - set(blocks))
    if missing:
        raise SampleError(f"README.md has no sample block for {missing}")
    parts, end = [], 0
    for block in sorted(blocks.values(), key=lambda block: block.start("body")):
        parts += [readme[end : block.start("body")], SAMPLES[block.group("name")].shown()]
        end = block.end("body")
    return "".join([*parts, readme[end:]])


def write(path: Path, readme: str) -> int:
    updated = rewrite(readme)
    path.write_text(updated, encoding="utf-8")
    print(f"{path}: {'samples rewritten' if updated != readme else 'unchanged'}")
    return 0


def check(readme: str) -> int:
    reports = differences(readme)
    for report in reports:
        print(report, end="\n\n")
    if reports:
        print(f"{len(reports)} sample(s) differ: python docs/readme_samples.py --write")
        return 1
    print(f"the samples match what the code prints ({', '.join(SAMPLES)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="report differences (exit 1)")
    action.add_argument("--write", action="store_true", help="rewrite the sample blocks")
    parser.add_argument("--readme", type=Path, default=README, help="default: README.md")
    arguments = parser.parse_args(argv)
    readme = arguments.readme.read_text(encoding="utf-8")
    try:
        return write(arguments.readme, readme) if arguments.write else check(readme)
    except SampleError as error:
        print(f"readme_samples: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
