"""The probes' figures: grids of heat-maps (one panel per layer) and lines over training steps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from memlab.plotting import pyplot, save_figure


def heatmaps(
    panels: Sequence[tuple[str, np.ndarray]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: Path,
    title: str,
    colorbar: str,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """One heat-map per (panel title, rows x columns matrix), in a grid of up to 4 columns."""
    plt = pyplot()
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    height = 0.9 + 0.28 * len(row_labels)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, height * rows + 0.6), dpi=110, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (name, matrix) in zip(axes.flat, panels):
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
        ax.set_xticks(range(len(col_labels)), col_labels, fontsize=6, rotation=90 if len(col_labels) > 8 else 0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).set_label(colorbar, fontsize=7)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def lines(
    x: Sequence[float], series: dict[str, dict[str, Sequence[float]]], path: Path, title: str, xlabel: str
) -> Path:
    """One panel per metric (``series[metric][curve] = values``); the curve named ``mean`` is drawn bold."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.4), dpi=110, squeeze=False)
    for ax, (metric, curves) in zip(axes.flat, series.items()):
        for name, values in curves.items():
            bold = name == "mean"
            ax.plot(x, values, "o-" if bold else "-", lw=2.2 if bold else 0.8, alpha=1 if bold else 0.5, label=name)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
