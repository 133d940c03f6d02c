"""Matplotlib without a screen, and figures written atomically (a reader never sees half a PNG)."""

from __future__ import annotations

import os
from pathlib import Path


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
