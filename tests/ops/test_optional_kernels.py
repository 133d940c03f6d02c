"""Optional fused kernels are found when their package imports, and are None otherwise."""

from __future__ import annotations

import math

import torch

from memlab.ops.optional_kernels import fused_kernel_takes, optional_kernel


def test_present_module_gives_the_function_and_missing_one_gives_none():
    assert optional_kernel("math", "sqrt") is math.sqrt
    assert optional_kernel("memlab_no_such_package.ops", "kernel") is None
    assert optional_kernel("math", "no_such_function") is None


def test_fused_kernels_take_cuda_tensors_below_float64_only():
    assert not fused_kernel_takes(torch.zeros(2))
    if torch.cuda.is_available():
        assert fused_kernel_takes(torch.zeros(2, device="cuda", dtype=torch.bfloat16))
        assert not fused_kernel_takes(torch.zeros(2, device="cuda", dtype=torch.float64))
