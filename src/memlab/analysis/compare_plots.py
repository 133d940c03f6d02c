"""Side-by-side plots of compared runs: headline metrics, accuracy vs length, needle heat-maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D

from memlab.analysis.compare import FIGURES, Metric, Row
from memlab.plotting import pyplot, save_figure

plt = pyplot()


def plot_comparison(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    """Write ``compare.png`` (+ ``compare_length.png``, ``compare_needle.png`` when the data exist)."""
    headline, by_length, needles = (out_dir / name for name in FIGURES)
    files = [_headline(rows, headline)]
    if any(r.results.get("algorithmic", {}).get("tasks") for r in rows):
        files.append(_by_length(rows, by_length))
    if any(r.results.get("longctx", {}).get("tasks") for r in rows):
        files.append(_needle_maps(rows, needles))
    return files


def _bars(ax, rows: Sequence[Row], values: str | list[tuple[str, list[Metric]]], title: str, scale: float = 1.0):
    """Bars (with 95% intervals) of one metric (an attribute name) or of labelled series, per run; a
    missing value (a metric not measured, a Delta that does not apply) is an empty bar marked n/a."""
    names = [r.name for r in rows]
    series = values if isinstance(values, list) else [(None, [getattr(r, values) for r in rows])]
    width = 0.8 / len(series)
    x = np.arange(len(rows))
    for i, (label, ms) in enumerate(series):
        v = np.array([np.nan if m.value is None else scale * m.value for m in ms])
        bounds = np.array([m.ci95 if m.ci95 and m.value is not None else [None, None] for m in ms], dtype=float)
        missing = np.isnan(v)  # no error bar either: its caps at 0 had read as a measured 0
        below, above = v - scale * bounds[:, 0], scale * bounds[:, 1] - v
        lo, hi = (np.where(missing, np.nan, np.nan_to_num(e)) for e in (below, above))  # a value without one: 0
        at = x + (i - (len(series) - 1) / 2) * width
        ax.bar(at, np.nan_to_num(v), width, yerr=[lo, hi], capsize=3, label=label)
        for where in at[missing]:
            ax.annotate("n/a", (where, 0), ha="center", va="bottom", fontsize=7, color="0.4")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=8)


def _headline(rows: Sequence[Row], path: Path) -> Path:
    panel = max(4.0, 0.35 * len(rows))  # inches per panel: room for every run's label
    fig, axes = plt.subplots(1, 5, figsize=(5 * panel, 4), constrained_layout=True, dpi=110)
    accuracy = [("IID", [r.algorithmic for r in rows]), ("OOD", [r.ood for r in rows])]
    _bars(axes[0], rows, accuracy, "algorithmic accuracy %", 100)
    _bars(axes[1], rows, "needle", "needle accuracy %", 100)
    _bars(axes[2], rows, "perplexity", "validation perplexity (log scale)")
    if any(r.perplexity.value is not None and r.perplexity.value > 0 for r in rows):  # else no data to scale
        axes[2].set_yscale("log")
    _bars(axes[3], rows, "delta", "memory ablation Delta (pts)", 100)
    _bars(axes[4], rows, "train_time_s", "training time (s)")
    save_figure(fig, path)
    return path


def _by_length(rows: Sequence[Row], path: Path) -> Path:
    tasks = sorted({t for r in rows if "algorithmic" in r.results for t in r.results["algorithmic"]["tasks"]})
    cols = min(5, len(tasks)) or 1
    nrows = (len(tasks) + cols - 1) // cols or 1
    fig, axes = plt.subplots(
        nrows, cols, figsize=(3.6 * cols, 3 * nrows), squeeze=False, constrained_layout=True, dpi=110
    )
    colors = _colors(len(rows))
    for ax, task in zip(axes.flat, tasks):
        for r, color in zip(rows, colors):
            points = r.results.get("algorithmic", {}).get("tasks", {}).get(task, {}).get("by_difficulty", [])
            for split, style in (("iid", "-o"), ("ood", "--o")):
                pts = [p for p in points if p["split"] == split and p["accuracy"] is not None]
                if pts:
                    ax.plot([p["difficulty"] for p in pts], [100 * p["accuracy"] for p in pts], style,
                            color=color, markersize=3)
        ax.set_title(task, fontsize=10)
        ax.set_ylim(-3, 103)
        ax.set_xlabel("difficulty (solid: IID, dashed: OOD)", fontsize=7)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    handles = [Line2D([], [], color=color, marker="o", markersize=3, label=_shown(r)) for r, color in zip(rows, colors)]
    per_row = max(1, int(3.6 * cols / 1.6))  # about 1.6 inches per entry: the legend fits the figure's width
    fig.legend(handles=handles, loc="outside upper center", ncols=min(per_row, len(rows)), fontsize=8)
    save_figure(fig, path)
    return path


def _needle_maps(rows: Sequence[Row], path: Path) -> Path:
    with_data = [r for r in rows if r.results.get("longctx", {}).get("tasks")]
    fig, axes = plt.subplots(1, len(with_data), figsize=(3.6 * len(with_data), 3.2), squeeze=False,
                             constrained_layout=True, dpi=110)
    for ax, r in zip(axes.flat, with_data):
        payload = r.results["longctx"]
        grid = pooled_grid(payload)
        image = ax.imshow(100 * grid, vmin=0, vmax=100, cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(len(payload["depths"])), [f"{d:g}" for d in payload["depths"]], fontsize=7)
        ax.set_yticks(range(len(payload["context_lengths"])), payload["context_lengths"], fontsize=7)
        ax.set_xlabel("needle depth")
        ax.set_ylabel("context length")
        ax.set_title(_shown(r), fontsize=10)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="accuracy %")
    save_figure(fig, path)
    return path


def pooled_grid(payload: dict) -> np.ndarray:
    """(lengths, depths) accuracy of a longctx payload, pooled over its needle tasks (NaN: no examples)."""
    lengths, depths = payload["context_lengths"], payload["depths"]
    correct = np.zeros((len(lengths), len(depths)))
    n = np.zeros_like(correct)
    for task in payload["tasks"].values():
        for cell in task["cells"]:
            i, j = lengths.index(cell["context_len"]), depths.index(cell["depth"])
            correct[i, j] += cell["correct"]
            n[i, j] += cell["n"]
    with np.errstate(invalid="ignore"):
        return correct / n


def _colors(n: int) -> list:
    """``n`` distinguishable colours: matplotlib's ten, then twenty, then a spread of a continuous map."""
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    if n <= 20:
        return list(plt.get_cmap("tab20").colors[:n])
    return list(plt.get_cmap("turbo")(np.linspace(0.05, 0.95, n)))


def _shown(row: Row) -> str:
    """A row's name on the per-run plots; an aggregated row shows its first seed's curves, and says so."""
    return f"{row.name} ({row.members[0].name})" if row.members else row.name
