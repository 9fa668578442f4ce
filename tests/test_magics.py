"""%gradcheck and %%gradcheck in a real IPython shell: styles, display, every user mistake."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import frozen
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython
from IPython.utils.capture import capture_output

import nbgradcheck
from nbgradcheck.api.result import GradCheckResult
from nbgradcheck.demo import backward, course_network, forward
from nbgradcheck.notebook import magics

EXTENSION = "nbgradcheck.notebook.magics"
CHECK = "%gradcheck --wrt parameters --grads gradients forward(X, Y, parameters)"
# A passing check displays quickly (the report draws heatmaps of failing tensors only).
PASSING = "%gradcheck --wrt parameters --grads good_gradients forward(X, Y, parameters)"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def ip():
    shell = start_ipython() or get_ipython()
    shell.run_line_magic("load_ext", EXTENSION)
    yield shell
    shell.run_line_magic("unload_ext", EXTENSION)


@pytest.fixture
def net(ip):
    """The buggy course network (dW2 doubled) in the shell's namespace."""
    network = course_network(bugs=("scale_dW2",))
    _, cache = forward(network.X, network.Y, network.parameters)
    ip.push(
        {
            "np": np,
            "forward": forward,
            "backward": backward,
            "net": network,
            "X": network.X,
            "Y": network.Y,
            "parameters": network.parameters,
            "gradients": backward(network.X, network.Y, cache, ("scale_dW2",)),
            "good_gradients": backward(network.X, network.Y, cache),
        }
    )
    return network


def run(ip, source: str):
    """Run a cell like a user; return (ExecutionResult, captured output)."""
    with capture_output() as captured:
        outcome = ip.run_cell(source)
    return outcome, captured


def usage_message(ip, source: str) -> str:
    outcome, captured = run(ip, source)
    error = outcome.error_in_exec
    assert isinstance(error, UsageError), (source, error, captured.stderr)
    assert "Traceback" not in captured.stderr and "Traceback" not in captured.stdout
    message = str(error)
    assert "\n" not in message
    return message


# -- happy paths ----------------------------------------------------------------------------


def test_dict_style_finds_the_bug_and_leaves_parameters_untouched(ip, net):
    before = frozen(net.parameters)
    result = ip.run_line_magic("gradcheck", "-q " + CHECK.removeprefix("%gradcheck "))
    assert isinstance(result, GradCheckResult)
    assert result.failing == ["W2"]
    assert result.tensor("W2").difference == pytest.approx(1 / 3, rel=1e-6)
    assert ip.user_ns["_gradcheck"] is result
    assert frozen(net.parameters) == before


def test_list_style_and_several_wrt_names(ip):
    rng = np.random.default_rng(0)
    W, b, x = rng.normal(size=(3, 4)), rng.normal(size=3), rng.normal(size=4)
    ip.push(
        {"W": W, "b": b, "x": x, "params": [W, b], "dW": np.outer(np.ones(3), x), "db": np.ones(3)}
    )
    ip.run_cell("def linear(p):\n    return float(np.sum(p[0] @ x + p[1]))")
    before = frozen([W, b])
    listed = ip.run_line_magic("gradcheck", "-q --wrt params --grads [dW,db] linear(params)")
    assert listed.names == ["p0", "p1"] and listed.passed
    named = ip.run_line_magic("gradcheck", "-q --wrt W,b --grads dW,db linear([W, b])")
    assert named.names == ["W", "b"] and named.passed
    assert frozen([W, b]) == before


def test_closure_style_gradient_function(ip, net):
    ip.run_cell("def fresh_gradients(p):\n    return backward(X, Y, forward(X, Y, p)[1])")
    result = ip.run_line_magic(
        "gradcheck", "-q --wrt parameters --grads fresh_gradients forward(X, Y, parameters)"
    )
    assert result.passed
    quoted = ip.run_line_magic(
        "gradcheck",
        "-q --wrt parameters "
        '--grads="lambda: fresh_gradients(parameters)" '
        "forward(X, Y, parameters)",
    )
    assert quoted.passed


