"""Retrieval examples of a given length in tokens, for the ``longctx`` and ``ablation`` suites.

The tasks are :mod:`memlab.data.tasks`' own (``niah``, ``sniah1/2/3``, ``mqar``, with
``NAME:key=value`` parameters, e.g. ``niah:distractors=sky``); this module only sizes them: each
example is the longest one whose tokens (context + answer) fit in ``context_len``, and draws them distinct.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from memlab.data.tasks import RETRIEVAL_TASKS, TokenizedExample, encode_example, get_task, parse_task_spec
from memlab.data.tokenizer import Tokenizer
from memlab.errors import MemlabError, choose
from memlab.eval.hub import EvalContext, distinct

NEEDLE_TASKS = ("niah", "sniah1", "sniah2", "sniah3")


def check_needle_tasks(specs: Sequence[str]) -> list[str]:
    """The needle task specs (``NAME[:key=value,...]``, NAME one of :data:`NEEDLE_TASKS`), once each;
    a MemlabError for another name, a parameter the task does not take, one that places the needle
    (the grid's depths do), or two specs of one task (``niah`` and ``niah:distractors=people``)."""
    tasks: dict[object, str] = {}  # task -> the spec that named it first
    for spec in dict.fromkeys(specs):
        name, params = parse_task_spec(spec)
        choose("needle task", name, NEEDLE_TASKS)
        task = get_task(name, **params)
        placed = sorted({"depth", "position"} & params.keys())
        if placed:
            raise MemlabError(f"needle task {spec!r}: {', '.join(placed)} is the grid's (--depths), not a parameter")
        if task in tasks:
            raise MemlabError(f"needle tasks {tasks[task]!r} and {spec!r} are the same task; give it once")
        tasks[task] = spec
    return list(tasks.values())


def retrieval_examples(
    ctx: EvalContext, spec: str, context_len: int, n: int, rng: random.Random, depth: float | None = None
) -> list[TokenizedExample]:
    """Up to ``n`` distinct examples of retrieval task ``spec``, each at most ``context_len`` tokens long
    (fewer only where the task has fewer: see :func:`memlab.eval.hub.distinct`).

    ``depth`` (0..1) places the needle at that fraction of the haystack; None: at random.
    """
    name, params = parse_task_spec(spec)
    choose("retrieval task", name, RETRIEVAL_TASKS)
    if name == "mqar":
        task = get_task(spec, tokenizer=ctx.tokenizer, seq_len=context_len - context_len % 2)
        pairs = max(1, context_len // 16)
        return distinct(lambda: task(random.Random(rng.random()), pairs), n, key=_ids)
    if depth is not None:
        params["depth"] = 100 * depth
    task = get_task(name, tokenizer=ctx.tokenizer, **params)
    # difficulty is the haystack size: tokens for S-NIAH, distractor sentences for the fact NIAH
    units = (1, 1) if name.startswith("sniah") else sentence_units(ctx.tokenizer, task.distractor_sentences())
    return distinct(lambda: _fit(task, name, context_len, units, rng.random(), ctx), n, key=_ids)


class ContextTooShort(MemlabError):
    """A needle task's needle and question (in the tokenizer's tokens) do not fit the context asked for."""


def _ids(example: TokenizedExample) -> tuple[int, ...]:
    return tuple(example.ids)


def sentence_units(tokenizer: Tokenizer, sentences: Sequence[str]) -> tuple[int, int]:
    """(fewest, most) tokens of one of ``sentences`` (a fact NIAH's distractors), with its leading space."""
    lengths = [len(tokenizer.encode(" " + sentence)) for sentence in sentences]
    return min(lengths), max(lengths)


def _fit(task, name: str, context_len: int, units: tuple[int, int], seed: float, ctx: EvalContext) -> TokenizedExample:
    """The example of ``seed`` with the largest haystack whose tokens fit in ``context_len``.

    ``units``: (fewest, most) tokens a unit of difficulty adds.  The search starts above every fitting
    difficulty and steps down by no more units than the excess needs."""
    fewest, most = units
    difficulty = context_len // fewest
    while difficulty >= 0:  # the length grows with the difficulty, in steps of whole sentences
        try:
            example = encode_example(task(random.Random(seed), difficulty), ctx.tokenizer)
        except MemlabError as e:  # the needle and question alone exceed the budget
            raise ContextTooShort(f"{name} does not fit in a context of {context_len} tokens: {e}") from None
        excess = len(example) - context_len
        if excess <= 0:
            return example
        difficulty -= math.ceil(excess / most)
    raise ContextTooShort(f"a {name} example does not fit in a context of {context_len} tokens")
