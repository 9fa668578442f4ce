"""IPython magics: ``%gradcheck`` / ``%%gradcheck``, and the extension hooks.

A thin layer over :func:`nbgradcheck.check`: parse the options, evaluate the user's
names and expressions in the notebook namespace, call ``check`` with exactly the options
the user typed (so the magic checks as ``check()`` would, with its defaults), show the
result. Mistakes in what the user typed become one-line :class:`UsageError`\\ s.

More magics slot in as further methods of :class:`GradCheckMagics` (or further classes
in :data:`MAGIC_CLASSES`, which the extension hooks register and remove), reusing
:func:`parse_magic_line`, :class:`UserNamespace` and :func:`mistakes_as_usage_errors`.
"""

from __future__ import annotations

import argparse
import ast
import functools
import keyword
import re
from collections.abc import Callable
from types import CodeType
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import (
    Magics,
    line_cell_magic,
    line_magic,
    magics_class,
    no_var_expand,
)
from IPython.core.magic_arguments import argument, kwds, magic_arguments
from IPython.display import display

from nbgradcheck.api.check import check
from nbgradcheck.api.result import GradCheckResult
from nbgradcheck.core.plan import MODES
from nbgradcheck.core.schemes import METHODS
from nbgradcheck.errors import GradCheckError

# Code compiled from what the user typed gets a filename with this prefix, so an error
# raised by that code itself (not by a function it calls) can be told apart.
USER_CODE_PREFIX = "<gradcheck "
RESULT_VARIABLE = "_gradcheck"
# One shell word: unquoted characters and quoted runs, as in `--grads="f(X, Y)"`.
WORD = re.compile(r"""\s*((?:[^\s'"]|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")+)""")
OPTION_LIKE = re.compile(r"--?[A-Za-z][\w-]*(=.*)?$", re.DOTALL)


# -- arguments ------------------------------------------------------------------------------


def eps_value(text: str) -> float | str:
    """``--eps``: a positive number or 'auto'."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"eps must be a positive number or 'auto', not {text!r}")
    return value


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return int(text)


SEED_LIMIT = 2**32  # NumPy's global RNG takes seeds in [0, 2**32)


def seed_value(text: str) -> int:
    """``--seed``: an integer NumPy's global RNG accepts."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(
            f"expected an integer from 0 to {SEED_LIMIT - 1}, not {text!r}"
        )
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}")
    return value


def unquoted(value: str) -> str:
    """An option value without the quotes that protected its spaces: "f(X, Y)" → f(X, Y)."""
    if len(value) >= 2 and value[0] in "'\"":
        try:
            literal = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        if isinstance(literal, str):
            return literal
    return value


def split_options(line: str, parser: argparse.ArgumentParser) -> tuple[list[str], str]:
    """Split a magic line into option words and the expression that follows them, verbatim.

    Options come first; the expression starts at the first word that is not an option
    or an option's value (or after ``--``), and is kept exactly as typed (quotes, spaces).
    """
    takes_value = {
        option: action.nargs != 0 for action in parser._actions for option in action.option_strings
    }
    words: list[str] = []
    position, expects_value = 0, False
    while match := WORD.match(line, position):
        word = match.group(1)
        if expects_value:
            words.append(unquoted(word))
            expects_value = False
        elif word == "--":
            return words, line[match.end() :].strip()
        elif OPTION_LIKE.match(word):
            name, has_equals, value = word.partition("=")
            attached = name not in takes_value and name[:2] in takes_value and name[1] != "-"
            if name not in takes_value and not attached:
                raise UsageError(
                    f"unrecognized option {name} (see %{parser.prog}?); put -- "
                    f"before an expression that starts with '-'"
                )
            words.append(f"{name}={unquoted(value)}" if has_equals else word)
            expects_value = takes_value.get(name, False) and not has_equals and not attached
        else:
            return words, line[match.start(1) :].strip()
        position = match.end()
    return words, ""


