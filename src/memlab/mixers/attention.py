"""Causal attention (``A``) and sliding-window attention (``S``) with GQA and RoPE.

The KV cache of full attention grows with the context; the cache of sliding-window
attention is a ring buffer of ``window`` slots, where slot ``i`` holds the newest
position ``p`` with ``p % window == i`` (so positions are derived, never stored).
The horizon ablation is native: keys older than ``h`` tokens are masked.  Both run at
some positions only (:class:`memlab.mixers.base.Rows`) against the keys and values every
position left at its last such forward (:class:`RowKeys`).  A forward of several tokens under a
window (sliding, or a horizon ablation) attends in blocks of queries
(:func:`memlab.ops.windowed_attention.windowed_attention`): linear in the sequence, where a dense
mask was quadratic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memlab.config import ModelConfig
from memlab.mixers import register_mixer
from memlab.mixers.base import Mixer, MixerState, Rows
from memlab.ops.rope import apply_rope
from memlab.ops.windowed_attention import windowed_attention


@dataclass
class KVCache(MixerState):
    """Keys and values of the tokens seen so far: (B, Hkv, capacity, Dh) buffers."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0  # tokens seen so far

    @property
    def nbytes(self) -> int:  # the filled part only: what the sequence actually carries
        used = min(self.length, self.k.shape[2])
        return 2 * self.k[:, :, :used].numel() * self.k.element_size()


class RowKeys(MixerState):
    """Keys and values of the T tokens of a (B, T) call, (B, T, Hkv, Dh) each (None before the
    first forward), for forwards at ``rows``: the rows' keys and values replace what was there.
    With a ``cache``, the tokens follow the cache's context, and each forward appends all T
    tokens' keys and values to it.  Not a dataclass: FSDP hands a block a copy of a dataclass
    argument, and these must persist."""

    def __init__(self) -> None:
        self.rows: Rows | None = None
        self.cache: KVCache | None = None
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.k, self.v) if t is not None]


