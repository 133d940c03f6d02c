"""Rotary position embeddings (rotate-half convention, as in GPT-NeoX / Llama)."""

from __future__ import annotations

import torch


def rope_inv_freq(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """(head_dim // 2,) inverse frequencies."""
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate ``x: (B, T, H, Dh)`` by the angles of absolute ``positions: (T,)``."""
    angles = positions.to(inv_freq.dtype)[:, None] * inv_freq[None, :]  # (T, Dh/2)
    cos = angles.cos().repeat(1, 2)[None, :, None, :].to(x.dtype)  # (1, T, 1, Dh)
    sin = angles.sin().repeat(1, 2)[None, :, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