def parse_magic_line(magic: Callable[..., Any], line: str) -> tuple[argparse.Namespace, str]:
    """The parsed options of ``magic`` (argparse errors are UsageErrors) and the expression."""
    parser = magic.parser
    words, expression = split_options(line, parser)
    try:
        arguments = parser.parse_args(words)
    except UsageError as error:
        if re.search(r"\s--?[A-Za-z]", " " + expression):
            raise UsageError(f"{error} (options go before the loss expression)") from None
        raise
    return arguments, expression


# -- evaluating what the user typed ---------------------------------------------------------


def compile_user_code(source: str, what: str, mode: str = "eval") -> CodeType:
    """Compile ``source``; a syntax error becomes a one-line UsageError naming ``what``."""
    try:
        return compile(source, f"{USER_CODE_PREFIX}{what}>", mode)
    except SyntaxError as error:
        if mode == "exec":
            raise UsageError(
                f"the {what} is not valid Python (line {error.lineno}): {error.msg}"
            ) from None
        raise UsageError(f"{what} is not valid Python: {error.msg}: {source!r}") from None


def raised_by_user_code(error: BaseException) -> str | None:
    """The name of the user code that raised ``error`` itself (not a function it called)."""
    traceback = error.__traceback__
    if traceback is None:
        return None
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    filename = traceback.tb_frame.f_code.co_filename
    if not filename.startswith(USER_CODE_PREFIX):
        return None
    return filename[len(USER_CODE_PREFIX) : -1]


def one_line(message: str) -> str:
    return " ".join(message.split())


def usage_error(error: BaseException) -> UsageError | None:
    """The one-line UsageError for a user mistake; None for a bug in the user's functions."""
    if isinstance(error, GradCheckError):
        return UsageError(one_line(str(error)))
    if isinstance(error, Exception) and (where := raised_by_user_code(error)):
        return UsageError(one_line(f"{type(error).__name__} in {where}: {error}"))
    return None


