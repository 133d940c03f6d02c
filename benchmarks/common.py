"""Shared measuring helpers for the benchmarks: those of ``memlab bench`` (timing in alternating
rounds, peak memory, machine facts: :mod:`memlab.analysis.timing`), forward + backward timing of a
kernel, the matmul peak, JSON output.

Importing it tunes glibc's malloc as ``memlab train`` does on CPU
(:func:`memlab.train.allocator.keep_freed_memory`), so benchmarks measure what training gets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from memlab.analysis.timing import interleaved_seconds, machine, peak_rss_mib, timed
from memlab.train.allocator import keep_freed_memory

__all__ = ["MATMUL_FLOPS", "emit", "fwd_bwd_seconds", "fwd_bwd_step", "interleaved_seconds", "machine",
           "peak_rss_mib", "square_matmul", "timed"]
keep_freed_memory()


def fwd_bwd_step(fn, inputs: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One run of ``fn(**inputs)`` (returning the output first) and a backward through it, the
    inputs' gradients cleared after."""

    def step():
        out, _ = fn(**inputs)
        out.float().sum().backward()
        for t in inputs.values():
            t.grad = None

    return step


def fwd_bwd_seconds(fn, inputs: dict[str, torch.Tensor], repeats: int) -> float:
    """Median seconds of :func:`fwd_bwd_step` after one warm-up run (a first call allocates)."""
    return timed(fwd_bwd_step(fn, inputs), repeats, warmup=1)


MATMUL_N = 2048  # the square matmul that measures the peak
MATMUL_FLOPS = 2 * MATMUL_N**3


def square_matmul(dtype: torch.dtype = torch.float32) -> Callable[[], torch.Tensor]:
    """One ``MATMUL_N`` x ``MATMUL_N`` matmul of random matrices, to time (``MATMUL_FLOPS`` each)."""
    a, b = torch.randn(MATMUL_N, MATMUL_N, dtype=dtype), torch.randn(MATMUL_N, MATMUL_N, dtype=dtype)
    return lambda: a @ b


def emit(result: dict, out: str | None) -> None:
    """Print the result as JSON and optionally write it to ``out``."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
