"""Periodic evaluation during training: validation loss and per-task exact-match accuracy.

Exact match comes from one teacher-forced forward (greedy decoding gives the same answer iff the
argmax at every answer position is right); an answer span longer than ``max_new_tokens`` (with
its EOS) counts as wrong, as decoding capped at that many tokens would, and a task whose answers
run longer is named once in a warning.  (MQAR's values, scored one token each across the
sequence, are spans of one.)  Every process evaluates the
same examples, so the curriculum's observations stay identical across processes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from memlab.data.curriculum import Curriculum
from memlab.data.shards import TokenShards
from memlab.data.tasks import IGNORE_INDEX, exact_match
from memlab.train.distributed import Dist

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    val_loss: float | None = None  # corpus validation loss (nats/token)
    task_loss: float | None = None  # answer-only loss over all evaluated task examples
    acc: dict[str, float] = field(default_factory=dict)
    difficulty: dict[str, int] = field(default_factory=dict)

    @property
    def selection_loss(self) -> float | None:
        """What best_model/ is chosen by: the validation loss, else the task loss."""
        return self.val_loss if self.val_loss is not None else self.task_loss

    def record(self) -> dict:
        out: dict = {}
        if self.val_loss is not None:
            out.update(val_loss=self.val_loss, val_ppl=math.exp(min(self.val_loss, 700.0)))
        if self.task_loss is not None:
            out["task_loss"] = self.task_loss
        if self.acc:
            out.update(acc=dict(self.acc), difficulty=dict(self.difficulty))
        return out


@torch.no_grad()
def validation_loss(
    model: nn.Module, shards: TokenShards, seq_len: int, max_tokens: int, batch_tokens: int, autocast
) -> float:
    """Mean next-token loss over at most ``max_tokens`` tokens of the split, in windows spread evenly
    over it (:meth:`TokenShards.evaluation_starts`)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    rows = max(1, batch_tokens // seq_len)
    for _, windows in shards.evaluation_windows(rows, seq_len, max_windows=max(1, max_tokens // seq_len)):
        windows = windows.to(device)  # (b, T + 1)
        with autocast:
            total += float(model(windows[:, :-1], labels=windows[:, 1:]))  # summed, no (b, T, V) logits
        count += windows[:, 1:].numel()
    return total / count


@torch.no_grad()
def task_accuracy(
    model: nn.Module, curriculum: Curriculum, samples: int, max_new_tokens: int, batch_tokens: int, autocast,
    d: Dist,
) -> EvalResult:
    """Exact-match accuracy of every task at its current difficulty, reported to the curriculum (the
    mean over the processes: their curricula must move alike, or their batches part), and the loss
    on the answers of the tasks the run trains, or of all where it trains none (the selection loss
    without a validation split)."""
    device = next(model.parameters()).device
    result = EvalResult()
    loss_sum, loss_tokens = 0.0, 0
    trained = set(curriculum.trained_specs or curriculum.task_specs)
    for spec in curriculum.task_specs:
        batch = curriculum.eval_batch(spec, samples)
        rows = max(1, batch_tokens // batch.input_ids.shape[1])  # short examples: more rows per forward
        correct = 0
        for start in range(0, samples, rows):
            x = batch.input_ids[start : start + rows].to(device)  # (b, T)
            y = batch.labels[start : start + rows].to(device)  # (b, T), IGNORE_INDEX off the answer
            with autocast:
                logits = model(x)  # (b, T, V)
            span = longest_answer_span(y != IGNORE_INDEX)  # (b,) the longest run of answer tokens, EOS included
            if int(span.max()) > max_new_tokens:
                _warn_answers_beyond_budget(spec, max_new_tokens)
            correct += int((exact_match(logits, y) & (span <= max_new_tokens)).sum())
            if spec in trained:  # (tasks evaluated but never trained had outweighed those trained)
                loss_sum += float(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum"))
                loss_tokens += int((y != IGNORE_INDEX).sum())
        result.acc[spec] = float(d.all_reduce_sum(torch.tensor([correct / samples]))[0]) / d.world_size
        result.difficulty[spec] = curriculum.difficulty(spec)
        curriculum.observe(spec, result.acc[spec])
    if loss_tokens:
        result.task_loss = loss_sum / loss_tokens
    return result


def longest_answer_span(labelled: torch.Tensor) -> torch.Tensor:
    """``labelled (b, T)`` bool -> (b,) length of each row's longest run of labelled positions."""
    starts = labelled & ~F.pad(labelled[:, :-1], (1, 0))
    run = starts.cumsum(-1) * labelled  # (b, T) the run each answer position belongs to, from 1; 0 elsewhere
    lengths = torch.zeros(labelled.shape[0], labelled.shape[1] + 1, dtype=torch.long, device=labelled.device)
    lengths.scatter_add_(1, run, labelled.long())
    return lengths.max(-1).values


@functools.cache  # once per task and budget
def _warn_answers_beyond_budget(spec: str, budget: int) -> None:
    log.warning("%s: some answers run longer than --eval_max_new_tokens %d (EOS included) and count as wrong, "
                "as decoding capped there would; raise it to measure them", spec, budget)


def evaluate(
    model: nn.Module,
    curriculum: Curriculum,
    val: TokenShards | None,
    *,
    seq_len: int,
    eval_tokens: int,
    samples: int,
    max_new_tokens: int,
    batch_tokens: int,
    autocast=None,
    d: Dist | None = None,
) -> EvalResult:
    """Validation loss (when there is a validation split) and task accuracies, in eval mode.

    ``batch_tokens`` bounds the (padded) tokens of one forward pass.
    """
    autocast = autocast or contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        result = task_accuracy(model, curriculum, samples, max_new_tokens, batch_tokens, autocast, d or Dist())
        if val is not None:
            result.val_loss = validation_loss(model, val, seq_len, eval_tokens, batch_tokens, autocast)
    finally:
        model.train(was_training)
    return result