def mistakes_as_usage_errors(magic: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a magic so that the user's mistakes are one-line UsageErrors."""

    @functools.wraps(magic)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return magic(*args, **kwargs)
        except Exception as error:
            converted = usage_error(error)
            if converted is None:
                raise
            raise converted from None

    return guarded


class UserNamespace:
    """Evaluates the user's expressions and cells in the notebook's namespace."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell

    def evaluate(self, source: str, what: str) -> Any:
        """The value of ``source`` now (``what`` names it in error messages)."""
        return eval(compile_user_code(source, what), self.shell.user_global_ns, self.shell.user_ns)

    def expression_function(self, source: str, what: str) -> Callable[[], Any]:
        """A zero-argument function evaluating ``source`` afresh on every call."""
        code = compile_user_code(source, what)
        global_ns, local_ns = self.shell.user_global_ns, self.shell.user_ns
        return lambda: eval(code, global_ns, local_ns)

    def cell_function(self, cell: str, what: str) -> Callable[[], Any]:
        """A zero-argument function running ``cell`` and returning its last expression.

        Every call runs in a fresh copy of the namespace, so the cell's assignments (made
        at perturbed parameters) do not leak into the notebook.
        """
        source = self.shell.transform_cell(cell)
        compile_user_code(source, what, "exec")
        tree = ast.parse(source)
        if not tree.body or not isinstance(tree.body[-1], ast.Expr):
            raise UsageError(f"the last line of the {what} must be an expression: the loss")
        body = ast.Module(body=tree.body[:-1], type_ignores=[])
        statements = compile(body, f"{USER_CODE_PREFIX}{what}>", "exec")
        last = compile(ast.Expression(tree.body[-1].value), f"{USER_CODE_PREFIX}{what}>", "eval")
        user_ns = self.shell.user_ns

        def run_cell() -> Any:
            namespace = dict(user_ns)
            exec(statements, namespace)
            return eval(last, namespace)

        return run_cell

    def store(self, name: str, value: Any) -> None:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise UsageError(f"-o needs a variable name, not {name!r}")
        self.shell.user_ns[name] = value


# -- showing results ------------------------------------------------------------------------


def in_live_kernel(shell: Any) -> bool:
    """True inside a Jupyter kernel (where widgets can render), False in a terminal."""
    return getattr(shell, "kernel", None) is not None


class ShownOnce:
    """Keeps a result the magic already displayed from being displayed again as Out[n].

    ``%gradcheck`` displays its result itself (so ``r = %gradcheck ...`` shows it too)
    and also returns it; when the magic is the cell's last line IPython would display the
    returned value a second time. Until the cell ends, a display printer for
    GradCheckResult skips that one object and displays any other result as usual.
    """

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.shown: Any = None
        self.previous_printer: Callable | None = None
        self.registered = False

    @property
    def formatter(self) -> Any:
        return self.shell.display_formatter.ipython_display_formatter

    def show(self, result: GradCheckResult, view: Any) -> None:
        """Display ``view`` (None: nothing) and mark ``result`` as shown for this cell."""
        if view is not None:
            display(view)
        self.shown = result
        if not self.registered:
            self.previous_printer = self.formatter.for_type(GradCheckResult, self.skip_shown)
            self.registered = True

    def skip_shown(self, obj: Any) -> None:
        if obj is self.shown:
            return
        shown = self.shown
        self.forget()
        try:
            display(obj)
        finally:
            self.show(shown, None)

    def forget(self, *_event: Any) -> None:
        """Called when a cell starts and ends: display results normally again."""
        self.shown = None
        if not self.registered:
            return
        self.formatter.pop(GradCheckResult, None)
        if self.previous_printer is not None:
            self.formatter.for_type(GradCheckResult, self.previous_printer)
        self.registered = False

    def connect(self) -> None:
        for event in ("pre_run_cell", "post_run_cell"):
            self.shell.events.register(event, self.forget)

    def disconnect(self) -> None:
        self.forget()
        for event in ("pre_run_cell", "post_run_cell"):
            if self.forget in self.shell.events.callbacks[event]:
                self.shell.events.unregister(event, self.forget)


def result_view(result: GradCheckResult, shell: Any, widget: bool) -> Any:
    """The inspector widget in a live kernel (when ``widget``), else the result itself."""
    if widget and in_live_kernel(shell):
        from nbgradcheck.views.inspector import inspect

        return inspect(result)
    return result


# -- the magics -----------------------------------------------------------------------------

GRADCHECK_HELP = """\
Check the analytic gradient of a loss computed in the notebook's namespace.

The loss expression (or, for %%gradcheck, the cell body) is evaluated again after each
in-place perturbation of the --wrt arrays, which are restored bit for bit afterwards.
The result is returned (r = %gradcheck ...), stored as _gradcheck and displayed: the
inspector widget in a live kernel, the static report elsewhere.

Examples:
  %gradcheck --wrt parameters --grads gradients forward(X, Y, parameters)
  %gradcheck --wrt W1,b1 --grads dW1,db1 --sample 5 -o check loss(X, Y)
  %gradcheck --wrt theta --grads "lambda: grad(theta, X)" cost(theta, X)

  %%gradcheck --wrt parameters --grads grads
  cost, _ = forward(X, Y, parameters)
  cost + lambd / (2 * m) * sum(np.sum(W**2) for W in weights)
