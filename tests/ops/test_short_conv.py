"""The causal short convolution: the literal sum, and a sequence split anywhere through the tail."""

from __future__ import annotations

import torch

from memlab.ops.short_conv import causal_conv1d


def test_causal_conv_is_the_literal_weighted_sum_of_the_last_tokens():
    x, w = torch.randn(2, 9, 3, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    y, tail = causal_conv1d(x, w)
    padded = torch.cat([torch.zeros(2, 3, 3, dtype=x.dtype), x], 1)
    expected = torch.stack([(padded[:, t : t + 4] * w.T).sum(1) for t in range(9)], 1)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(tail, x[:, -3:])


def test_split_sequence_with_tail_equals_one_call():
    x, w = torch.randn(2, 20, 5), torch.randn(5, 4)
    full, _ = causal_conv1d(x, w)
    parts, tail = [], None
    for a, b in [(0, 2), (2, 3), (3, 11), (11, 20)]:  # pieces shorter than the kernel too
        y, tail = causal_conv1d(x[:, a:b], w, tail)
        parts.append(y)
    torch.testing.assert_close(torch.cat(parts, 1), full)
