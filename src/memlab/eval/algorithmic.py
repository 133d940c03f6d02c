"""Suite ``algorithmic``: exact-match accuracy per task on the IID and OOD grids.

For every task and every difficulty of the chosen grid(s), ``samples`` distinct examples
are drawn (fewer where the cell has fewer; the same ones for every model: the generator is
seeded by the suite seed and the cell) and scored by greedy exact match.  Accuracy is
reported per difficulty (accuracy as a function of length), per task and split, and pooled
over tasks (the correct answers and examples of every cell summed).

The IID grid's levels are trained on, and where a level has few distinct examples the
training stream holds most of them (two-bit parity: all 4): IID accuracy then measures recall
as much as generalisation.  The OOD levels lie beyond every trained one.

Each split's summary keeps its per-example outcomes (``outcomes``, in cell order) and a hash of
the examples' texts in that order (``examples_sha256``): two models scored on the same examples
(same tasks, grid, samples and seed) can be compared example by example (a paired interval).
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from typing import Any

from memlab.data.tasks import GRIDS, TASKS, Example, encode_example
from memlab.errors import MemlabError, choose
from memlab.eval.hub import EvalContext, distinct, register_suite
from memlab.eval.stats import accuracy_record, outcomes_string, pool


def check_tasks(names: list[str] | None) -> list[str]:
    """The algorithmic tasks to evaluate (default: all); an unknown name is a MemlabError."""
    if names is None:
        return sorted(GRIDS)
    if not names:
        raise MemlabError(f"--tasks is empty; valid choices: {', '.join(sorted(GRIDS))}")
    for name in names:
        choose("algorithmic task", name, GRIDS)
    return list(dict.fromkeys(names))


def _text(example: Example) -> tuple[str, str, str]:
    return example.prompt, example.query, example.answer


@register_suite("algorithmic")
def run(ctx: EvalContext) -> dict[str, Any]:
    options = ctx.options
    tasks = check_tasks(options.tasks)
    splits = ("iid", "ood") if options.grid == "all" else (options.grid,)
    grids = {split: {t: list(getattr(GRIDS[t], split)) for t in tasks} for split in splits}
    payload: dict[str, Any] = {"grids": grids, "tasks": {}}
    cells = [(task, split, d) for task in tasks for split in splits for d in grids[split][task]]
    examples, texts, bounds = [], [], [0]  # each cell's examples, cell after cell; scored together (fuller batches)
    for task, _, difficulty in cells:
        rng = ctx.rng(f"algorithmic/{task}/{difficulty}")
        drawn = distinct(partial(TASKS[task], rng, difficulty), options.samples, key=_text)
        examples += [encode_example(e, ctx.tokenizer) for e in drawn]
        texts += [_text(e) for e in drawn]
        bounds.append(len(examples))
    hits = ctx.score(examples, "algorithmic")
    records: dict[str, list[dict[str, Any]]] = {task: [] for task in tasks}
    for (task, split, difficulty), start, stop in zip(cells, bounds, bounds[1:]):
        tokens = sum(len(e) for e in examples[start:stop]) / (stop - start)
        records[task].append({"split": split, "difficulty": difficulty, "mean_tokens": tokens,
                              **accuracy_record(hits[start:stop])})
    for task, by_difficulty in records.items():
        per_split = {split: pool([c for c in by_difficulty if c["split"] == split]) for split in splits}
        payload["tasks"][task] = {**per_split, "by_difficulty": by_difficulty}
    payload["summary"] = {}
    for split in splits:
        taken = [i for (_, cell_split, _), start, stop in zip(cells, bounds, bounds[1:]) if cell_split == split
                 for i in range(start, stop)]  # this split's examples, cell after cell
        payload["summary"][split] = {**pool([payload["tasks"][t][split] for t in tasks]),
                                     "outcomes": outcomes_string(hits[taken]),
                                     "examples_sha256": examples_sha256([texts[i] for i in taken])}
    return payload


def examples_sha256(texts: list[tuple[str, str, str]]) -> str:
    """Hash of the (prompt, query, answer) texts of examples, in order: equal for the same examples."""
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()
