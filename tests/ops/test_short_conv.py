"""The causal short convolution: the literal sum, and a sequence split anywhere through the tail."""

from __future__ import annotations

import pytest
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
    x, w, bias = torch.randn(2, 20, 5), torch.randn(5, 4), torch.randn(5)
    full, _ = causal_conv1d(x, w, bias=bias)
    parts, tail = [], None
    for a, b in [(0, 2), (2, 3), (3, 11), (11, 20)]:  # pieces shorter than the kernel too, one decoding step
        y, tail = causal_conv1d(x[:, a:b], w, tail, bias)
        parts.append(y)
    torch.testing.assert_close(torch.cat(parts, 1), full)


@pytest.mark.parametrize("T", [1, 2, 5, 300])  # shorter than the kernel; past one weight-gradient block
@pytest.mark.parametrize("with_bias", [False, True])
def test_gradients_match_autograd_through_the_literal_sum(T, with_bias):
    x, w = torch.randn(2, T, 3, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    tail, bias = torch.randn(2, 3, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    inputs = (x, w, tail, bias) if with_bias else (x, w, tail)
    for t in inputs:
        t.requires_grad_()

    def literal(x, w, tail, bias=None):
        padded = torch.cat([tail, x], 1)
        y = torch.stack([(padded[:, t : t + 4] * w.T).sum(1) for t in range(x.shape[1])], 1)
        return y if bias is None else y + bias

    dy = torch.randn(2, T, 3, dtype=torch.float64)
    expected = torch.autograd.grad(literal(*inputs), inputs, dy)
    y, new_tail = causal_conv1d(*inputs)
    torch.testing.assert_close(torch.autograd.grad(y, inputs, dy), expected)
    torch.testing.assert_close(new_tail, torch.cat([tail, x], 1)[:, -3:])
    if T <= 5:
        assert torch.autograd.gradcheck(lambda *a: causal_conv1d(*a)[0], inputs)


def test_weight_gradient_alone_and_mixed_precision_inputs():
    x, w = torch.randn(1, 5, 2, dtype=torch.bfloat16), torch.randn(2, 4, requires_grad=True)
    y, _ = causal_conv1d(x, w)  # the input needs no gradient: only the weight's is computed
    assert y.dtype == torch.float32
    y.sum().backward()
    expected = torch.stack([torch.cat([torch.zeros(3, 2), x[0].float()])[i : i + 5].sum(0) for i in range(4)], -1)
    torch.testing.assert_close(w.grad, expected)
