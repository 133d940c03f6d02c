"""The hybrid's window layer (``W``): sliding-window attention that also reads the memory of
the nearest preceding delta-rule layer (``G`` or ``D``), causally.

    y_t = m * local_t + read_out_proj(sigmoid(gate_proj x_t) * read_t),   read_t = S_t^T (scale * k_shared(x_t))

* ``S_t`` is the source layer's state *after token t* (never a later one): the source keeps the
  (k, v, g, beta) it wrote in its last call and the state it started from, and this layer runs
  the same kernel over them with its own queries (decoding: one step from the live state).
* ``k_shared`` is the source's own key path (projection, short conv, SiLU, L2 norm) applied to
  this layer's input, so reads and writes share one key space (the source's "shared key projection").
* ``m`` is a per-sequence keep mask, Bernoulli(1 - ``gdn.local_drop_prob``), in training and
  ``gdn.local_scale`` in evaluation (the source's stochastic local drop); without a
  ``local_scale``, evaluation uses the mask's training mean, 1 - ``local_drop_prob``.
* ``zero`` ablation zeroes the read; ``horizon=h`` limits both the window and the read to the last
  h tokens, recomputed exactly per position (reads included), so it equals a truncated context.

With ``gdn.state_read=False`` the layer is sliding-window attention with the local drop only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from memlab.config import ModelConfig
from memlab.errors import MemlabError
from memlab.mixers import register_mixer
from memlab.mixers.attention import RingKVCache, SlidingWindowAttention
from memlab.mixers.base import Mixer, last_of_windows, real_positions
from memlab.mixers.gated_delta import DeltaWrite, GatedDeltaNet, delta_dims


@dataclass
class WindowReadState(RingKVCache):
    """The window's ring buffers plus the tail of the read key's short convolution."""

    read_conv: torch.Tensor | None = None  # (B, conv_size - 1, H * K)

    @property
    def nbytes(self) -> int:
        tail = 0 if self.read_conv is None else self.read_conv.numel() * self.read_conv.element_size()
        return super().nbytes + tail


@register_mixer
class StateReadWindowAttention(SlidingWindowAttention):
    """Sliding-window attention + a gated read of the preceding delta-rule layer's memory."""

    letter = "W"
    options_section = "gdn"
    carries_memory = True
    native_horizon = False  # the read is recomputed per window: see _forward_windows
    mixes_rows = False  # its local drop and statistics are per sequence: an ACT core of W layers runs every position

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        opts = self.options = config.gdn
        self.reads_state = opts.state_read
        self.carries_memory = opts.state_read
        self.native_horizon = not opts.state_read  # without the read it is plain windowed attention
        if self.reads_state:
            dims = delta_dims(config)
            self.gate_proj = nn.Linear(config.d_model, dims.heads)  # one read gate per head
            self.read_out_proj = nn.Linear(dims.heads * dims.value, config.d_model, bias=False)
        self._sources: list[GatedDeltaNet] = []  # a plain list: the source stays the model's submodule only
        self._stats: dict[str, torch.Tensor] = {}

    def bind(self, previous: list[Mixer]) -> None:
        if not self.reads_state:
            return
        sources = [m for m in previous if isinstance(m, GatedDeltaNet)]
        if not sources:
            raise MemlabError(
                f"layer {self.layer_idx} ('W') reads the memory of a preceding 'G' or 'D' layer and has none "
                f"in the pattern {self.config.layer_pattern!r}; put one before it, or set gdn.state_read=false"
            )
        self._sources = [sources[-1]]
        sources[-1].add_reader()

    @property
    def source(self) -> GatedDeltaNet:
        return self._sources[0]

    def borrowed(self) -> list[Mixer]:
        """The source layer: the read runs its key projection and short convolution."""
        return list(self._sources)

    # ------------------------------------------------------------------ forward
    def mix(self, x: torch.Tensor, state: WindowReadState | None) -> torch.Tensor:
        write = None
        if self.reads_state:
            write = self.source.last_write
            if self.source.horizon is not None:
                raise MemlabError(
                    f"a horizon ablation of layer {self.source.layer_idx} must include its reader, "
                    f"layer {self.layer_idx}"
                )
            if write is None or write.k.shape[:2] != x.shape[:2]:
                raise RuntimeError(f"layer {self.source.layer_idx} must process the same tokens before its reader")
        return self._mix(x, state, write)

    def _mix(self, x: torch.Tensor, state: WindowReadState | None, write: DeltaWrite | None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D): the window branch, dropped/scaled, plus the gated read of ``write``."""
        local = super().mix(x, state) * self._local_multiplier(x)
        self._stats = {"local_norm": local.detach().norm(dim=-1)}  # (B, T) per position, averaged on demand
        if not self.reads_state:
            return local
        keys, tail = self.source.shared_key(x, None if state is None else state.read_conv)  # (B, T, H, K)
        if state is not None:
            state.read_conv = tail
        read, _ = self.source.delta_rule(keys, write.k, write.v, write.g, write.beta, write.initial_state)
        if self.zeroed:
            read = torch.zeros_like(read)
        gate = torch.sigmoid(self.gate_proj(x))  # (B, T, H)
        retrieved = self.read_out_proj((gate[..., None] * read).flatten(2))  # (B, T, D)
        self._stats.update(gate_mean=gate.detach().mean(-1), retrieval_norm=retrieved.detach().norm(dim=-1))
        return local + retrieved

    def _local_multiplier(self, x: torch.Tensor) -> torch.Tensor | float:
        """Training: keep each sequence's window branch with probability 1 - p; evaluation:
        local_scale, by default 1 - p."""
        if not self.training:
            scale = self.options.local_scale
            return 1.0 - self.options.local_drop_prob if scale is None else scale
        if self.options.local_drop_prob == 0:
            return 1.0
        keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.options.local_drop_prob
        return keep.to(x.dtype)

    def _forward_windows(self, x: torch.Tensor, h: int) -> torch.Tensor:
        """Exact horizon ablation: position t sees x[t-h+1 .. t] and the source's input over the same span.

        Each window recomputes the source's writes from its own input (its convolution starting
        at the window), exactly as a model run on the truncated context would.  (B, T, D) -> (B, T, D)
        """
        D = x.shape[-1]

        def run(window: torch.Tensor) -> torch.Tensor:  # (n, L, 2D) -> (n, L, D)
            own, source_input = window.split([D, D], dim=-1)
            return self._mix(own, None, self.source.writes(source_input))

        return last_of_windows(torch.cat([x, self.source.last_input], dim=-1), h, run)

    # -------------------------------------------------------------------- state
    def init_state(self, batch_size: int, device=None, dtype=None) -> WindowReadState:
        ring = super().init_state(batch_size, device, dtype)
        tail = None
        if self.reads_state:
            dims = delta_dims(self.config)
            shape = (batch_size, self.options.conv_size - 1, dims.heads * dims.key)
            tail = torch.zeros(shape, device=ring.k.device, dtype=ring.k.dtype)
        return WindowReadState(ring.k, ring.v, read_conv=tail)

    def state_nbytes(self, context_len: int, batch_size: int = 1, dtype=torch.float32) -> int:
        n = super().state_nbytes(context_len, batch_size, dtype)
        if self.reads_state:
            dims = delta_dims(self.config)
            n += batch_size * (self.options.conv_size - 1) * dims.heads * dims.key * dtype.itemsize
        return n

    def extra_flops_per_token(self, seq_len: int) -> float:
        """The window's attention and, with the read, the source's kernel over this layer's queries and the
        source's key path (k_proj, k short conv) on this layer's input: weights this block does not own."""
        extra = super().extra_flops_per_token(seq_len)
        if self.reads_state:
            key_path = self.source.k_proj.weight.numel() + self.source.k_conv1d.weight.numel()
            extra += self.source.extra_flops_per_token(seq_len) + 6.0 * key_path
        return extra

    def diagnostics(self, valid: torch.Tensor | None = None) -> dict[str, float]:
        """gate_mean (read gate), local_norm and retrieval_norm (mean per-token L2 norms) of the last
        forward, over real positions."""
        return {name: float(real_positions(value, valid).mean()) for name, value in self._stats.items()}
