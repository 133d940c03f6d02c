"""Sliding-window attention: forward + backward seconds of the blocked op against the dense masked
form and full causal attention, at several lengths, timed in alternating rounds.  Prints JSON.

The blocked form should grow linearly with T (its keys per query are bounded by the window); the
dense mask visits every query-key pair.  Reproduce (under a minute on 2 CPU cores):

    python benchmarks/bench_window.py --seq-lens 512 1024 2048 4096 --window 128
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import tyro
from common import emit, fwd_bwd_step, interleaved_seconds, machine, peak_rss_mib

from memlab.ops.windowed_attention import windowed_attention, windowed_attention_reference


@dataclass
class Args:
    seq_lens: list[int] = field(default_factory=lambda: [512, 1024, 2048, 4096])
    window: int = 128
    batch: int = 1
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    rounds: int = 5
    """timed rounds (each form once per round); the median is reported"""
    out: str | None = None


def main(args: Args) -> dict:
    torch.manual_seed(0)
    forms = {
        "blocked": lambda q, k, v: (windowed_attention(q, k, v, args.window), None),
        "dense_mask": lambda q, k, v: (windowed_attention_reference(q, k, v, args.window), None),
        "full_causal": lambda q, k, v: (F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), None),
    }
    rows = []
    for T in args.seq_lens:
        shape = (args.batch, args.heads, T, args.head_dim)
        kv_shape = (args.batch, args.kv_heads, T, args.head_dim)
        inputs = {"q": torch.randn(shape, requires_grad=True),
                  **{name: torch.randn(kv_shape, requires_grad=True) for name in ("k", "v")}}
        seconds = interleaved_seconds({name: fwd_bwd_step(fn, inputs) for name, fn in forms.items()}, args.rounds)
        rows.append({"seq_len": T, **{f"{name}_ms": round(1e3 * s, 3) for name, s in seconds.items()},
                     "blocked_speedup_vs_dense": round(seconds["dense_mask"] / seconds["blocked"], 2)})
    result = {"benchmark": "windowed_attention", "window": args.window, "rows": rows,
              "peak_rss_mib": round(peak_rss_mib(), 1), "machine": machine()}
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
