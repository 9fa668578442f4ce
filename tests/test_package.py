"""Packaging promises: a light import, the demo command, the README's commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "jax", "IPython", "ipywidgets", "dask", "keras", "lightning")


def test_import_needs_only_core_dependencies():
    code = (
        "import sys, nbgradcheck; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_demo_command_prints_the_failing_then_passing_tables():
    out = subprocess.run(
        [sys.executable, "-m", "nbgradcheck", "demo"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    failed, fixed = out.stdout.split("The same network with the bugs fixed")
    assert "Gradient check FAILED" in failed and "failing: b1, W2" in failed
    assert re.search(r"^W2 .* wrong\b", failed, re.MULTILINE)
    assert "Gradient check PASSED" in fixed and "wrong" not in fixed


def test_readme_opens_with_the_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^python3 -m venv .*$", readme, re.MULTILINE)[:2]
    assert commands[0].endswith("python -m nbgradcheck demo")
    test_command = commands[1].split("&& ", 2)[2]  # after creating and activating the venv
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_framework_dispatch_sees_user_subclasses_without_importing_frameworks():
    from nbgradcheck.adapters.registry import framework_of

    class FakeModule:  # stands in for a class whose base lives in torch
        pass

    FakeModule.__module__ = "torch.nn.modules.module"

    class UserNet(FakeModule):
        pass

    UserNet.__module__ = "__main__"
    assert framework_of(UserNet()) == "torch"
    assert framework_of({"W1": UserNet()}) == "torch"
    assert framework_of({"W1": [1.0]}) == "numpy"
