"""Rotary position embeddings (rotate-half convention, as in GPT-NeoX / Llama)."""

from __future__ import annotations

import functools

import torch


@functools.cache
def rope_inv_freq(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """(head_dim // 2,) inverse frequencies, float32 on ``device`` (made once per device, not a
    module buffer: a model cast to bf16 keeps them exact)."""
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotate ``x: (B, T, H, Dh)`` by the angles of absolute ``positions: (T,)``.  The angles are
    float32 whatever ``x``'s dtype: in bf16 a position past 256 loses its last bits, and the score
    of two tokens would no longer depend on their offset alone."""
    angles = positions.float()[:, None] * rope_inv_freq(x.shape[-1], theta, x.device)[None, :]  # (T, Dh/2)
    cos = angles.cos().repeat(1, 2)[None, :, None, :].to(x.dtype)  # (1, T, 1, Dh)
    sin = angles.sin().repeat(1, 2)[None, :, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
