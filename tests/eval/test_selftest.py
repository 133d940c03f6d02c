"""The selftest runs on enough tokens to cross its mixers' windows, chunks and segments twice."""

from __future__ import annotations

import pytest
import torch

import memlab
from memlab.eval.hub import EvalContext, EvalOptions, evaluate_model
from memlab.eval.selftest import MIN_T, block_length, selftest_length

SMALL = dict(d_model=32, n_heads=2, d_ff=64)


@pytest.mark.parametrize(
    "variant, overrides, L",
    [
        ("baseline", {}, 1),  # full attention: no block to cross
        ("gdn", {"gdn.chunk_size": 8}, 8),
        ("gdn_hybrid", {"gdn.chunk_size": 8, "attention.window": 24}, 24),  # the W layer's window
        ("ssm", {"ssm.chunk_size": 40}, 40),
        ("latent", {"recursion.segment_len": 30}, 30),
    ],
)
def test_the_length_is_twice_the_longest_block_and_then_some(byte_tok, variant, overrides, L):
    model = memlab.build_model(variant, "tiny", vocab_size=byte_tok.vocab_size, **overrides)
    assert block_length(model) == L and selftest_length(model) == max(2 * L + 17, MIN_T)


def test_the_length_stays_within_the_model_context(byte_tok):
    model = memlab.build_model("gdn_hybrid", "tiny", vocab_size=byte_tok.vocab_size, max_seq_len=100)
    assert block_length(model) == 128 and selftest_length(model) == 100


def test_a_hybrid_passes_across_its_chunk_and_window_boundaries(byte_tok):
    torch.manual_seed(0)
    model = memlab.build_model("gdn_hybrid", "tiny", vocab_size=byte_tok.vocab_size, n_layers=2, **SMALL,
                               **{"gdn.chunk_size": 8, "attention.window": 16}).eval()
    result = evaluate_model(EvalContext(model, byte_tok, EvalOptions()), "selftest")["results"]
    assert result["context_len"] == 2 * 16 + 17 and result["passed"], result
