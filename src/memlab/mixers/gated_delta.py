"""Gated DeltaNet (``G``) and DeltaNet (``D``) on :func:`memlab.ops.gated_delta_rule`.

The layer of the Gated DeltaNet paper, with flash-linear-attention's parameter names
(``out_proj`` is fla's ``o_proj``): q, k, v projections -> causal depthwise short convolution
-> SiLU; q and k L2-normalised per head; ``beta = sigmoid(b_proj x)``; log-gate
``g = -exp(A_log) * softplus(a_proj x + dt_bias)`` (A uniform in [0, 16], dt log-uniform in
[1e-3, 0.1], as flash-linear-attention's layer initialises them); the gated delta rule; per-head RMSNorm gated by
``silu(g_proj x)``; output projection.  DeltaNet is the same layer without the gate.
fla's weights load under the one rename; two defaults differ from fla's layer: the short
convolutions keep PyTorch's initialisation (fla draws them from N(0, 0.02), like its linear
layers), and ``gdn.expand_v`` is 1 (fla: 2).

Options from the source experiments (``config.gdn``): ``beta_floor`` (beta = floor + (1 - floor)
sigmoid; 1 = always write fully), ``g_bias`` (initial retention exp(g) = sigmoid(g_bias) in every
head), ``shifted_pairing`` (write the *previous* token's key with the current value, so a query
k_t retrieves what followed the last occurrence of k_t: the causal form of the source's
"shifted value"), ``allow_neg_eigval`` (beta in (0, 2)).

State: the (B, H, K, V) delta-rule matrix (float32, or float64 for a float64 model), the
short convolution's tail and, with shifted pairing, the last key (the next token writes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from memlab.config import ModelConfig
from memlab.errors import MemlabError
from memlab.mixers import register_mixer
from memlab.mixers.base import LastForward, Mixer, MixerState, real_positions
from memlab.mixers.gated_norm import GatedRMSNorm
from memlab.ops.gated_delta import gated_delta_rule, gated_delta_rule_step
from memlab.ops.l2norm import l2_normalize
from memlab.ops.precision import at_least_float32
from memlab.ops.short_conv import causal_conv1d


@dataclass(frozen=True)
class DeltaDims:
    heads: int
    key: int  # per head
    value: int  # per head


def delta_dims(config: ModelConfig) -> DeltaDims:
    """Head count and per-head key/value widths of the delta-rule layers of ``config``."""
    gdn = config.gdn
    heads = gdn.n_heads or config.n_heads
    key = gdn.head_dim or config.d_model // heads
    value = key * gdn.expand_v
    if heads < 1 or key < 1 or value != int(value) or value < 1:
        raise MemlabError(
            f"gdn.n_heads={heads}, gdn.head_dim={key}, gdn.expand_v={gdn.expand_v} give no integer value width"
        )
    return DeltaDims(heads, key, int(value))


@dataclass
class DeltaState(MixerState):
    """A delta-rule layer's recurrent state."""

    memory: torch.Tensor  # (B, H, K, V) the delta-rule matrix S
    conv: torch.Tensor  # (B, conv_size - 1, 2HK + HV) the last q|k|v projections before the convolution
    last_key: torch.Tensor | None = None  # (B, H, K) shifted pairing: the key the next token writes


@dataclass
class DeltaWrite:
    """What one call wrote into the memory, for a layer that reads it (the hybrid's ``W``)."""

    k: torch.Tensor  # (B, T, H, K) the keys as written (shifted when shifted_pairing)
    v: torch.Tensor  # (B, T, H, V)
    g: torch.Tensor | None  # (B, T, H) log-gates; None for DeltaNet
    beta: torch.Tensor  # (B, T, H)
    initial_state: torch.Tensor | None  # (B, H, K, V) the memory before the call; None = zeros