def test_attribute_expressions_and_braces_are_taken_verbatim(ip, net):
    result = ip.run_line_magic(
        "gradcheck",
        "-q --wrt net.parameters --grads net.gradients forward(X, Y, {**net.parameters})[0]",
    )
    assert result.failing == ["W2"] and result.names == ["W1", "b1", "W2", "b2", "W3", "b3"]


def test_a_torch_module_needs_no_gradient_option(ip):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)
    ).double()
    ip.push(
        {
            "model": model,
            "torch": torch,
            "xs": torch.randn(5, 3, dtype=torch.float64),
            "ys": torch.randn(5, 1, dtype=torch.float64),
        }
    )
    before = [p.detach().clone() for p in model.parameters()]
    result = ip.run_line_magic(
        "gradcheck", "-q --wrt model torch.nn.functional.mse_loss(model(xs), ys)"
    )
    assert result.passed and result.n_checked == 21  # autograd supplies the gradient
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_cell_magic_takes_several_statements_and_keeps_namespace_clean(ip, net):
    ip.push({"lambd": 0.7})
    cell = (
        "cost, _ = forward(X, Y, parameters)\n"
        "penalty = lambd / 2 * sum(np.sum(W**2) for W in (parameters['W1'],))\n"
        "cost + penalty\n"
    )
    ip.run_cell("reg_grads = dict(gradients, dW1=gradients['dW1'] + lambd * parameters['W1'])")
    before = frozen(net.parameters)
    result = ip.run_cell_magic("gradcheck", "-q --wrt parameters --grads reg_grads", cell)
    assert result.failing == ["W2"]
    assert result.tensor("W1").verdict == "correct"
    assert "penalty" not in ip.user_ns and "cost" not in ip.user_ns
    assert frozen(net.parameters) == before


def test_output_variable_assignment_and_underscore(ip, net):
    outcome, _ = run(ip, CHECK.replace("--wrt", "-q -o stored --wrt"))
    assert outcome.success
    assert isinstance(ip.user_ns["stored"], GradCheckResult)
    assert ip.user_ns["_gradcheck"] is ip.user_ns["stored"]
    outcome, _ = run(ip, "r = " + CHECK.replace("--wrt", "-q --wrt") + "\nverdict = r.verdict")
    assert outcome.success and ip.user_ns["verdict"] == "wrong"
    assert ip.user_ns["r"] is ip.user_ns["_gradcheck"]


def test_sample_implies_sample_mode_and_options_reach_check(ip, net):
    result = ip.run_line_magic(
        "gradcheck",
        "-q --wrt parameters --grads gradients --sample 2 --method forward "
        "--eps 1e-5 --tol 1e-3 --seed 3 forward(X, Y, parameters)",
    )
    assert (result.mode, result.method, result.eps, result.tol) == ("sample", "forward", 1e-5, 1e-3)
    assert result.n_checked == 2 * 5 + 1  # b3 has one element


def test_seed_makes_a_dropout_loss_checkable(ip):
    rng = np.random.default_rng(1)
    w = rng.normal(size=5)
    ip.push({"w": w})
    ip.run_cell(
        "def dropout_loss(w):\n"
        "    mask = np.random.rand(5) > 0.5\n"
        "    return float(np.sum((w * mask) ** 2))"
    )
    ip.run_cell(
        "def dropout_grad():\n    np.random.seed(0)\n    return 2 * w * (np.random.rand(5) > 0.5)"
    )
    assert "random" in usage_message(ip, "%gradcheck --wrt w --grads dropout_grad dropout_loss(w)")
    result = ip.run_line_magic(
        "gradcheck", "-q --wrt w --grads dropout_grad --seed 0 dropout_loss(w)"
    )
    assert result.passed


# -- display --------------------------------------------------------------------------------


def test_result_is_displayed_once_whether_or_not_it_is_assigned(ip, net):
    for source in (PASSING, "r = " + PASSING, PASSING + "\nx = 1"):
        outcome, captured = run(ip, source)
        assert outcome.success
        assert len(captured.outputs) == 1, source
        assert "Gradient check PASSED" in captured.outputs[0].data["text/plain"]
        assert "Gradient check" not in captured.stdout  # not shown again as Out[n]


