"""Precision of the recurrent kernels: decays, states and normalisers need at least float32
(float64 stays float64, for exact tests), under autocast too."""

from __future__ import annotations

import functools

import torch


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """The dtype to compute in for inputs of ``dtype``: float32 for 16-bit floats, else ``dtype``."""
    return torch.promote_types(dtype, torch.float32)


def full_precision(fn):
    """Run ``fn`` with autocast disabled on the device of its first tensor argument (the kernels cast
    their inputs up themselves, :func:`at_least_float32`, and their outputs back).  It also wraps an
    autograd Function's ``backward``, which a caller may run inside an autocast region against
    PyTorch's advice: its own products then agree in dtype (the backward of the built-in ops a
    forward records still follows autocast)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)).device.type
        if not torch.is_autocast_enabled(device):  # the common case, a decoding step's too: no context to enter
            return fn(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper
