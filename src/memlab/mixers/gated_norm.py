"""The SiLU-gated RMSNorm on the outputs of Mamba-2 and Gated DeltaNet, as a layer with its scale."""

from __future__ import annotations

import torch
from torch import nn

from memlab.ops.gated_rms_norm import gated_rms_norm


class GatedRMSNorm(nn.Module):
    """``x, z: (..., width) -> (..., width)`` through :func:`memlab.ops.gated_rms_norm.gated_rms_norm`:
    ``RMSNorm(x * silu(z)) * weight`` with ``gate_first`` (Mamba-2), else ``RMSNorm(x) * weight *
    silu(z)`` (Gated DeltaNet).  With ``groups``, each of that many equal parts of the width is
    normalised on its own (Mamba-2's ``n_groups``, as ``mamba_ssm``'s ``RMSNormGated(group_size)``);
    ``weight`` has one entry per channel and starts at ones, as ``nn.RMSNorm``'s, under the same name."""

    def __init__(self, width: int, eps: float, gate_first: bool, groups: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps, self.gate_first, self.groups = eps, gate_first, groups

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return gated_rms_norm(x, z, self.weight, self.eps, self.gate_first)
        grouped = (self.groups, -1)
        out = gated_rms_norm(x.unflatten(-1, grouped), z.unflatten(-1, grouped), self.weight.view(grouped), self.eps,
                             self.gate_first)  # fmt: skip
        return out.flatten(-2)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, gate_first={self.gate_first}, groups={self.groups}"
