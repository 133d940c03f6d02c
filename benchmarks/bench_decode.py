"""Decode throughput (tokens/s) of a variant at several context lengths.

Prefills a random context through the recurrent states, then times single-token
decode steps.  Prints JSON.  Reproduce:

    python benchmarks/bench_decode.py --variant baseline --size nano --contexts 256 1024 4096
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import tyro
from common import emit, machine, peak_rss_mib, timed

import memlab


@dataclass
class Args:
    variant: str = "baseline"
    size: str = "nano"
    contexts: list[int] = field(default_factory=lambda: [256, 1024, 4096])
    batch: int = 1
    new_tokens: int = 32
    out: str | None = None


@torch.no_grad()
def decode_tokens_per_s(model, context: int, batch: int, new_tokens: int) -> tuple[float, int]:
    """Tokens/s of decoding ``new_tokens`` after a ``context``-token prefill; and the state bytes."""
    device = next(model.parameters()).device
    x = torch.randint(0, model.config.vocab_size, (batch, context), device=device)
    token = x[:, -1:]

    def run():
        state = model.init_state(batch)
        model(x, state)
        for _ in range(new_tokens):
            model(token, state)
        return state

    def prefill_only():
        model(x, model.init_state(batch))

    total = timed(run, repeats=3)
    prefill = timed(prefill_only, repeats=3)
    return batch * new_tokens / max(total - prefill, 1e-9), run().nbytes


def main(args: Args) -> dict:
    torch.manual_seed(0)
    model = memlab.build_model(args.variant, args.size, max_seq_len=max(args.contexts) + args.new_tokens).eval()
    rows = []
    for context in args.contexts:
        tps, nbytes = decode_tokens_per_s(model, context, args.batch, args.new_tokens)
        rows.append({"context": context, "decode_tokens_per_s": tps, "state_bytes": nbytes})
    speeds = [r["decode_tokens_per_s"] for r in rows]
    return {
        "benchmark": "decode",
        "variant": args.variant,
        "size": args.size,
        "batch": args.batch,
        "machine": machine(),
        "results": rows,
        "slowest_over_fastest": min(speeds) / max(speeds),
        "peak_rss_mib": peak_rss_mib(),
    }


if __name__ == "__main__":
    args = tyro.cli(Args)
    emit(main(args), args.out)
