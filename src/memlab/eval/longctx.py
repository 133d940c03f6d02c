"""Suite ``longctx``: needle-in-a-haystack accuracy over context length x needle depth.

For each needle task (the fact/distractor NIAH and RULER's S-NIAH-1/2/3, each with the
task's ``:key=value`` parameters if given, e.g. ``niah:distractors=sky``) and each cell
(context length, depth) of the grid, ``needle_samples`` examples are scored by exact
match; each task gets a heat-map PNG.  A cell records where its needles really are
(``needle_depth``: mean, min, max), which in a short prose haystack can be far from its depth.
A cell's examples are distinct (its ``n`` is smaller where the task has fewer), and each task records
its ``chance``: the accuracy of a uniform guess among the answer's candidate values (1/8 for the
fact NIAH's colours, about 0 for S-NIAH's numbers and UUIDs).
Lengths beyond the model's ``max_seq_len`` measure length generalisation (RoPE and position-free
models); a model with learned absolute positions has none there and refuses them, as a length too
short for a task's needle and question is refused, before any suite runs.  The default grid
instead leaves such a length out, with a warning (256 is too short for S-NIAH in byte tokens).
"""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from memlab.data.tasks import RETRIEVAL_VERSION
from memlab.errors import MemlabError
from memlab.eval.exact_match import check_context
from memlab.eval.hub import EvalContext, file_safe, register_suite
from memlab.eval.options import DEFAULT_CONTEXT_LENGTHS
from memlab.eval.retrieval import NEEDLE_TASKS, ContextTooShort, check_needle_tasks, retrieval_examples
from memlab.eval.stats import accuracy_record, pool
from memlab.plotting import pyplot, save_figure

log = logging.getLogger(__name__)


def needle_grid(ctx: EvalContext) -> tuple[list[str], list[int], list[float]]:
    """The needle tasks, context lengths and depths the options name."""
    options = ctx.options
    tasks = check_needle_tasks(options.needle_tasks or list(NEEDLE_TASKS))
    return tasks, sorted(set(options.context_lengths)), sorted(set(options.depths))


def check(ctx: EvalContext) -> None:
    """Refuse what the suite cannot run (before any suite runs): a length beyond the model's
    context, a depth outside [0, 1], a needle and question that do not fit a length (one example
    of each task at each length is drawn to see)."""
    tasks, lengths, depths = needle_grid(ctx)
    if not lengths or not depths or min(lengths) < 1:
        raise MemlabError("longctx needs positive --context-lengths and at least one --depths value")
    if not all(0 <= d <= 1 for d in depths):  # (NaN too: it had reached the task as a percentage)
        raise MemlabError(f"needle depths are fractions in [0, 1], got {depths}")
    check_context(ctx.model, max(lengths), "the needle context (--context-lengths)")
    too_short: dict[int, ContextTooShort] = {}
    for length in lengths:
        for task in tasks:
            try:
                retrieval_examples(ctx, task, length, 1, random.Random(0), depth=depths[0])
            except ContextTooShort as e:
                too_short.setdefault(length, e)
    if not too_short:
        return
    fitting = [n for n in lengths if n not in too_short]
    if ctx.options.context_lengths != DEFAULT_CONTEXT_LENGTHS or not fitting:
        length, problem = next(iter(too_short.items()))
        raise MemlabError(f"{problem}; leave {length} out of --context-lengths") from None
    left_out = ", ".join(map(str, too_short))
    log.warning("longctx: the default grid leaves out %s: %s", left_out, next(iter(too_short.values())))
    ctx.options = replace(ctx.options, context_lengths=fitting)  # (what run() reads and the results file records)


@register_suite("longctx", check=check)
def run(ctx: EvalContext) -> dict[str, Any]:
    options = ctx.options
    tasks, lengths, depths = needle_grid(ctx)  # checked by evaluate_model before any suite ran
    payload: dict[str, Any] = {"context_lengths": lengths, "depths": depths, "retrieval_version": RETRIEVAL_VERSION,
                              "tasks": {}}
    for task in tasks:
        rng = ctx.rng(f"longctx/{task}")
        grid = [(length, depth) for length in lengths for depth in depths]
        examples, bounds = [], [0]  # each cell's distinct examples, cell after cell
        for length, depth in grid:
            examples += retrieval_examples(ctx, task, length, options.needle_samples, rng, depth=depth)
            bounds.append(len(examples))
        hits = ctx.score(examples, f"longctx {task}")
        cells = [{"context_len": length, "depth": depth, **accuracy_record(hits[start:stop]),
                  "needle_depth": _spread([e.meta.get("depth") for e in examples[start:stop]])}
                 for (length, depth), start, stop in zip(grid, bounds, bounds[1:])]  # fmt: skip
        heatmap = None
        if ctx.out_dir is not None:
            heatmap = f"{ctx.figure_prefix}longctx_{file_safe(task)}.png"
            plot_heatmap(cells, lengths, depths, f"{task}: exact match %", ctx.figure_path(heatmap))
        chance = float(np.mean([e.meta["chance"] for e in examples]))
        payload["tasks"][task] = {"cells": cells, "overall": pool(cells), "chance": chance, "heatmap": heatmap}
    payload["overall"] = pool([t["overall"] for t in payload["tasks"].values()])
    return payload


def _spread(depths: list[float | None]) -> dict[str, float] | None:
    """Mean, min and max of where a cell's needles really are: a prose haystack places them at a
    sentence boundary, far from the cell's depth when a few long sentences fill a short context."""
    real = [d for d in depths if d is not None]
    return {"mean": float(np.mean(real)), "min": min(real), "max": max(real)} if real else None


def plot_heatmap(cells: list[dict], lengths: list[int], depths: list[float], title: str, path: Path) -> str:
    """Accuracy heat-map (rows: context length, columns: depth); returns the file name."""
    plt = pyplot()
    grid = np.full((len(lengths), len(depths)), np.nan)
    for c in cells:
        grid[lengths.index(c["context_len"]), depths.index(c["depth"])] = 100 * c["accuracy"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(depths), 1.2 + 0.6 * len(lengths)), dpi=110)
    image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto", origin="lower")
    for i in range(len(lengths)):
        for j in range(len(depths)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] < 60 else "black")
    ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_yticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_xlabel("needle depth (fraction of the haystack before it)")
    ax.set_ylabel("context length (tokens)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path).name
