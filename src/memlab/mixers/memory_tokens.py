"""Memory-token reader (letter ``R``): every position attends to M learned memory tokens.

The memory tokens are parameters of the layer (input-independent, like the persistent memory
vectors of Sukhbaatar et al., 2019), so reading them is causal by construction: position t's
output depends only on x_t and the weights.  They add a learned key-value store, not context
memory; context is carried by the other layers of the pattern (the SSM state in ``ssm_mem``,
or any ``A`` / ``S`` layers added to it).  The layer carries no recurrent state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memlab.config import ModelConfig
from memlab.errors import MemlabError
from memlab.mixers import register_mixer
from memlab.mixers.attention import CrossAttention
from memlab.mixers.base import Mixer, MixerState


@dataclass
class NoState(MixerState):
    """A stateless layer's state: holds nothing (0 bytes)."""


@register_mixer
class MemoryTokenReader(Mixer):
    """Multi-head attention from each position to ``recursion.n_memory_tokens`` learned tokens."""

    letter = "R"
    native_horizon = True  # reads no other position, so a horizon changes nothing

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        M, D = config.recursion.n_memory_tokens, config.d_model
        if M < 1:
            raise MemlabError("the memory-token reader 'R' needs recursion.n_memory_tokens >= 1")
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.memory = nn.Parameter(torch.empty(M, D))
        self.memory._no_weight_decay = True  # learned vectors, like embeddings and CDM's initial slots
        self.read = CrossAttention(D, config.n_heads)
        self.init_special_parameters()

    def init_special_parameters(self) -> None:
        nn.init.normal_(self.memory, std=self.config.init_std)

    def mix(self, x: torch.Tensor, state: NoState | None) -> torch.Tensor:
        Bsz, T, D = x.shape  # x: (B, T, D)
        memory = F.rms_norm(self.memory, (D,), eps=self.config.norm_eps)  # scaled like the normed input x
        return self.read(x, memory.expand(Bsz, -1, -1))  # (B, T, D)

    def init_state(self, batch_size: int, device=None, dtype=None) -> NoState:
        return NoState()

    def state_nbytes(self, context_len: int, batch_size: int = 1, dtype=torch.float32) -> int:
        return 0

    def extra_flops_per_token(self, seq_len: int) -> float:
        """Scores and weighted values over the M memory tokens (forward + backward), less what the
        6 x parameters of a block overcount: the memory tokens and their key/value projection
        are used once per sequence of ``seq_len`` positions, not once per position."""
        M, D = self.memory.shape
        kv = self.read.kv_proj.weight.numel()
        return 12.0 * self.n_heads * self.head_dim * M + 6.0 * kv * M / seq_len - 6.0 * (kv + M * D)
