"""Mamba-2 (letter ``M``): gated state-space mixer with the chunked SSD scan.

    z, xBC, dt = in_proj(x)                  xBC = [x, B, C] before the short convolution
    xBC = silu(causal depthwise conv(xBC))    (decode: a conv state of the last conv_size - 1 inputs)
    dt = softplus(dt + dt_bias);  A = -exp(A_log)  per head
    y = SSD(x, dt, A, B, C) + D * x           (decode: an SSM state (B, H, P, N))
    out = out_proj(RMSNorm(y * silu(z)))      gated RMSNorm, per group

The ``zero`` ablation removes the state read-out ``C . S`` (the memory); the D skip and the
local convolution stay.  A horizon ablation uses the exact generic windowed form.  Parameter
names and shapes follow ``mamba_ssm``'s ``Mamba2`` layer (in_proj, conv1d, dt_bias, A_log, D,
norm, out_proj), the norm's weight too: one per channel, normalised per group.

Two choices differ from ``mamba_ssm``'s defaults, so that every variant of a comparison starts
alike: the projections take the library's initialisation (N(0, init_std), out_proj scaled by
1/sqrt(2 * n_layers); mamba_ssm keeps PyTorch's uniform one), and the ``ssm`` variant's state
size is 64 below d_model 1024 and 128 from there (the source study's 64-128; mamba_ssm: 128).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memlab.config import ModelConfig
from memlab.errors import MemlabError
from memlab.mixers import register_mixer
from memlab.mixers.base import Mixer, MixerState, real_positions
from memlab.mixers.gated_norm import GatedRMSNorm
from memlab.ops.precision import at_least_float32
from memlab.ops.short_conv import causal_conv1d
from memlab.ops.ssd import ssd_scan, ssd_step


@dataclass
class Mamba2State(MixerState):
    """``conv: (B, conv_size - 1, conv_dim)`` last pre-conv inputs; ``ssm: (B, H, P, N)``."""

    conv: torch.Tensor
    ssm: torch.Tensor


@register_mixer
class Mamba2(Mixer):
    """Mamba-2 mixer (Dao & Gu, 2024) on :func:`memlab.ops.ssd.ssd_scan`."""

    letter = "M"
    options_section = "ssm"
    carries_memory = True

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        c = config.ssm
        self.d_inner = c.expand * config.d_model
        if self.d_inner % c.head_dim or (self.d_inner // c.head_dim) % c.n_groups:
            raise MemlabError(
                f"ssm: expand * d_model = {self.d_inner} must split into heads of {c.head_dim} "
                f"and the heads into {c.n_groups} groups"
            )
        self.n_heads, self.head_dim = self.d_inner // c.head_dim, c.head_dim
        self.d_state, self.n_groups = c.d_state, c.n_groups
        self.conv_dim = self.d_inner + 2 * c.n_groups * c.d_state
        self.in_proj = nn.Linear(config.d_model, self.d_inner + self.conv_dim + self.n_heads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, c.conv_size, groups=self.conv_dim, bias=True)
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.D = nn.Parameter(torch.empty(self.n_heads))
        self.norm = GatedRMSNorm(self.d_inner, config.norm_eps, gate_first=True, groups=c.n_groups)
        self.out_proj = nn.Linear(self.d_inner, config.d_model, bias=False)
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.init_special_parameters()
        self._last_dt: torch.Tensor | None = None
        self._last_A: torch.Tensor | None = None

    def init_special_parameters(self) -> None:
        """dt ~ log-uniform[dt_min, dt_max] through the bias; A ~ U[1, 16]; D = 1 (as in mamba_ssm)."""
        c = self.config.ssm
        with torch.no_grad():
            u = torch.rand(self.n_heads, device=self.dt_bias.device)
            dt = torch.exp(u * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min)).clamp(min=1e-4)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            self.A_log.copy_(torch.log(torch.empty_like(self.A_log).uniform_(1, 16)))
            self.D.fill_(1.0)

    # ------------------------------------------------------------------ forward
    def mix(self, x: torch.Tensor, state: Mamba2State | None) -> torch.Tensor:
        Bsz, T, _ = x.shape  # x: (B, T, D)
        H, P, N, G = self.n_heads, self.head_dim, self.d_state, self.n_groups
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, H], dim=-1)
        xBC = F.silu(self._conv(xBC, state))  # (B, T, conv_dim)
        xs, B, C = xBC.split([self.d_inner, G * N, G * N], dim=-1)
        xs, B, C = xs.view(Bsz, T, H, P), B.view(Bsz, T, G, N), C.view(Bsz, T, G, N)
        decay_dtype = at_least_float32(x.dtype)
        dt = F.softplus(dt.to(decay_dtype) + self.dt_bias.to(decay_dtype))  # (B, T, H)
        A = -torch.exp(self.A_log.to(decay_dtype))
        if self.zeroed:  # no state read-out: only the D skip remains of the SSM
            y = xs * self.D[:, None]
            if state is not None:
                _, state.ssm = ssd_scan(xs, dt, A, B, C, None, state.ssm, True, self.config.ssm.chunk_size)
        elif state is not None and T == 1:
            state.ssm, y = ssd_step(xs[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], self.D, state.ssm)
            y = y[:, None]
        else:
            initial = None if state is None else state.ssm
            y, final = ssd_scan(xs, dt, A, B, C, self.D, initial, state is not None, self.config.ssm.chunk_size)
            if state is not None:
                state.ssm = final
        self._record(dt, A)
        y = self.norm(y.reshape(Bsz, T, self.d_inner), z)  # gate, then normalise per group
        return self.out_proj(y)

    def _conv(self, xBC: torch.Tensor, state: Mamba2State | None) -> torch.Tensor:
        """Causal depthwise convolution over time, ``(B, T, C) -> (B, T, C)``; with a state, it
        continues from the state's last ``conv_size - 1`` inputs and keeps the new ones."""
        tail = None if state is None else state.conv
        y, tail = causal_conv1d(xBC, self.conv1d.weight[:, 0], tail, self.conv1d.bias)
        if state is not None:
            state.conv = tail
        return y

    def _record(self, dt: torch.Tensor, A: torch.Tensor) -> None:
        """Keep the step sizes and decay rates of the last forward (detached) for :meth:`diagnostics`
        (A from the forward: outside it, a sharded model's A_log is a shard)."""
        self._last_dt, self._last_A = dt.detach(), A.detach()

    # -------------------------------------------------------------------- state
    def init_state(self, batch_size: int, device=None, dtype=None) -> Mamba2State:
        """The SSM state is kept in float32 at least (a bf16 model's too): it accumulates over the
        whole context; the conv tail holds inputs, in the model's dtype."""
        dtype = dtype or self.in_proj.weight.dtype
        conv = torch.zeros(batch_size, self.conv1d.kernel_size[0] - 1, self.conv_dim, device=device, dtype=dtype)
        ssm = torch.zeros(batch_size, self.n_heads, self.head_dim, self.d_state, device=device,
                          dtype=at_least_float32(dtype))  # fmt: skip
        return Mamba2State(conv, ssm)

    def state_nbytes(self, context_len: int, batch_size: int = 1, dtype=torch.float32) -> int:
        conv = self.conv_dim * (self.conv1d.kernel_size[0] - 1) * dtype.itemsize
        ssm = self.n_heads * self.head_dim * self.d_state * at_least_float32(dtype).itemsize
        return batch_size * (conv + ssm)

    def extra_flops_per_token(self, seq_len: int) -> float:
        """The SSD scan beyond the projections (2 FLOPs per multiply-add, x3 for forward + backward):
        within-chunk C.B scores per group, their use per head, and per head the chunk-state write
        and the state read."""
        L = min(self.config.ssm.chunk_size, seq_len)
        N, P = self.d_state, self.head_dim
        return 3.0 * 2 * (self.n_groups * L * N + self.n_heads * (L * P + 2 * N * P))

    def diagnostics(self, valid: torch.Tensor | None = None) -> dict[str, float]:
        """Mean step size and mean per-token retention exp(dt * A) of the last forward, over real positions."""
        if self._last_dt is None:
            return {}
        dt = real_positions(self._last_dt, valid)  # (N, H)
        retention = torch.exp(dt * self._last_A)
        return {"dt_mean": dt.mean().item(), "retention_mean": retention.mean().item()}
