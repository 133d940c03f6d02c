"""The fused L2 normalisation against F.normalize: values and gradients, including tiny vectors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memlab.ops.l2norm import l2_normalize


def test_values_and_gradients_match_f_normalize():
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    x[0, 0] = 1e-14  # below eps: the norm is clamped, as in F.normalize
    dy = torch.randn_like(x)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = l2_normalize(a)
    torch.testing.assert_close(y, F.normalize(b, dim=-1))
    y.backward(dy)
    F.normalize(b, dim=-1).backward(dy)
    torch.testing.assert_close(a.grad, b.grad)
    assert torch.autograd.gradcheck(l2_normalize, (torch.randn(4, 6, dtype=torch.float64, requires_grad=True),))


def test_output_has_unit_norm_and_keeps_dtype():
    y = l2_normalize(torch.randn(2, 7, 16, dtype=torch.bfloat16) * 30)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float().norm(dim=-1), torch.ones(2, 7), atol=1e-2, rtol=0)
