"""Fused GPU kernels from optional packages (flash-linear-attention, mamba_ssm), found once."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import torch


@functools.cache
def optional_kernel(module: str, name: str) -> Callable | None:
    """``module.name``, or None when the package is missing or fails to initialise (triton on CPU)."""
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:  # ImportError, or the package's own import-time errors
        return None


def fused_kernel_takes(t: torch.Tensor) -> bool:
    """Whether the fused kernels may take ``t``: a CUDA tensor in a precision they compute in
    (float32 / bf16 / fp16).  A float64 model runs the pure-PyTorch forms on the GPU too."""
    return t.is_cuda and t.dtype != torch.float64
