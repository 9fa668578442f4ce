"""Heatmaps of a gradient check: where in each tensor the numeric and analytic values differ.

Built on :class:`matplotlib.figure.Figure` directly (no pyplot state), so it works under
any backend, Agg included, and a figure is never shown twice in a notebook.

Every tensor is drawn as a 2-D grid of cells, one per element:

- 0-D and 1-D tensors as a strip; 2-D as rows × columns;
- 4-D conv kernels ``(out, in, kh, kw)`` as a mosaic of kh×kw tiles, one row of tiles
  per output channel and one column per input channel;
- 3-D tensors (and the leading axes of higher ones, merged) as a near-square mosaic of
  tiles, one per index of the first axis.

Unchecked elements are blank (hatched background), kinks are marked ×, and the worst
element of a failing tensor (by the plotted error: relative on the log scale, absolute
otherwise; the order of ``TensorCheck.worst_first``) is boxed. A tensor with more cells
than its panel has pixels (along either axis), or with more than ``pool_above`` elements,
is reduced by block-max pooling to at most one cell per pixel: the largest error of each
block is kept, so the worst element cannot vanish in resampling, and drawing stays fast at
10⁶ elements.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from matplotlib import patheffects
from matplotlib.colors import LinearSegmentedColormap, LogNorm, Normalize, to_rgba
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from nbgradcheck.core.verdict import VERDICT_THRESHOLDS
from nbgradcheck.views.colours import VERDICT_COLOURS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colorbar import Colorbar
    from matplotlib.image import AxesImage

    from nbgradcheck.core.result import CheckResult, TensorCheck

SCALES = ("log", "abs", "signed")
# The per-element error each scale plots, which also ranks the worst element.
SCALE_ERRORS = {"log": "rel_error", "abs": "abs_error", "signed": "abs_error"}
POOL_ABOVE = 250_000
LOG_FLOOR = 1e-16  # the smallest relative error the log scale shows
# Layout, in inches: a cell holds one panel with its title, tick labels and axis labels.
PANEL_WIDTH, PANEL_HEIGHT, STRIP_HEIGHT, MIN_WIDTH = 3.4, 2.9, 1.7, 5.0
CELL_LEFT, CELL_RIGHT, CELL_TOP, CELL_BOTTOM = 0.65, 0.2, 0.3, 0.86
FIGURE_TOP, FIGURE_BOTTOM = 0.6, 0.3  # two-line title; legend line
COLORBAR_WIDTH, SHARED_COLORBAR, PANEL_COLORBAR = 0.14, 1.25, 1.0
BAND_LETTER = 0.07  # inches of colour bar a letter of a band's verdict name needs
MAX_COLUMNS = 3
MAX_TILE_LABELS = 64
# The verdict bands of the log colour map: (verdict, colour at the low end, at the high end).
BAND_COLOURS = (
    ("correct", "#c7e9c0", "#41ab5d"),
    ("ok", "#fff3b0", "#fdd049"),
    ("suspicious", "#fdae61", "#e66101"),
    ("wrong", "#e31a1c", "#67000d"),
)
AXES_LABEL = "nbgradcheck:heatmap:{}"
COLORBAR_LABEL = "nbgradcheck:colorbar"


class NotebookFigure(Figure):
    """A Figure that shows itself as a PNG in IPython, with or without pyplot."""

    def _repr_png_(self) -> bytes:
        return figure_png(self)


def figure_png(figure: Figure, dpi: float | None = None) -> bytes:
    """The figure rendered to PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi or figure.dpi)
    return buffer.getvalue()


# -- from a tensor to a 2-D grid of cells -----------------------------------------------------


@dataclass
class Layout:
    """Where each element of a tensor sits in the 2-D picture."""

    grid: np.ndarray  # 2-D array of flat element indices; -1 for padding cells
    kind: str  # "strip", "matrix", "kernels" (4-D) or "tiles" (3-D and higher)
    tile: tuple[int, int] = (1, 1)  # cells per tile (mosaics)
    tiles: tuple[int, int] = (1, 1)  # tiles per column and per row (mosaics)


