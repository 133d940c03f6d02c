"""``loss.png`` (log-scale train and validation loss) and ``accuracy.png`` (per-task accuracy over steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memlab.plotting import pyplot, save_figure


def _figure():
    plt = pyplot()
    return plt, *plt.subplots(figsize=(7, 4.2), dpi=110)


def plot_loss(records: list[dict[str, Any]], path: Path) -> None:
    """Training loss per batch kind (tasks, text, retrieval), validation loss and the tasks' answer loss."""
    plt, fig, ax = _figure()
    kinds = sorted({k for r in records for k in r.get("loss_by_kind", {})})
    series = [(f"train ({kind})", lambda r, k=kind: r.get("loss_by_kind", {}).get(k), "-") for kind in kinds]
    series += [
        ("validation", lambda r: r.get("val_loss"), "o-"),
        ("task answers (eval)", lambda r: r.get("task_loss"), "s--"),
    ]
    for label, value, style in series:
        points = [(r["step"], value(r)) for r in records if value(r) is not None and value(r) > 0]
        if points:
            ax.plot(*zip(*points), style, label=label, markersize=3)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(True, which="both", alpha=0.3)
    if points_drawn := ax.get_legend_handles_labels()[0]:  # (a run whose every step was skipped has none)
        ax.legend(handles=points_drawn, fontsize=8)
    save_figure(fig, path)


def plot_accuracy(records: list[dict[str, Any]], path: Path) -> None:
    plt, fig, ax = _figure()
    tasks = sorted({t for r in records for t in r.get("acc", {})})
    for task in tasks:
        points = [(r["step"], r["acc"][task]) for r in records if task in r.get("acc", {})]
        ax.plot(*zip(*points), "o-", label=task, markersize=3)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("exact-match accuracy")
    ax.grid(True, alpha=0.3)
    if tasks:
        ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)
