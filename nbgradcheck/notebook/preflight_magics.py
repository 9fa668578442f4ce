"""``%preflight``: :func:`nbgradcheck.preflight` as a line magic.

A thin layer: parse the options, evaluate the four expressions in the notebook's
namespace, call ``preflight``, show the report. The user's mistakes (a misspelt name, a
bad option, X and y of different lengths) are one-line :class:`UsageError`\\ s; an error
raised inside the user's model keeps its traceback.

Registered by ``%load_ext nbgradcheck`` through ``MAGIC_CLASSES`` in
:mod:`nbgradcheck.notebook.magics` (which imports this module, so this module must not
import that one).
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, kwds, magic_arguments, parse_argstring
from IPython.display import display

from nbgradcheck.api.preflight import PreflightReport, preflight
from nbgradcheck.errors import GradCheckError

RESULT_VARIABLE = "_preflight"
EXPRESSION_FILE = "<preflight {}>"
ROLES = ("MODEL", "LOSS", "X", "Y")

PREFLIGHT_HELP = """\
Run the pre-training checks on one batch: the loss at initialisation, batch
independence, overfitting the batch, dead units, gradient flow and a gradient check.

PyTorch:  %preflight MODEL LOSS_FN X Y
NumPy:    %preflight --grads GRADS LOSS PARAMS X Y

The report is returned (r = %preflight ...), stored as _preflight and displayed.
Quote an expression that contains spaces. Examples:

  %preflight model F.cross_entropy X[:64] y[:64]
  %preflight --steps 200 -o report model "nn.CrossEntropyLoss()" X y
  %preflight --grads grads --classes 10 loss params X y
"""


def classes_value(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 2, not {text!r}")
    return int(text)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return int(text)


def non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, not {text!r}")
    return int(text)


def unquoted(word: str) -> str:
    """An expression without the quotes that protected its spaces."""
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "'\"":
        try:
            value = ast.literal_eval(word)
        except (ValueError, SyntaxError):
            return word
        if isinstance(value, str):
            return value
    return word


def one_line(text: str) -> str:
    return " ".join(text.split())


@magics_class
class PreflightMagics(Magics):
    """``%preflight``; ``%load_ext nbgradcheck`` registers it."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.shown: PreflightReport | None = None
        self.previous_printer: Callable | None = None
        self.printer_installed = False

    @no_var_expand
    @magic_arguments()
    @kwds(formatter_class=argparse.RawDescriptionHelpFormatter, description=PREFLIGHT_HELP)
    @argument(
        "--grads",
        metavar="EXPR",
        help="NumPy: the hand-written gradient, grads(params, X, y) → dict like params",
    )
    @argument(
        "--classes",
        type=classes_value,
        metavar="N",
        help="number of classes (init_loss expects ln N); PyTorch infers it from a "
        "cross-entropy over integer labels",
    )
    @argument("--steps", type=positive_int, default=100, help="overfit_batch steps")
    @argument("--seed", type=non_negative_int, default=0, help="seed of every check")
    @argument("-o", "--output", metavar="VAR", help="also store the report in VAR")
    @argument("-q", "--quiet", action="store_true", help="show nothing; a trailing ; does the same")
    @argument("expressions", nargs="*", metavar="EXPR", help="MODEL LOSS_FN X Y")
    @line_magic
    def preflight(self, line: str) -> PreflightReport:
        """%preflight: see PREFLIGHT_HELP (shown by %preflight?)."""
        stripped = line.rstrip()
        silenced = stripped.endswith(";")
        options = parse_argstring(self.preflight, stripped.rstrip(";"))
        values = self.evaluate_all([unquoted(word) for word in options.expressions])
        grads = self.evaluate(unquoted(options.grads), "--grads") if options.grads else None
        if options.output and not options.output.isidentifier():
            raise UsageError(f"-o needs a variable name, not {options.output!r}")
        try:
            report = preflight(
                *values,
                grads=grads,
                classes=options.classes,
                steps=options.steps,
                seed=options.seed,
            )
        except GradCheckError as error:
            raise UsageError(one_line(str(error))) from None
        self.shell.user_ns[RESULT_VARIABLE] = report
        if options.output:
            self.shell.user_ns[options.output] = report
        self.show(report, visible=not (options.quiet or silenced))
        return report

    # -- evaluating what the user typed ---------------------------------------------------
    def evaluate_all(self, sources: list[str]) -> list[Any]:
        if len(sources) != len(ROLES):
            raise UsageError(
                f"%preflight needs four expressions, MODEL LOSS_FN X Y (NumPy: LOSS PARAMS "
                f"X Y with --grads), after the options; got {len(sources)}"
                + (": quote an expression that contains spaces" if len(sources) > 4 else "")
            )
        return [self.evaluate(source, role) for source, role in zip(sources, ROLES)]

    def evaluate(self, source: str, role: str) -> Any:
        """The value of ``source``; a mistake in the expression itself is a UsageError."""
        filename = EXPRESSION_FILE.format(role)
        try:
            code = compile(source, filename, "eval")
        except SyntaxError as error:
            raise UsageError(f"{role} is not valid Python: {error.msg}: {source!r}") from None
        try:
            return eval(code, self.shell.user_global_ns, self.shell.user_ns)
        except Exception as error:
            if raised_in(error, filename):
                raise UsageError(one_line(f"{type(error).__name__} in {role}: {error}")) from None
            raise

    # -- showing the report once ----------------------------------------------------------
    @property
    def formatter(self) -> Any:
        return self.shell.display_formatter.ipython_display_formatter

    def show(self, report: PreflightReport, visible: bool) -> None:
        """Display ``report`` now (if ``visible``), and not as the cell's Out[n] (the magic
        returns it; a trailing ; inside a magic's line does not reach the display hook)."""
        if visible:
            display(report)
        self.shown = report
        if not self.printer_installed:
            self.previous_printer = self.formatter.for_type(PreflightReport, self.skip_shown)
            self.shell.events.register("post_run_cell", self.forget)
            self.printer_installed = True

    def skip_shown(self, report: PreflightReport) -> None:
        if report is not self.shown:
            display(report._repr_mimebundle_(), raw=True)

    def forget(self, *_event: Any) -> None:
        """At the end of the cell: display reports normally again."""
        self.shown = None
        if not self.printer_installed:
            return
        self.formatter.pop(PreflightReport, None)
        if self.previous_printer is not None:
            self.formatter.for_type(PreflightReport, self.previous_printer)
        self.shell.events.unregister("post_run_cell", self.forget)
        self.printer_installed = False


def raised_in(error: BaseException, filename: str) -> bool:
    """True when ``error`` was raised by the code compiled as ``filename`` itself."""
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    return traceback is not None and traceback.tb_frame.f_code.co_filename == filename
