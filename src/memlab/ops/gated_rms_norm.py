"""RMSNorm gated by SiLU, as on the outputs of Mamba-2 and Gated DeltaNet, with a fused backward.

Two orders, as ``mamba_ssm``'s ``RMSNormGated`` (``norm_before_gate``) and flash-linear-attention's
``FusedRMSNormGated`` have them, over the last dimension ``n``::

    gate first (Mamba-2):       out = RMSNorm(x * silu(z)) * w
    norm first (Gated DeltaNet): out = RMSNorm(x) * w * silu(z)

with ``RMSNorm(h) = h / sqrt(mean(h^2) + eps)``.  :func:`gated_rms_norm_reference` composes
the plain ops; :func:`gated_rms_norm` computes the same with a hand-written backward
(the RMSNorm gradient ``r (d_normed - normed <d_normed, normed> / n)`` in two passes) that
takes about half of the passes over the tensor autograd records through the composition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from memlab.ops.precision import at_least_float32


def gated_rms_norm_reference(
    x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float, gate_first: bool
) -> torch.Tensor:
    """The composition of plain ops (autograd through it): the reference."""
    width = (x.shape[-1],)
    if gate_first:
        return F.rms_norm(x * F.silu(z), width, eps=eps) * weight
    return F.rms_norm(x, width, eps=eps) * weight * F.silu(z)


def gated_rms_norm(
    x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float, gate_first: bool
) -> torch.Tensor:
    """``x, z: (..., n)``, ``weight: (n,)`` or one row per group, e.g. ``(G, n)`` for ``x: (..., G, n)``
    -> (..., n); equals :func:`gated_rms_norm_reference`.

    Inputs below float32 are normalised in float32 and the output cast back to ``x``'s dtype.
    """
    dtype = at_least_float32(x.dtype)
    with torch.autocast(x.device.type, enabled=False):
        out = _GatedRMSNorm.apply(x.to(dtype), z.to(dtype), weight.to(dtype), eps, gate_first)
    return out.to(x.dtype)


class _GatedRMSNorm(torch.autograd.Function):
    """Saves the normalised ``n = h r`` (``h`` the normalised input, ``r = 1 / rms(h)``), the
    SiLU gate and ``r``; the backward needs no recomputation of the norm."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float, gate_first: bool):
        gate = F.silu(z)
        h = x * gate if gate_first else x
        width = h.shape[-1]
        r = torch.linalg.vector_norm(h, dim=-1, keepdim=True).square_().div_(width).add_(eps).rsqrt_()  # (..., 1)
        normed = h * r
        out = normed * weight
        if not gate_first:
            out.mul_(gate)
        ctx.save_for_backward(x, z, weight, gate, normed, r)
        ctx.gate_first = gate_first
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: torch.Tensor):
        x, z, weight, gate, normed, r = ctx.saved_tensors
        width = normed.shape[-1]
        if ctx.gate_first:  # out = normed * w
            d_weight = (d_out * normed).sum_to_size(weight.shape)
            d_normed = d_out * weight
        else:  # out = normed * w * gate
            d_out_gated = d_out * gate
            d_weight = (d_out_gated * normed).sum_to_size(weight.shape)
            d_normed = d_out_gated.mul_(weight)
        along = (d_normed * normed).sum(-1, keepdim=True).div_(-width)  # the RMS's share, removed below
        d_h = torch.addcmul(d_normed, normed, along).mul_(r)
        if ctx.gate_first:  # h = x * gate
            d_x = d_h * gate
            d_z = torch.ops.aten.silu_backward(d_h.mul_(x), z)
        else:
            d_x = d_h
            d_z = torch.ops.aten.silu_backward(d_out * normed * weight, z)
        return d_x, d_z, d_weight, None, None