"""


@magics_class
class GradCheckMagics(Magics):
    """nbgradcheck's magics; ``%load_ext nbgradcheck`` registers them."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.namespace = UserNamespace(shell)
        self.shown_once = ShownOnce(shell)

    @no_var_expand
    @magic_arguments()
    @kwds(formatter_class=argparse.RawDescriptionHelpFormatter, description=GRADCHECK_HELP)
    @argument(
        "--wrt",
        metavar="NAME[,NAME...]",
        required=True,
        help="the parameters: a dict or list of arrays, one array, or a torch "
        "module; several names make a dict {NAME: array}",
    )
    @argument(
        "--grads",
        metavar="NAME|EXPR",
        help="the analytic gradient (same structure as --wrt, dict keys W1 or dW1), "
        "or a function returning it; quote an EXPR that contains spaces; leave "
        "it out for torch parameters to use autograd",
    )
    @argument("--eps", type=eps_value, metavar="EPS|auto", help="step size (default: as check())")
    @argument("--method", choices=METHODS, help="finite differences (default: as check())")
    @argument(
        "--mode",
        choices=MODES,
        help="which elements: auto (default, as check()), full, sample or fast",
    )
    @argument(
        "--sample",
        type=positive_int,
        metavar="N",
        help="check N elements of every tensor (implies --mode sample)",
    )
    @argument("--tol", type=positive_float, help="largest passing difference (default: as check())")
    @argument("--seed", type=seed_value, help="re-seed the RNGs before every evaluation (dropout)")
    @argument("-o", "--output", metavar="VAR", help="also store the result in VAR")
    @argument(
        "--no-widget", action="store_true", help="show the static report, not the inspector widget"
    )
    @argument(
        "-q",
        "--quiet",
        action="store_true",
        help="show nothing (no report, no progress bar); a trailing ; does the same",
    )
    @argument(
        "expression",
        nargs="*",
        metavar="EXPR",
        help="computes the loss (a tuple's first element is the loss); with "
        "%%%%gradcheck the cell body computes it instead. Options come first; "
        "put -- before an EXPR that starts with '-'",
    )
    @line_cell_magic
    @mistakes_as_usage_errors
    def gradcheck(self, line: str, cell: str | None = None) -> GradCheckResult:
        """%gradcheck / %%gradcheck: see GRADCHECK_HELP (shown by %gradcheck?)."""
        line, silenced = strip_semicolon(line)
        options, expression = parse_magic_line(self.gradcheck, line)
        loss = self.loss_function(expression, cell)
        names = [name.strip() for name in options.wrt.split(",")]
        params = self.parameters(names)
        grads = self.gradients(options.grads, names)
        quiet = options.quiet or silenced
        typed = typed_check_options(options)
        if quiet:
            typed["progress"] = False
        result = check(loss, params, grads, **typed)
        self.shell.user_ns[RESULT_VARIABLE] = result
        if options.output:
            self.namespace.store(options.output, result)
        view = None if quiet else result_view(result, self.shell, not options.no_widget)
        self.shown_once.show(result, view)
        return result

    def loss_function(self, expression: str, cell: str | None) -> Callable[[], Any]:
        if cell is not None and expression:
            raise UsageError(
                "%%gradcheck takes the loss from the cell body: leave EXPR off the %%gradcheck line"
            )
        if cell is not None:
            return self.namespace.cell_function(cell, "cell")
        if not expression:
            raise UsageError(
                "give the expression that computes the loss after the options, "
                "e.g. %gradcheck --wrt params --grads grads loss(params)"
            )
        return self.namespace.expression_function(expression, "loss expression")

    def parameters(self, names: list[str]) -> Any:
        """The --wrt object; several names make a dict {name: value}."""
        if not all(names):
            raise UsageError("--wrt has an empty name: separate names by commas, no spaces")
        if len(set(names)) < len(names):
            raise UsageError(f"--wrt names a parameter twice: {', '.join(names)}")
        values = [self.namespace.evaluate(name, "--wrt") for name in names]
        return values[0] if len(names) == 1 else dict(zip(names, values))

    def gradients(self, source: str | None, names: list[str]) -> Any:
        """The --grads value; a tuple matching several --wrt names becomes a dict."""
        if source is None:
            return None
        value = self.namespace.evaluate(source, "--grads")
        if len(names) > 1 and isinstance(value, (list, tuple)) and len(value) == len(names):
            return dict(zip(names, value))
        return value


