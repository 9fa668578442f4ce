"""Render the README's figures from the demo network: what users see in a notebook.

- ``heatmap.png``: the course network with two planted backprop bugs (dW2 doubled, db1
  with 4/m instead of 1/m), ``result.heatmap()``;
- ``epsilon_curve.png``: the same network without bugs, ``result.sweep_eps().plot()``.

Run: python docs/gallery.py            (writes docs/images/*.png, a few seconds)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import nbgradcheck as ng
from nbgradcheck.demo import course_network

IMAGES = Path(__file__).resolve().parent / "images"
# No version stamp in the files: re-rendering with another matplotlib changes no bytes
# unless the picture changes.
PNG_METADATA = {"Software": None}


def render_heatmap(folder: Path) -> Path:
    net = course_network(bugs=("scale_dW2", "db1_4_over_m"))
    result = ng.check(net.loss, net.parameters, net.gradients, mode="full")
    path = folder / "heatmap.png"
    result.heatmap().savefig(path, metadata=PNG_METADATA)
    return path


def render_epsilon_curve(folder: Path) -> Path:
    net = course_network()
    result = ng.check(net.loss, net.parameters, net.gradients, mode="full")
    path = folder / "epsilon_curve.png"
    result.sweep_eps().plot().savefig(path, metadata=PNG_METADATA)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=IMAGES, help="folder for the PNGs")
    folder = parser.parse_args().out
    folder.mkdir(parents=True, exist_ok=True)
    for render in (render_heatmap, render_epsilon_curve):
        print(render(folder))


if __name__ == "__main__":
    main()
