"""Matplotlib without a screen, and figures written atomically (a reader never sees half a PNG)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from memlab.errors import naming_write_failures
from memlab.staging import remove_abandoned, staged_directory, staging_path

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
    remove_abandoned(path)
    tmp = staging_path(path)  # (one per process: two commands writing one figure had collided)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    try:
        with naming_write_failures(path):
            fig.savefig(tmp, format=path.suffix.lstrip("."))
            os.replace(tmp, path)
    except BaseException:  # (a full disk had left the staging file)
        tmp.unlink(missing_ok=True)
        raise
    finally:
        pyplot().close(fig)
    return path


@contextlib.contextmanager
def staged_figures(out: Path) -> Iterator[Path]:
    """A directory to draw a command's figures in (and to write its results files in, where it has
    several); all move into ``out`` when the block ends without an error, after the results files
    written to ``out`` inside it, so a kill or a failure leaves the last whole set (never new results
    beside old figures, nor the reverse)."""
    with staged_directory(out / "figures") as staging:
        yield staging
        for figure in sorted(staging.iterdir()):
            figure.replace(out / figure.name)


def remove_stale_figures(candidates: Iterable[Path], written: Iterable[str | Path]) -> None:
    """Delete the existing ``candidates`` (a command's figures) that were not ``written`` now (paths or
    names): an earlier run's plot of a task, or of data this run lacks, must not pass for this run's."""
    kept = {Path(path).name for path in written}
    for stale in sorted(candidates):
        if stale.name not in kept and stale.is_file():
            stale.unlink()
            log.info("removed %s: an earlier run's figure", stale)
