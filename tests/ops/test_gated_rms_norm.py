"""The fused gated RMSNorm against its reference and the written-out formula: both gate orders,
values and every gradient, a strided gate, and low-precision inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memlab.ops.gated_rms_norm import gated_rms_norm, gated_rms_norm_reference

EPS = 1e-5


def written_out(x, z, w, gate_first):
    """The two orders as the Mamba-2 and Gated DeltaNet papers write them."""
    h = x * F.silu(z) if gate_first else x
    out = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + EPS) * w
    return out if gate_first else out * F.silu(z)


@pytest.mark.parametrize("weight_shape", [(37,), (3, 37)], ids=["shared", "per-group"])
@pytest.mark.parametrize("gate_first", [True, False])
def test_values_and_gradients_match_the_reference(gate_first, weight_shape):
    torch.manual_seed(0)
    x = torch.randn(2, 9, 3, 37, dtype=torch.float64)
    z = torch.randn(2, 9, 3, 80, dtype=torch.float64)[..., 5:42]  # strided, as a slice of a projection
    x[0, 0, 0] = 0.0  # an all-zero row: the norm is eps alone
    w = torch.randn(weight_shape, dtype=torch.float64)
    d_out = torch.randn_like(x)
    fused_inputs = [t.clone().requires_grad_() for t in (x, z, w)]
    reference_inputs = [t.clone().requires_grad_() for t in (x, z, w)]
    out = gated_rms_norm(*fused_inputs, EPS, gate_first)
    expected = gated_rms_norm_reference(*reference_inputs, EPS, gate_first)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(expected, written_out(x, z, w, gate_first))
    out.backward(d_out)
    expected.backward(d_out)
    for fused, reference in zip(fused_inputs, reference_inputs):
        torch.testing.assert_close(fused.grad, reference.grad)
    assert torch.autograd.gradcheck(
        lambda *t: gated_rms_norm(*t, EPS, gate_first), [t.detach()[:1, :2].clone().requires_grad_() for t in (x, z)]
        + [w.clone().requires_grad_()]
    )


def test_the_two_orders_differ():
    x, z, w = torch.randn(4, 16), torch.randn(4, 16), torch.ones(16)
    assert not torch.allclose(gated_rms_norm(x, z, w, EPS, True), gated_rms_norm(x, z, w, EPS, False))


def test_half_precision_inputs_are_normalised_in_float32():
    torch.manual_seed(0)
    x, z = (torch.randn(3, 5, 64) * 20).bfloat16(), torch.randn(3, 5, 64).bfloat16()
    w = torch.rand(64)
    out = gated_rms_norm(x, z, w, EPS, True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), written_out(x.float(), z.float(), w, True), atol=2e-2, rtol=1e-2)
