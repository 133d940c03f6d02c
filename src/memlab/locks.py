"""A lock file beside a directory, ``.<name>.lock``: one process at a time trains a run, prepares
shards or runs a study or a scaling ladder in it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from memlab.errors import MemlabError

log = logging.getLogger(__name__)


class LockHeld(Exception):
    """Another process holds the lock file ``path``."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def lock_beside(directory: Path, wait: bool = False) -> FileLock | None:
    """Take ``.<name>.lock`` beside ``directory`` (the one it names through a link), creating its
    parent: at once, or :class:`LockHeld`, unless ``wait``.  None where the parent cannot hold the
    file (read-only, another user's lock): the work goes on without a lock, which is logged."""
    where = directory.resolve()
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(where.parent / f".{where.name}.lock")
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        raise LockHeld(str(lock.lock_file)) from None
    except OSError as e:  # (PermissionError: nothing to share the lock with)
        log.info("working in %s without a lock (%s)", directory, e)
        return None
    return lock


@contextlib.contextmanager
def working_alone(directory: Path, work: str, flag: str) -> Iterator[None]:
    """Hold the lock beside ``directory`` for the block, or refuse with :class:`MemlabError` while another
    process holds it (``work``: "study", say, and ``flag`` the option that names the directory)."""
    try:
        lock = lock_beside(directory)
    except LockHeld as e:
        raise MemlabError(f"another memlab {work} is running in {directory} (it holds {e.path}); wait for it or "
                          f"choose another {flag}") from None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