def layout_for(shape: tuple[int, ...]) -> Layout:
    """A readable 2-D arrangement of a tensor of ``shape``."""
    size = math.prod(shape)
    flat = np.arange(size, dtype=np.int64)
    if len(shape) <= 1:
        return Layout(flat.reshape(1, size), "strip")
    if len(shape) == 2:
        return Layout(flat.reshape(shape), "matrix")
    if len(shape) == 4:
        out, inp, kh, kw = shape
        grid = flat.reshape(shape).transpose(0, 2, 1, 3).reshape(out * kh, inp * kw)
        return Layout(grid, "kernels", (kh, kw), (out, inp))
    return tile_layout(flat.reshape(-1, shape[-2], shape[-1]))


def tile_layout(stack: np.ndarray) -> Layout:
    """Tiles ``stack[k]`` wrapped row-major into a near-square mosaic."""
    count, height, width = stack.shape
    columns = min(count, max(1, math.ceil(math.sqrt(count * height / width))))
    rows = math.ceil(count / columns)
    padded = np.full((rows * columns, height, width), -1, dtype=np.int64)
    padded[:count] = stack
    grid = padded.reshape(rows, columns, height, width).transpose(0, 2, 1, 3)
    return Layout(
        grid.reshape(rows * height, columns * width), "tiles", (height, width), (rows, columns)
    )


def element_values(tensor: TensorCheck, scale: str) -> np.ndarray:
    """The plotted quantity for every element (flat), NaN where not checked."""
    if scale == "log":
        per_element = tensor.rel_error
    elif scale == "abs":
        per_element = tensor.abs_error
    else:
        per_element = tensor.analytic - tensor.numeric
    per_element = np.where(tensor.evaluated, per_element, np.nan)
    return tensor.full_array(per_element).reshape(-1)


def pool_block(
    shape: tuple[int, int], pixels: tuple[int, int], pool_above: int | None
) -> tuple[int, int]:
    """Block size (rows, columns) that fits an image of ``shape`` into ``pixels``.

    (1, 1) when it fits already and has at most ``pool_above`` cells, or when
    ``pool_above`` is None (pooling off).
    """
    fits = shape[0] <= pixels[0] and shape[1] <= pixels[1]
    if pool_above is None or (fits and shape[0] * shape[1] <= pool_above):
        return 1, 1
    return max(1, math.ceil(shape[0] / pixels[0])), max(1, math.ceil(shape[1] / pixels[1]))


def panel_pixels(dpi: float) -> tuple[int, int]:
    """Pixels (rows, columns) inside a full-height panel, less a safety margin."""
    height = (PANEL_HEIGHT - CELL_TOP - CELL_BOTTOM) * dpi
    width = (PANEL_WIDTH - CELL_LEFT - CELL_RIGHT) * dpi
    return max(1, int(height) - 2), max(1, int(width) - 2)


def block_max(image: np.ndarray, block: tuple[int, int], signed: bool = False) -> np.ndarray:
    """Each ``block`` of ``image`` reduced to its largest value (largest magnitude, sign kept,
    when ``signed``), ignoring NaN; a block of NaN only stays NaN."""
    if block == (1, 1):
        return image
    rows = math.ceil(image.shape[0] / block[0])
    columns = math.ceil(image.shape[1] / block[1])
    padded = np.full((rows * block[0], columns * block[1]), np.nan)
    padded[: image.shape[0], : image.shape[1]] = image
    blocks = padded.reshape(rows, block[0], columns, block[1])
    if not signed:
        return np.fmax.reduce(np.fmax.reduce(blocks, axis=3), axis=1)
    cells = blocks.transpose(0, 2, 1, 3).reshape(rows, columns, -1)
    magnitude = np.nan_to_num(np.abs(cells), nan=-1.0)
    chosen = np.argmax(magnitude, axis=2)[..., None]
    return np.take_along_axis(cells, chosen, axis=2)[..., 0]


