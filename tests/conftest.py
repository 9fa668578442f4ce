"""Shared fixtures: course networks and helpers that compare parameters bit for bit."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from nbgradcheck.demo import course_network


def frozen(params):
    """Bytes of every array (dict, list or single array), for exact comparison."""
    if isinstance(params, dict):
        return {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return [(v.dtype.str, v.shape, v.tobytes()) for v in params]
    return (params.dtype.str, params.shape, params.tobytes())


@pytest.fixture
def net():
    return course_network()


@pytest.fixture
def buggy_net():
    return course_network(bugs=("scale_dW2", "db1_4_over_m"))


@pytest.fixture
def quadratic():
    """J = Σ_k ½ a_k θ_k² + c_k θ_k over W (2×3) and b (3,), with exact gradients."""
    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(2, 3)), "b": rng.normal(size=3)}
    a = {k: rng.uniform(0.5, 2, size=v.shape) for k, v in params.items()}
    c = {k: rng.normal(size=v.shape) for k, v in params.items()}

    def loss(p):
        return float(sum(np.sum(0.5 * a[k] * p[k] ** 2 + c[k] * p[k]) for k in p))

    def grads(p):
        return {"d" + k: a[k] * p[k] + c[k] for k in p}

    return params, loss, grads


@pytest.fixture(scope="module")
def ip():
    """A real IPython shell with the nbgradcheck extension loaded (one per test module;
    the names a module defines in it are removed after it, so modules do not see each
    other's variables)."""
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython() or get_ipython()
    before = set(shell.user_ns)
    shell.run_line_magic("load_ext", "nbgradcheck")
    yield shell
    shell.run_line_magic("unload_ext", "nbgradcheck")
    for name in set(shell.user_ns) - before:
        del shell.user_ns[name]


def executed_notebook(path):
    """The notebook at ``path`` run top to bottom by a real kernel (nbclient), outputs in."""
    import nbclient
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        notebook,
        timeout=180,
        startup_timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    return notebook
