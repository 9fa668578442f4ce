"""Performing a gradient check: validate the options, pick the adapter for what the user
passed (:mod:`nbgradcheck.adapters.registry`) and the evaluator (in-process, or workers
from :mod:`nbgradcheck.parallel`), run the core (:mod:`nbgradcheck.core.run`). The
parameters are restored bit for bit whatever happens. Returns the frozen core result;
:func:`nbgradcheck.check` hands users the :class:`~nbgradcheck.GradCheckResult` around it
(:meth:`~nbgradcheck.GradCheckResult.run`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from numbers import Integral, Real
from typing import Any

import numpy as np

from nbgradcheck.adapters.guard import claim
from nbgradcheck.adapters.registry import parameter_set
from nbgradcheck.core.engine import prepare
from nbgradcheck.core.plan import MODES
from nbgradcheck.core.result import CheckResult
from nbgradcheck.core.run import run_check
from nbgradcheck.core.schemes import FAST_NEEDS_REAL_STEPS, Scheme, scheme_for
from nbgradcheck.errors import GradCheckError
from nbgradcheck.parallel.executor import parallel_evaluator
from nbgradcheck.views.progress import TqdmBar


def perform_check(
    loss: Callable[..., Any],
    params: Any,
    grads: Any = None,
    *,
    eps: float | str | None = None,
    method: str = "central",
    mode: str = "auto",
    sample: int | None = None,
    tol: float = 1e-5,
    seed: int | None = None,
    progress: bool | None = None,
    executor: Any = None,
    n_jobs: int | None = None,
) -> CheckResult:
    """:func:`nbgradcheck.check`'s work (arguments as there), returning the frozen core
    result, timed."""
    scheme = validate_options(loss, method, mode, sample, tol, eps, seed)
    tol, sample = float(tol), None if sample is None else int(sample)
    seed = None if seed is None else int(seed)
    if isinstance(params, Iterator):  # model.parameters(): a generator, read once
        params = list(params)
    parameters = parameter_set(params)
    started = time.perf_counter()
    with claim(parameters.perturbed_buffers(), parameters.names):
        snapshot = parameters.snapshot()
        restore_rng = parameters.rng_state()
        try:
            with parallel_evaluator(executor, n_jobs, loss, params, seed) as workers:
                setup = prepare(loss, parameters, grads, seed, snapshot)
                setup.make_bar = TqdmBar
                if workers is not None:
                    setup.evaluator = workers.taking_over(setup)
                result = run_check(setup, scheme, eps, mode, sample, tol, seed, progress)
        except BaseException:
            parameters.restore(snapshot)
            raise
        finally:
            restore_rng()
        parameters.ensure_unmodified(snapshot, "the loss")
    return result.with_duration(time.perf_counter() - started)


def validate_options(
    loss: Any, method: Any, mode: Any, sample: Any, tol: Any, eps: Any, seed: Any
) -> Scheme:
    """One clear error for the first bad argument; the scheme of ``method``."""
    if not callable(loss):
        raise GradCheckError(f"loss must be callable, not {type(loss).__name__}")
    scheme = scheme_for(method)
    if mode not in MODES:
        raise GradCheckError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "fast" and not scheme.real_steps:
        raise GradCheckError(FAST_NEEDS_REAL_STEPS)
    if sample is not None:
        if mode != "sample":
            raise GradCheckError(f"sample={sample!r} needs mode='sample'")
        if not is_integer(sample) or sample < 1:
            raise GradCheckError(f"sample must be a positive integer; got {sample!r}")
    if not is_number(tol) or not tol > 0:
        raise GradCheckError(f"tol must be a positive number; got {tol!r}")
    if seed is not None and (not is_integer(seed) or not 0 <= seed < 2**32):
        raise GradCheckError(f"seed must be None or an integer from 0 to 2**32 - 1; got {seed!r}")
    auto = isinstance(eps, str) and eps == "auto"
    if eps is not None and not auto and (not is_number(eps) or not 0 < eps < np.inf):
        raise GradCheckError(f"eps must be a positive number or 'auto'; got {eps!r}")
    return scheme


def is_integer(value: Any) -> bool:
    """An int or NumPy integer, not a bool."""
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
    """A real number (int, float or their NumPy kinds), not a bool."""
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))
