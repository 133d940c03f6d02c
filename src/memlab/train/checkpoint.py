"""Checkpoints that survive crashes: written to a temporary directory, then renamed into place.

``checkpoints/step_N/`` holds ``config.json`` + ``model.safetensors`` (the model, no pickled code),
``optimizer.pt`` (tensors and numbers only, loaded with ``weights_only=True``),
``trainer_state.json`` (step, RNG states, data and curriculum position, counters), the run's
``config.yaml``, the tokenizer files, and last ``manifest.json`` (size and sha256 of every file).
A process killed at any moment leaves either the previous checkpoints or the new one complete;
a leftover temporary directory is removed at the next start.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memlab import staging
from memlab.errors import MemlabError, naming_write_failures
from memlab.paths import checkpoint_dirs, manifest_problem, write_manifest

TRAINER_STATE_FILE, OPTIMIZER_FILE = "trainer_state.json", "optimizer.pt"
STATE_FORMAT = "memlab-trainer-state-v1"
TMP_PREFIX, OLD_PREFIX = ".tmp-", ".old-"


# ------------------------------------------------------------------------ RNG


def rng_state() -> dict[str, Any]:
    """The global RNG states of python, numpy and torch (and CUDA), as JSON-able lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():  # resumed on other GPUs: the devices both runs have
        for device, saved in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(torch.tensor(saved, dtype=torch.uint8), device)


# ------------------------------------------------------------------ writing


def _fsync_tree(directory: Path) -> None:
    """Flush every file under ``directory`` and the directory entries to disk."""
    for path in [*directory.rglob("*"), directory]:
        _fsync(path)


@contextmanager
def atomic_directory(final: Path, keep_replaced: Path | None = None) -> Iterator[Path]:
    """Yield a temporary directory next to ``final``; on success it gets a manifest and replaces
    ``final`` (which moves to ``keep_replaced`` when given, else is deleted)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with naming_write_failures(tmp):  # (a write of a file the block does not name: the directory at least)
            yield tmp
            write_manifest(tmp)
        _fsync_tree(tmp)
        replace_directory(tmp, final, keep_replaced)  # a re-save: best_model, or a step re-run after a resume
        _fsync(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(new: Path, final: Path, keep_replaced: Path | None = None) -> None:
    """Put directory ``new`` at ``final`` (same file system), replacing what is there: the old one
    (a directory or a file) is moved aside first and deleted last (or moved to ``keep_replaced``),
    so an interruption leaves one whole (the old one under ``.old-<name>`` at worst, cleared by the
    next replacement)."""
    old = final.parent / f"{OLD_PREFIX}{final.name}"
    if final.exists():
        _remove(old)
        os.replace(final, old)
    os.replace(new, final)
    if keep_replaced is not None and old.exists():
        os.replace(old, keep_replaced)
    else:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _fsync(path: Path) -> None:
    """fsync one file or directory (not a directory on Windows, which opens none and journals their
    entries; a file there through a writable handle, which its FlushFileBuffers needs)."""
    if staging.on_windows() and path.is_dir():
        return
    fd = os.open(path, os.O_RDWR if staging.on_windows() else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_partial(run_dir: Path) -> None:
    """Clean up after a killed process: delete unfinished directories, put back one moved aside for a re-save."""
    for parent in (run_dir, run_dir / "checkpoints"):
        for old in parent.glob(f"{OLD_PREFIX}*"):
            original = parent / old.name[len(OLD_PREFIX) :]
            if original.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, original)
        for tmp in parent.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(tmp, ignore_errors=True)


def remove_directory(path: Path) -> None:
    """Delete directory ``path`` if it exists; renamed first, so a kill while deleting leaves what
    :func:`remove_partial` clears."""
    if path.is_dir():
        doomed = path.parent / f"{TMP_PREFIX}{path.name}"
        os.replace(path, doomed)
        shutil.rmtree(doomed)


def prune(run_dir: Path, keep_last: int, written: Path) -> None:
    """Keep the newest ``keep_last`` whole checkpoints (0 keeps all) and ``written``, the one just
    saved.  A damaged checkpoint counts for nothing (a resume passed it by; the run overwrites it
    when it reaches that step): counted, it had let the good ones be deleted."""
    if keep_last > 0:
        whole = [p for p in checkpoint_dirs(run_dir) if manifest_problem(p, checksums=False) is None]
        for old in whole[:-keep_last]:
            if old != written:
                remove_directory(old)


def save_checkpoint(
    directory: Path,
    write_files: Callable[[Path], Any],
    optimizer_state: dict | None,
    trainer_state: dict[str, Any],
) -> Path:
    """Write one checkpoint directory atomically; ``write_files(path)`` writes the model, config and tokenizer."""
    with atomic_directory(directory) as tmp:
        write_files(tmp)
        if optimizer_state is not None:
            with naming_write_failures(tmp / OPTIMIZER_FILE, RuntimeError):  # (a full disk: a RuntimeError)
                torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        (tmp / TRAINER_STATE_FILE).write_text(json.dumps({"format": STATE_FORMAT, **trainer_state}) + "\n")
    return directory


# ------------------------------------------------------------------ reading


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    try:
        state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MemlabError(f"cannot read {checkpoint / TRAINER_STATE_FILE}: {e}") from None
    if state.get("format") != STATE_FORMAT:
        raise MemlabError(f"{checkpoint / TRAINER_STATE_FILE} has format {state.get('format')!r}, not {STATE_FORMAT}")
    return state


def read_optimizer_state(checkpoint: Path, device: torch.device) -> dict:
    """The optimizer state dict, loaded without unpickling code (``weights_only=True``)."""
    try:
        return torch.load(checkpoint / OPTIMIZER_FILE, map_location=device, weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt or foreign file
        raise MemlabError(f"cannot load {checkpoint / OPTIMIZER_FILE}: {str(e).splitlines()[0]}") from None