def cell_positions(layout: Layout, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of elements ``flat`` in the layout's grid."""
    if flat.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    placed = layout.grid.reshape(-1)
    where = np.flatnonzero(placed >= 0)
    lookup = np.empty(placed.max() + 1, dtype=np.int64)
    lookup[placed[where]] = where
    return np.divmod(lookup[flat], layout.grid.shape[1])


@dataclass
class Panel:
    """What one heatmap panel draws, in the coordinates of the unpooled grid."""

    tensor: TensorCheck
    layout: Layout
    image: np.ndarray  # cell values after pooling; NaN = blank
    block: tuple[int, int]
    kinks: tuple[np.ndarray, np.ndarray]  # (rows, columns) of cells holding kinks
    worst: tuple[float, float] | None  # (row, column) of the worst element's cell
    verdict: str  # the tensor's (stored when its check ended)
    difference: float

    @property
    def extent(self) -> tuple[float, float, float, float]:
        rows = self.image.shape[0] * self.block[0]
        columns = self.image.shape[1] * self.block[1]
        return -0.5, columns - 0.5, rows - 0.5, -0.5

    @property
    def pooled(self) -> bool:
        return self.block != (1, 1)


def make_panel(
    tensor: TensorCheck, scale: str, pool_above: int | None, pixels: tuple[int, int]
) -> Panel:
    layout = layout_for(tensor.shape)
    values = np.append(element_values(tensor, scale), np.nan)  # index -1 → NaN padding
    image = values[layout.grid]
    block = pool_block(image.shape, pixels, pool_above)
    kink_flat = tensor.indices[tensor.kink & tensor.evaluated]
    verdict = tensor.verdict
    by = SCALE_ERRORS[scale]
    worst = worst_cell(tensor, layout, block, by) if verdict not in ("correct", "ok") else None
    return Panel(
        tensor,
        layout,
        block_max(image, block, signed=scale == "signed"),
        block,
        cell_centres(layout, kink_flat, block, unique=True),
        worst,
        verdict,
        tensor.difference,
    )


def cell_centres(
    layout: Layout, flat: np.ndarray, block: tuple[int, int], unique: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the (pooled) cells holding elements ``flat``, in unpooled coordinates."""
    rows, columns = cell_positions(layout, flat)
    rows, columns = rows // block[0], columns // block[1]
    if unique and rows.size:
        rows, columns = np.unique(np.stack([rows, columns]), axis=1)
    return rows * block[0] + (block[0] - 1) / 2, columns * block[1] + (block[1] - 1) / 2


def worst_cell(
    tensor: TensorCheck, layout: Layout, block: tuple[int, int], by: str = "abs_error"
) -> tuple[float, float] | None:
    """The cell of the worst counted element by ``by`` ('abs_error' or 'rel_error')."""
    position = tensor.worst_position_by(by)
    if position is None:
        return None
    rows, columns = cell_centres(layout, tensor.indices[[position]], block)
    return float(rows[0]), float(columns[0])


# -- colours --------------------------------------------------------------------------------


def log_colormap(vmin: float, vmax: float) -> LinearSegmentedColormap:
    """Colours by verdict band (green, yellow, orange, red), with sharp band edges."""
    span = math.log10(vmax) - math.log10(vmin)
    edges = [vmin, *(t for _, t in VERDICT_THRESHOLDS), vmax]
    stops: list[tuple[float, str]] = []
    for (_, low, high), start, stop in zip(BAND_COLOURS, edges[:-1], edges[1:]):
        start, stop = max(start, vmin), min(stop, vmax)
        if start >= stop:
            continue
        stops.append(((math.log10(start) - math.log10(vmin)) / span, low))
        stops.append(((math.log10(stop) - math.log10(vmin)) / span, high))
    stops = [(max(0.0, min(1.0, x)), colour) for x, colour in stops]
    stops[0], stops[-1] = (0.0, stops[0][1]), (1.0, stops[-1][1])
    return LinearSegmentedColormap.from_list("nbgradcheck_verdicts", stops)


def log_limits(panels: list[Panel]) -> tuple[float, float]:
    """One shared log range: up to relative error 1, down past the smallest error seen."""
    smallest = min(
        (float(np.nanmin(p.image[p.image > 0])) for p in panels if (p.image > 0).any()),
        default=1e-9,
    )
    low = 10.0 ** math.floor(math.log10(min(smallest, 1e-9)))
    return max(low, LOG_FLOOR), 1.0


def panel_norm(panel: Panel, scale: str) -> Normalize:
    """Per-panel limits for the absolute and signed scales."""
    finite = panel.image[np.isfinite(panel.image)]
    largest = float(np.abs(finite).max()) if finite.size else 0.0
    largest = largest if largest > 0 else 1.0
    return Normalize(-largest, largest) if scale == "signed" else Normalize(0.0, largest)


def scale_colormap(scale: str, norm: Normalize) -> LinearSegmentedColormap:
    if scale == "log":
        return log_colormap(norm.vmin, norm.vmax)
    from matplotlib import colormaps

    return colormaps["RdBu_r" if scale == "signed" else "Reds"]


# -- drawing --------------------------------------------------------------------------------


def heatmap(
    result: CheckResult,
    name: str | Sequence[str] | None = None,
    scale: str = "log",
    *,
    highlight_above: float | None = None,
    pool_above: int | None = POOL_ABOVE,
    dpi: float = 100,
) -> Figure:
    """Per-element discrepancy of each parameter tensor, one panel per tensor.

    Args:
        result: a :class:`~nbgradcheck.GradCheckResult` (or its core, a
            :class:`~nbgradcheck.core.result.CheckResult`).
        name: a tensor name, a list of names, or ``None`` for every tensor.
        scale: ``"log"`` — relative error |n − a| / (|n| + |a|) on a log colour scale
            shared by all panels, with the verdict thresholds (1e-7, 1e-5, 1e-3) marked on
            the colour bar; ``"abs"`` — absolute error |a − n|; ``"signed"`` — a − n on a
            diverging scale (shows sign flips and constant factors). The last two have one
            colour bar per panel.
        highlight_above: fade every element whose plotted value is at or below this.
        pool_above: tensors with more elements are block-max pooled to the panel's
            pixels, as are tensors with more rows or columns than the panel has pixels
            (``None``: never pool).
        dpi: figure resolution.

    Returns:
        A matplotlib Figure (it shows itself as a PNG in a notebook).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(map(repr, SCALES))}; got {scale!r}")
    tensors = selected_tensors(result, name)
    pixels = panel_pixels(dpi)
    panels = [make_panel(t, scale, pool_above, pixels) for t in tensors]
    grid = PanelGrid(panels, shared_colorbar=scale == "log")
    figure = NotebookFigure(figsize=grid.size, dpi=dpi)
    shared = LogNorm(*log_limits(panels)) if scale == "log" else None
    for i, panel in enumerate(panels):
        ax = figure.add_axes(grid.panel_rect(i), label=AXES_LABEL.format(panel.tensor.name))
        norm = shared or panel_norm(panel, scale)
        image = draw_panel(ax, panel, norm, scale_colormap(scale, norm), highlight_above)
        if shared is None:
            add_colorbar(figure, image, grid.panel_colorbar_rect(i), scale, highlight_above)
    if shared is not None:
        add_colorbar(figure, image, grid.shared_colorbar_rect(), scale, highlight_above)
    figure.suptitle(
        figure_title(result, scale),
        fontsize=10,
        linespacing=1.5,
        y=1 - 0.08 / grid.size[1],
        va="top",
    )
    legend = legend_text(panels, scale)
    if legend:
        figure.text(
            0.5, 0.1 / grid.size[1], legend, fontsize=8, color="0.3", ha="center", va="bottom"
        )
    return figure


def selected_tensors(result: CheckResult, name: str | Sequence[str] | None) -> list:
    if name is None:
        return list(result.tensors)
    names = [name] if isinstance(name, str) else list(name)
    if not names:
        raise ValueError("name is an empty list: give a tensor name, a list of names or None")
    return [result.tensor(n) for n in names]


def is_strip(panel: Panel) -> bool:
    return panel.image.shape[0] == 1


class PanelGrid:
    """A fixed layout in inches (fast and predictable, unlike constrained layout): panels
    in rows of up to MAX_COLUMNS, margins for titles and labels, colour bars beside."""

    def __init__(self, panels: list[Panel], shared_colorbar: bool) -> None:
        self.columns = min(len(panels), MAX_COLUMNS)
        rows = [panels[i : i + self.columns] for i in range(0, len(panels), self.columns)]
        self.heights = [STRIP_HEIGHT if all(map(is_strip, row)) else PANEL_HEIGHT for row in rows]
        self.shared = shared_colorbar
        self.cell_width = PANEL_WIDTH + (0 if shared_colorbar else PANEL_COLORBAR)
        content = self.cell_width * self.columns + (SHARED_COLORBAR if shared_colorbar else 0)
        self.offset = max(0.0, (MIN_WIDTH - content) / 2)
        self.size = (content + 2 * self.offset, FIGURE_TOP + sum(self.heights) + FIGURE_BOTTOM)

    def _rect(
        self, left: float, bottom: float, width: float, height: float
    ) -> tuple[float, float, float, float]:
        """Inches (from the bottom left) to figure fractions."""
        figure_width, figure_height = self.size
        return (
            left / figure_width,
            bottom / figure_height,
            width / figure_width,
            height / figure_height,
        )

    def _axes_inches(self, i: int) -> tuple[float, float, float, float]:
        row, column = divmod(i, self.columns)
        cell_top = self.size[1] - FIGURE_TOP - sum(self.heights[:row])
        left = self.offset + column * self.cell_width + CELL_LEFT
        width = PANEL_WIDTH - CELL_LEFT - CELL_RIGHT
        bottom = cell_top - self.heights[row] + CELL_BOTTOM
        return left, bottom, width, self.heights[row] - CELL_TOP - CELL_BOTTOM

    def panel_rect(self, i: int) -> tuple[float, float, float, float]:
        return self._rect(*self._axes_inches(i))

    def panel_colorbar_rect(self, i: int) -> tuple[float, float, float, float]:
        left, bottom, width, height = self._axes_inches(i)
        return self._rect(left + width + 0.12, bottom, COLORBAR_WIDTH, height)

    def shared_colorbar_rect(self) -> tuple[float, float, float, float]:
        top = self.size[1] - FIGURE_TOP - CELL_TOP
        bottom = FIGURE_BOTTOM + CELL_BOTTOM
        left = self.offset + self.cell_width * self.columns + 0.3
        return self._rect(left, bottom, COLORBAR_WIDTH, top - bottom)


def add_colorbar(
    figure: Figure,
    image: AxesImage,
    rect: tuple[float, float, float, float],
    scale: str,
    highlight_above: float | None,
) -> None:
    cax = figure.add_axes(rect, label=COLORBAR_LABEL)
    finish_colorbar(figure.colorbar(image, cax=cax), scale, highlight_above)


def draw_panel(
    ax: Axes,
    panel: Panel,
    norm: Normalize,
    colormap: LinearSegmentedColormap,
    highlight_above: float | None,
) -> AxesImage:
    """The cells, the blank (hatched) background, kinks, the worst element and the labels."""
    colormap = colormap.with_extremes(bad=(0, 0, 0, 0))
    values = np.ma.masked_invalid(panel.image)
    if isinstance(norm, LogNorm):
        values = np.ma.clip(values, norm.vmin, norm.vmax)
    ax.set_facecolor("white")
    ax.patch.set_hatch("////")
    ax.patch.set_edgecolor("0.85")
    image = ax.imshow(
        values,
        cmap=colormap,
        norm=norm,
        extent=panel.extent,
        interpolation="nearest",
        aspect="auto",
    )
    if highlight_above is not None:
        fade_below(ax, panel, highlight_above)
    draw_tile_edges(ax, panel)
    mark_kinks_and_worst(ax, panel)
    label_axes(ax, panel)
    return image


def fade_below(ax: Axes, panel: Panel, threshold: float) -> None:
    """Cover elements at or below ``threshold`` with translucent white."""
    with np.errstate(invalid="ignore"):
        faded = np.abs(panel.image) <= threshold
    overlay = np.zeros((*panel.image.shape, 4))
    overlay[faded] = to_rgba("white", 0.75)
    ax.imshow(overlay, extent=panel.extent, interpolation="nearest", aspect="auto")


def draw_tile_edges(ax: Axes, panel: Panel) -> None:
    """Separators between the tiles of a mosaic, when tiles are big enough to see."""
    if panel.layout.kind not in ("kernels", "tiles"):
        return
    (height, width), (rows, columns) = panel.layout.tile, panel.layout.tiles
    if height < 3 * panel.block[0] or width < 3 * panel.block[1]:
        return
    style = dict(color="white", linewidth=1.0)
    for r in range(1, rows):
        ax.axhline(r * height - 0.5, **style)
    for c in range(1, columns):
        ax.axvline(c * width - 0.5, **style)


def mark_kinks_and_worst(ax: Axes, panel: Panel) -> None:
    kink_rows, kink_columns = panel.kinks
    if kink_rows.size:
        ax.plot(
            kink_columns,
            kink_rows,
            linestyle="none",
            marker="x",
            markersize=5,
            markeredgewidth=1.3,
            color="#1f3a93",
            label="kink",
            path_effects=[patheffects.withStroke(linewidth=3, foreground="white")],
        )
    if panel.worst is not None:
        ax.plot(
            panel.worst[1],
            panel.worst[0],
            linestyle="none",
            marker="s",
            markersize=11,
            markerfacecolor="none",
            markeredgecolor="black",
            markeredgewidth=1.5,
            label="worst",
        )


def label_axes(ax: Axes, panel: Panel) -> None:
    tensor, layout = panel.tensor, panel.layout
    shape = "×".join(map(str, tensor.shape)) or "scalar"
    ax.set_title(f"{tensor.name}  ({shape})", loc="left", fontsize=9)
    ax.set_title(
        panel.verdict,
        loc="right",
        fontsize=9,
        fontweight="bold",
        color=VERDICT_COLOURS[panel.verdict],
    )
    ax.tick_params(labelsize=7)
    rows, columns = layout.grid.shape
    if layout.kind == "strip":
        ax.set_yticks([])
        ax.set_xticks(thinned(columns, 6))
        ax.set_xlabel("index", fontsize=8)
    elif layout.kind == "matrix":
        ax.set_yticks(thinned(rows, 6))
        ax.set_xticks(thinned(columns, 6))
        ax.set_xlabel("column", fontsize=8)
        ax.set_ylabel("row", fontsize=8)
    elif layout.kind == "kernels":
        label_kernel_axes(ax, panel)
    else:
        label_tiles(ax, panel)
    ax.set_xlabel(f"{ax.get_xlabel()}\n{detail_line(panel)}", fontsize=8)


def detail_line(panel: Panel) -> str:
    tensor = panel.tensor
    parts = [
        f"rel. diff {panel.difference:.1e}",
        f"{int(tensor.evaluated.sum()):,}/{tensor.size:,} checked",
    ]
    line = " · ".join(parts)
    if panel.pooled:
        line += f"\nmax-pooled {panel.block[0]}×{panel.block[1]} (each cell: its block's worst)"
    return line


def label_kernel_axes(ax: Axes, panel: Panel) -> None:
    """Ticks at tile centres: output channel down, input channel across."""
    (height, width), (rows, columns) = panel.layout.tile, panel.layout.tiles
    row_ticks = thinned(rows)
    column_ticks = thinned(columns)
    ax.set_yticks([r * height + (height - 1) / 2 for r in row_ticks], row_ticks)
    ax.set_xticks([c * width + (width - 1) / 2 for c in column_ticks], column_ticks)
    ax.set_ylabel("output channel", fontsize=8)
    ax.set_xlabel(f"input channel (tiles: {height}×{width} kernels)", fontsize=8)


def label_tiles(ax: Axes, panel: Panel) -> None:
    """Tile numbers (index of the merged leading axes) at each tile's corner."""
    (height, width), (_, columns) = panel.layout.tile, panel.layout.tiles
    ax.set_xticks([])
    ax.set_yticks([])
    count = math.prod(panel.tensor.shape[:-2])
    if count <= MAX_TILE_LABELS:
        for k in range(count):
            r, c = divmod(k, columns)
            ax.text(
                c * width - 0.4,
                r * height - 0.4,
                str(k),
                fontsize=6,
                va="top",
                ha="left",
                color="0.1",
                bbox=dict(boxstyle="square,pad=0.1", facecolor="white", alpha=0.7, linewidth=0),
            )
    leading = "×".join(map(str, panel.tensor.shape[:-2]))
    ax.set_xlabel(f"{leading} tiles of {height}×{width}, row-major", fontsize=8)


def thinned(count: int, most: int = 8) -> list[int]:
    """At most about ``most`` evenly spaced positions in range(count), on round steps."""
    step = max(1, math.ceil(count / most))
    if step > 1:
        magnitude = 10 ** math.floor(math.log10(step))
        step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= step)
    return list(range(0, count, step))


