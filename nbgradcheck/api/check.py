"""``check()``: the public entry point of a gradient check.

Picks the adapter for what the user passed (:mod:`nbgradcheck.adapters.registry`), the
evaluator (in-process, or workers from :mod:`nbgradcheck.parallel`), runs the core engine
and returns the frozen result. The parameters are restored bit for bit whatever happens.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from numbers import Integral, Real
from typing import Any

import numpy as np

from nbgradcheck.adapters.guard import claim
from nbgradcheck.adapters.registry import parameter_set
from nbgradcheck.core.engine import prepare
from nbgradcheck.core.plan import MODES
from nbgradcheck.core.result import GradCheckResult
from nbgradcheck.core.run import run_check
from nbgradcheck.core.schemes import FAST_NEEDS_REAL_STEPS, Scheme, scheme_for
from nbgradcheck.errors import GradCheckError
from nbgradcheck.parallel.executor import parallel_evaluator
from nbgradcheck.views.progress import TqdmBar


def check(
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
) -> GradCheckResult:
    """Compare the analytic gradient ``grads`` of ``loss`` with finite differences.

    Args:
        loss: returns the scalar loss J; called as ``loss(params)`` if it takes an
            argument, else ``loss()``. A tuple's first element is taken as J.
        params: dict of name → float ndarray, list/tuple of arrays, or one array.
            Perturbed in place and restored exactly.
        grads: the analytic gradient in the same structure (dict keys ``W1`` or
            ``dW1``; extra keys such as ``dZ1`` are ignored), or a callable returning
            it, evaluated once at the unperturbed parameters. Leave it out for PyTorch
            and JAX parameters: autograd / ``jax.grad`` of the loss gives it.
        eps: step size; ``"auto"`` scales it to each element's magnitude and the
            dtype. Default: 1e-6 for float64, ``"auto"`` for lower precision, 1e-20
            for ``method="complex"``.
        method: ``"central"``, ``"forward"``, ``"backward"`` or ``"complex"``.
        mode: ``"full"`` checks every element; ``"sample"`` checks ``sample``
            elements (default 10) of every tensor, spread over the tensor;
            ``"fast"`` tests each tensor along random-sign directions and localizes
            the wrong elements of failing tensors by group testing (see
            :mod:`nbgradcheck.core.localize`); ``"auto"`` (default) is full when it
            needs at most 20,000 loss evaluations per worker, else fast (decided from
            the sizes alone, so the same check gives the same report on any machine).
        tol: the largest relative difference that passes.
        seed: re-seed NumPy's and Python's global RNGs before every evaluation, so a
            loss with dropout repeats its masks (and the dropout gradient is checked);
            also seeds the choice of sampled elements.
        progress: show a progress bar; ``None`` shows one when the check is expected
            to take more than a second.
        executor: evaluate the loss on workers: a ``concurrent.futures`` executor (e.g.
            ``ProcessPoolExecutor``), a Dask ``Client`` or anything with
            ``submit(fn, *args)`` returning a future (see :mod:`nbgradcheck.parallel.executor`).
            The loss and parameters are pickled with cloudpickle and shipped once per
            worker; the result is identical to the serial check's.
        n_jobs: evaluate the loss in this many local processes (-1: one per core).

    Returns:
        A :class:`GradCheckResult`. Ctrl-C returns the partial result, marked
        incomplete.
    """
    scheme = validate_options(loss, method, mode, sample, tol, eps, seed)
    tol, sample = float(tol), None if sample is None else int(sample)
    seed = None if seed is None else int(seed)
    if isinstance(params, Iterator):  # model.parameters(): a generator, read once
        params = list(params)
    rerun = dict(
        loss=loss,
        params=params,
        grads=grads,
        eps=eps,
        method=method,
        mode=mode,
        sample=sample,
        tol=tol,
        seed=seed,
        progress=progress,
        executor=executor,
        n_jobs=n_jobs,
    )
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
    result.duration_s = time.perf_counter() - started
    result.rerun = rerun
    if not result.complete:
        warnings.warn(result.summary(), RuntimeWarning, stacklevel=2)
    return result


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