def test_quiet_and_trailing_semicolon_show_nothing(ip, net):
    for source in (PASSING.replace("--wrt", "--quiet --wrt"), PASSING + ";"):
        outcome, captured = run(ip, source)
        assert outcome.success
        assert captured.outputs == [] and "Gradient check" not in captured.stdout


def test_a_result_shown_later_displays_normally(ip, net):
    run(ip, "r = " + PASSING)
    outcome, captured = run(ip, "r")
    assert outcome.result is ip.user_ns["r"]
    assert "Gradient check PASSED" in captured.stdout


def test_live_kernel_shows_the_inspector_unless_no_widget(ip, net, monkeypatch):
    monkeypatch.setattr(magics, "in_live_kernel", lambda shell: True)
    _, captured = run(ip, PASSING)
    assert [WIDGET_MIME in output.data for output in captured.outputs] == [True]
    assert "Gradient check PASSED" in captured.outputs[0].data["text/plain"]
    _, captured = run(ip, PASSING.replace("--wrt", "--no-widget --wrt"))
    assert [WIDGET_MIME in output.data for output in captured.outputs] == [False]


def test_help_is_argparse_style(ip):
    _, captured = run(ip, "%gradcheck?")
    text = captured.stdout
    assert "usage: gradcheck --wrt NAME[,NAME...]" in text
    for option in (
        "--grads",
        "--eps",
        "--method",
        "--sample",
        "--tol",
        "--seed",
        "-o VAR",
        "--no-widget",
        "--quiet",
        "%%gradcheck",
    ):
        assert option in text


# -- user mistakes: one-line UsageErrors ------------------------------------------------------

