"""Finding the model directory inside a run, a checkpoint or an export; checking it is whole.

A leaf module (it imports nothing of memlab's but its errors): the data, training, evaluation
and export code all read and write these directories.

A directory written by the trainer ends with ``manifest.json`` (the size and sha256 of every
other file), written last and renamed into place with the directory, so a checkpoint that is
partial, truncated or altered is detected and skipped for the one before it, with a warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from pathlib import Path

from memlab.errors import MemlabError

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
BEST_FILE = "best.json"  # in best_model/: the step it was saved at and its selection loss
EXPORT_FILE = "export.json"  # in an export: the training step of its weights and the directory it came from
log = logging.getLogger(__name__)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """The sha256 of a file's bytes (read ``chunk`` bytes at a time), as hex."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path) -> None:
    """Record the size and sha256 of every file under ``directory`` in its ``manifest.json``."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    entries = {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
               for p in files}  # (posix names: a checkpoint written on Windows is read elsewhere)
    (directory / MANIFEST_FILE).write_text(json.dumps({"files": entries}, indent=1) + "\n")


def read_manifest(directory: Path) -> dict[str, tuple[int, str]]:
    """``{file: (bytes, sha256)}`` from ``directory``'s manifest; an OSError where it has none, a
    ValueError where it is corrupt."""
    try:
        entries = json.loads((directory / MANIFEST_FILE).read_text())["files"]  # (not UTF-8: a ValueError too)
        return {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in entries.items()}
    except (KeyError, TypeError, AttributeError, ValueError):  # ValueError: not JSON, or not a number
        raise ValueError(f"{directory / MANIFEST_FILE} is corrupt") from None


def manifest_problem(directory: Path, checksums: bool = True) -> str | None:
    """Why ``directory`` is not whole (a missing, truncated or altered file), or None if it is.

    Directories without a manifest (exports, hand-made model directories) are only checked for
    their weights file.
    """
    if not (directory / MANIFEST_FILE).is_file():
        return None if (directory / WEIGHTS_FILE).is_file() else f"{WEIGHTS_FILE} is missing"
    try:
        expected = read_manifest(directory)
    except ValueError:
        return f"{MANIFEST_FILE} is corrupt"
    for name, (size, sha256) in expected.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, expected {size}"
        if checksums and file_sha256(path) != sha256:
            return f"{name} fails its sha256 checksum"
    return None


def is_model_dir(directory: Path) -> bool:
    """Whether ``directory`` is a checkpoint or a model directory (its manifest or its weights)."""
    return (directory / MANIFEST_FILE).is_file() or (directory / WEIGHTS_FILE).is_file()


def holds_training_output(directory: Path, deep: bool = False) -> bool:
    """Whether ``directory`` is a run (its config.yaml) or holds a checkpoint (its manifest.json) two
    levels down at most; ``deep``: a checkpoint or a run (config.yaml beside metrics.jsonl) at any
    depth (what deleting the directory would lose).  Symbolic links are not followed."""
    if (directory / "config.yaml").is_file():
        return True
    if not deep:
        return any(next(directory.glob(p), None) for p in (MANIFEST_FILE, f"*/{MANIFEST_FILE}", f"*/*/{MANIFEST_FILE}"))
    for _, _, files in os.walk(directory):  # (two levels down had been looked at: proj/runs/RUN was deleted)
        if MANIFEST_FILE in files or {"config.yaml", "metrics.jsonl"} <= set(files):
            return True
    return False


def same_model_dir(recorded: str | None, model_dir: Path) -> bool:
    """Whether a model directory recorded in a results file (absolute, or relative to wherever the
    command ran) is ``model_dir``: the same path, or the same last two parts (``run/best_model``,
    ``checkpoints/step_8``)."""
    if not recorded:
        return False
    path = Path(recorded)
    return path.resolve() == model_dir.resolve() or path.parts[-2:] == model_dir.resolve().parts[-2:]


def weights_sha256(model_dir: str | Path) -> str | None:
    """The sha256 of ``model_dir``'s weights (its manifest's record where it has one, else hashed
    now); None where the directory holds no weights (a results file read on another machine)."""
    model_dir = Path(model_dir)
    try:
        return read_manifest(model_dir)[WEIGHTS_FILE][1]
    except (OSError, ValueError, KeyError):
        weights = model_dir / WEIGHTS_FILE
        if not weights.is_file():
            return None
        stat = weights.stat()
        return _file_sha256(weights.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.cache  # by size and time too: a compare reads many results files of one model
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def measured_model(metadata: dict, model_dir: Path, weights: str | None = None) -> bool:
    """Whether a results file (its ``metadata``) measured the weights now in ``model_dir`` (or those
    of sha256 ``weights``, loaded from it): the same weights where the file records them (a best_model
    saved again since holds others; an export carries results measured in its run's directory), else
    the same directory."""
    recorded, now = metadata.get("weights_sha256"), weights or weights_sha256(model_dir)
    if recorded is not None and now is not None:
        return recorded == now
    return same_model_dir(metadata.get("model_dir"), model_dir)


def checkpoint_step(model_dir: Path) -> int:
    """The training step of a checkpoint (its trainer_state.json, a best_model's best.json, an export's
    export.json, or its step_N name); 0 if unknown."""
    for record in (model_dir / "trainer_state.json", model_dir / BEST_FILE, model_dir / EXPORT_FILE):
        if record.is_file():
            try:
                return int(json.loads(record.read_text())["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                pass
    name = model_dir.name
    return int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else 0


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The ``checkpoints/step_N`` directories of a run, oldest first (by N)."""
    steps = sorted(
        (int(m.group(1)), p)
        for p in (Path(run_dir) / "checkpoints").glob("step_*")
        if (m := re.fullmatch(r"step_(\d+)", p.name)) and p.is_dir()
    )
    return [p for _, p in steps]


def latest_whole_checkpoint(run_dir: Path, checksums: bool = True) -> Path | None:
    """The newest checkpoint of a run that is whole; broken ones are skipped with a warning."""
    for path in reversed(checkpoint_dirs(run_dir)):
        problem = manifest_problem(path, checksums)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None


def resolve_model_dir(path: str | Path, checksums: bool = True) -> Path:
    """``path`` itself if it holds weights, else its ``best_model/``, else its newest whole checkpoint.

    With ``checksums`` (to load the model) every file is checked against its manifest's sha256, so
    bytes altered in place are refused; without (only to name the directory) sizes are compared.
    """
    path = Path(path)
    if not path.exists():
        raise MemlabError(f"no such checkpoint or model directory: {path}")
    if (path / WEIGHTS_FILE).is_file():
        problem = manifest_problem(path, checksums)
        if problem:
            raise MemlabError(f"{path} is corrupt: {problem}")
        return path
    best = path / "best_model"
    if (best / WEIGHTS_FILE).is_file():
        problem = manifest_problem(best, checksums)
        if problem is None:
            return best
        log.warning("skipping %s: %s", best, problem)
    latest = latest_whole_checkpoint(path, checksums)
    if latest is not None:
        return latest
    raise MemlabError(f"{path} holds no model ({WEIGHTS_FILE}, best_model/ or checkpoints/step_N/)")
