"""Blocked sliding-window attention against the dense masked form: values and gradients, ragged lengths."""

from __future__ import annotations

import pytest
import torch

from memlab.ops.windowed_attention import windowed_attention, windowed_attention_reference


def inputs(T: int, prefix: int, heads: int = 4, kv_heads: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, T, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, kv_heads, prefix + T, 8, generator=g, dtype=torch.float64) for _ in range(2))
    return [t.requires_grad_() for t in (q, k, v)]


@pytest.mark.parametrize("T", [1, 5, 63, 200])
@pytest.mark.parametrize("prefix", [0, 3, 50])  # keys before the first query (a prefill after a context)
@pytest.mark.parametrize("window", [1, 4, 16, 64, 300])
def test_blocked_equals_the_dense_mask_in_values_and_gradients(T, prefix, window):
    q, k, v = inputs(T, prefix)
    out = windowed_attention(q, k, v, window)
    expected = windowed_attention_reference(q, k, v, window)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(expected, (q, k, v), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_a_query_sees_exactly_the_window_of_keys_up_to_itself():
    """One key's value is 1, the rest 0: the output is 1/|window| where the key is in view, else 0."""
    T, window = 40, 7
    q = torch.zeros(1, 1, T, 4, dtype=torch.float64)  # uniform attention over the keys in view
    k = torch.zeros(1, 1, T, 4, dtype=torch.float64)
    v = torch.zeros(1, 1, T, 1, dtype=torch.float64)
    v[0, 0, 20] = 1.0
    out = windowed_attention(q, k, v, window)[0, 0, :, 0]
    seen = {t for t in range(T) if out[t] > 0}
    assert seen == set(range(20, 27))
    for t in seen:
        assert out[t].item() == pytest.approx(1 / min(window, t + 1))
