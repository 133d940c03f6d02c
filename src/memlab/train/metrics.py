"""The run's logs: ``metrics.jsonl`` (one JSON object per logged step), ``metrics.json``, TensorBoard.

On a resume the lines after the checkpoint's step are dropped, so the log of a resumed run is
the log of an uninterrupted one.  JSON files are replaced atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from memlab.errors import MemlabError, naming_write_failures
from memlab.jsonfile import finite, write_json

METRICS_LINES, METRICS_JSON = "metrics.jsonl", "metrics.json"


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line that holds no record (torn by a killed writer, or
    damaged) is dropped, and the records after it are kept."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def summary_writer() -> type:
    """TensorBoard's SummaryWriter; a MemlabError when the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MemlabError("--tensorboard needs the tensorboard package: pip install 'memlab[tensorboard]'") from None
    return SummaryWriter


class MetricsLog:
    """Appends records to ``metrics.jsonl`` (and TensorBoard); only the main process writes."""

    def __init__(self, run_dir: Path, enabled: bool, keep_until: int, tensorboard: bool = False) -> None:
        self.path, self.enabled = run_dir / METRICS_LINES, enabled
        self.records = [r for r in read_lines(self.path) if r["step"] <= keep_until]
        self.writer = None
        if not enabled:
            return
        if tensorboard:
            self.writer = summary_writer()(str(run_dir / "tensorboard"), purge_step=keep_until + 1)
        tmp = self.path.with_name(f".{METRICS_LINES}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        record = finite(record)
        self.records.append(record)
        if not self.enabled:
            return
        with naming_write_failures(self.path), self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in _flat(record).items():
                if name != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(name, value, record["step"])

    def sync(self) -> None:
        """Put ``metrics.jsonl`` on disk (before a checkpoint records its step: a power cut then leaves
        no hole in the log a resume keeps)."""
        if self.enabled and self.path.is_file():
            with self.path.open("ab") as f:  # (writable: Windows flushes no read-only handle)
                os.fsync(f.fileno())

    def write_json(self) -> None:
        if self.enabled:
            write_json(self.path.with_name(METRICS_JSON), self.records)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out
