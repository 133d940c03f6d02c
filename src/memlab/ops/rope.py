"""Rotary position embeddings (rotate-half convention, as in GPT-NeoX / Llama)."""

from __future__ import annotations

import functools

import torch

from memlab.ops.precision import at_least_float32


@functools.cache
def rope_inv_freq(
    head_dim: int, theta: float, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(head_dim // 2,) inverse frequencies on ``device`` (made once per device and dtype, not a
    module buffer: a model cast to bf16 keeps them exact)."""
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=dtype, device=device) / head_dim)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotate ``x: (B, T, H, Dh)`` by the angles of absolute ``positions: (T,)``.  The angles are
    float32 at least whatever ``x``'s dtype (float64 for float64): in bf16 a position past 256 loses
    its last bits, and the score of two tokens would no longer depend on their offset alone."""
    dtype = at_least_float32(x.dtype)
    angles = positions.to(dtype)[:, None] * rope_inv_freq(x.shape[-1], theta, x.device, dtype)[None, :]  # (T, Dh/2)
    cos = angles.cos().repeat(1, 2)[None, :, None, :].to(x.dtype)  # (1, T, 1, Dh)
    sin = angles.sin().repeat(1, 2)[None, :, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