CHECK_OPTIONS = ("eps", "method", "mode", "sample", "tol", "seed")


def typed_check_options(options: argparse.Namespace) -> dict[str, Any]:
    """The ``check()`` options the user typed, and only those: the rest keep ``check()``'s
    defaults. ``--sample N`` alone means ``mode="sample"``."""
    typed = {
        name: getattr(options, name) for name in CHECK_OPTIONS if getattr(options, name) is not None
    }
    if "sample" in typed and "mode" not in typed:
        typed["mode"] = "sample"
    return typed


def strip_semicolon(line: str) -> tuple[str, bool]:
    """The line without a trailing ';' (which asks for no output, as in a cell)."""
    stripped = line.rstrip()
    if stripped.endswith(";"):
        return stripped[:-1], True
    return line, False


LOSSPLOT_HELP = """Plot a loss history with its stalled spans shaded, and the stall table.

VAR is any expression: a LossHistory, a list or array of losses, a pandas Series, or a
DataFrame with a 'loss' column. Examples:

    %lossplot history
    %lossplot --log losses
    %lossplot -o stalls df["loss"]
"""


@magics_class
class LossPlotMagics(Magics):
    """``%lossplot VAR``: the training-stalls view of a loss history."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.namespace = UserNamespace(shell)

    @no_var_expand
    @magic_arguments()
    @kwds(formatter_class=argparse.RawDescriptionHelpFormatter, description=LOSSPLOT_HELP)
    @argument("--log", action="store_true", help="logarithmic loss axis")
    @argument("-o", "--output", metavar="VAR", help="store the stall table in VAR")
    @argument("expression", nargs="*", metavar="VAR", help="the losses to plot")
    @line_magic
    @mistakes_as_usage_errors
    def lossplot(self, line: str) -> None:
        """%lossplot VAR: see LOSSPLOT_HELP (shown by %lossplot?)."""
        from IPython.display import Image

        from nbgradcheck.api.history import as_loss_history
        from nbgradcheck.views.lossplot import figure_to_png, plot_loss, stall_table_html

        options, expression = parse_magic_line(self.lossplot, line)
        if not expression:
            raise UsageError("%lossplot needs the losses to plot, e.g. %lossplot history")
        value = self.namespace.evaluate(expression, "%lossplot expression")
        try:
            history = as_loss_history(value)
        except (TypeError, ValueError) as error:
            raise UsageError(one_line(str(error))) from None
        if options.output:
            self.namespace.store(options.output, history.stalls)
        if options.log:
            display(Image(data=figure_to_png(plot_loss(history, log_scale=True))))
            table = {"text/plain": history.report.summary()}
            table["text/html"] = stall_table_html(history.report)
            display(table, raw=True)
        else:
            display(history)


from nbgradcheck.notebook.preflight_magics import PreflightMagics  # noqa: E402

MAGIC_CLASSES: tuple[type[Magics], ...] = (GradCheckMagics, LossPlotMagics, PreflightMagics)


# -- extension hooks ------------------------------------------------------------------------


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext nbgradcheck``: register the magics (again, if already registered)."""
    unload_ipython_extension(ip)
    for magics_type in MAGIC_CLASSES:
        magics = magics_type(ip)
        ip.register_magics(magics)
        if isinstance(magics, GradCheckMagics):
            magics.shown_once.connect()


def unload_ipython_extension(ip: Any) -> None:
    """``%unload_ext nbgradcheck``: remove the magics and the display hooks."""
    manager = ip.magics_manager
    for magics_type in MAGIC_CLASSES:
        magics = manager.registry.get(magics_type.__name__)
        if not isinstance(magics, magics_type):
            continue
        for kind, table in manager.magics.items():
            for name in magics.magics.get(kind, {}):
                if getattr(table.get(name), "__self__", None) is magics:
                    del table[name]
        del manager.registry[magics_type.__name__]
        if isinstance(magics, GradCheckMagics):
            magics.shown_once.disconnect()
