"""Finding the model directory inside a run, a checkpoint or an export."""

from __future__ import annotations

import re
from pathlib import Path

from memlab.errors import MemlabError

WEIGHTS_FILE = "model.safetensors"


def resolve_model_dir(path: str | Path) -> Path:
    """``path`` itself if it holds weights, else its ``best_model/``, else its newest checkpoint."""
    path = Path(path)
    if not path.exists():
        raise MemlabError(f"no such checkpoint or model directory: {path}")
    if (path / WEIGHTS_FILE).is_file():
        return path
    if (path / "best_model" / WEIGHTS_FILE).is_file():
        return path / "best_model"
    steps = sorted(
        (int(m.group(1)), p)
        for p in (path / "checkpoints").glob("step_*")
        if (m := re.fullmatch(r"step_(\d+)", p.name)) and (p / WEIGHTS_FILE).is_file()
    )
    if steps:
        return steps[-1][1]
    raise MemlabError(f"{path} holds no model ({WEIGHTS_FILE}, best_model/ or checkpoints/step_N/)")
