"""FLOP estimates (memlab info, the scaling ladder's compute axis) against PyTorch's FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import memlab
from memlab.models.body import block_flops_per_token


def counted_per_token(module, x: torch.Tensor, backward: bool) -> float:
    """Matmul FLOPs per position of one forward (and backward) pass, as FlopCounterMode counts them."""
    with FlopCounterMode(display=False) as counter:
        out = module(x)
        if backward:
            out.float().pow(2).mean().backward()
    return counter.get_total_flops() / (x.shape[0] * x.shape[1])


def test_cdm_flops_per_token_do_not_grow_with_the_context():
    """The slot state is carried once per chunk: T/C * K * D per token had doubled the count at 2k."""
    model = memlab.build_model("cdm", "tiny", d_model=64, n_layers=2, vocab_size=256, max_seq_len=1024)
    estimates = [model.estimate_flops_per_token(T) for T in (128, 1024)]
    assert estimates[0] == estimates[1]
    for T in (128, 1024):
        x = torch.randint(0, 256, (1, T))
        assert estimates[0] == pytest.approx(counted_per_token(model, x, backward=True), rel=0.05), T


@pytest.mark.parametrize("seq_len", [128, 1024])
def test_the_memory_readers_key_value_projection_counts_once_per_sequence(seq_len):
    """The M memory tokens' keys and values are one projection per sequence, not one per position."""
    model = memlab.build_model("ssm_mem", "tiny", d_model=64, max_seq_len=1024)
    block = next(b for b in model.body.blocks if b.mixer.letter == "R")
    reader = block.mixer
    attention = 12.0 * reader.n_heads * reader.head_dim * reader.memory.shape[0]  # the counter leaves SDPA out
    x = torch.randn(1, seq_len, 64)
    with torch.no_grad():
        counted = 3 * counted_per_token(block, x, backward=False)  # forward + backward: 3 x the forward's matmuls
    assert block_flops_per_token(block, seq_len) - attention == pytest.approx(counted, rel=0.02)


@pytest.mark.parametrize("seq_len", [16, 32, 64, 80])
def test_the_latent_thoughts_count_the_refinements_a_sequence_runs(seq_len):
    """floor((T - 1) / L) refinements (none at T <= L: the core never runs), and the read's key/value
    projection once per segment; T / L refinements and that projection at every token had made the
    estimate 2.1x the count at T = L."""
    model = memlab.build_model("latent", "tiny", vocab_size=256)  # segments of L = 16 positions
    thoughts = model.body.thoughts
    D, Z, L = model.config.d_model, thoughts.init_thoughts.shape[0], thoughts.segment_len
    x = torch.randn(1, seq_len, D, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        thoughts(x).pow(2).mean().backward()
    projections = counter.get_flop_counts()["Global"][torch.ops.aten.mm] / seq_len  # attention left out
    attention = 12.0 * D * Z * (1 + thoughts.n_iters * ((seq_len - 1) // L) * (Z + L) / seq_len)
    padding = 6.0 * 2 * D * D * (-seq_len % L) / seq_len  # the read's q and out projections on a partial segment
    assert thoughts.flops_per_token(seq_len) - attention + padding == pytest.approx(projections, rel=0.01)
