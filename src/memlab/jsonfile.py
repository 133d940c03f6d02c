"""The JSON files memlab writes: strict JSON written atomically, and read back with a damaged one a MemlabError."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from memlab.errors import MemlabError, naming_write_failures
from memlab.staging import remove_abandoned, staging_path


def read_json_object(path: str | Path, advice: str = "") -> dict[str, Any]:
    """The JSON object in ``path``; a file that is not JSON text or holds no object is one clear
    error naming it, followed by ``advice`` (e.g. "; prepare the data again")."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MemlabError(f"{path} is corrupt (not JSON: {e}){advice}") from None
    if not isinstance(data, dict):
        raise MemlabError(f"{path} is corrupt (not a JSON object){advice}")
    return data


def finite(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (strict JSON) and keys as strings, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as strict JSON through a temporary file of this process and a rename, so a
    reader sees the old file or the new one, whole."""
    write_text(path, json.dumps(finite(data), indent=2, allow_nan=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` through a temporary file of this process and a rename: a reader (or a process
    killed mid-write) sees the old file or the new one, whole."""
    path = Path(path)
    remove_abandoned(path)  # what a killed writer left
    tmp = staging_path(path)
    try:
        with naming_write_failures(path):
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
