"""Autocast off inside the recurrent kernels, whose matmuls combine decays and states that need
at least float32 (the kernels cast their inputs up themselves and their outputs back)."""

from __future__ import annotations

import functools

import torch


def full_precision(fn):
    """Run ``fn`` with autocast disabled on the device of its first tensor argument."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next(t.device.type for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor))
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper
