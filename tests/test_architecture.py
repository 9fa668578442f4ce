"""The layout promises: layers as folders, imports pointing down only, no circles, a light
``import nbgradcheck`` and a pure-NumPy core. Read from the source (function-level imports
count), so a shortcut hidden inside a function still fails here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nbgradcheck"
# bottom to top: a module may import from its own layer or the ones before it
LAYERS = ("errors", "adapters", "core", "parallel", "training", "views", "api", "notebook")
ROOT_LAYER = len(LAYERS)  # __init__, __main__, demo: the composition root
VIEW_LIBRARIES = {"pandas", "matplotlib", "IPython", "ipywidgets", "tqdm", "jinja2"}
FRAMEWORKS = {"torch", "jax", "jaxlib", "dask", "distributed", "keras", "lightning"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return ROOT_LAYER
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else ROOT_LAYER


def imports_of(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file."""
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    )
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def internal_graph() -> dict[str, set[str]]:
    return {
        name: {m for m in imports_of(path) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }


def test_the_tree_shows_the_layers():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(LAYERS) - {"errors"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_only(module):
    upward = [
        target
        for target in internal_graph()[module]
        if layer_of(target) > layer_of(module) and target != "nbgradcheck"
    ]
    importing_the_root = "nbgradcheck" in internal_graph()[module] and layer_of(module) < ROOT_LAYER
    assert not upward and not importing_the_root, f"{module} imports {upward or ['nbgradcheck']}"


def test_there_are_no_import_circles():
    graph = internal_graph()
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycle = [*path[path.index(target) :], target] if target in path else [node, target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m) <= 3))
def test_lower_layers_import_no_view_library(module):
    """errors, adapters, core and parallel never touch pandas, matplotlib, IPython,
    ipywidgets or tqdm, not even inside a function."""
    external = {name.split(".")[0] for name in imports_of(MODULES[module])}
    assert not external & VIEW_LIBRARIES


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("nbgradcheck.core")))
def test_the_core_is_numpy_and_the_standard_library(module):
    external = {name.split(".")[0] for name in imports_of(MODULES[module])} - {"nbgradcheck"}
    assert external <= set(sys.stdlib_module_names) | {"numpy"}, external


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_import_loads_numpy_and_the_standard_library_only():
    loaded = run_python(
        "import sys, nbgradcheck\n"
        f"heavy = {sorted(VIEW_LIBRARIES | FRAMEWORKS)!r}\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    assert loaded == "[]"


def test_a_numpy_check_and_its_numbers_load_no_view_library():
    loaded = run_python(
        "import sys, numpy as np, nbgradcheck as ng\n"
        "p = {'W': np.arange(6.0).reshape(2, 3), 'b': np.ones(2)}\n"
        "r = ng.check(lambda p: float((p['W'] ** 2).sum() + p['b'].sum()), p,\n"
        "             {'W': 2 * p['W'], 'b': np.ones(2)})\n"
        "assert r.passed and r.verdict == 'correct' and r.tensor('W').difference < 1e-7\n"
        "r.summary(); r.failing; r.diagnoses\n"
        f"heavy = {sorted(VIEW_LIBRARIES)!r}\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    assert loaded == "[]"
