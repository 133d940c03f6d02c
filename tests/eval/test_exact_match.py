"""Exact match in one teacher-forced forward == greedy decoding with model.generate."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from eval_planted import copy_answer

from memlab.data.tasks import GRIDS, TASKS, TokenizedExample, encode_example
from memlab.eval.exact_match import exact_match, exact_match_by_generation
from memlab.eval.hub import EvalContext, EvalOptions, evaluate_model


def copy_examples(tok, n_per_difficulty=3, splits=("iid", "ood")):
    rng = random.Random(5)
    return [
        encode_example(TASKS["copy"](rng, d), tok)
        for split in splits
        for d in getattr(GRIDS["copy"], split)
        for _ in range(n_per_difficulty)
    ]


def test_a_model_that_copies_gets_100_percent_on_copy(planted_model, byte_tok):
    model = planted_model(copy_answer)
    ctx = EvalContext(model, byte_tok, EvalOptions(tasks=["copy"], samples=6))
    result = evaluate_model(ctx, "algorithmic")["results"]
    copy = result["tasks"]["copy"]
    assert copy["iid"]["accuracy"] == 1.0 and copy["ood"]["accuracy"] == 1.0
    assert copy["iid"]["n"] == 6 * len(GRIDS["copy"].iid)
    assert all(cell["accuracy"] == 1.0 for cell in copy["by_difficulty"])
    examples = copy_examples(byte_tok, 1)
    assert exact_match_by_generation(model, examples).all()  # real greedy decoding agrees


def test_a_wrong_answer_token_anywhere_fails_the_example(planted_model, byte_tok):
    model = planted_model(copy_answer)
    good = copy_examples(byte_tok, 1, ("iid",))
    bad = []
    for i, e in enumerate(good):
        answer_at = [t for t, m in enumerate(e.loss_mask) if m]
        ids = list(e.ids)
        flip = answer_at[i % len(answer_at)]  # a digit, or the closing EOS
        ids[flip] = ord("x")
        bad.append(TokenizedExample(ids, list(e.loss_mask)))
    assert exact_match(model, good, byte_tok.pad_id).all()
    assert not exact_match(model, bad, byte_tok.pad_id).any()


def test_teacher_forced_agrees_with_generate_on_a_trained_model(trained_baseline, byte_tok):
    model = trained_baseline
    examples = copy_examples(byte_tok, 2, ("iid",))
    # plus examples whose answers are the model's own greedy continuation (right by construction),
    # and the same with the last answer token changed (wrong by construction)
    own, wrong = [], []
    for e in examples[:4]:
        context = e.ids[: e.loss_mask.index(True)]
        out = model.generate(torch.tensor([context]), max_new_tokens=5)[0, len(context) :].tolist()
        own.append(TokenizedExample(context + out, [False] * len(context) + [True] * len(out)))
        wrong.append(TokenizedExample(context + out[:-1] + [(out[-1] + 1) % 256], own[-1].loss_mask))
    everything = examples + own + wrong
    fast = exact_match(model, everything, byte_tok.pad_id, batch_tokens=100)  # several batches
    slow = exact_match_by_generation(model, everything)
    np.testing.assert_array_equal(fast, slow)
    assert fast[len(examples) : len(examples) + 4].all() and not fast[-4:].any()


def test_learned_positions_score_an_example_that_fills_them_and_refuse_one_more():
    """An example of max_seq_len + 1 ids is max_seq_len inputs (its last id is only a target): it fits."""
    import memlab
    from memlab.errors import MemlabError
    from memlab.eval.exact_match import check_context

    model = memlab.build_model("nano_baseline", "tiny", vocab_size=64, d_model=32, n_layers=1, n_heads=1, d_ff=64,
                               max_seq_len=16).eval()
    check_context(model, 16)
    with pytest.raises(MemlabError, match="needs 17 tokens but the model's learned positions end at max_seq_len=16"):
        check_context(model, 17)
    fits = TokenizedExample(list(range(17)), [False] * 16 + [True])
    assert exact_match(model, [fits], pad_id=0).shape == (1,)
    with pytest.raises(MemlabError, match="needs 17 tokens"):
        exact_match(model, [TokenizedExample(list(range(18)), [False] * 17 + [True])], pad_id=0)
