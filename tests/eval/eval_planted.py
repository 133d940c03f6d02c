"""Planted models for the evaluation tests.

``planted_model(tokenizer, answer_fn)`` is a real :class:`LanguageModel` (one block, identity
embeddings, no FFN) whose only mixer is an *oracle memory*: a memory-carrying mixer whose
read-out at every position after ``<|sep|>`` is the embedding of the right next answer token,
computed from the tokens it has seen.  So the model answers perfectly, through its state:
zeroing the read-out (``memlab.ablate(mode="zero")``) leaves the residual stream with the
current token only, and a horizon ablation hides the tokens the answer is in.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from memlab.config import ModelConfig
from memlab.mixers import Mixer, MixerState
from memlab.models.lm import LanguageModel

READOUT_SCALE = 4.0  # the answer's logit beats the current token's (1) by a wide margin


@dataclass
class TokenHistory(MixerState):
    tokens: torch.Tensor  # (B, n) int64: every token seen so far


class OracleMemory(Mixer):
    letter = "z"
    carries_memory = True

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.answer_fn: Callable[[str], str | None] = lambda text: None
        self.tokenizer = None

    def mix(self, x: torch.Tensor, state: TokenHistory | None) -> torch.Tensor:
        B, T, D = x.shape
        tokens = x[..., : self.config.vocab_size].argmax(-1)  # (B, T): identity embeddings
        if state is not None:
            state.tokens = torch.cat([state.tokens, tokens], dim=1)
            tokens = state.tokens
        y = torch.zeros_like(x)
        if self.zeroed:
            return y
        offset = tokens.shape[1] - T
        sep = self.tokenizer.sep_id
        for b in range(B):
            row = tokens[b].tolist()
            if sep not in row:
                continue
            s = row.index(sep)
            answer = self.answer_fn(self.tokenizer.decode(row[:s]))
            if answer is None:
                continue
            target = [*self.tokenizer.encode(answer), self.tokenizer.eos_id]
            for t in range(max(s, offset), len(row)):
                j = t - s  # answer tokens emitted so far
                y[b, t - offset, target[j] if j < len(target) else self.tokenizer.eos_id] = READOUT_SCALE
        return y

    def init_state(self, batch_size: int, device=None, dtype=None) -> TokenHistory:
        return TokenHistory(torch.zeros(batch_size, 0, dtype=torch.long, device=device))

    def state_nbytes(self, context_len: int, batch_size: int = 1, dtype=torch.float32) -> int:
        return 8 * batch_size * context_len


def copy_answer(text: str) -> str | None:
    """The copy task: 'copy: 38201' -> '38201'."""
    m = re.search(r"copy: (\d+)", text)
    return m.group(1) if m else None


def niah_answer(text: str) -> str | None:
    """The fact NIAH: the colour of the queried object, if the fact is in view."""
    q = re.search(r"What color is (\w+)'s (\w+)\?", text)
    if not q:
        return None
    fact = re.search(rf"\b{q.group(1)} has a (\w+) {q.group(2)}\.", text)
    return fact.group(1) if fact else "?"


def train_briefly(model: LanguageModel, tokenizer, task: str = "copy", steps: int = 15, seed: int = 0) -> LanguageModel:
    """A few AdamW steps on IID examples of an algorithmic task (a model trained in the test)."""
    import random

    from memlab.data.tasks import GRIDS, TASKS, encode_example, pad_batch

    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        examples = [encode_example(TASKS[task](rng, rng.choice(GRIDS[task].iid)), tokenizer) for _ in range(8)]
        batch = pad_batch(examples, tokenizer.pad_id)
        logits = model(batch.input_ids)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
