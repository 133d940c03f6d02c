"""Causal sliding-window attention in blocks of queries: linear in the sequence, not quadratic.

Every query sees the ``window`` newest keys up to its own position.  A dense (T, S) mask over
SDPA visits every query-key pair (at T = 2048, window 128 it took 2.2x full causal attention).
Here the queries are cut into blocks of ``window``; block b needs only the ``2 window - 1`` keys
from ``window - 1`` before its first query to its last, gathered by one ``unfold``, and one band
mask (the same for every block) selects each query's keys.  Keys and queries are in position
order: the keys are positions ``0 .. S-1``, the queries the last T of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def windowed_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """The dense form: SDPA with a (T, S) mask of each query's window."""
    T, S = q.shape[2], k.shape[2]
    age = torch.arange(S - T, S, device=q.device)[:, None] - torch.arange(S, device=q.device)  # (T, S)
    mask = (age >= 0) & (age < window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def windowed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """q (B, H, T, Dh) at the last T of the positions of k, v (B, Hkv, S, Dh), T <= S ->
    (B, H, T, Dh): each query attends to the keys at most ``window - 1`` positions before it."""
    B, H, T, Dh = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    if window >= S:  # every query sees all the keys before it: plain causal attention
        if T == S:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != Hkv)
        return windowed_attention_reference(q, k, v, window)
    n = -(-T // window)  # query blocks
    span = 2 * window - 1  # the keys a block needs
    front = max(0, window - 1 - (S - T))  # key slots before position 0 (masked)
    back = n * window - T  # query padding, and as many key slots (seen by padded queries alone)
    k, v = (F.pad(t, (0, 0, front, back)) for t in (k, v))  # (B, Hkv, front + S + back, Dh)
    first = S - T + front - (window - 1)  # padded index of the first key of block 0
    k, v = (t[:, :, first:].unfold(2, span, window).transpose(-1, -2) for t in (k, v))  # (B, Hkv, n, span, Dh)
    q = F.pad(q, (0, 0, 0, back)).unflatten(2, (n, window))  # (B, H, n, window, Dh)
    # query r of a block sees its keys r .. r + window - 1; a key before position 0 is no key
    r, c = torch.arange(window, device=q.device)[:, None], torch.arange(span, device=q.device)
    position = S - T - (window - 1) + window * torch.arange(n, device=q.device)[:, None] + c  # (n, span)
    mask = ((c >= r) & (c < r + window))[None] & (position >= 0)[:, None, :]  # (n, window, span)

    def blocks_first(t: torch.Tensor) -> torch.Tensor:  # (B, heads, n, L, Dh) -> (B n, heads, L, Dh)
        return t.transpose(1, 2).flatten(0, 1)

    out = F.scaled_dot_product_attention(
        blocks_first(q), blocks_first(k), blocks_first(v), attn_mask=mask.repeat(B, 1, 1)[:, None],
        enable_gqa=H != Hkv,
    )  # (B n, H, window, Dh)
    return out.unflatten(0, (B, n)).transpose(1, 2).flatten(2, 3)[:, :, :T]
