"""``import nbgradcheck`` against ``import numpy``: whole processes, best of 10 each.

Each figure is the wall-clock time of ``python -c "import X"`` in a fresh interpreter
(start-up included), the two interleaved; also listed: whether importing nbgradcheck
loaded numpy, pandas, matplotlib, IPython or a framework. Goal: ≤ 2× import numpy.

Run: python benchmarks/bench_import.py     (about 10 seconds)
"""

from __future__ import annotations

import subprocess
import sys
import time

from timing import interleaved, load

REPEATS = 10
HEAVY = ("numpy", "pandas", "matplotlib", "IPython", "torch", "jax")


def run(statement: str) -> None:
    subprocess.run([sys.executable, "-c", statement], check=True)


def loaded_modules() -> list[str]:
    probe = f"import sys, nbgradcheck; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    output = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    return output.split()


def main() -> None:
    started = time.perf_counter()
    statements = {
        "python": "pass",
        "numpy": "import numpy",
        "nbgradcheck": "import nbgradcheck",
    }
    times, _ = interleaved(
        {name: (lambda s=s: run(s)) for name, s in statements.items()},
        REPEATS,
        clock=time.perf_counter,
    )
    heavy = loaded_modules()
    print(f"fresh interpreters, best of {REPEATS} ({load()})")
    for name, seconds in times.items():
        print(f'  python -c "{statements[name]}"  {seconds * 1e3:6.0f} ms')
    print(
        f"  import nbgradcheck / import numpy: {times['nbgradcheck'] / times['numpy']:.2f}× "
        f"(modules loaded by import nbgradcheck among {', '.join(HEAVY)}: "
        f"{', '.join(heavy) or 'none'})"
    )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
