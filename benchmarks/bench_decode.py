"""Decode throughput (tokens/s) of a variant at several context lengths.

Prefills a random context through the recurrent states (untimed), then times single-token
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
def decode_tokens_per_s(model, context: int, new_tokens: int, batch: int = 1, repeats: int = 3) -> tuple[float, int]:
    """Tokens/s of single-token decode steps after an untimed ``context``-token prefill; and the state bytes.

    The steps run on from the prefilled state (``repeats`` + 1 rounds of ``new_tokens``; the first one
    is a warm-up), so the model's ``max_seq_len`` must cover ``context + (repeats + 1) * new_tokens``.
    """
    device = next(model.parameters()).device
    x = torch.randint(0, model.config.vocab_size, (batch, context), device=device)
    state = model.init_state(batch)
    model(x, state)
    token = x[:, -1:]

    def steps():
        for _ in range(new_tokens):
            model(token, state)

    return batch * new_tokens / timed(steps, repeats), state.nbytes


def main(args: Args) -> dict:
    torch.manual_seed(0)
    max_len = max(args.contexts) + 4 * args.new_tokens
    model = memlab.build_model(args.variant, args.size, max_seq_len=max_len).eval()
    rows = []
    for context in args.contexts:
        tps, nbytes = decode_tokens_per_s(model, context, args.new_tokens, args.batch)
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
