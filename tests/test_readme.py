"""README.md tells the truth: its samples are what the code prints, its snippets run.

* Sample outputs (the blocks after ``<!-- sample: NAME -->``) are compared with what their
  commands print now by ``docs/readme_samples.py --check``; its docstring says what is
  normalised (round-off digits, trailing spaces). ``--write`` refreshes them.
* The snippets run against the demo network: the quick start, ``%gradcheck``, the views of
  a result, PyTorch and JAX, the training-stalls loop, ``find_stalls``. A trailing comment
  that is a Python literal is a claim about the value of its line and is checked:
  ``result.failing  # ['b1', 'W2']``; ``# one of 'a', 'b'`` claims membership.
* The install commands name extras that exist and bring in what the README says; the
  files, notebooks and benchmarks it names exist.

Not run (seconds each on two cores, covered by tests/test_parallel.py): the process-pool
and Dask lines of "In parallel".
"""

from __future__ import annotations

import ast
import importlib.util
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import matplotlib.figure
import numpy as np
import pandas as pd
import pytest
from packaging.requirements import Requirement
from pandas.io.formats.style import Styler

import nbgradcheck as ng
from nbgradcheck.demo import BUGS, backward, course_network, forward

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
README_PATH = ROOT / "README.md"
README = README_PATH.read_text(encoding="utf-8")
SAMPLES_SCRIPT = ROOT / "docs" / "readme_samples.py"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)


