"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path


class MemlabError(Exception):
    """An error the user can cause and fix (bad flag, unknown name, missing or corrupt file)."""


@contextlib.contextmanager
def naming_write_failures(path: str | Path, *others: type[Exception]) -> Iterator[None]:
    """Re-raise a failure to write ``path`` as an OSError that names it (one line on the command line):
    an OSError of a write names no file ("No space left on device"; one that names its file keeps it),
    and ``others`` (torch.save's RuntimeError, safetensors' SafetensorError on a full disk) had been
    tracebacks."""
    try:
        yield
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), e.filename or str(path)) from e
    except others as e:
        code = re.search(r"os error (\d+)", str(e))  # (safetensors: "I/O error: ... (os error 28)")
        number = int(code.group(1)) if code else errno.ENOSPC if _nearly_full(Path(path).parent) else None
        reason = os.strerror(number) if number else f"the write failed ({str(e).splitlines()[0]})"
        raise OSError(number or errno.EIO, reason, str(path)) from e


def _nearly_full(directory: Path) -> bool:
    """Whether the file system of ``directory`` has under 1 MiB left (torch.save's error does not say)."""
    try:
        return shutil.disk_usage(directory).free < 1 << 20
    except OSError:
        return False


def choose(kind: str, name: str, choices) -> None:
    """Raise a MemlabError naming the valid choices unless ``name`` is one of them."""
    choices = sorted(choices)
    if name not in choices:
        raise MemlabError(f"unknown {kind} {name!r}; valid choices: {', '.join(choices)}")


def check_at_least(options: object, names: tuple[str, ...], low: int, flag_separator: str = "-") -> None:
    """Raise a MemlabError naming the first flag among ``names`` (fields of ``options``) whose value
    is below ``low``; None (an unset optional count) passes.  ``flag_separator`` joins the words of
    the flag as its command spells it (``--lm-tokens``; ``--seq_len`` for ``memlab train``)."""
    for name in names:
        value = getattr(options, name)
        if value is not None and not value >= low:  # (NaN fails too)
            raise MemlabError(f"--{name.replace('_', flag_separator)} must be >= {low}, got {value}")


MAX_SEED = 2**31 - 1  # every generator takes it (numpy's 32 bits), with room for ranks and seeds counted up


def check_seed(options: object, names: tuple[str, ...] = ("seed",), flag_separator: str = "-") -> None:
    """Raise a MemlabError naming the first flag among ``names`` whose seed is outside [0, MAX_SEED]
    (a larger one had ended in numpy's or torch's traceback)."""
    for name in names:
        value = getattr(options, name)
        if not 0 <= value <= MAX_SEED:
            raise MemlabError(f"--{name.replace('_', flag_separator)} must be in [0, {MAX_SEED}], got {value}")


def check_finite(options: object, prefix: str = "--", separator: str = "_") -> None:
    """Raise a MemlabError naming the first float field of the dataclass ``options`` (nested ones
    under dotted names) that is NaN or infinite: no option of memlab means anything there."""
    for f in dataclasses.fields(options):  # type: ignore[arg-type]
        value = getattr(options, f.name)
        name = prefix + f.name.replace("_", separator)
        if dataclasses.is_dataclass(value):
            check_finite(value, f"{name}.", separator)
        elif isinstance(value, float) and not math.isfinite(value):
            raise MemlabError(f"{name} must be a finite number, got {value}")


def check_dir_target(path: str | Path, flag: str) -> None:
    """Raise a MemlabError if directory ``path`` cannot be created because it, or the nearest of
    its parents that exists, is not a directory (call it before any work that ends in writing there)."""
    path = Path(path)
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                what = "is a file" if existing == path else f"is inside {existing}, which is a file"
                raise MemlabError(f"{flag} {path} {what}, not a directory")
            return