@register_mixer
class GatedDeltaNet(Mixer):
    """Gated DeltaNet: a delta-rule associative memory with a data-dependent decay."""

    letter = "G"
    options_section = "gdn"
    carries_memory = True
    gated: ClassVar[bool] = True

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        opts = self.options = config.gdn
        if not 0.0 <= opts.beta_floor <= 1.0:
            raise MemlabError(f"gdn.beta_floor must lie in [0, 1], got {opts.beta_floor}")
        self.dims = dims = delta_dims(config)
        D, H, K, V = config.d_model, dims.heads, dims.key, dims.value
        self.q_proj = nn.Linear(D, H * K, bias=False)
        self.k_proj = nn.Linear(D, H * K, bias=False)
        self.v_proj = nn.Linear(D, H * V, bias=False)
        self.b_proj = nn.Linear(D, H, bias=False) if opts.beta_floor < 1 else None  # floor 1: beta == 1
        if self.gated:
            self.a_proj = nn.Linear(D, H, bias=False)
            self.A_log = nn.Parameter(torch.empty(H))
            self.dt_bias = nn.Parameter(torch.empty(H))
            self.A_log._no_weight_decay = True
            self.dt_bias._no_weight_decay = True
        # depthwise (C, 1, W) kernels, applied through ops.causal_conv1d with a decode tail
        self.q_conv1d, self.k_conv1d = (nn.Conv1d(H * K, H * K, opts.conv_size, groups=H * K, bias=False)
                                        for _ in range(2))
        self.v_conv1d = nn.Conv1d(H * V, H * V, opts.conv_size, groups=H * V, bias=False)
        self.g_proj = nn.Linear(D, H * V, bias=False)
        self.o_norm = GatedRMSNorm(V, config.norm_eps, gate_first=False)
        self.out_proj = nn.Linear(H * V, D, bias=False)
        self._scratch: LastForward | None = None  # the last call's input and writes, when a reader binds here
        self._last: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None  # beta, g, final state
        self.init_special_parameters()

    def init_special_parameters(self) -> None:
        if not self.gated:
            return
        H = self.dims.heads
        with torch.no_grad():
            if self.options.g_bias is None:  # the Gated DeltaNet / Mamba-2 initialisation
                self.A_log.copy_(torch.empty(H).uniform_(0, 16).clamp_min(1e-4).log())  # as fla's layer
                dt = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
                self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
            else:  # exp(-softplus(-g_bias)) = sigmoid(g_bias) when a_proj x = 0
                self.A_log.zero_()
                self.dt_bias.fill_(-self.options.g_bias)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, state: DeltaState | None = None) -> torch.Tensor:
        if self._scratch is not None:
            self._scratch.input = x  # a reader's horizon ablation recomputes the writes from it
        return super().forward(x, state)

    def mix(self, x: torch.Tensor, state: DeltaState | None) -> torch.Tensor:
        B, T, _ = x.shape  # x: (B, T, D)
        q, k, v, g, beta = self.project(x, state)
        initial = None if state is None else state.memory
        o, final = self.delta_rule(q, k, v, g, beta, initial)  # (B, T, H, V), (B, H, K, V)
        if state is not None:
            state.memory = final  # a new tensor: a reader may still use the old one
        if self._scratch is not None:
            self._scratch.write = DeltaWrite(k, v, g, beta, initial)
        self._last = (beta.detach(), None if g is None else g.detach(), final.detach())  # for diagnostics()
        if self.zeroed:
            return torch.zeros_like(x)
        o = self.o_norm(o, self.g_proj(x).view(B, T, self.dims.heads, self.dims.value))  # norm, then gate
        return self.out_proj(o.reshape(B, T, -1))

    def project(
        self, x: torch.Tensor, state: DeltaState | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """x (B, T, D) -> q, k (B, T, H, K), v (B, T, H, V), g, beta (B, T, H); advances the state's tails."""
        B, T, _ = x.shape
        H, K, V = self.dims.heads, self.dims.key, self.dims.value
        qkv = self._qkv(x)  # (B, T, 2HK + HV)
        weight = torch.cat([self.q_conv1d.weight, self.k_conv1d.weight, self.v_conv1d.weight]).squeeze(1)
        qkv, tail = causal_conv1d(qkv, weight, None if state is None else state.conv)
        qk, v = F.silu(qkv).split([2 * H * K, H * V], dim=-1)  # split, not slices: one backward copy
        q, k = l2_normalize(qk.reshape(B, T, 2 * H, K)).split(H, dim=2)  # (B, T, H, K) each
        if self.options.shifted_pairing:  # write k_{t-1} with v_t
            previous = k.new_zeros(B, 1, H, K) if state is None else state.last_key[:, None]
            if state is not None:
                state.last_key = k[:, -1]
            k = torch.cat([previous, k[:, :-1]], dim=1)
        if state is not None:
            state.conv = tail
        return q, k, v.view(B, T, H, V), self._gate(x), self._beta(x)

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        """The q|k|v projections of x (B, T, D): one matmul on the stacked weights for a sequence;
        three small ones for a decoding step, where copying the weights would cost more than them."""
        if x.shape[1] == 1:
            return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        return F.linear(x, torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]))

    def _beta(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, H)
        floor = self.options.beta_floor
        if self.b_proj is None:
            beta = x.new_ones(*x.shape[:2], self.dims.heads)
        else:
            beta = floor + (1 - floor) * torch.sigmoid(self.b_proj(x))
        return 2 * beta if self.options.allow_neg_eigval else beta

    def _gate(self, x: torch.Tensor) -> torch.Tensor | None:  # (B, T, D) -> (B, T, H) log-gates, float32
        if not self.gated:
            return None
        a = self.a_proj(x).to(at_least_float32(x.dtype))
        return -self.A_log.exp() * F.softplus(a + self.dt_bias)

    def delta_rule(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, beta: torch.Tensor,
        initial_state: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The kernel on (B, T, H, .) inputs from ``initial_state`` (None = zeros): o and the final state."""
        if q.shape[1] == 1 and initial_state is not None:  # decoding: one recurrent step
            o, final = gated_delta_rule_step(
                q[:, 0], k[:, 0], v[:, 0], None if g is None else g[:, 0], beta[:, 0], initial_state
            )
            return o[:, None], final
        o, final = gated_delta_rule(
            q, k, v, g, beta, initial_state=initial_state, output_final_state=True, chunk_size=self.options.chunk_size
        )
        return o, final

    # ------------------------------------------------------------- for readers
    def add_reader(self) -> None:
        """Keep each call's input and writes so that a later layer can read this memory."""
        if self._scratch is None:
            self._scratch = LastForward(input=None, write=None)

    @property
    def last_input(self) -> torch.Tensor | None:
        return None if self._scratch is None else self._scratch.input

    @property
    def last_write(self) -> DeltaWrite | None:
        return None if self._scratch is None else self._scratch.write

    def writes(self, x: torch.Tensor) -> DeltaWrite:
        """What this layer would write for input x (B, T, D) from an empty state."""
        _, k, v, g, beta = self.project(x)
        return DeltaWrite(k, v, g, beta, None)

    def shared_key(self, x: torch.Tensor, tail: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's key path applied to another layer's input x (B, T, D): keys (B, T, H, K) and conv tail."""
        B, T, _ = x.shape
        k, tail = causal_conv1d(self.k_proj(x), self.k_conv1d.weight.squeeze(1), tail)
        return l2_normalize(F.silu(k).view(B, T, self.dims.heads, self.dims.key)), tail

    # ------------------------------------------------------------------- state
    def init_state(self, batch_size: int, device=None, dtype=None) -> DeltaState:
        device = device or self.q_proj.weight.device
        dtype = dtype or self.q_proj.weight.dtype
        H, K, V, W = self.dims.heads, self.dims.key, self.dims.value, self.options.conv_size
        shifted = self.options.shifted_pairing
        return DeltaState(
            memory=torch.zeros(batch_size, H, K, V, device=device, dtype=at_least_float32(dtype)),
            conv=torch.zeros(batch_size, W - 1, H * (2 * K + V), device=device, dtype=dtype),
            last_key=torch.zeros(batch_size, H, K, device=device, dtype=dtype) if shifted else None,
        )

    def state_nbytes(self, context_len: int, batch_size: int = 1, dtype=torch.float32) -> int:
        H, K, V, W = self.dims.heads, self.dims.key, self.dims.value, self.options.conv_size
        elem = dtype.itemsize
        memory = H * K * V * at_least_float32(dtype).itemsize
        conv = (W - 1) * H * (2 * K + V) * elem
        last_key = H * K * elem if self.options.shifted_pairing else 0
        return batch_size * (memory + conv + last_key)

    def extra_flops_per_token(self, seq_len: int) -> float:
        """The chunked kernel: K K^T, Q K^T, the UT transform, three state matmuls, the intra-chunk read."""
        C, K, V = min(self.options.chunk_size, seq_len), self.dims.key, self.dims.value
        forward_macs = 2 * C * K + C * (K + V) + 3 * K * V + C * V
        return 3 * 2 * forward_macs * self.dims.heads  # forward + backward ~ 3 x forward

    def diagnostics(self, valid: torch.Tensor | None = None) -> dict[str, float]:
        """Mean beta and mean retention exp(g) (gated only) over real positions, and the mean per-head
        norm of the final state (after the whole row, right padding included), of the last forward
        (computed here, not in every forward: a decoding step would pay)."""
        if self._last is None:
            return {}
        beta, g, final = self._last
        stats = {"beta_mean": real_positions(beta, valid).mean(), "state_norm": final.norm(dim=(-2, -1)).mean()}
        if g is not None:
            stats["gate_mean"] = real_positions(g, valid).exp().mean()  # mean retention exp(g)
        return {name: float(value) for name, value in stats.items()}


@register_mixer
class DeltaNet(GatedDeltaNet):
    """DeltaNet: the delta rule without decay (a_t = 1)."""

    letter = "D"
    gated = False
