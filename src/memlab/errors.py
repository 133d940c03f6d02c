"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""

from __future__ import annotations


class MemlabError(Exception):
    """An error the user can cause and fix (bad flag, unknown name, missing or corrupt file)."""


def choose(kind: str, name: str, choices) -> None:
    """Raise a MemlabError naming the valid choices unless ``name`` is one of them."""
    choices = sorted(choices)
    if name not in choices:
        raise MemlabError(f"unknown {kind} {name!r}; valid choices: {', '.join(choices)}")
