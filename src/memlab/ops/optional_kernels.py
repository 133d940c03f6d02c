"""Fused GPU kernels from optional packages (flash-linear-attention, mamba_ssm), found once."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable


@functools.cache
def optional_kernel(module: str, name: str) -> Callable | None:
    """``module.name``, or None when the package is missing or fails to initialise (triton on CPU)."""
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:  # ImportError, or the package's own import-time errors
        return None
