"""Rotary embeddings: a query-key score depends on the tokens' offset alone, in bf16 too."""

from __future__ import annotations

import pytest
import torch

import memlab
from memlab.ops.rope import apply_rope, rope_inv_freq


def score_at(q: torch.Tensor, k: torch.Tensor, position: int, offset: int) -> float:
    """q at ``position`` against k at ``position - offset``: (1, 1, 1, Dh) each."""
    rq = apply_rope(q, torch.tensor([position]))
    rk = apply_rope(k, torch.tensor([position - offset]))
    return float((rq.double() * rk.double()).sum())


@pytest.mark.parametrize(
    "dtype, tolerance",
    [(torch.float32, 1e-3), (torch.bfloat16, 0.1), (torch.float64, 1e-10)],  # float64: float32 angles had moved it 1e-5
)
def test_a_score_depends_on_the_offset_alone(dtype, tolerance):
    """In bf16 the angles had been bf16 too: at 2001 tokens the score had moved from 0.70 to 3.6."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 1, 1, 64, generator=g).to(dtype) for _ in range(2))
    scores = [score_at(q, k, p, 5) for p in (10, 300, 1000, 2001)]
    assert max(scores) - min(scores) < tolerance, scores


def test_a_model_cast_to_bf16_rotates_with_exact_frequencies():
    """The frequencies are float32 and exact whatever the model's dtype: a bf16 model rotates a query
    at position 2000 as float32 angles do (bf16 frequencies are off by up to 0.87 rad there)."""
    model = memlab.build_model("baseline", "tiny").to(torch.bfloat16)
    assert not any("freq" in name for name, _ in model.named_buffers())  # nothing left for the cast to round
    head_dim, theta = model.config.head_dim, model.config.attention.rope_theta
    exact = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    torch.testing.assert_close(rope_inv_freq(head_dim, theta, torch.device("cpu")), exact.float(), atol=0, rtol=1e-6)
    x = torch.randn(1, 1, 1, head_dim, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    angles = 2000 * exact  # (Dh/2,) in float64
    cos, sin = torch.cat([angles.cos()] * 2).float(), torch.cat([angles.sin()] * 2).float()
    x1, x2 = x.float().chunk(2, dim=-1)
    expected = x.float() * cos + torch.cat((-x2, x1), dim=-1) * sin
    torch.testing.assert_close(apply_rope(x, torch.tensor([2000])).float(), expected, atol=0.05, rtol=0.02)
