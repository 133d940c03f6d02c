"""Model bodies: how the blocks are applied.  ``Stack`` applies each block once, in order.

A body has ``forward(h, states=None) -> h`` for ``h: (B, T, D)``, ``init_state``,
``state_nbytes``, ``max_depth``, ``aux_loss``, ``diagnostics`` and ``flops_per_token``; recursive
bodies (shared loop, ACT, latent thoughts) live in :mod:`memlab.models.recursion`.
"""

from __future__ import annotations

import torch
from torch import nn

from memlab.config import ModelConfig
from memlab.models.block import build_blocks


def block_flops_per_token(block: nn.Module, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token of one block application."""
    params = sum(p.numel() for p in block.parameters())
    return 6.0 * params + block.mixer.extra_flops_per_token(seq_len)


class Stack(nn.Module):
    """The plain transformer body: every block once, in pattern order."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.blocks = build_blocks(config)

    def forward(self, h: torch.Tensor, states: list | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            h = block(h, None if states is None else states[i])
        return h

    @property
    def max_depth(self) -> int:
        """Most block applications on any path from input to output (bounds the receptive field)."""
        return len(self.blocks)

    def init_state(self, batch_size: int, device=None, dtype=None) -> list:
        return [b.mixer.init_state(batch_size, device, dtype) for b in self.blocks]

    def state_nbytes(self, context_len: int, batch_size: int = 1, dtype=torch.float32) -> int:
        return sum(b.mixer.state_nbytes(context_len, batch_size, dtype) for b in self.blocks)

    def aux_loss(self, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {}

    def diagnostics(self, valid: torch.Tensor | None = None) -> dict[str, float]:
        return {"effective_depth": float(len(self.blocks))}

    def flops_per_token(self, seq_len: int) -> float:
        return sum(block_flops_per_token(b, seq_len) for b in self.blocks)
