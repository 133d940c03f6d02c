"""Causal depthwise short convolution with a carried tail, for prefill and decode alike."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

_WEIGHT_GRAD_BLOCK = 128  # time steps per block of the weight gradient: its products stay in cache


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, tail: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution of ``x`` continuing after ``tail``.

    x: (B, T, C); weight: (C, W), tap ``W - 1`` multiplies the current token;
    tail: (B, W - 1, C), the inputs just before ``x`` (None = zeros, a sequence start);
    bias: (C,) added to every output, or None.
    Returns y: (B, T, C) and the new tail (B, W - 1, C) for the next call, in the given tail's
    dtype (a decoding state keeps its dtype under autocast).
    """
    B, T, C = x.shape
    W = weight.shape[-1]
    tail_dtype = x.dtype if tail is None else tail.dtype
    if T == 1 and tail is not None:  # a decoding step: the window's product with the taps, three small ops
        window = torch.cat([tail.to(x.dtype), x], dim=1)  # (B, W, C)
        y = (window * weight.t()).sum(1, keepdim=True)
        return y if bias is None else y + bias, window[:, 1:].to(tail_dtype)
    tail = x.new_zeros(B, W - 1, C) if tail is None else tail.to(x.dtype)
    new_tail = torch.cat([tail, x[:, -(W - 1) :]], dim=1)[:, -(W - 1) :] if W > 1 else tail
    return _ShiftedMultiplyAdd.apply(x, tail, weight, bias), new_tail.to(tail_dtype)


def _shifted_pairs(T: int, W: int) -> list[tuple[int, int, int]]:
    """For each tap w and shift s = W - 1 - w: the output rows fed by x and those fed by the tail.

    (w, s, m) with m = min(s, T): outputs [s, T) read x[0, T - s), outputs [0, m) read
    tail[w, w + m).  The last entry is the current token's tap (s = 0).
    """
    return [(w, W - 1 - w, min(W - 1 - w, T)) for w in range(W)]


class _ShiftedMultiplyAdd(torch.autograd.Function):
    """y_t = bias + sum_w weight[:, w] * [tail; x][t + w], as W multiply-adds on shifted views.

    On CPU this is about four times as fast (forward + backward) as autograd through the same sum
    or a grouped ``conv1d``: nothing is padded or copied, autograd would materialise a
    zero-filled gradient per shifted slice, and the weight gradient is summed block by block
    so that its products stay in cache.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        T = x.shape[1]  # x: (B, T, C); tail: (B, W - 1, C); weight: (C, W); bias: (C,) or None
        taps = weight.t().contiguous()  # (W, C): a contiguous row per tap vectorises, a column would not
        ctx.save_for_backward(x, tail, taps)
        y = x * taps[-1] if bias is None else torch.addcmul(bias, x, taps[-1])
        for w, s, m in _shifted_pairs(T, len(taps))[:-1]:
            if s < T:
                y[:, s:].addcmul_(x[:, : T - s], taps[w])
            y[:, :m].addcmul_(tail[:, w : w + m], taps[w])
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, tail, taps = ctx.saved_tensors
        T = x.shape[1]
        shifts = _shifted_pairs(T, len(taps))
        dx = dtail = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            dx = dy * taps[-1]
            for w, s, _ in shifts[:-1]:
                if s < T:
                    dx[:, : T - s].addcmul_(dy[:, s:], taps[w])
            dx = dx.to(x.dtype)
        if ctx.needs_input_grad[1]:
            dtail = torch.zeros_like(tail, dtype=dy.dtype)
            for w, _, m in shifts[:-1]:
                dtail[:, w : w + m].addcmul_(dy[:, :m], taps[w])
            dtail = dtail.to(tail.dtype)
        if ctx.needs_input_grad[2]:
            dweight = _weight_grad(dy, x.to(dy.dtype), tail.to(dy.dtype), shifts).to(taps.dtype)
        if ctx.needs_input_grad[3]:
            dbias = dy.sum((0, 1)).to(taps.dtype)
        return dx, dtail, dweight, dbias


def _weight_grad(dy: torch.Tensor, x: torch.Tensor, tail: torch.Tensor, shifts: list) -> torch.Tensor:
    """dweight[:, w] = sum over batch and time of dy[t] * [tail; x][t + w]: (C, W)."""
    T = x.shape[1]
    dweight = dy.new_zeros(len(shifts), dy.shape[-1])  # (W, C)
    for start in range(0, T, _WEIGHT_GRAD_BLOCK):
        stop = min(start + _WEIGHT_GRAD_BLOCK, T)
        for w, s, _ in shifts:
            first = max(start, s)  # outputs before s read the tail
            if first < stop:
                dweight[w] += torch.linalg.vecdot(dy[:, first:stop], x[:, first - s : stop - s], dim=1).sum(0)
    for w, _, m in shifts:
        if m:
            dweight[w] += torch.linalg.vecdot(dy[:, :m], tail[:, w : w + m], dim=1).sum(0)
    return dweight.t()
