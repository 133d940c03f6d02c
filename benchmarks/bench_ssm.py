"""Mamba-2 speed: the chunked SSD scan vs the per-token loop, ``ssm`` vs ``baseline`` training,
and ``ssm`` decode speed against the context length.  Prints JSON.

* ``ssd``: forward + backward of :func:`memlab.ops.ssd.ssd_chunked` and of the per-token
  :func:`memlab.ops.ssd.ssd_naive` on the ``ssm`` variant's shapes (target: >= 10x at T=2048).
* ``train``: tokens/s of full training steps (forward, backward, AdamW) of ``ssm`` and
  ``baseline``, measured alternately in the same run (target: ssm >= baseline at nano, T=2048).
* ``decode``: single-token decode tokens/s after a prefill of each context length, for ``ssm``
  (target: flat within 20% from 256 to 8k) and ``baseline`` for reference; the contexts are
  timed in turn, ``decode_rounds`` times, and the median is reported.

Reproduce (about 15 minutes on 2 CPU cores):

    python benchmarks/bench_ssm.py --size nano --seq-len 2048
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import tyro
from common import emit, machine, peak_rss_mib, timed

import memlab
from memlab.config import build_config
from memlab.ops.ssd import ssd_chunked, ssd_naive


@dataclass
class Args:
    parts: list[str] = field(default_factory=lambda: ["ssd", "train", "decode"])
    size: str = "nano"
    seq_len: int = 2048
    train_steps: int = 3
    """measured steps per variant (after one warm-up step each)"""
    contexts: list[int] = field(default_factory=lambda: [256, 1024, 2048, 4096, 8192])
    decode_tokens: int = 32
    decode_rounds: int = 5
    out: str | None = None


def ssd_inputs(size: str, seq_len: int) -> dict[str, torch.Tensor]:
    """Random SSD inputs with the head count, head width and state size of ``ssm`` at ``size``."""
    cfg = build_config("ssm", size)
    H = cfg.ssm.expand * cfg.d_model // cfg.ssm.head_dim
    g = torch.Generator().manual_seed(0)
    shapes = dict(
        x=(1, seq_len, H, cfg.ssm.head_dim),
        B=(1, seq_len, cfg.ssm.n_groups, cfg.ssm.d_state),
        C=(1, seq_len, cfg.ssm.n_groups, cfg.ssm.d_state),
    )
    args = {k: torch.randn(*s, generator=g) for k, s in shapes.items()}
    args["dt"] = F.softplus(torch.randn(1, seq_len, H, generator=g) - 3)
    args["A"] = -torch.rand(H, generator=g) * 15 - 1
    args["D"] = torch.ones(H)
    return {k: v.requires_grad_() for k, v in args.items()}


def bench_ssd(args: Args) -> dict:
    inputs = ssd_inputs(args.size, args.seq_len)

    def run(fn):
        y, _ = fn(**inputs)
        y.sum().backward()

    chunked = timed(lambda: run(ssd_chunked), repeats=3)
    naive = timed(lambda: run(ssd_naive), repeats=1, warmup=0)
    return {
        "seq_len": args.seq_len,
        "shapes": {k: list(v.shape) for k, v in inputs.items()},
        "chunked_fwd_bwd_s": chunked,
        "naive_fwd_bwd_s": naive,
        "speedup": naive / chunked,
    }


def bench_train(args: Args, variants=("baseline", "ssm")) -> dict:
    """Alternate one training step of each variant, ``train_steps`` rounds; median seconds per step."""
    torch.manual_seed(0)
    models = {v: memlab.build_model(v, args.size).train() for v in variants}
    optims = {v: torch.optim.AdamW(m.parameters(), lr=1e-4) for v, m in models.items()}
    x = torch.randint(0, models[variants[0]].config.vocab_size, (1, args.seq_len + 1))

    def step(v):
        logits = models[v](x[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
        optims[v].step()
        optims[v].zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {v: [] for v in variants}
    for v in variants:
        step(v)  # warm-up
    for _ in range(args.train_steps):
        for v in variants:
            start = time.perf_counter()
            step(v)
            times[v].append(time.perf_counter() - start)
    out = {
        v: {
            "params": models[v].num_params(),
            "step_s": statistics.median(t),
            "tokens_per_s": args.seq_len / statistics.median(t),
            "step_s_all": t,
        }
        for v, t in times.items()
    }
    out["ssm_over_baseline"] = out["ssm"]["tokens_per_s"] / out["baseline"]["tokens_per_s"]
    out["seq_len"] = args.seq_len
    return out


@torch.no_grad()
def bench_decode(args: Args) -> dict:
    """Prefill one state per context, then time rounds of ``decode_tokens`` single-token steps,
    visiting the contexts in turn each round (so load changes hit all contexts alike); median."""
    out = {}
    for variant in ("ssm", "baseline"):
        torch.manual_seed(0)
        max_len = max(args.contexts) + (args.decode_rounds + 1) * args.decode_tokens + 1
        model = memlab.build_model(variant, args.size, max_seq_len=max_len).eval()
        token = torch.randint(0, model.config.vocab_size, (1, 1))
        states = {}
        for context in args.contexts:
            states[context] = model.init_state(1)
            model(torch.randint(0, model.config.vocab_size, (1, context)), states[context])
            model(token, states[context])  # warm-up step
        times: dict[int, list[float]] = {c: [] for c in args.contexts}
        for _ in range(args.decode_rounds):
            for context, state in states.items():
                start = time.perf_counter()
                for _ in range(args.decode_tokens):
                    model(token, state)
                times[context].append(time.perf_counter() - start)
        rows = [
            {
                "context": c,
                "decode_tokens_per_s": args.decode_tokens / statistics.median(t),
                "state_bytes": states[c].nbytes,
            }
            for c, t in times.items()
        ]
        speeds = [r["decode_tokens_per_s"] for r in rows]
        out[variant] = {"results": rows, "slowest_over_fastest": min(speeds) / max(speeds)}
    return out


def main(args: Args) -> dict:
    result = {"benchmark": "ssm", "size": args.size, "machine": machine()}
    parts = {"ssd": bench_ssd, "train": bench_train, "decode": bench_decode}
    for name in args.parts:
        result[name] = parts[name](args)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


if __name__ == "__main__":
    args = tyro.cli(Args)
    emit(main(args), args.out)
