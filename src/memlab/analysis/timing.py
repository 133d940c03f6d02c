"""Timing on a shared machine: medians of runs, contenders timed in alternating rounds, peak memory
(of this process, or of a function run alone in a fresh one).

``memlab bench`` and the scripts in ``benchmarks/`` report ratios of rates measured in the same
rounds, so a load change on the machine slows every contender alike.
"""

from __future__ import annotations

import multiprocessing
import platform
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from memlab.train.allocator import keep_freed_memory

T = TypeVar("T")


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1, setup: Callable[[], object] | None = None) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs (CUDA work included);
    ``setup()``, untimed, before every run."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None  # (asked once, not while timed)
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
    return statistics.median(times)  # (the upper middle of an even count had been the slower one)


def interleaved_seconds(
    fns: dict[Hashable, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    setups: dict[Hashable, Callable[[], object]] | None = None,
    progress: str | None = None,
) -> dict[Hashable, float]:
    """Median seconds of each ``fns[name]()``, timed in alternating rounds so that load changes on a
    shared machine hit every contender alike (the ratios are what is reported); every other round
    runs them in reverse order, so that none always follows the same one.  ``setups[name]()``,
    untimed, before every run of ``fns[name]``; ``progress``: a bar over the rounds, so described."""
    setups = setups or {}
    times: dict[Hashable, list[float]] = {name: [] for name in fns}
    for run in tqdm(range(warmup + rounds), desc=progress, disable=progress is None, unit="round"):
        for name, fn in list(fns.items())[:: 1 if run % 2 == 0 else -1]:
            seconds = timed(fn, repeats=1, warmup=0, setup=setups.get(name))
            if run >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB), or since :func:`reset_peak_rss`: Linux's
    VmHWM, else getrusage's maximum (which on Linux also counts the launching process's peak, kept
    across the fork and exec of a spawned process)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    hwm = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    if hwm:
        return int(hwm.group(1)) / 1024
    import resource  # (Unix only)

    maximum = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maximum / 2**20 if sys.platform == "darwin" else maximum / 1024  # (macOS counts bytes, Linux KiB)


def reset_peak_rss() -> bool:
    """Lower this process's peak resident memory to what it holds now (Linux >= 4.0, through
    /proc/self/clear_refs); whether it could."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def in_fresh_process(fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` in a newly spawned Python process, so that what it measures of its process (peak
    memory) is its own; ``fn`` and its arguments must pickle, and its exceptions are raised here."""
    # Ctrl-C reaches the terminal's whole process group: the worker ignores it (it had printed its own
    # traceback) and is ended by the pool's exit in this process, which reports the interruption
    with multiprocessing.get_context("spawn").Pool(1, initializer=signal.signal,
                                                    initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
        return pool.apply(fn, args)


def machine() -> dict:
    """What the timings ran on (the process keeps freed memory, as ``memlab train`` does)."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "malloc_keeps_freed_memory": keep_freed_memory(),
    }
