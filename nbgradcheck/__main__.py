"""Command line: ``python -m nbgradcheck demo``."""

from __future__ import annotations

import argparse
import sys

from nbgradcheck.api.check import check
from nbgradcheck.demo import BUGS, course_network


def run_demo() -> int:
    """Check the course network with two planted backprop bugs, then the fixed one."""
    buggy = course_network(bugs=tuple(BUGS))
    print("A three-layer network (LINEAR→RELU→LINEAR→RELU→LINEAR→SIGMOID) whose backward")
    print(f"pass has two planted bugs: {'; '.join(BUGS.values())}.\n")
    result = check(buggy.loss, buggy.parameters, buggy.gradients)
    print(result)
    fixed = course_network()
    print("\nThe same network with the bugs fixed:\n")
    fixed_result = check(fixed.loss, fixed.parameters, fixed.gradients)
    print(fixed_result)
    found = set(result.failing) == {"W2", "b1"} and fixed_result.passed
    return 0 if found else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nbgradcheck", description="Gradient checking for hand-written backprop."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="check a small network with planted bugs, then fixed")
    arguments = parser.parse_args(argv)
    if arguments.command == "demo":
        return run_demo()
    return 2


if __name__ == "__main__":
    sys.exit(main())
