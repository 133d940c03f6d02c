"""Where a process writes what it moves into place once whole, and the removal of what a killed one left.

A directory that cannot be renamed or replaced (a mount point, one in a parent this process cannot
write) is filled in place instead: :func:`clear_directory`, then :func:`move_contents`.

A staging name carries the host (with its process-id namespace) and the process id,
``.<name>.<host>.<pid>.tmp``: a later process removes the staging entries of processes of its own
host that are gone (never another host's or container's, whose processes it cannot see, nor a live
process's).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

SUFFIX = ".tmp"


def host() -> str:
    """The host name, and the id of this process's pid namespace where Linux gives it: containers
    that share a host name and a volume do not see each other's processes."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}-{namespace.removeprefix('pid:[').removesuffix(']')}"


def staging_path(final: Path) -> Path:
    """This process's staging path for ``final``, beside it (the same file system, for the rename)."""
    return final.with_name(f".{final.name}.{host()}.{os.getpid()}{SUFFIX}")


def remove_abandoned(final: Path) -> None:
    """Delete the staging files and directories of ``final`` that gone processes of this host left."""
    prefix = f".{final.name}.{host()}."
    for path in final.parent.glob(glob.escape(prefix) + "*" + SUFFIX):
        pid = path.name[len(prefix) : -len(SUFFIX)]
        if pid.isdigit() and not _alive(int(pid)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()


@contextlib.contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """A fresh staging directory for ``final`` (those of gone processes removed first), deleted when
    the block ends, whatever is left in it."""
    remove_abandoned(final)
    staging = staging_path(final)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def clear_directory(directory: Path, keep: str | None = None) -> None:
    """Delete what ``directory`` holds (but the entry named ``keep``), leaving the directory itself:
    a mount point (a container's volume) cannot be removed, nor a directory in a read-only parent."""
    for entry in directory.iterdir():
        if entry.name == keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def move_contents(source: Path, directory: Path, last: str) -> None:
    """Move the entries of ``source`` into ``directory`` (same file system), the one named ``last``
    after the others: a reader that looks for it never finds the rest half moved."""
    entries = sorted(source.iterdir(), key=lambda entry: entry.name == last)
    for entry in entries:
        os.replace(entry, directory / entry.name)


def on_windows() -> bool:
    """Whether this is Windows (a function: tests simulate it without changing ``os.name``)."""
    return os.name == "nt"


def _alive(pid: int) -> bool:
    if on_windows():  # (os.kill there ends the process whatever the signal: never probe one)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
