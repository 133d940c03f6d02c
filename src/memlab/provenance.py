"""Which code wrote a file: memlab's version, the git commit of its checkout, the libraries, the time.

Every file of results (evaluation results, a training summary, a scaling ladder, a comparison)
carries :func:`provenance` in its metadata.
"""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent  # memlab's own source


def _git(*args: str) -> str | None:
    """Stdout of ``git args`` run in memlab's package directory; None when git fails."""
    try:
        out = subprocess.run(["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def source_revision() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout memlab's source is tracked in; (None, None) when memlab
    runs from elsewhere (an installed copy, even one inside a user's own repository: its files are
    not tracked there).  ``dirty``: uncommitted changes to files under memlab's package."""
    if not _git("ls-files", "--", "__init__.py"):  # (None: no git; "": not tracked by this work tree)
        return None, None
    commit = (_git("rev-parse", "HEAD") or "").strip() or None
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return commit, None if commit is None or status is None else bool(status.strip())


def git_commit() -> str | None:
    """The commit of the source tree memlab runs from, or None when it is not a git checkout of memlab."""
    return source_revision()[0]


def utc_timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance() -> dict[str, Any]:
    """The code and the time a results file was written with."""
    import torch

    from memlab import __version__

    commit, dirty = source_revision()
    return {
        "memlab_version": __version__,
        "git_commit": commit,
        "git_dirty": dirty,  # uncommitted changes to memlab's source: the commit alone does not name the code
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),  # S-NIAH's prose haystack is the Python docs' own
        "timestamp": utc_timestamp(),
    }
