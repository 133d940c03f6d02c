"""The fused L2 normalisation against its plain-op reference and flash-linear-attention's form."""

from __future__ import annotations

import pytest
import torch

from memlab.ops.l2norm import l2_normalize


def reference(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """fla's l2norm: x / sqrt(sum(x^2) + eps), through autograd."""
    return x / torch.sqrt(x.square().sum(-1, keepdim=True) + eps)


def test_values_and_gradients_match_the_reference_tiny_vectors_too():
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    x[0, 0] *= 1e-4  # |x| ~ 3e-4, below sqrt(eps): shorter than 1 (F.normalize would make it 1)
    x[0, 1] = 0.0
    dy = torch.randn_like(x)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = l2_normalize(a)
    torch.testing.assert_close(y, reference(b))
    norms = y.detach().norm(dim=-1)
    assert float(norms[0, 0]) < 0.5 and float(norms[1, 0]) == pytest.approx(1.0, abs=1e-6)
    y.backward(dy)
    reference(b).backward(dy)
    torch.testing.assert_close(a.grad, b.grad)
    assert torch.autograd.gradcheck(l2_normalize, (torch.randn(4, 6, dtype=torch.float64, requires_grad=True),))


def test_eps_is_flash_linear_attentions_default():
    fla_l2norm = pytest.importorskip("fla.modules.norm.l2norm", reason="flash-linear-attention is optional")
    if not hasattr(fla_l2norm, "l2norm"):
        pytest.skip("this fla has no l2norm")
    eps = fla_l2norm.l2norm.__defaults__[0]  # fla's default eps, which memlab's must equal
    assert eps == l2_normalize.__defaults__[0]


def test_output_has_unit_norm_and_keeps_dtype():
    y = l2_normalize(torch.randn(2, 7, 16, dtype=torch.bfloat16) * 30)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float().norm(dim=-1), torch.ones(2, 7), atol=1e-2, rtol=0)


def test_half_precision_vectors_longer_than_256_are_normalised():
    """Their squared norm overflows float16 (65504): the norm is computed in float32."""
    x = (torch.randn(4, 64, dtype=torch.float64) * 60).requires_grad_()  # |x| ~ 480
    dy = torch.randn(4, 64, dtype=torch.float64)
    half = x.detach().half().requires_grad_()
    y = l2_normalize(half)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.double(), reference(x).detach(), atol=2e-3, rtol=0)
    y.backward(dy.half())
    reference(x).backward(dy)
    torch.testing.assert_close(half.grad.double(), x.grad, atol=1e-5, rtol=1e-2)
