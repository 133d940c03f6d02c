"""Latent thoughts: Z learned thought vectors, refined segment by segment, read by every position.

Causal design (the published version cross-attended to the whole sequence without a mask and
broadcast its summary to every position; this one is causal by construction):

* The input is cut into segments of ``L = recursion.segment_len`` positions (0..L-1, L..2L-1, ...).
* Thoughts ``z_0`` are learned parameters ``(Z, D)``.  When segment ``j`` is complete, the thought
  core refines ``z_j`` K times on it: each refinement is self-attention among the thoughts,
  cross-attention from the thoughts to the segment's positions (all of them: the segment is in the
  past of every later reader), and an MLP.  The result is ``z_{j+1}``.
* A position of segment ``j`` reads ``z_j`` by cross-attention (queries from the position, keys
  and values from the Z thoughts).  ``z_j`` depends only on segments ``< j``, so no position
  reads a thought built from itself or from any later position; within-segment context reaches
  a position through the token stream's own causal layers.
* Recurrent form: the state holds the current thoughts and the inputs of the unfinished segment
  (a fixed ``(B, L, D)`` buffer), so prefill and decode refine the thoughts at the same points as
  the parallel form.

Reach and cost: positions of the first segment read only the learned initial thoughts, so on
an input no longer than L the core never runs.  Most algorithmic examples, scored one per row,
are shorter than nano's L = 64 tokens: there ``latent`` is the token stream plus a read of
learned vectors, not of refined thoughts.  A shorter ``recursion.segment_len`` reaches them at a
price: the core runs K times per L tokens on Z thoughts, about K * Z / L block applications per
token (a nano training step of 16 x 512 tokens: 8.7 s at L = 64, 14.2 s at L = 16, the
baseline's 6.7 s).

The ``zero`` ablation removes the read-out (the thoughts are this layer's memory); a horizon
ablation uses the exact generic windowed form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memlab.config import ModelConfig
from memlab.mixers.attention import CrossAttention
from memlab.mixers.base import Mixer, MixerState


class ThoughtCore(nn.Module):
    """One refinement of the thoughts ``z: (B, Z, D)`` on a segment ``seg: (B, L, D)``; applied K times."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        D, H, eps = config.d_model, config.n_heads, config.norm_eps
        self.self_norm, self.cross_norm, self.mlp_norm = (nn.RMSNorm(D, eps=eps) for _ in range(3))
        self.self_attn = CrossAttention(D, H)
        self.cross_attn = CrossAttention(D, H)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D, bias=False), nn.GELU(), nn.Linear(4 * D, D, bias=False))
        self.mlp[-1].writes_residual = True  # initialised as a residual output projection (its name is mlp.2)

    def forward(self, z: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        zn = self.self_norm(z)
        z = z + self.self_attn(zn, zn)
        z = z + self.cross_attn(self.cross_norm(z), seg)
        return z + self.mlp(self.mlp_norm(z))


@dataclass
class ThoughtState(MixerState):
    """``thoughts: (B, Z, D)`` for the current segment; ``segment: (B, L, D)``, its first ``filled`` inputs."""

    thoughts: torch.Tensor
    segment: torch.Tensor
    filled: int = 0


class LatentThoughts(Mixer):
    """The thought stream of the ``latent`` variant, as a mixer: ``(B, T, D) -> (B, T, D)`` read-out."""

    carries_memory = True

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        rc = config.recursion
        self.n_iters, self.segment_len = rc.thought_iters, rc.segment_len
        self.init_thoughts = nn.Parameter(torch.empty(rc.n_thoughts, config.d_model))
        self.init_thoughts._no_weight_decay = True  # learned vectors, like embeddings and CDM's initial slots
        self.core = ThoughtCore(config)
        self.read_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.read = CrossAttention(config.d_model, config.n_heads)
        self.init_special_parameters()

    def init_special_parameters(self) -> None:
        nn.init.normal_(self.init_thoughts, std=self.config.init_std)

    def refine(self, z: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """The K refinements of thoughts ``z: (B, Z, D)`` on a complete segment ``seg: (B, L, D)``."""
        for _ in range(self.n_iters):
            z = self.core(z, seg)
        return z

    def mix(self, x: torch.Tensor, state: ThoughtState | None) -> torch.Tensor:
        Bsz, T, D = x.shape  # x: (B, T, D)
        L = self.segment_len
        if state is None:
            z, buffer, filled = self.init_thoughts.expand(Bsz, -1, -1), x[:, :0], 0
        else:
            z, buffer, filled = state.thoughts, state.segment[:, : state.filled], state.filled
        # walk the new positions segment by segment: each piece reads the thoughts of its segment
        readable, start, offset = [], 0, filled
        while start < T:
            n = min(L - filled, T - start)
            readable.append(z)
            buffer = torch.cat([buffer, x[:, start : start + n]], dim=1)
            filled, start = filled + n, start + n
            if filled == L and (start < T or state is not None):  # complete: its thoughts exist for the next
                z, buffer, filled = self.refine(z, buffer), x[:, :0], 0  # (unless nothing reads or keeps them)
        if state is not None:
            state.thoughts = z
            state.segment[:, :filled] = buffer
            state.filled = filled
        if self.zeroed:
            return torch.zeros_like(x)
        return self._read(x, torch.stack(readable, dim=1), offset)

    def _read(self, x: torch.Tensor, thoughts: torch.Tensor, offset: int) -> torch.Tensor:
        """Every position reads its segment's thoughts.  ``thoughts: (B, P, Z, D)``, one per piece."""
        Bsz, T, D = x.shape
        L, P = self.segment_len, thoughts.shape[1]
        if P == 1:  # one piece (e.g. decoding): no alignment needed
            return self.read(x[:, None], self.read_norm(thoughts))[:, 0]
        grid = F.pad(x, (0, 0, offset, P * L - offset - T)).view(Bsz, P, L, D)  # pieces aligned to segments
        y = self.read(grid, self.read_norm(thoughts))  # (B, P, L, D)
        return y.view(Bsz, P * L, D)[:, offset : offset + T]

    def init_state(self, batch_size: int, device=None, dtype=None) -> ThoughtState:
        dtype = dtype or self.init_thoughts.dtype
        thoughts = self.init_thoughts.detach().to(device=device, dtype=dtype).expand(batch_size, -1, -1).clone()
        segment = torch.zeros(batch_size, self.segment_len, self.config.d_model, device=device, dtype=dtype)
        return ThoughtState(thoughts, segment)

    def state_nbytes(self, context_len: int, batch_size: int = 1, dtype=torch.float32) -> int:
        return batch_size * (self.init_thoughts.shape[0] + self.segment_len) * self.config.d_model * dtype.itemsize

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token of a ``seq_len``-token sequence, as the parallel form runs it:
        the read (its query and output projections and attention over the Z thoughts at every
        position; its key/value projection of a segment's thoughts once per segment) and the core's
        K refinements of the Z thoughts (self-attention over Z, cross-attention over L positions)
        once per complete segment that a later position reads: floor((T - 1) / L) times.  The read's
        projections of the padding that aligns a last partial segment are left out."""
        D, Z, L, K = self.config.d_model, self.init_thoughts.shape[0], self.segment_len, self.n_iters
        T, read_kv = seq_len, self.read.kv_proj.weight.numel()
        per_position = self.read.q_proj.weight.numel() + self.read.out_proj.weight.numel()
        read = 6.0 * per_position + 12.0 * D * Z + 6.0 * read_kv * Z * -(-T // L) / T
        core_params = sum(p.numel() for p in self.core.parameters())
        segment_kv = self.core.cross_attn.kv_proj.weight.numel()  # applied to the L positions, not the Z thoughts
        per_refinement = 6.0 * ((core_params - segment_kv) * Z + segment_kv * L) + 12.0 * D * Z * (Z + L)
        return read + K * per_refinement * ((T - 1) // L) / T