@register_mixer
class Attention(Mixer):
    """Multi-head causal self-attention with grouped-query heads."""

    letter = "A"
    native_horizon = True
    mixes_rows = True

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        D, H, Hkv, Dh = config.d_model, config.n_heads, config.kv_heads, config.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = H, Hkv, Dh
        self.q_proj = nn.Linear(D, H * Dh, bias=False)
        self.k_proj = nn.Linear(D, Hkv * Dh, bias=False)
        self.v_proj = nn.Linear(D, Hkv * Dh, bias=False)
        self.out_proj = nn.Linear(H * Dh, D, bias=False)
        self.use_rope = config.pos_encoding == "rope"

    @property
    def window(self) -> int | None:
        """How many keys (the query's own included) a query may see; None = all."""
        limits = [w for w in (self.horizon,) if w is not None]
        return min(limits) if limits else None

    # ------------------------------------------------------------------ forward
    def mix(self, x: torch.Tensor, state: KVCache | RowKeys | None) -> torch.Tensor:
        if isinstance(state, RowKeys):
            return self._mix_rows(x, state)
        B, T, _ = x.shape  # x: (B, T, D)
        start = 0 if state is None else state.length
        q_pos = torch.arange(start, start + T, device=x.device)
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.use_rope:
            theta = self.config.attention.rope_theta
            q, k = apply_rope(q, q_pos, theta), apply_rope(k, q_pos, theta)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, Dh)
        if state is None:
            keys, values, k_pos = k, v, q_pos
        else:
            keys, values, k_pos = self._cache_update(state, k, v)
        if self.window is not None and T > 1:  # (the keys are consecutive positions up to the last query)
            y = windowed_attention(q, keys, values, self.window)
        else:
            y = self._attend(q, keys, values, q_pos, k_pos, aligned=state is None or T == 1)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, q_pos: torch.Tensor,
                k_pos: torch.Tensor, aligned: bool) -> torch.Tensor:
        """Causal attention of ``q (B, H, R, Dh)`` at positions ``q_pos`` ((R,) or (B, R)) to the
        keys and values ``(B, Hkv, S, Dh)`` at ``k_pos (S,)``, within the window.  ``aligned``: the
        queries are the keys' positions, or one query after them all, so without a window no mask
        is needed."""
        window = self.window
        if aligned and window is None:
            return F.scaled_dot_product_attention(q, keys, values, is_causal=q.shape[2] > 1, enable_gqa=self._gqa)
        age = q_pos[..., None] - k_pos  # (R, S) or (B, R, S)
        allowed = age >= 0
        if window is not None:
            allowed &= age < window
        mask = allowed if allowed.dim() == 2 else allowed[:, None]  # (B, 1, R, S): every head alike
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=self._gqa)

    def _mix_rows(self, x: torch.Tensor, state: RowKeys) -> torch.Tensor:
        """Attention at ``state.rows`` alone: ``x: (N, D)`` -> (N, D)."""
        rows, N = state.rows, x.shape[0]
        (B, T), start = rows.shape, 0 if state.cache is None else state.cache.length
        if N == 0:  # nothing runs: the cache still gets every token's keys and values
            if state.cache is not None:
                self._cache_update(state.cache, state.k.transpose(1, 2), state.v.transpose(1, 2))
            return x
        position = rows.position + start  # (N,) absolute
        q = self.q_proj(x).view(1, N, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(1, N, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(1, N, self.n_kv_heads, self.head_dim)
        if self.use_rope:
            theta = self.config.attention.rope_theta
            q, k = apply_rope(q, position, theta), apply_rope(k, position, theta)
        if state.k is None:
            state.k = state.v = k.new_zeros(B, T, self.n_kv_heads, self.head_dim)
        state.k, state.v = rows.scatter(state.k, k[0]), rows.scatter(state.v, v[0])  # (B, T, Hkv, Dh)
        new_k, new_v = state.k.transpose(1, 2), state.v.transpose(1, 2)  # (B, Hkv, T, Dh)
        if state.cache is None:
            keys, values, k_pos = new_k, new_v, torch.arange(T, device=x.device)
        else:
            keys, values, k_pos = self._cache_update(state.cache, new_k, new_v)
        q_pos = rows.pack(position, fill=start + T - 1)  # (B, R): a free slot's query sees a key
        q = rows.pack(q[0]).transpose(1, 2)  # (B, H, R, Dh)
        y = self._attend(q, keys, values, q_pos, k_pos, aligned=rows.full and (state.cache is None or T == 1))
        return self.out_proj(rows.unpack(y.transpose(1, 2)).reshape(N, self.n_heads * self.head_dim))

    def init_row_state(self) -> RowKeys:
        return RowKeys()

    @property
    def _gqa(self) -> bool:
        return self.n_kv_heads != self.n_heads

    def extra_flops_per_token(self, seq_len: int) -> float:
        """12 FLOPs per head dimension per attended key (QK^T and AV, forward + backward)."""
        w = min(self.window or seq_len, seq_len)
        attended = (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len  # mean keys per query
        return 12.0 * self.n_heads * self.head_dim * attended

    # -------------------------------------------------------------------- state
    def init_state(self, batch_size: int, device=None, dtype=None) -> KVCache:
        shape = (batch_size, self.n_kv_heads, 0, self.head_dim)
        dtype = dtype or self.q_proj.weight.dtype
        empty = torch.empty(shape, device=device, dtype=dtype)
        return KVCache(empty, empty.clone())

    def state_nbytes(self, context_len: int, batch_size: int = 1, dtype=torch.float32) -> int:
        return 2 * batch_size * self.n_kv_heads * context_len * self.head_dim * dtype.itemsize

    def _cache_update(self, state: KVCache, k: torch.Tensor, v: torch.Tensor):
        """Append new keys/values (B, Hkv, T, Dh); return all keys, values and their positions."""
        end = state.length + k.shape[2]
        if end > state.k.shape[2]:  # grow geometrically so decoding is amortised O(1) per token
            capacity = max(end, 2 * state.k.shape[2], 16)
            state.k = _grow(state.k, capacity)
            state.v = _grow(state.v, capacity)
        state.k[:, :, state.length : end] = k
        state.v[:, :, state.length : end] = v
        state.length = end
        positions = torch.arange(end, device=k.device)
        return state.k[:, :, :end], state.v[:, :, :end], positions


def _grow(buffer: torch.Tensor, capacity: int) -> torch.Tensor:
    out = buffer.new_empty(*buffer.shape[:2], capacity, buffer.shape[3])
    out[:, :, : buffer.shape[2]] = buffer
    return out


@dataclass
class RingKVCache(KVCache):
    """A sliding window's cache: (B, Hkv, window, Dh) ring buffers."""

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


@register_mixer
class SlidingWindowAttention(Attention):
    """Causal attention over the last ``config.attention.window`` tokens; O(window) state."""

    letter = "S"

    @property
    def window(self) -> int | None:
        return min(w for w in (self.horizon, self.config.attention.window) if w is not None)

    def init_state(self, batch_size: int, device=None, dtype=None) -> RingKVCache:
        shape = (batch_size, self.n_kv_heads, self.config.attention.window, self.head_dim)
        dtype = dtype or self.q_proj.weight.dtype
        zeros = torch.zeros(shape, device=device, dtype=dtype)
        return RingKVCache(zeros, zeros.clone())

    def state_nbytes(self, context_len: int, batch_size: int = 1, dtype=torch.float32) -> int:
        return super().state_nbytes(self.config.attention.window, batch_size, dtype)

    def _cache_update(self, state: KVCache, k: torch.Tensor, v: torch.Tensor):
        """The ring's keys and values in position order (the slots it holds), then the new ones."""
        W, T, start = state.k.shape[2], k.shape[2], state.length
        held = torch.arange(max(0, start - W), start, device=k.device)  # the positions in the ring, oldest first
        keys = torch.cat([state.k[:, :, held % W], k], dim=2)
        values = torch.cat([state.v[:, :, held % W], v], dim=2)
        positions = torch.arange(max(0, start - W), start + T, device=k.device)
        keep = min(T, W)
        new_pos = torch.arange(start + T - keep, start + T, device=k.device)
        state.k[:, :, new_pos % W] = k[:, :, T - keep :].to(state.k.dtype)  # (autocast: the cache keeps its dtype)
        state.v[:, :, new_pos % W] = v[:, :, T - keep :].to(state.v.dtype)
        state.length = start + T
        return keys, values, positions


class CrossAttention(nn.Module):
    """Multi-head attention from ``queries: (B, ..., Tq, D)`` to ``sources: (B, ..., S, D)`` (no mask)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, queries: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        H, D = self.n_heads, queries.shape[-1]
        q = self.q_proj(queries).unflatten(-1, (H, D // H)).transpose(-2, -3)  # (..., H, Tq, Dh)
        k, v = self.kv_proj(sources).unflatten(-1, (2, H, D // H)).movedim(-3, 0).transpose(-2, -3)
        y = F.scaled_dot_product_attention(q, k, v)  # (..., H, Tq, Dh)
        return self.out_proj(y.transpose(-2, -3).flatten(-2))
