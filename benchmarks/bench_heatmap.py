"""Heatmap of a 1,000,000-element tensor: block-max pooling against drawing every cell.

Both sides build the figure with ``result.heatmap()`` and render it to PNG, in the same
process, on the same synthetic check result (a 1000×1000 tensor, every element checked,
one wrong element). Pooling is switched off with ``pool_above=None``.

Besides time, it counts the rendered pixels that show the wrong element's colour:
without pooling the 1000×1000 image is resampled (nearest) to the panel's ~250×190
pixels and a single cell usually vanishes (the box marking the worst element remains);
block-max pooling to one cell per pixel keeps it.

Times are CPU seconds (time.process_time), the median of REPEATS runs of each.

Run: python benchmarks/bench_heatmap.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("MPLBACKEND", "Agg")
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from nbgradcheck.api.result import GradCheckResult  # noqa: E402
from nbgradcheck.core.result import TensorCheck  # noqa: E402
from nbgradcheck.views.figures import POOL_ABOVE, figure_png  # noqa: E402

SHAPE = (1000, 1000)
WRONG = (654, 321)
REPEATS = 5


def synthetic_result(shape: tuple[int, int] = SHAPE) -> GradCheckResult:
    """Every element agrees to ~1e-9 except one, whose numeric value has the wrong sign."""
    rng = np.random.default_rng(0)
    size = shape[0] * shape[1]
    analytic = rng.uniform(0.5, 1.5, size)
    numeric = analytic * (1 + 1e-9 * rng.standard_normal(size))
    numeric[np.ravel_multi_index(WRONG, shape)] *= -1
    zeros = np.zeros(size)
    tensor = TensorCheck(
        name="W",
        shape=shape,
        dtype=np.dtype(np.float64),
        checked_indices=np.arange(size),
        values=zeros,
        analytic=analytic,
        numeric=numeric,
        steps=zeros + 1e-6,
        round_off=zeros + 1e-14,
        kink=np.zeros(size, dtype=bool),
        analytic_full=analytic.reshape(shape),
        tol=1e-5,
    )
    return GradCheckResult([tensor], "central", 1e-6, "full", 1e-5, 2 * size, 1.0)


def draw(result: GradCheckResult, pool_above: int | None) -> float:
    """CPU seconds to build the figure and render it to PNG."""
    started = time.process_time()
    figure_png(result.heatmap(pool_above=pool_above))
    return time.process_time() - started


def wrong_pixels(result: GradCheckResult, pool_above: int | None) -> int:
    """Rendered pixels in the 'wrong' red of the colour map (the wrong element's cell)."""
    figure = result.heatmap(pool_above=pool_above)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    panel = figure.axes[0].get_window_extent()
    height = pixels.shape[0]
    inside = pixels[
        int(height - panel.y1) + 2 : int(height - panel.y0) - 2,
        int(panel.x0) + 2 : int(panel.x1) - 2,
    ]
    red, green, blue = inside[..., 0], inside[..., 1], inside[..., 2]
    return int(((red > 80) & (green < 40) & (blue < 40)).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    repeats = parser.parse_args().repeats
    result = synthetic_result()
    draw(result, None)  # warm up: imports, font cache
    pooled, full = [], []
    for _ in range(repeats):  # interleaved, so load changes hit both sides alike
        pooled.append(draw(result, POOL_ABOVE))
        full.append(draw(result, None))
    pooled_s, full_s = statistics.median(pooled), statistics.median(full)
    print(
        f"heatmap of a {SHAPE[0]}×{SHAPE[1]} tensor (1,000,000 elements), "
        f"figure built and rendered to PNG, median CPU time of {repeats}:"
    )
    cells = "×".join(map(str, result.heatmap().axes[0].images[0].get_array().shape))
    print(f"  block-max pooled ({cells} cells): {pooled_s:.3f} s")
    print(f"  every cell drawn (1000×1000):    {full_s:.3f} s")
    print(f"  ratio (unpooled / pooled):       {full_s / pooled_s:.2f}×")
    print("pixels showing the wrong element's red in the rendered panel:")
    print(f"  pooled: {wrong_pixels(result, POOL_ABOVE)}, unpooled: {wrong_pixels(result, None)}")


if __name__ == "__main__":
    main()
