"""Freed CPU memory stays with the process once the allocator is tuned: no page faults to reuse it."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROGRAM = """
import resource, sys, torch
from memlab.train.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tuned" else None
def round_of_allocations():  # like a training step: many activations, then all freed
    blocks = [torch.ones(2 << 20) for _ in range(40)]  # 40 x 8 MB, every page touched
    del blocks
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    round_of_allocations()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, faults[-1])
"""


def _faults_in_third_round(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_tuned_process_reuses_freed_memory_without_page_faults():
    applied, tuned = _faults_in_third_round("tuned")
    if applied != "True":
        pytest.skip("not glibc")
    _, default = _faults_in_third_round("default")
    assert default > 10_000  # glibc's defaults gave the 320 MB back and fault it in again
    assert tuned < default / 10