MISTAKES = {
    "unknown parameter name": (
        "%gradcheck --wrt params_typo --grads gradients forward(X, Y, parameters)",
        "NameError in --wrt: name 'params_typo' is not defined",
    ),
    "unknown name in the loss": (
        "%gradcheck --wrt parameters --grads gradients forwrd(X, Y, parameters)",
        "NameError in loss expression: name 'forwrd' is not defined",
    ),
    "unknown gradient name": (
        "%gradcheck --wrt parameters --grads grads forward(X, Y, parameters)",
        "NameError in --grads: name 'grads' is not defined",
    ),
    "wrong call in the loss": (
        "%gradcheck --wrt parameters --grads gradients forward(X, Y)",
        "TypeError in loss expression",
    ),
    "syntax error": (
        "%gradcheck --wrt parameters --grads gradients forward(X, Y, parameters",
        "loss expression is not valid Python",
    ),
    "non-scalar loss": (
        "%gradcheck --wrt parameters --grads gradients X @ X.T",
        "the loss returned an array of shape (4, 4)",
    ),
    "NaN loss": (
        "%gradcheck --wrt parameters --grads gradients forward(X, Y, parameters)[0] * np.nan",
        "the loss is nan",
    ),
    "None loss": (
        "%gradcheck --wrt parameters --grads gradients print()",
        "the loss returned None",
    ),
    "missing gradient keys": (
        "%gradcheck --wrt parameters --grads \"{'dW1': gradients['dW1']}\" "
        "forward(X, Y, parameters)",
        "no gradient for b1, W2, b2, W3, b3",
    ),
    "transposed gradient": (
        "%gradcheck --wrt parameters --grads \"{**gradients, 'dW1': gradients['dW1'].T}\" "
        "forward(X, Y, parameters)",
        "looks transposed",
    ),
    "gradient of the wrong type": (
        "%gradcheck --wrt parameters --grads 3 forward(X, Y, parameters)",
        "grads must be a dict too",
    ),
    "no gradient for NumPy parameters": (
        "%gradcheck --wrt parameters forward(X, Y, parameters)",
        "grads is required for NumPy parameters",
    ),
    "parameters that are not arrays": (
        "%gradcheck --wrt Y.ndim --grads gradients forward(X, Y, parameters)",
        "params must be a dict of arrays",
    ),
    "bad method": (
        "%gradcheck --wrt parameters --grads gradients --method fwd forward(X, Y, parameters)",
        "argument --method: invalid choice: 'fwd'",
    ),
    "bad eps": (
        "%gradcheck --wrt parameters --grads gradients --eps -1 forward(X, Y, parameters)",
        "eps must be a positive number or 'auto'",
    ),
    "bad sample": (
        "%gradcheck --wrt parameters --grads gradients --sample 0 forward(X, Y, parameters)",
        "argument --sample: expected a positive integer",
    ),
    "bad tol": (
        "%gradcheck --wrt parameters --grads gradients --tol zero forward(X, Y, parameters)",
        "argument --tol: expected a positive number",
    ),
    "sample with full mode": (
        "%gradcheck --wrt parameters --grads gradients --mode full --sample 3 "
        "forward(X, Y, parameters)",
        "needs mode='sample'",
    ),
    "unknown option": (
        "%gradcheck --wrt parameters --grads gradients --verbose forward(X, Y, parameters)",
        "unrecognized option --verbose",
    ),
    "missing --wrt": (
        "%gradcheck --grads gradients forward(X, Y, parameters)",
        "the following arguments are required: --wrt",
    ),
    "options after the expression": (
        "%gradcheck forward(X, Y, parameters) --wrt parameters --grads gradients",
        "required: --wrt (options go before the loss expression)",
    ),
    "missing expression": (
        "%gradcheck --wrt parameters --grads gradients",
        "give the expression that computes the loss",
    ),
    "empty --wrt name": (
        "%gradcheck --wrt W1,,b1 --grads gradients forward(X, Y, parameters)",
        "--wrt has an empty name",
    ),
    "repeated --wrt name": (
        "%gradcheck --wrt X,X --grads gradients forward(X, Y, parameters)",
        "--wrt names a parameter twice",
    ),
    "bad output variable": (
        "%gradcheck -o 2r --wrt parameters --grads gradients forward(X, Y, parameters)",
        "-o needs a variable name, not '2r'",
    ),
    "complex step on a closure": (
        "%gradcheck --wrt parameters --grads gradients --method complex forward(X, Y, parameters)",
        "method='complex' needs a loss that takes the parameters",
    ),
    "loss that updates the parameters": (
        "%gradcheck --wrt parameters --grads gradients "
        "(parameters['b3'].__iadd__(1e-3), forward(X, Y, parameters)[0])[1]",
        "the loss changed b3 in place",
    ),
    "cell magic with an expression on the line": (
        "%%gradcheck --wrt parameters --grads gradients forward(X, Y, parameters)\n"
        "forward(X, Y, parameters)",
        "leave EXPR off the %%gradcheck line",
    ),
    "cell magic ending in a statement": (
        "%%gradcheck --wrt parameters --grads gradients\ncost, _ = forward(X, Y, parameters)",
        "the last line of the cell must be an expression",
    ),
    "cell magic with a syntax error": (
        "%%gradcheck --wrt parameters --grads gradients\ncost = forward(X, Y,\ncost",
        "the cell is not valid Python (line 1)",
    ),
    "cell magic with a name error": (
        "%%gradcheck --wrt parameters --grads gradients\ncost = forwrd(X, Y, parameters)\ncost",
        "NameError in cell: name 'forwrd' is not defined",
    ),
}


@pytest.mark.parametrize("source, expected", MISTAKES.values(), ids=MISTAKES.keys())
def test_user_mistakes_are_one_line_usage_errors(ip, net, source, expected):
    before = frozen(net.parameters)
    message = usage_message(ip, source)
    assert expected in message
    assert frozen(net.parameters) == before


def test_a_bug_inside_a_user_function_keeps_its_traceback(ip, net):
    ip.run_cell("def broken_forward(p):\n    raise RuntimeError('boom')")
    before = frozen(net.parameters)
    outcome, captured = run(
        ip, "%gradcheck --wrt parameters --grads gradients broken_forward(parameters)"
    )
    assert isinstance(outcome.error_in_exec, RuntimeError)
    assert "broken_forward" in captured.stdout + captured.stderr
    assert frozen(net.parameters) == before


