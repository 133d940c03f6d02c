"""Causal depthwise short convolution with a carried tail, for prefill and decode alike."""

from __future__ import annotations

import torch


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, tail: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution of ``x`` continuing after ``tail``.

    x: (B, T, C); weight: (C, W), tap ``W - 1`` multiplies the current token;
    tail: (B, W - 1, C), the inputs just before ``x`` (None = zeros, a sequence start).
    Returns y: (B, T, C) and the new tail (B, W - 1, C) for the next call.
    """
    B, T, C = x.shape
    W = weight.shape[-1]
    if tail is None:
        tail = x.new_zeros(B, W - 1, C)
    padded = torch.cat([tail.to(x.dtype), x], dim=1)  # (B, W - 1 + T, C)
    # W shifted multiply-adds: faster than a grouped conv1d on CPU, in training and in decoding
    y = padded[:, :T] * weight[:, 0]
    for w in range(1, W):
        y = y + padded[:, w : w + T] * weight[:, w]
    return y, padded[:, T:]
