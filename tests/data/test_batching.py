"""Answer-only loss masks, padded and packed batches, and one-pass exact match == greedy decoding."""

from __future__ import annotations

import random

import pytest
import torch

from memlab.data.tasks import (
    IGNORE_INDEX,
    TASKS,
    Example,
    TokenizedExample,
    encode_example,
    exact_match,
    pack_examples,
    pad_batch,
    token_accuracy,
)
from memlab.errors import MemlabError


def test_encoding_masks_the_answer_and_eos_only(byte_tok):
    ex = encode_example(Example("12+34", "46"), byte_tok)
    assert byte_tok.decode(ex.ids) == "<|bos|>12+34<|sep|>46<|eos|>"
    assert [byte_tok.decode([i]) for i, m in zip(ex.ids, ex.loss_mask) if m] == ["4", "6", "<|eos|>"]
    q = encode_example(Example("hay hay", "red", query="What?"), byte_tok)
    assert byte_tok.decode(q.ids) == "<|bos|>hay hay<|query|>What?<|sep|>red<|eos|>"
    assert sum(q.loss_mask) == 4
    mqar = TokenizedExample([1, 2, 3], [False, False, True])
    assert encode_example(mqar, byte_tok) is mqar  # token-level examples pass through


def test_pad_batch_shifts_labels(byte_tok):
    rng = random.Random(0)
    examples = [encode_example(TASKS["addition"](rng, d), byte_tok) for d in (1, 3, 2)]
    batch = pad_batch(examples, byte_tok.pad_id)
    width = max(len(e) for e in examples) - 1
    assert batch.input_ids.shape == batch.labels.shape == (3, width)
    for row, e in enumerate(examples):
        n = len(e) - 1
        assert batch.lengths[row] == n and batch.input_ids[row, :n].tolist() == e.ids[:-1]
        assert (batch.input_ids[row, n:] == byte_tok.pad_id).all() and (batch.labels[row, n:] == IGNORE_INDEX).all()
        scored = batch.labels[row] != IGNORE_INDEX
        assert scored.sum() == sum(e.loss_mask)
        positions = scored.nonzero().flatten().tolist()  # label at t is the id at t + 1
        assert batch.labels[row, positions].tolist() == [e.ids[t + 1] for t in positions]
    assert pad_batch(examples, byte_tok.pad_id, seq_len=40).input_ids.shape == (3, 40)
    with pytest.raises(MemlabError, match="raise seq_len"):
        pad_batch(examples, byte_tok.pad_id, seq_len=5)


def test_pack_examples_keeps_examples_whole(byte_tok):
    rng = random.Random(1)
    examples = [encode_example(TASKS["copy"](rng, rng.randint(1, 6)), byte_tok) for _ in range(30)]
    batch = pack_examples(examples, 48, byte_tok.pad_id)
    assert batch.input_ids.shape[1] == 48
    assert (batch.labels != IGNORE_INDEX).sum() == sum(sum(e.loss_mask) for e in examples)
    rows = [byte_tok.decode(r[: n + 1].tolist()) for r, n in zip(batch.input_ids, batch.lengths)]
    assert all(r.startswith("<|bos|>copy: ") for r in rows)  # each row starts at an example
    stream = iter(examples)
    two = pack_examples(stream, 48, byte_tok.pad_id, n_rows=2)
    assert two.input_ids.shape == (2, 48) and next(stream) is not None  # read lazily, stopped early
    with pytest.raises(MemlabError, match="not enough examples"):
        pack_examples(examples[:1], 48, byte_tok.pad_id, n_rows=2)


class LookupModel:
    """A fake language model: for each prefix it predicts a fixed next token (a table), else token 0."""

    def __init__(self, vocab: int, continuations: dict[tuple[int, ...], int]) -> None:
        self.vocab, self.table = vocab, continuations

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            ids = input_ids[b].tolist()
            for t in range(T):
                logits[b, t, self.table.get(tuple(ids[: t + 1]), 0)] = 1.0
        return logits

    def greedy(self, prompt: list[int], eos: int, max_new: int) -> list[int]:
        out = list(prompt)
        for _ in range(max_new):
            out.append(int(self(torch.tensor([out]))[0, -1].argmax()))
            if out[-1] == eos:
                break
        return out[len(prompt) :]


def test_exact_match_equals_greedy_decoding(byte_tok):
    """Teach a lookup model the answers with some flaws; one forward pass must agree with decoding."""
    rng = random.Random(2)
    examples = [encode_example(TASKS["addition"](rng, 2), byte_tok) for _ in range(40)]
    table: dict[tuple[int, ...], int] = {}
    for i, e in enumerate(examples):
        start = e.loss_mask.index(True)  # first answer token
        for t in range(start, len(e.ids)):
            target = e.ids[t]
            if i % 4 == 1 and t == len(e.ids) - 2:
                target = byte_tok.encode("7")[0] if target != byte_tok.encode("7")[0] else byte_tok.encode("8")[0]
            if i % 4 == 2 and t == len(e.ids) - 1:
                target = byte_tok.encode(" ")[0]  # right digits, but it never stops
            table.setdefault(tuple(e.ids[:t]), target)
    model = LookupModel(byte_tok.vocab_size, table)
    batch = pad_batch(examples, byte_tok.pad_id)
    one_pass = exact_match(model(batch.input_ids), batch.labels)
    for i, e in enumerate(examples):
        start = e.loss_mask.index(True)
        decoded = model.greedy(e.ids[:start], byte_tok.eos_id, max_new=len(e.ids) - start)
        assert bool(one_pass[i]) == (decoded == e.ids[start:])
    assert 0 < one_pass.sum() < len(examples)  # both outcomes occur
    answers = [(e.ids[:t], e.ids[t]) for e in examples for t in range(e.loss_mask.index(True), len(e.ids))]
    expected = sum(table[tuple(prefix)] == token for prefix, token in answers) / len(answers)  # what the table predicts
    assert 0 < expected < 1
    assert token_accuracy(model(batch.input_ids), batch.labels).item() == pytest.approx(expected)


def test_exact_match_ignores_rows_without_answers():
    logits = torch.zeros(2, 3, 5)
    labels = torch.full((2, 3), IGNORE_INDEX)
    labels[0, 1] = 0
    assert exact_match(logits, labels).tolist() == [True, False]
