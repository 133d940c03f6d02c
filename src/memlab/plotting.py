"""Matplotlib without a screen, and figures written atomically (a reader never sees half a PNG)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay out (tightly, unless the figure has a layout engine of its own), write ``path`` through a
    temporary file, close the figure; returns ``path``."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(tmp)
    pyplot().close(fig)
    os.replace(tmp, path)
    return path


def remove_stale_figures(candidates: Iterable[Path], written: Iterable[str | Path]) -> None:
    """Delete the existing ``candidates`` (a command's figures) that were not ``written`` now (paths or
    names): an earlier run's plot of a task, or of data this run lacks, must not pass for this run's."""
    kept = {Path(path).name for path in written}
    for stale in sorted(candidates):
        if stale.name not in kept and stale.is_file():
            stale.unlink()
            log.info("removed %s: an earlier run's figure", stale)
