"""L2 normalisation over the last dimension with a fused backward."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from memlab.ops.precision import at_least_float32


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(||x||^2 + eps)`` over the last dimension, as flash-linear-attention's ``l2norm``
    normalises Gated DeltaNet's q and k (so weights interchange; a vector much shorter than
    ``sqrt(eps)`` comes out shorter than 1, and its gradient stays bounded).  The norm is computed
    in at least float32 (a float16 vector of norm above 256 overflowed its square); the result
    has x's dtype.

    The backward ``r (dy - y <dy, y>)`` with ``r = 1 / sqrt(||x||^2 + eps)`` takes three passes over
    the tensor instead of the six that autograd records through the norm and the division.
    """
    return _L2Normalize.apply(x, eps)


class _L2Normalize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        dt = at_least_float32(x.dtype)
        inverse_norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=dt).square_().add_(eps).rsqrt_()
        y = (x * inverse_norm).to(x.dtype)
        ctx.save_for_backward(y, inverse_norm)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor, None]:
        y, inverse_norm = ctx.saved_tensors
        dtype = y.dtype
        dy, y = dy.to(inverse_norm.dtype), y.to(inverse_norm.dtype)
        along = (dy * y).sum(-1, keepdim=True)  # dy's component along y, removed
        return torch.addcmul(dy, y, along, value=-1).mul_(inverse_norm).to(dtype), None
