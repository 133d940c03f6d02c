"""The options of ``memlab bench`` (kept apart from :mod:`memlab.analysis.speed`, which imports torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from memlab.cli_help import DefaultInDoc, Precision


@dataclass
class BenchConfig:
    """Time the training and decoding of variants against the first, in alternating rounds."""

    variants: list[str] = field(default_factory=lambda: ["baseline", "gdn"])
    """the variants to time; every ratio is to the first"""
    model_size: str = "tiny"
    seq_len: int = 512
    """training: tokens per sequence"""
    batch_size: int = 4
    """training: sequences per step"""
    contexts: list[int] = field(default_factory=lambda: [256, 1024, 4096])
    """decoding: context lengths decoded after"""
    new_tokens: int = 16
    """decoding: tokens per timed run"""
    decode_batch: int = 1
    """decoding: sequences decoded together"""
    rounds: int = 3
    """timed rounds (medians are reported), after one warm-up round (two for training)"""
    parts: list[Literal["train", "decode"]] = field(default_factory=lambda: ["train", "decode"])
    """what to time: train, decode or both"""
    peak_memory: bool = True
    """measure each variant's peak memory, training and decoding after the longest context, each alone
    in a fresh process (a few seconds per variant and part)"""
    device: str = "auto"
    precision: Precision = "auto"
    """training's autocast, as memlab train's --precision: auto is bf16 (else fp16) on CUDA, fp32 on CPU"""
    seed: int = 0
    out_dir: Annotated[str | None, DefaultInDoc] = None
    """where bench.json, bench.md and bench.png go (default: runs/bench)"""

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir or "runs/bench")
