"""Optional fused kernels are found when their package imports, and are None otherwise."""

from __future__ import annotations

import math

from memlab.ops.optional_kernels import optional_kernel


def test_present_module_gives_the_function_and_missing_one_gives_none():
    assert optional_kernel("math", "sqrt") is math.sqrt
    assert optional_kernel("memlab_no_such_package.ops", "kernel") is None
    assert optional_kernel("math", "no_such_function") is None
