"""Decode throughput (tokens/s) of a variant at several context lengths (``memlab bench --parts decode``
times several variants against a baseline the same way).

Prefills a random context through the recurrent states (untimed), then times single-token
decode steps, each timed run from a copy of the context's state (so ``context`` is where the
measured tokens are, not where an earlier run left off).  Prints JSON.  Reproduce:

    python benchmarks/bench_decode.py --variant baseline --size nano --contexts 256 1024 4096
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import tyro
from common import emit, machine, peak_rss_mib

import memlab
from memlab.analysis.speed import decode_by_context, decode_length


@dataclass
class Args:
    variant: str = "baseline"
    size: str = "nano"
    contexts: list[int] = field(default_factory=lambda: [256, 1024, 4096])
    batch: int = 1
    new_tokens: int = 32
    rounds: int = 3
    """timed rounds per context (the contexts are visited in turn each round); the median is reported"""
    out: str | None = None


def main(args: Args) -> dict:
    torch.manual_seed(0)
    max_len = decode_length(args.contexts, args.new_tokens)
    model = memlab.build_model(args.variant, args.size, max_seq_len=max_len).eval()
    return {
        "benchmark": "decode",
        "variant": args.variant,
        "size": args.size,
        "batch": args.batch,
        "machine": machine(),
        **decode_by_context(model, args.contexts, args.new_tokens, args.batch, args.rounds),
        "peak_rss_mib": peak_rss_mib(),
    }


if __name__ == "__main__":
    args = tyro.cli(Args)
    emit(main(args), args.out)
