"""The ``--device`` option of every command: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import torch

from memlab.errors import MemlabError


def resolve_device(device: str) -> torch.device:
    """``device`` as a torch device (``auto``: CUDA when there is one, else the CPU); another name, or CUDA on a
    machine without it, is a MemlabError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise MemlabError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise MemlabError(f"--device {device}: no CUDA device is available; use --device cpu")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise MemlabError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return resolved
