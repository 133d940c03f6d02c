"""Shared measuring helpers for the benchmarks (timing, matmul peak, machine facts, JSON).

Importing it tunes glibc's malloc as ``memlab train`` does on CPU
(:func:`memlab.train.allocator.keep_freed_memory`), so benchmarks measure what training gets.
"""

from __future__ import annotations

import json
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch

from memlab.train.allocator import keep_freed_memory

MALLOC_TUNED = keep_freed_memory()


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1, setup: Callable[[], object] | None = None) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs (CUDA work included);
    ``setup()``, untimed, before every run."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    times = []
    for run in range(warmup + repeats):
        if setup is not None:
            setup()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        if run >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


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


def interleaved_seconds(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    setups: dict[str, Callable[[], object]] | None = None,
) -> dict[str, float]:
    """Median seconds of each ``fns[name]()``, timed in alternating rounds so that load changes on a
    shared machine hit every contender alike (the ratios are what the benchmarks report); every
    other round runs them in reverse order, so that none always follows the same one.
    ``setups[name]()``, untimed, before every run of ``fns[name]``."""
    setups = setups or {}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for run in range(warmup + rounds):
        for name, fn in list(fns.items())[:: 1 if run % 2 == 0 else -1]:
            seconds = timed(fn, repeats=1, warmup=0, setup=setups.get(name))
            if run >= warmup:
                times[name].append(seconds)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


MATMUL_N = 2048  # the square matmul that measures the peak
MATMUL_FLOPS = 2 * MATMUL_N**3


def square_matmul(dtype: torch.dtype = torch.float32) -> Callable[[], torch.Tensor]:
    """One ``MATMUL_N`` x ``MATMUL_N`` matmul of random matrices, to time (``MATMUL_FLOPS`` each)."""
    a, b = torch.randn(MATMUL_N, MATMUL_N, dtype=dtype), torch.randn(MATMUL_N, MATMUL_N, dtype=dtype)
    return lambda: a @ b


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "malloc_keeps_freed_memory": MALLOC_TUNED,
    }


def emit(result: dict, out: str | None) -> None:
    """Print the result as JSON and optionally write it to ``out``."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
