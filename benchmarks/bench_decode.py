"""Decode throughput (tokens/s) of a variant at several context lengths.

Prefills a random context through the recurrent states (untimed), then times single-token
decode steps, each timed run from a copy of the context's state (so ``context`` is where the
measured tokens are, not where an earlier run left off).  Prints JSON.  Reproduce:

    python benchmarks/bench_decode.py --variant baseline --size nano --contexts 256 1024 4096
"""

from __future__ import annotations

import copy
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


@dataclass
class Decoder:
    """Decode steps from a fixed context: ``restore()`` (untimed) puts back the state of the
    context, so that every timed ``run()`` decodes at the same positions."""

    run: Callable[[], None]
    restore: Callable[[], None]
    state_bytes: int  # of the context's state


def decoder(model, context: int, new_tokens: int, batch: int = 1) -> Decoder:
    """``new_tokens`` single-token decode steps after an untimed ``context``-token prefill, each run
    from the same state: the tokens decoded see ``context`` .. ``context + new_tokens - 1`` tokens
    before them.  The context's last token goes in as a decode step, so the caches have grown
    before the state is kept (not while timed)."""
    device = next(model.parameters()).device
    x = torch.randint(0, model.config.vocab_size, (batch, context), device=device)
    kept = model.init_state(batch)
    with torch.no_grad():
        if context > 1:
            model(x[:, :-1], kept, logits_to_keep=1)  # (not a batch x context x vocab tensor)
        model(x[:, -1:], kept)
    current = [kept]
    token = x[:, -1:]

    def restore():
        current[0] = copy.deepcopy(kept)

    @torch.no_grad()
    def run():
        for _ in range(new_tokens):
            model(token, current[0])

    return Decoder(run, restore, kept.nbytes)


def decode_tokens_per_s(model, context: int, new_tokens: int, batch: int = 1, repeats: int = 3) -> tuple[float, int]:
    """Tokens/s of a :func:`decoder` (``repeats`` + 1 runs, the first a warm-up) and the state bytes."""
    d = decoder(model, context, new_tokens, batch)
    return batch * new_tokens / timed(d.run, repeats, setup=d.restore), d.state_bytes


def decode_length(contexts: list[int], new_tokens: int) -> int:
    """The ``max_seq_len`` a model needs for :func:`decoder` at every context."""
    return max(contexts) + new_tokens


def decode_by_context(model, contexts: list[int], new_tokens: int, batch: int = 1, rounds: int = 3) -> dict:
    """Decode tokens/s after each context, the contexts timed in turn each round (median of ``rounds``),
    with the state bytes and the slowest/fastest ratio (1 = flat)."""
    decoders = {c: decoder(model, c, new_tokens, batch) for c in contexts}
    seconds = interleaved_seconds({c: d.run for c, d in decoders.items()}, rounds,
                                  setups={c: d.restore for c, d in decoders.items()})  # fmt: skip
    rows = [
        {"context": c, "decode_tokens_per_s": batch * new_tokens / seconds[c], "state_bytes": decoders[c].state_bytes}
        for c in contexts
    ]
    speeds = [r["decode_tokens_per_s"] for r in rows]
    return {"results": rows, "slowest_over_fastest": min(speeds) / max(speeds)}


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
