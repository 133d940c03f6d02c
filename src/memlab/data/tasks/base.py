"""Examples, their token form with an answer mask, batching, and answer-only scoring.

A task is a callable ``(rng: random.Random, difficulty: int) -> Example`` (or a
:class:`TokenizedExample` for token-level tasks such as MQAR).  An example is encoded as::

    <|bos|> prompt [<|query|> query] <|sep|> answer <|eos|>
                                             ^^^^^^^^^^^^^^^ loss_mask: the answer and the closing EOS

Labels are *already shifted*: ``labels[b, t]`` is the target for the logits at position ``t``
(the id at ``t + 1``), and -100 wherever there is no loss.  So the loss is plain
``cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)`` and exact-match
accuracy needs one teacher-forced forward pass: greedy decoding reproduces the answer (and stops)
iff the argmax at every labelled position equals its label (:func:`exact_match`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch

from memlab.errors import MemlabError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """A text task instance: the model reads ``prompt`` (and ``query``) and must produce ``answer``."""

    prompt: str
    answer: str
    query: str = ""  # retrieval: the question after the haystack, introduced by <|query|>
    meta: Mapping[str, Any] = field(default_factory=dict)  # e.g. task, difficulty, needle depth


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids (L,) and a mask (L,) that is True on the ids the model is scored on."""

    ids: list[int]
    loss_mask: list[bool]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


Task = Callable[[random.Random, int], "Example | TokenizedExample"]


class SpecialIds(Protocol):
    """What encoding needs from a tokenizer (memlab.data.tokenizer.Tokenizer satisfies it)."""

    bos_id: int
    eos_id: int
    sep_id: int
    query_id: int

    def encode(self, text: str) -> list[int]: ...


def encode_example(example: Example | TokenizedExample, tokenizer: SpecialIds) -> TokenizedExample:
    """The token form of an example, the loss mask covering the answer and the closing EOS only."""
    if isinstance(example, TokenizedExample):
        return example
    context = [tokenizer.bos_id, *tokenizer.encode(example.prompt)]
    if example.query:
        context += [tokenizer.query_id, *tokenizer.encode(example.query)]
    context.append(tokenizer.sep_id)
    answer = [*tokenizer.encode(example.answer), tokenizer.eos_id]
    return TokenizedExample(context + answer, [False] * len(context) + [True] * len(answer), example.meta)


class Batch(NamedTuple):
    input_ids: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64, shifted targets, IGNORE_INDEX where no loss
    lengths: torch.Tensor  # (B,) int64, real (unpadded) input length of each row


def _row(ids: Sequence[int], mask: Sequence[bool], width: int, pad_id: int) -> tuple[list[int], list[int]]:
    """Inputs ids[:-1] and shifted labels, right-padded to ``width``."""
    inputs = list(ids[:-1])
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])]
    pad = width - len(inputs)
    return inputs + [pad_id] * pad, labels + [IGNORE_INDEX] * pad


def pad_batch(examples: Sequence[TokenizedExample], pad_id: int, seq_len: int | None = None) -> Batch:
    """One example per row, right-padded to ``seq_len`` (default: the longest example)."""
    if not examples:
        raise MemlabError("cannot batch zero examples")
    width = max(len(e) - 1 for e in examples) if seq_len is None else seq_len
    _check_fit(examples, width)
    rows = [_row(e.ids, e.loss_mask, width, pad_id) for e in examples]
    return Batch(
        torch.tensor([r[0] for r in rows], dtype=torch.long),
        torch.tensor([r[1] for r in rows], dtype=torch.long),
        torch.tensor([len(e) - 1 for e in examples], dtype=torch.long),
    )


def pack_examples(examples: Iterable[TokenizedExample], seq_len: int, pad_id: int, n_rows: int | None = None) -> Batch:
    """Concatenate examples into rows of ``seq_len`` inputs (greedy, in order, no example split).

    With ``n_rows`` the (possibly endless) iterable is read until that many rows are full; the
    example that no longer fits is dropped.  Every row starts with a fresh example.
    """
    rows: list[tuple[list[int], list[bool]]] = []
    ids: list[int] = []
    mask: list[bool] = []
    for e in examples:
        _check_fit([e], seq_len)
        if len(ids) + len(e) > seq_len + 1:
            rows.append((ids, mask))
            ids, mask = [], []
            if len(rows) == n_rows:
                break
        ids, mask = ids + list(e.ids), mask + list(e.loss_mask)
    else:
        if ids:
            rows.append((ids, mask))
    if not rows or (n_rows is not None and len(rows) < n_rows):
        raise MemlabError(f"not enough examples to fill {n_rows or 1} row(s)")
    built = [_row(i, m, seq_len, pad_id) for i, m in rows]
    return Batch(
        torch.tensor([r[0] for r in built], dtype=torch.long),
        torch.tensor([r[1] for r in built], dtype=torch.long),
        torch.tensor([len(i) - 1 for i, _ in rows], dtype=torch.long),
    )


def _check_fit(examples: Sequence[TokenizedExample], seq_len: int) -> None:
    longest = max(examples, key=len)
    if len(longest) - 1 > seq_len:
        raise MemlabError(
            f"an example of {dict(longest.meta) or 'this task'} has {len(longest)} tokens, more than "
            f"seq_len + 1 = {seq_len + 1}; raise seq_len or lower the task difficulty"
        )


def exact_match(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: every labelled position's argmax equals its label (rows without labels: False).

    logits: (B, T, V); labels: (B, T) shifted, IGNORE_INDEX off the answer.  With one example per
    row this equals greedy decoding producing exactly the answer followed by EOS.
    """
    scored = labels != IGNORE_INDEX  # (B, T)
    right = (logits.argmax(-1) == labels) | ~scored
    return right.all(-1) & scored.any(-1)


def token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Scalar: the fraction of labelled positions whose argmax equals the label."""
    scored = labels != IGNORE_INDEX
    return ((logits.argmax(-1) == labels) & scored).sum() / scored.sum().clamp(min=1)


def check_difficulty(task: str, difficulty: int, minimum: int) -> None:
    if difficulty < minimum:
        raise MemlabError(f"task {task} needs difficulty >= {minimum}, got {difficulty}")
