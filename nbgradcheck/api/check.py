"""``check()``: the public entry point of a gradient check.

Performs the check (:mod:`nbgradcheck.api.perform`) and returns the frozen result with its
views, a :class:`~nbgradcheck.GradCheckResult` that can re-run itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

from nbgradcheck.api.result import GradCheckResult


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
    if isinstance(params, Iterator):  # model.parameters(): a generator, read once
        params = list(params)
    result = GradCheckResult.run(
        loss,
        params,
        grads,
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
    if not result.complete:
        warnings.warn(result.summary(), RuntimeWarning, stacklevel=2)
    return result
