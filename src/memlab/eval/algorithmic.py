"""Suite ``algorithmic``: exact-match accuracy per task on the IID and OOD grids.

For every task and every difficulty of the chosen grid(s), ``samples`` examples are
drawn (the same ones for every model: the generator is seeded by the suite seed and the
cell) and scored by greedy exact match.  Accuracy is reported per difficulty (accuracy as
a function of length), per task and split, and pooled over tasks.
"""

from __future__ import annotations

from typing import Any

from memlab.data.tasks import GRIDS, TASKS, encode_example
from memlab.errors import MemlabError, choose
from memlab.eval.hub import EvalContext, register_suite
from memlab.eval.stats import accuracy_record, pool


def check_tasks(names: list[str] | None) -> list[str]:
    """The algorithmic tasks to evaluate (default: all); an unknown name is a MemlabError."""
    if names is None:
        return sorted(GRIDS)
    if not names:
        raise MemlabError(f"--tasks is empty; valid choices: {', '.join(sorted(GRIDS))}")
    for name in names:
        choose("algorithmic task", name, GRIDS)
    return list(dict.fromkeys(names))


@register_suite("algorithmic")
def run(ctx: EvalContext) -> dict[str, Any]:
    options = ctx.options
    tasks = check_tasks(options.tasks)
    splits = ("iid", "ood") if options.grid == "all" else (options.grid,)
    grids = {split: {t: list(getattr(GRIDS[t], split)) for t in tasks} for split in splits}
    payload: dict[str, Any] = {"grids": grids, "tasks": {}}
    cells = [(task, split, d) for task in tasks for split in splits for d in grids[split][task]]
    examples = []  # samples per cell, cell after cell; scored together (fewer, fuller batches)
    for task, _, difficulty in cells:
        rng = ctx.rng(f"algorithmic/{task}/{difficulty}")
        examples += [encode_example(TASKS[task](rng, difficulty), ctx.tokenizer) for _ in range(options.samples)]
    hits = ctx.score(examples, "algorithmic")
    records: dict[str, list[dict[str, Any]]] = {task: [] for task in tasks}
    for i, (task, split, difficulty) in enumerate(cells):
        part = slice(i * options.samples, (i + 1) * options.samples)
        tokens = sum(len(e) for e in examples[part]) / options.samples
        records[task].append({"split": split, "difficulty": difficulty, "mean_tokens": tokens,
                              **accuracy_record(hits[part])})
    for task, by_difficulty in records.items():
        per_split = {split: pool([c for c in by_difficulty if c["split"] == split]) for split in splits}
        payload["tasks"][task] = {**per_split, "by_difficulty": by_difficulty}
    payload["summary"] = {
        split: pool([payload["tasks"][t][split] for t in tasks]) for split in splits
    }
    return payload
