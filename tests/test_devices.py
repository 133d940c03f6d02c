"""The --device option shared by train, eval, probe and generate."""

from __future__ import annotations

import pytest
import torch

from memlab.devices import resolve_device
from memlab.errors import MemlabError


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", ["tpu", "gpu", "mps", "cuda:x"])
def test_other_names_are_refused(name):
    with pytest.raises(MemlabError, match=f"unknown device '{name}'; valid: auto, cpu, cuda, cuda:N"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(MemlabError, match="no CUDA device is available"):
        resolve_device("cuda:1")


def test_a_cuda_index_beyond_the_devices_is_refused(monkeypatch):
    """It had passed, to fail in torch.cuda.set_device with a traceback."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(MemlabError, match="has 2 CUDA device\\(s\\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_one_gpu_index_for_every_torchrun_process_is_refused(monkeypatch):
    """Under torchrun each process takes the GPU of its LOCAL_RANK; cuda:1 had put every process on GPU 1."""
    from memlab.train import distributed

    monkeypatch.setattr(distributed, "resolve_device", lambda name: torch.device(name))  # (no GPU needed)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MemlabError, match="--device cuda:1 would put every process on one GPU"):
        distributed.setup("cuda:1")
