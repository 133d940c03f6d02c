"""Keep freed CPU memory for reuse: glibc's malloc otherwise hands it back to the OS after
every training step and takes page faults to get it back in the next one.

A training step frees hundreds of MB of activations at once; with glibc's defaults the top
of the heap is trimmed and large blocks are unmapped, so each step pays for fresh pages again
(165k page faults per step for ``ssm`` at nano, T=2048).  Raising the mmap threshold to its
maximum and the trim threshold to 1 GiB keeps that memory in the process (measured: ``ssm``
+15-50% tokens/s in four paired runs, other variants within noise).  Blocks above the largest
threshold (32 MB) were still mapped afresh for every allocation: ``ssm`` at nano with 4 x 2048
tokens took 2.7-3.3 million page faults and 10-16 s of system time per step, and trained at
420-520 tokens/s; with no mappings at all (``M_MMAP_MAX = 0``, every block from the heap) it
takes ~0 faults and 810-1020 tokens/s (baseline, gdn: within noise).  It changes no result, only
speed and how soon freed memory returns to the OS (:func:`release_freed_memory` returns it at
once).  Not glibc (macOS, musl): nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper limit on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


def _libc(function: str):
    """glibc's ``function``, or None where there is no such libc (macOS, musl)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), function)
    except (OSError, AttributeError, TypeError):  # no libc found, or one without it
        return None


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above, once per process; whether it applied."""
    mallopt = _libc("mallopt")
    if mallopt is None:
        return False
    settings = ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_MMAP_MAX, 0))
    return all([bool(mallopt(option, value)) for option, value in settings])


def release_freed_memory() -> bool:
    """Hand the heap's free memory back to the OS now (glibc's ``malloc_trim``), e.g. between two runs
    whose resident memory is measured; whether it could."""
    malloc_trim = _libc("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True