def test_ctrl_c_shows_the_partial_result_and_restores_parameters(ip, net):
    ip.push({"calls": [0]})
    ip.run_cell(
        "def interrupted(p):\n"
        "    calls[0] += 1\n"
        "    if calls[0] == 40:\n"
        "        raise KeyboardInterrupt\n"
        "    return forward(X, Y, p)[0]"
    )
    before = frozen(net.parameters)
    with pytest.warns(RuntimeWarning, match="INCOMPLETE"):
        outcome, captured = run(
            ip, "r = %gradcheck --wrt parameters --grads gradients interrupted(parameters)"
        )
    result = ip.user_ns["r"]
    assert outcome.success and not result.complete
    assert 0 < result.n_checked < result.n_parameters
    assert "INCOMPLETE" in captured.outputs[0].data["text/plain"]
    assert frozen(net.parameters) == before


# -- option parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, words, expression",
    [
        ("--wrt p --grads g f(X, Y,  p)", ["--wrt", "p", "--grads", "g"], "f(X, Y,  p)"),
        (
            '--grads "backward(X, Y, c)" --wrt p f(d["a b"])',
            ["--grads", "backward(X, Y, c)", "--wrt", "p"],
            'f(d["a b"])',
        ),
        ("--grads='g(1, 2)' -q -o res loss()", ["--grads=g(1, 2)", "-q", "-o", "res"], "loss()"),
        ("-ores --wrt p -- -loss(p)", ["-ores", "--wrt", "p"], "-loss(p)"),
        ("--wrt p --grads d['x'] -loss(p)", ["--wrt", "p", "--grads", "d['x']"], "-loss(p)"),
        ("--quiet", ["--quiet"], ""),
    ],
)
def test_options_are_split_from_the_verbatim_expression(line, words, expression):
    parser = magics.GradCheckMagics.gradcheck.parser
    assert magics.split_options(line, parser) == (words, expression)


# -- loading --------------------------------------------------------------------------------


def test_unload_removes_the_magics_and_hooks_and_load_ext_nbgradcheck_works(ip, monkeypatch):
    callbacks = len(ip.events.callbacks["post_run_cell"])
    ip.run_line_magic("unload_ext", EXTENSION)
    assert ip.find_line_magic("gradcheck") is None and ip.find_cell_magic("gradcheck") is None
    assert "GradCheckMagics" not in ip.magics_manager.registry
    assert len(ip.events.callbacks["post_run_cell"]) == callbacks - 1
    assert "not found" in usage_message(ip, "%gradcheck --wrt p x")
    # `%load_ext nbgradcheck` once the package re-exports the hooks
    monkeypatch.setattr(
        nbgradcheck, "load_ipython_extension", magics.load_ipython_extension, raising=False
    )
    monkeypatch.setattr(
        nbgradcheck, "unload_ipython_extension", magics.unload_ipython_extension, raising=False
    )
    ip.run_line_magic("load_ext", "nbgradcheck")
    assert ip.find_line_magic("gradcheck") is not None
    ip.run_line_magic("unload_ext", "nbgradcheck")
    assert ip.find_line_magic("gradcheck") is None
    ip.run_line_magic("load_ext", EXTENSION)
    ip.run_line_magic("load_ext", EXTENSION)  # "already loaded": no second registration
    magics.load_ipython_extension(ip)  # a direct second call replaces the first
    assert len(ip.events.callbacks["post_run_cell"]) == callbacks
    assert ip.find_cell_magic("gradcheck").__self__ is ip.magics_manager.registry["GradCheckMagics"]


# -- the quick-start notebook ---------------------------------------------------------------

QUICKSTART = Path(__file__).parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs_in_a_kernel_and_shows_the_inspector():
    import nbclient
    import nbformat

    notebook = nbformat.read(QUICKSTART, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    nbclient.NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(QUICKSTART.parent)}},
    ).execute()
    outputs = {
        cell.source.splitlines()[0]: cell.outputs
        for cell in notebook.cells
        if cell.cell_type == "code"
    }
    (shown,) = outputs[CHECK]  # once: no second copy as Out[n]
    assert WIDGET_MIME in shown["data"] and "FAILED" in shown["data"]["text/plain"]
    assert "(['b1', 'W2'], 0.33" in outputs["result = _gradcheck"][0]["data"]["text/plain"]
    assert WIDGET_MIME in outputs["result.inspect()"][0]["data"]
    fixed = outputs["gradients = backward(X, Y, cache)"]
    assert fixed[-1]["data"]["text/plain"] == "True"
    assert (
        "PASSED"
        in outputs[next(k for k in outputs if k.startswith("%%gradcheck"))][0]["data"]["text/plain"]
    )


