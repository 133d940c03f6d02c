"""Procedural tasks: ten algorithmic generators and the retrieval tasks, by name.

::

    from memlab.data.tasks import TASKS, get_task, encode_example, pad_batch, exact_match
    example = TASKS["addition"](random.Random(0), 4)          # Example(prompt='4821+907', answer=...)
    niah = get_task("niah:position=middle")                   # retrieval tasks take parameters
    sniah = get_task("sniah2:n_keys=4,depth=50", tokenizer=tok)  # token counts by the tokenizer
    batch = pad_batch([encode_example(e, tok) for e in examples], tok.pad_id)
    correct = exact_match(model(batch.input_ids), batch.labels)   # (B,) bool, one forward pass

A task spec is ``NAME`` or ``NAME:key=value,key=value``.  ``TASKS`` holds the ten algorithmic
tasks (``GRIDS``/``GRID_VERSION`` their IID/OOD difficulties), ``RETRIEVAL_TASKS`` the
parameterised retrieval tasks, ``task_levels(name)`` the difficulties a curriculum walks through.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

from memlab.config import check_types
from memlab.data.tasks.algorithmic import ALGORITHMIC_TASKS, GRID_VERSION, GRIDS, Grid
from memlab.data.tasks.base import (
    IGNORE_INDEX,
    Batch,
    Example,
    Task,
    TokenizedExample,
    encode_example,
    exact_match,
    pack_examples,
    pad_batch,
    token_accuracy,
)
from memlab.data.tasks.retrieval import MQAR, NIAH_LEVELS, RETRIEVAL_VERSION, SNIAH, SNIAH_LEVELS, FactNIAH
from memlab.errors import MemlabError

TASKS: dict[str, Task] = dict(ALGORITHMIC_TASKS)
RETRIEVAL_TASKS: dict[str, Any] = {
    "niah": FactNIAH,
    "sniah1": partial(SNIAH, variant=1),
    "sniah2": partial(SNIAH, variant=2),
    "sniah3": partial(SNIAH, variant=3),
    "mqar": MQAR,
}
RETRIEVAL_LEVELS: dict[str, tuple[int, ...]] = {
    "niah": NIAH_LEVELS,
    "sniah1": SNIAH_LEVELS,
    "sniah2": SNIAH_LEVELS,
    "sniah3": SNIAH_LEVELS,
    "mqar": (4, 8, 16, 32, 64),
}


def task_names() -> list[str]:
    return sorted(TASKS) + sorted(RETRIEVAL_TASKS)


def _value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_task_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"sniah2:n_keys=4,depth=50"`` -> ``("sniah2", {"n_keys": 4, "depth": 50})``."""
    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise MemlabError(f"task spec {spec!r}: parameters are key=value, got {item!r}")
        params[key.strip()] = _value(value.strip())
    return name.strip(), params


def get_task(spec: str, tokenizer=None, seq_len: int | None = None, **params: Any) -> Task:
    """The task named by ``spec`` with its parameters.

    For retrieval tasks not given them explicitly: ``count_tokens`` comes from ``tokenizer``,
    ``vocab_size`` (MQAR) is the tokenizer's vocabulary, ``seq_len`` (MQAR) the given one.
    """
    name, parsed = parse_task_spec(spec)
    params = {**parsed, **params}
    if name in TASKS:
        if params:
            raise MemlabError(f"algorithmic task {name} takes no parameters, got {sorted(params)}")
        return TASKS[name]
    if name not in RETRIEVAL_TASKS:
        raise MemlabError(f"unknown task {name!r}; valid choices: {', '.join(task_names())}")
    factory = RETRIEVAL_TASKS[name]
    cls = factory.func if isinstance(factory, partial) else factory
    fields = {f.name for f in dataclasses.fields(cls)} - set(getattr(factory, "keywords", {}))
    unknown = set(params) - fields
    if unknown:
        raise MemlabError(f"task {name} has no parameter(s) {sorted(unknown)}; valid: {', '.join(sorted(fields))}")
    check_types(cls, parsed, f"task {spec!r}")  # (a float count had failed at the first batch)
    if tokenizer is not None and "count_tokens" in fields:
        params.setdefault("count_tokens", lambda text: len(tokenizer.encode(text)))
    if tokenizer is not None and "vocab_size" in fields:
        params.setdefault("vocab_size", tokenizer.vocab_size)
        if params["vocab_size"] > tokenizer.vocab_size:  # (had been refused as a task too long for seq_len)
            raise MemlabError(f"task {spec}: vocab_size={params['vocab_size']} exceeds the tokenizer's "
                              f"{tokenizer.vocab_size} ids; give vocab_size <= {tokenizer.vocab_size}, or none")
    if tokenizer is not None and "reserved_ids" in fields:
        params.setdefault("reserved_ids", frozenset(tokenizer.specials.values()))
    if seq_len is not None and "seq_len" in fields:
        params.setdefault("seq_len", seq_len)
    try:
        return factory(**params)
    except TypeError as e:
        raise MemlabError(f"task {spec!r}: {e}") from None


def task_levels(spec: str) -> tuple[int, ...]:
    """The difficulties a curriculum trains ``spec`` on, easiest first."""
    name, _ = parse_task_spec(spec)
    if name in GRIDS:
        return GRIDS[name].train
    if name in RETRIEVAL_LEVELS:
        return RETRIEVAL_LEVELS[name]
    raise MemlabError(f"unknown task {name!r}; valid choices: {', '.join(task_names())}")


__all__ = [
    "GRIDS",
    "GRID_VERSION",
    "IGNORE_INDEX",
    "MQAR",
    "RETRIEVAL_LEVELS",
    "RETRIEVAL_TASKS",
    "RETRIEVAL_VERSION",
    "SNIAH",
    "TASKS",
    "Batch",
    "Example",
    "FactNIAH",
    "Grid",
    "Task",
    "TokenizedExample",
    "encode_example",
    "exact_match",
    "get_task",
    "pack_examples",
    "pad_batch",
    "parse_task_spec",
    "task_levels",
    "task_names",
    "token_accuracy",
]
