"""Exact-match scoring of task examples in one teacher-forced forward per batch.

Greedy decoding reproduces an answer exactly (and stops) iff, with the context and the
answer so far fed in, the argmax at every scored position is the next answer token.  So
one parallel forward gives the same verdict as token-by-token greedy decoding (tested
against :meth:`memlab.models.lm.LanguageModel.generate`) at a fraction of the cost on a
CPU.  Batching and the per-row verdict are :mod:`memlab.data.tasks`' own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from memlab.data.tasks import TokenizedExample, pad_batch
from memlab.data.tasks import exact_match as rows_exact_match
from memlab.errors import MemlabError


def check_context(model: nn.Module, length: int, what: str = "an example") -> None:
    """Raise a MemlabError if ``length`` tokens exceed a model with learned absolute positions'
    ``config.max_seq_len`` (it has no embedding beyond).  RoPE and position-free models run at any
    length: evaluating them beyond their training length is what a length-generalisation test does."""
    limit = model.config.max_seq_len
    if model.config.pos_encoding == "learned" and length > limit:
        raise MemlabError(
            f"{what} needs {length} tokens but the model's learned positions end at max_seq_len={limit}; "
            "choose shorter context lengths"
        )


@torch.no_grad()
def exact_match(
    model: nn.Module,
    examples: Sequence[TokenizedExample],
    pad_id: int,
    batch_tokens: int = 16384,
    progress: str | None = None,
) -> np.ndarray:
    """(n,) bool: whether greedy decoding reproduces each example's scored tokens exactly.

    Examples are sorted by length and right-padded into batches of about ``batch_tokens``
    tokens; padding after a sequence cannot change its logits because the model is causal.
    ``progress`` names a progress bar over the examples (None: no bar).
    """
    from tqdm.auto import tqdm

    if not examples:
        return np.zeros(0, dtype=bool)
    inputs = np.array([len(e) - 1 for e in examples])  # the last id is only a target
    check_context(model, int(inputs.max()))
    device = next(model.parameters()).device
    out = np.zeros(len(examples), dtype=bool)
    order = np.argsort(inputs, kind="stable")
    bar = tqdm(total=len(examples), desc=progress, unit="ex", leave=False, disable=progress is None)
    start = 0
    while start < len(order):
        stop = start + 1  # ascending lengths: the padded batch is (rows, length of its last row)
        while stop < len(order) and inputs[order[stop]] * (stop - start + 1) <= max(batch_tokens, inputs[order[start]]):
            stop += 1
        batch = pad_batch([examples[i] for i in order[start:stop]], pad_id)
        logits = model(batch.input_ids.to(device))  # (B, T, V)
        out[order[start:stop]] = rows_exact_match(logits, batch.labels.to(device)).cpu().numpy()
        bar.update(stop - start)
        start = stop
    bar.close()
    return out


def split_answer(example: TokenizedExample) -> tuple[list[int], list[int]]:
    """(context ids, answer ids) of an example whose scored tokens are one span at its end."""
    first = example.loss_mask.index(True) if True in example.loss_mask else len(example)
    if first == len(example) or not all(example.loss_mask[first:]):
        raise ValueError("the example's scored tokens are not one span at its end")
    return list(example.ids[:first]), list(example.ids[first:])


@torch.no_grad()
def exact_match_by_generation(model: nn.Module, examples: Sequence[TokenizedExample]) -> np.ndarray:
    """(n,) bool: the literal definition, one ``model.generate`` call per example (slow; for tests)."""
    device = next(model.parameters()).device
    out = np.zeros(len(examples), dtype=bool)
    for i, example in enumerate(examples):
        context, answer = split_answer(example)
        ids = torch.tensor([context], device=device)
        generated = model.generate(ids, max_new_tokens=len(answer), temperature=0.0)[0, len(context) :]
        out[i] = generated.tolist() == answer
    return out
