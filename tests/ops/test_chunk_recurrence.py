"""The shared chunk-to-chunk recurrence against autograd through the plain loop."""

from __future__ import annotations

import pytest
import torch

from memlab.ops.chunk_recurrence import chunk_recurrence


def _loop(decay, writes, S):
    entering = []
    for n in range(writes.shape[0]):
        entering.append(S)
        S = decay[n] * S + writes[n]
    return torch.stack(entering), S


@pytest.mark.parametrize("decay_shape", [(5, 2, 3, 1), (5, 2, 3, 4), (5, 1, 1, 1)])  # per slot, full, shared
def test_values_and_gradients_match_the_loop(decay_shape):
    g = torch.Generator().manual_seed(1)
    decay = torch.rand(*decay_shape, generator=g, dtype=torch.float64).requires_grad_()
    writes = torch.randn(5, 2, 3, 4, generator=g, dtype=torch.float64).requires_grad_()
    initial = torch.randn(2, 3, 4, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(chunk_recurrence, (decay, writes, initial))
    for a, b in zip(chunk_recurrence(decay, writes, initial), _loop(decay, writes, initial)):
        torch.testing.assert_close(a, b)
    for pick in (0, 1):  # only one output used: the other's gradient is None
        inputs = (decay, writes, initial)
        got = torch.autograd.grad(chunk_recurrence(*inputs)[pick].sum(), inputs)
        want = torch.autograd.grad(_loop(*inputs)[pick].sum(), inputs)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