def finish_colorbar(colorbar: Colorbar, scale: str, highlight_above: float | None) -> None:
    colorbar.ax.set_label(COLORBAR_LABEL)
    colorbar.ax.tick_params(labelsize=7)
    labels = {
        "log": "relative error",
        "abs": "|analytic − numeric|",
        "signed": "analytic − numeric",
    }
    colorbar.set_label(labels[scale], fontsize=8)
    if scale == "log":
        figure = colorbar.ax.figure
        mark_thresholds(colorbar, colorbar.ax.get_position().height * figure.get_figheight())
    else:
        colorbar.formatter = FuncFormatter(lambda value, _: f"{value:.1e}" if value else "0")
        colorbar.update_ticks()
    if highlight_above is not None:
        levels = (highlight_above, -highlight_above) if scale == "signed" else (highlight_above,)
        for level in levels:
            colorbar.ax.axhline(level, color="#1f3a93", linestyle="--", linewidth=1.2)


def mark_thresholds(colorbar: Colorbar, height: float) -> None:
    """Lines at the verdict thresholds, and each band's verdict written beside it where
    the band (``height`` inches of colour bar in all) is long enough for the word."""
    low, high = colorbar.norm.vmin, colorbar.norm.vmax
    edges = [low, *(t for _, t in VERDICT_THRESHOLDS), high]
    for _, threshold in VERDICT_THRESHOLDS:
        if low < threshold < high:
            colorbar.ax.axhline(threshold, color="black", linewidth=1.0)
    decades = math.log10(high / low)
    for (verdict, *_), start, stop in zip(BAND_COLOURS, edges[:-1], edges[1:]):
        start, stop = max(start, low), min(stop, high)
        if start >= stop or height * math.log10(stop / start) / decades < BAND_LETTER * len(
            verdict
        ):
            continue
        middle = math.sqrt(start * stop)
        colorbar.ax.text(
            -0.35,
            middle,
            verdict,
            rotation=90,
            va="center",
            ha="right",
            fontsize=7,
            color=VERDICT_COLOURS[verdict],
            transform=colorbar.ax.get_yaxis_transform(),
        )


def figure_title(result: CheckResult, scale: str) -> str:
    quantity = {
        "log": "relative error |n − a| / (|n| + |a|)",
        "abs": "absolute error |a − n|",
        "signed": "signed error a − n",
    }
    return f"Gradient check: {result.verdict}\n{quantity[scale]} per element"


WORST_LEGEND = {"rel_error": "□ largest relative error", "abs_error": "□ largest |n − a|"}


def legend_text(panels: list[Panel], scale: str) -> str:
    parts = ["a: analytic, n: numeric"]
    if any(p.worst is not None for p in panels):
        parts.append(WORST_LEGEND[SCALE_ERRORS[scale]])
    if any(p.kinks[0].size for p in panels):
        parts.append("× kink (not counted)")
    if any(np.isnan(p.image).any() for p in panels):
        parts.append("hatched: not checked")
    return "    ".join(parts)