def load_samples_module():
    spec = importlib.util.spec_from_file_location("readme_samples", SAMPLES_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


readme_samples = load_samples_module()


# -- the README's code ------------------------------------------------------------------------


def code_blocks(markdown: str) -> list[str]:
    """Fenced blocks and blocks indented by four spaces, dedented."""
    blocks = [fence.group("body") for fence in FENCE.finditer(markdown)]
    outside_fences = FENCE.sub("", markdown)
    indented = re.finditer(r"(?:^\n)((?:^(?: {4}.*)?\n)+)", outside_fences, re.MULTILINE)
    for block in indented:
        lines = block.group(1).rstrip("\n").splitlines()
        if any(line.strip() for line in lines):
            blocks.append("\n".join(line[4:] for line in lines) + "\n")
    return blocks


def snippet(containing: str) -> str:
    """The one code block of the README that contains this text."""
    found = [block for block in code_blocks(README) if containing in block]
    assert len(found) == 1, f"README.md has {len(found)} code blocks containing {containing!r}"
    return found[0]


def trailing_comments(source: str) -> dict[int, str]:
    """Line number -> the comment that ends the line."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {token.start[0]: token.string for token in tokens if token.type == tokenize.COMMENT}


def claim(comment: str) -> tuple[str, object] | None:
    """('equals', value) for ``# <literal>``, ('one of', values) for ``# one of <literals>``."""
    text = comment.lstrip("#").strip()
    kind = "one of" if text.startswith("one of ") else "equals"
    text = text.removeprefix("one of ")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if kind == "one of" and not isinstance(value, tuple):
        value = (value,)
    return kind, value


def run_snippet(source: str, namespace: dict) -> list[str]:
    """Run the statements in order, checking every claim; returns the claims checked."""
    comments = trailing_comments(source)
    checked = []
    for statement in ast.parse(source).body:
        claimed = claim(comments.get(statement.end_lineno, ""))
        if not isinstance(statement, ast.Expr) or claimed is None:
            exec(compile(ast.Module([statement], []), "README.md", "exec"), namespace)
            continue
        value = eval(compile(ast.Expression(statement.value), "README.md", "eval"), namespace)
        line = ast.get_source_segment(source, statement)
        kind, expected = claimed
        holds = value in expected if kind == "one of" else value == expected
        assert holds, f"README.md: `{line}` gives {value!r}, the comment says {kind} {expected!r}"
        checked.append(line)
    return checked


def named_in_comment(source: str, containing: str, after: str = "#") -> list[str]:
    """The comma-separated names in the comment of the line containing this text."""
    line = next(line for line in source.splitlines() if containing in line)
    return [name.strip() for name in line.split(after, 1)[1].split(",")]


def demo_namespace() -> dict:
    """What the quick start presumes: X, Y, parameters, the buggy forward and backward."""
    network = course_network(bugs=tuple(BUGS))
    return {
        "X": network.X,
        "Y": network.Y,
        "parameters": network.parameters,
        "forward_propagation": forward,
        "backward_propagation": lambda X, Y, cache: backward(X, Y, cache, tuple(BUGS)),
    }


@pytest.fixture
def quick_start() -> dict:
    """The namespace after the quick start ran (claims checked)."""
    namespace = demo_namespace()
    claims = run_snippet(snippet("import nbgradcheck as ng"), namespace)
    assert claims == ["result.failing"], claims
    return namespace


# -- samples -------------------------------------------------------------------------------


def test_readme_samples_are_what_the_code_prints():
    completed = subprocess.run(
        [sys.executable, str(SAMPLES_SCRIPT), "--check"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, (
        "README.md's samples differ from what the code prints; if the new output is right, "
        f"run `python docs/readme_samples.py --write`.\n{completed.stdout}{completed.stderr}"
    )


def test_every_sample_block_is_known_and_every_sample_is_shown():
    assert set(readme_samples.sample_blocks(README)) == set(readme_samples.SAMPLES)


def test_write_makes_a_stale_readme_pass_the_check(tmp_path):
    demo = readme_samples.sample_blocks(README)["demo"]
    stale = README[: demo.start("body")] + "stale\n" + README[demo.end("body") :]
    assert readme_samples.differences(stale), "a stale sample must be reported"
    written = tmp_path / "README.md"
    written.write_text(stale, encoding="utf-8")
    assert readme_samples.main(["--write", "--readme", str(written)]) == 0
    assert readme_samples.differences(written.read_text(encoding="utf-8")) == []
    outside = readme_samples.SAMPLE_BLOCK.sub("", written.read_text(encoding="utf-8"))
    assert outside == readme_samples.SAMPLE_BLOCK.sub("", README), "text outside changed"


def test_a_failing_or_changed_command_is_reported():
    with pytest.raises(readme_samples.SampleError, match="exited with 3"):
        readme_samples.Sample(("-c", "import sys; sys.exit(3)")).shown()
    with pytest.raises(readme_samples.SampleError, match="no line starting with 'Then'"):
        readme_samples.Sample(("-c", "print('First')"), shown_until="Then").shown()
    shown = readme_samples.Sample(("-c", "print('A  \\nB\\nThen C')"), shown_until="Then").shown()
    assert shown == "A\nB\n...\n"


@pytest.mark.parametrize(
    ("printed", "elsewhere"),
    [
        ("W1  1.52e-09  1.77e-10  (3, 3)  correct", "W1  1.49e-09  2.01e-10  (1, 2)  correct"),
        ("floor 1.5e-08, b1[2, 0]: 9.9e-10", "floor 1.1e-08, b1[2, 0]: 1.0e-09"),
        ("verdict  diagnosis   ", "verdict  diagnosis"),
    ],
)
def test_round_off_and_trailing_spaces_are_normalised(printed, elsewhere):
    assert readme_samples.normalise(printed) == readme_samples.normalise(elsewhere)


@pytest.mark.parametrize(
    ("printed", "elsewhere"),
    [
        ("global relative difference 1.01e-01", "global relative difference 1.02e-01"),
        ("eps=1e-06, 123 loss evaluations", "eps=1e-06, 122 loss evaluations"),
        ("b1  6.00e-01  3.96e-02  (2, 0)  wrong", "b1  6.00e-01  3.96e-02  (1, 0)  wrong"),
        ("W1  1.52e-09  1.77e-10  (3, 3)  correct", "W1  1.52e-09  1.77e-10  (3, 3)  ok"),
        ("verdict  diagnosis", "verdict   diagnosis"),
        ("W1  1.52e-09", "W1  1.52e-05"),
    ],
)
def test_everything_else_is_compared(printed, elsewhere):
    assert readme_samples.normalise(printed) != readme_samples.normalise(elsewhere)


# -- snippets ------------------------------------------------------------------------------


def test_quick_start_finds_the_planted_bugs(quick_start):
    result = quick_start["result"]
    assert not result.passed
    assert parameters_unchanged(quick_start["parameters"])


def parameters_unchanged(parameters: dict) -> bool:
    original = course_network(bugs=tuple(BUGS)).parameters
    return all(np.array_equal(parameters[name], original[name]) for name in original)


def test_quick_start_element_table_has_the_columns_named(quick_start):
    source = snippet("import nbgradcheck as ng")
    elements = quick_start["result"].elements("W2", sort_by="abs_error")
    assert list(elements.columns) == named_in_comment(source, "result.elements(")
    assert elements["abs_error"].is_monotonic_decreasing


def test_gradcheck_magic_line_runs():
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython() or get_ipython()  # the one test shell: None after the first call
    namespace = demo_namespace()
    _, cache = forward(namespace["X"], namespace["Y"], namespace["parameters"])
    namespace["gradients"] = namespace["backward_propagation"](
        namespace["X"], namespace["Y"], cache
    )
    namespace["forward"] = forward
    shell.push(namespace)
    source = snippet("%gradcheck --wrt parameters --grads gradients")
    outcome = shell.run_cell(source)
    assert outcome.error_in_exec is None, outcome.error_in_exec
    assert outcome.error_before_exec is None, outcome.error_before_exec
    assert sorted(shell.user_ns["_gradcheck"].failing) == ["W2", "b1"]


def test_views_of_a_result_run(quick_start, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = snippet('result.heatmap("W2", scale="signed")')
    run_snippet(source, quick_start)
    saved = ng.GradCheckResult.from_json((tmp_path / "check.json").read_text(encoding="utf-8"))
    assert saved.failing == quick_start["result"].failing
    assert isinstance(quick_start["result"].heatmap("W2", scale="signed"), matplotlib.figure.Figure)
    assert isinstance(quick_start["result"].styled_table(), Styler)


def test_eps_sweep_has_the_steps_the_readme_names(quick_start):
    words = re.search(r"re-checks at (\d+) steps from (\S+) to (\S+?):", README)
    assert words, "README.md no longer says how many steps sweep_eps takes"
    count, smallest, largest = int(words[1]), float(words[2]), float(words[3])
    sweep = quick_start["result"].sweep_eps()
    steps, _ = sweep.curve("central")
    assert (len(steps), steps.min(), steps.max()) == pytest.approx((count, smallest, largest))
    assert isinstance(sweep.plot(), matplotlib.figure.Figure)


def test_pytorch_line_runs():
    import torch

    torch.manual_seed(0)
    namespace = {
        "ng": ng,
        "model": torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)),
        "loss_fn": torch.nn.functional.mse_loss,
        "x": torch.randn(5, 3),
        "y": torch.randn(5, 1),
    }
    line = next(line for line in snippet("nn.Module").splitlines() if "model" in line)
    exec(line, namespace)
    assert namespace["result"].passed, namespace["result"]


def test_jax_line_runs():
    import jax.numpy as jnp

    data = jnp.linspace(-1.0, 1.0, 6).reshape(3, 2)

    def loss_fn(params):
        return jnp.sum(jnp.tanh(data @ params["w"] + params["b"]) ** 2)

    namespace = {
        "ng": ng,
        "loss_fn": loss_fn,
        "params_pytree": {"w": jnp.array([[0.3], [-0.2]]), "b": jnp.array([0.1])},
    }
    line = next(line for line in snippet("nn.Module").splitlines() if "params_pytree" in line)
    exec(line, namespace)
    assert namespace["result"].passed, namespace["result"]


def linear_network_training(epochs: int = 150) -> dict:
    """``epochs``, ``batches`` and ``step``: a deep linear network from a small
    initialisation (a plateau before each drop; tests/training_runs.py explains)."""
    from training_runs import deep_linear_task

    task = deep_linear_task()
    rng = np.random.default_rng(1)
    weights = {"W1": 1e-4 * rng.standard_normal((8, 8)), "W2": 1e-4 * rng.standard_normal((8, 8))}
    batches = [(task.x[:, i : i + 64], task.y[:, i : i + 64]) for i in range(0, 256, 64)]

    def step(x, y):
        hidden = weights["W1"] @ x
        error = weights["W2"] @ hidden - y
        grads = {
            "W1": weights["W2"].T @ error @ x.T / x.shape[1],
            "W2": error @ hidden.T / x.shape[1],
        }
        for name, grad in grads.items():
            weights[name] -= 0.05 * grad
        return 0.5 * np.sum(error**2) / x.shape[1], grads

    return {"epochs": epochs, "batches": batches, "step": step}


def test_training_stalls_loop_runs_and_shows_the_stall():
    from nbgradcheck.training.stalls import VERDICTS

    source = snippet("LossHistory(live=True)")
    namespace = linear_network_training()
    claims = run_snippet(source, namespace)
    assert claims == ['history.stalls.attrs["verdict"]'], claims
    assert named_in_comment(source, "history.stalls", after="one of") == [
        repr(verdict) for verdict in VERDICTS
    ]
    stalls = namespace["history"].stalls
    assert len(stalls) >= 1, "the plateau from the small initialisation is not found"
    columns = named_in_comment(source, "stall table:", after="stall table:")
    assert set(columns) <= set(stalls.columns), f"{columns} not all in {list(stalls.columns)}"


def test_find_stalls_takes_a_list_or_an_array_and_plot_loss_returns_a_figure():
    assert "`find_stalls(losses, epochs=...)` works on any list or array" in README
    epochs = np.repeat(np.arange(60), 4)
    losses = np.where(epochs < 30, 1.0, np.exp(-(epochs - 30) / 5.0)) + 1e-3 * np.cos(epochs)
    from_list = ng.find_stalls(losses.tolist(), epochs=epochs.tolist())
    from_array = ng.find_stalls(losses, epochs=epochs)
    pd.testing.assert_frame_equal(from_list, from_array)
    assert len(from_array) >= 1, "a flat loss for 30 of 60 epochs is a stall"
    assert isinstance(ng.plot_loss(losses, epochs=epochs), matplotlib.figure.Figure)


# -- files named -------------------------------------------------------------------------


def section(title: str) -> str:
    """The text of the README's section with this heading (up to the next ``## ``)."""
    match = re.search(
        rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.MULTILINE | re.DOTALL
    )
    assert match, f"README.md has no section {title!r}"
    return match.group(1)


def test_every_file_path_named_exists():
    named = set(re.findall(r"`([\w.-]+(?:/[\w.-]+)+\.\w+)`", README))
    assert "binder/requirements.txt" in named, named
    # `lab/tree/<path>`: the notebook a Binder launch opens.
    missing = sorted(path for path in named if not (ROOT / path.removeprefix("lab/tree/")).exists())
    assert not missing, f"README.md names files that do not exist: {missing}"


def test_the_notebooks_named_are_the_notebooks():
    named = set(re.findall(r"`(\w+)`", section("Notebooks").split(". They are")[0]))
    assert named == {path.stem for path in (ROOT / "notebooks").glob("*.ipynb")}


def test_the_benchmarks_named_are_the_benchmarks():
    named = set(re.findall(r"`(bench_\w+\.py)`", section("Benchmarks")))
    assert named == {path.name for path in (ROOT / "benchmarks").glob("bench_*.py")}


# -- install commands ----------------------------------------------------------------------


def install_commands() -> str:
    return snippet("python -m nbgradcheck demo")


def extra_requirements(extra: str) -> set[str]:
    return {Requirement(r).name for r in PYPROJECT["project"]["optional-dependencies"][extra]}


def test_install_commands_name_extras_that_exist():
    named = {
        extra.strip()
        for extras in re.findall(r'pip install -e "\.\[([\w,]+)\]"', install_commands())
        for extra in extras.split(",")
    }
    assert {"lab", "test", "torch", "jax"} <= named, named
    assert named <= set(PYPROJECT["project"]["optional-dependencies"]), named


def test_the_jupyter_command_installs_jupyterlab_and_notebook_7():
    commands = install_commands()
    assert 'pip install -e ".[lab]" && jupyter lab notebooks/' in commands
    assert {"jupyterlab", "notebook"} <= extra_requirements("lab")
    # The browser test opens both; CI installs only the test extra.
    assert {"jupyterlab", "notebook", "playwright"} <= extra_requirements("test")
    assert (ROOT / "notebooks" / "quickstart.ipynb").exists()


def test_the_dependencies_named_are_the_dependencies():
    sentence = re.search(r"nbgradcheck itself depends only on (.*?)\.", README, re.DOTALL)
    assert sentence, "README.md no longer lists nbgradcheck's dependencies"
    named = re.split(r",\s*|\s+and\s+", " ".join(sentence[1].split()))
    declared = {Requirement(r).name.lower() for r in PYPROJECT["project"]["dependencies"]}
    assert {name.lower() for name in named} == declared


def test_torch_pins_agree_and_fit_the_torch_extra():
    pins = set(re.findall(r"torch==([\d.]+)", README))
    binder = (ROOT / "binder" / "requirements.txt").read_text(encoding="utf-8")
    pins |= set(re.findall(r"^torch==([\d.]+)", binder, re.MULTILINE))
    assert len(pins) == 1, f"README.md and binder/requirements.txt pin torch to {pins}"
    (torch_extra,) = (
        Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["torch"]
    )
    assert pins.pop() in torch_extra.specifier
