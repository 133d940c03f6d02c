"""Decode throughput (tokens/s) of a variant at several context lengths.

Prefills a random context through the recurrent states (untimed), then times single-token
decode steps.  Prints JSON.  Reproduce:

    python benchmarks/bench_decode.py --variant baseline --size nano --contexts 256 1024 4096
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import tyro
from common import emit, interleaved_seconds, machine, peak_rss_mib, timed

import memlab


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


def decode_steps(model, context: int, new_tokens: int, batch: int = 1) -> tuple[Callable[[], None], int]:
    """``new_tokens`` single-token decode steps running on from an untimed ``context``-token prefill,
    as a callable (each call continues the same state, so ``max_seq_len`` must cover every call);
    and the state's bytes after the prefill."""
    device = next(model.parameters()).device
    x = torch.randint(0, model.config.vocab_size, (batch, context), device=device)
    state = model.init_state(batch)
    with torch.no_grad():
        model(x, state)
    token = x[:, -1:]

    @torch.no_grad()
    def steps():
        for _ in range(new_tokens):
            model(token, state)

    return steps, state.nbytes


def decode_tokens_per_s(model, context: int, new_tokens: int, batch: int = 1, repeats: int = 3) -> tuple[float, int]:
    """Tokens/s of :func:`decode_steps` (``repeats`` + 1 rounds, the first a warm-up) and the state bytes."""
    steps, nbytes = decode_steps(model, context, new_tokens, batch)
    return batch * new_tokens / timed(steps, repeats), nbytes


def decode_length(contexts: list[int], new_tokens: int, rounds: int) -> int:
    """The ``max_seq_len`` a model needs for :func:`decode_by_context`."""
    return max(contexts) + (rounds + 1) * new_tokens


def decode_by_context(model, contexts: list[int], new_tokens: int, batch: int = 1, rounds: int = 3) -> dict:
    """Decode tokens/s after each context, the contexts timed in turn each round (median of ``rounds``),
    with the state bytes and the slowest/fastest ratio (1 = flat)."""
    decoders = {c: decode_steps(model, c, new_tokens, batch) for c in contexts}
    seconds = interleaved_seconds({c: steps for c, (steps, _) in decoders.items()}, rounds)
    rows = [
        {"context": c, "decode_tokens_per_s": batch * new_tokens / seconds[c], "state_bytes": decoders[c][1]}
        for c in contexts
    ]
    speeds = [r["decode_tokens_per_s"] for r in rows]
    return {"results": rows, "slowest_over_fastest": min(speeds) / max(speeds)}


def main(args: Args) -> dict:
    torch.manual_seed(0)
    max_len = decode_length(args.contexts, args.new_tokens, args.rounds)
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