# -- the magic checks exactly as check() does -------------------------------------------------


@pytest.fixture
def large_problem(ip):
    """12,000 elements (more than auto mode checks one by one) with one wrong gradient."""
    rng = np.random.default_rng(4)
    big = {"W": rng.normal(size=(100, 100)), "b": rng.normal(size=2000)}
    scale = {name: rng.uniform(0.5, 2.0, size=value.shape) for name, value in big.items()}
    gradient = {f"d{name}": scale[name] * value for name, value in big.items()}
    gradient["dW"][3, 7] *= 1.5  # the bug

    def quadratic(p):
        return float(sum(0.5 * np.sum(scale[k] * p[k] ** 2) for k in p))

    ip.push({"big": big, "big_grads": gradient, "quadratic": quadratic})
    return quadratic, big, gradient


def same_result(a: GradCheckResult, b: GradCheckResult) -> None:
    assert (a.mode, a.method, a.eps, a.tol) == (b.mode, b.method, b.eps, b.tol)
    assert (a.passed, a.failing, a.names) == (b.passed, b.failing, b.names)
    assert [t.verdict for t in a.tensors] == [t.verdict for t in b.tensors]
    options = ("eps", "method", "mode", "sample", "tol", "seed", "progress", "executor", "n_jobs")
    assert {k: a.rerun[k] for k in options} == {k: b.rerun[k] for k in options}


@pytest.mark.parametrize("seed", [None, 0])
def test_magic_checks_as_check_does_with_its_defaults(ip, large_problem, seed):
    loss, params, grads = large_problem
    option = "" if seed is None else f"--seed {seed} "
    typed = {} if seed is None else {"seed": seed}
    direct = nbgradcheck.check(loss, params, grads, progress=False, **typed)
    magic = ip.run_line_magic("gradcheck", f"-q {option}--wrt big --grads big_grads quadratic(big)")
    assert direct.mode == magic.mode == "fast"  # auto chose fast for both
    same_result(magic, direct)
    assert magic.failing == ["W"]
    if seed is not None:  # the same random directions: the same numbers
        assert magic.n_evaluations == direct.n_evaluations
        assert magic.tensor("W").difference == direct.tensor("W").difference


def test_only_the_options_typed_reach_check(ip, large_problem):
    parser = magics.GradCheckMagics.gradcheck.parser
    nothing = parser.parse_args(["--wrt", "p"])
    assert magics.typed_check_options(nothing) == {}
    typed = parser.parse_args(["--wrt", "p", "--sample", "3", "--tol", "1e-3", "--seed", "0"])
    assert magics.typed_check_options(typed) == {
        "mode": "sample",
        "sample": 3,
        "tol": 1e-3,
        "seed": 0,
    }
    line = "-q --mode full --wrt big --grads big_grads quadratic(big)"
    full = ip.run_line_magic("gradcheck", line)
    assert full.mode == "full" and full.n_checked == 12_000 and full.failing == ["W"]


@pytest.mark.parametrize(
    "seed, message",
    [
        ("-1", "argument --seed: expected an integer from 0 to 4294967295, not '-1'"),
        ("4294967296", "not '4294967296'"),
        ("1.5", "not '1.5'"),
        ("abc", "not 'abc'"),
    ],
)
def test_bad_seeds_are_one_line_usage_errors(ip, net, seed, message):
    source = f"%gradcheck --seed {seed} {CHECK.removeprefix('%gradcheck ')}"
    assert message in usage_message(ip, source)


@pytest.mark.parametrize(
    "options, message",
    [
        ("--mode fast --method complex", "mode='fast' needs real steps"),
        ("--mode fast --sample 3", "sample=3 needs mode='sample'"),
    ],
)
def test_errors_check_raises_are_one_line_usage_errors(ip, net, options, message):
    source = f"%gradcheck {options} {CHECK.removeprefix('%gradcheck ')}"
    assert message in usage_message(ip, source)
