"""Sequence mixers, one file each, registered by their pattern letter."""

from __future__ import annotations

from memlab.mixers.base import Ablation, Mixer, MixerState

MIXERS: dict[str, type[Mixer]] = {}


def register_mixer(cls: type[Mixer]) -> type[Mixer]:
    """Class decorator: make ``cls`` available under its pattern letter ``cls.letter``."""
    if cls.letter in MIXERS and MIXERS[cls.letter] is not cls:
        raise ValueError(f"pattern letter {cls.letter!r} is taken by {MIXERS[cls.letter].__name__}")
    MIXERS[cls.letter] = cls
    return cls


# Importing a mixer module registers it.
from memlab.mixers import (  # noqa: E402
    attention,
    cdm,
    gated_delta,
    mamba2,
    memory_tokens,
    state_read_window,
)

del attention, cdm, gated_delta, mamba2, memory_tokens, state_read_window

__all__ = ["MIXERS", "Ablation", "Mixer", "MixerState", "register_mixer"]
