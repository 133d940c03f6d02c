"""A pre-norm residual block: ``h + mixer(norm(h))`` then ``h + ffn(norm(h))``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from memlab.config import ModelConfig
from memlab.mixers import MIXERS, Mixer, MixerState


class SwiGLU(nn.Module):
    """The gated feed-forward network of Llama: down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    """Norm + sequence mixer (pattern letter ``letter``) + norm + SwiGLU, with residuals."""

    def __init__(self, config: ModelConfig, layer_idx: int, letter: str) -> None:
        super().__init__()
        self.mixer_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mixer: Mixer = MIXERS[letter](config, layer_idx)
        self.ffn = None
        if config.ffn_dim > 0:
            self.ffn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
            self.ffn = SwiGLU(config.d_model, config.ffn_dim)

    def forward(self, h: torch.Tensor, state: MixerState | None = None) -> torch.Tensor:
        h = h + self.mixer(self.mixer_norm(h), state)  # (B, T, D)
        if self.ffn is not None:
            h = h + self.ffn(self.ffn_norm(h))
        return h


def build_blocks(config: ModelConfig) -> nn.ModuleList:
    """One block per letter of the layer pattern; each mixer is bound to the mixers before it."""
    blocks = nn.ModuleList(Block(config, i, letter) for i, letter in enumerate(config.pattern))
    for i, block in enumerate(blocks):
        block.mixer.bind([b.mixer for b in blocks[:i]])
    return blocks
