"""Mamba-2 speed: the chunked SSD scan vs the per-token loop, ``ssm`` vs ``baseline`` training,
and ``ssm`` decode speed against the context length.  Prints JSON.

* ``ssd``: forward + backward of :func:`memlab.ops.ssd.ssd_chunked` and of the per-token
  :func:`memlab.ops.ssd.ssd_naive` on the ``ssm`` variant's shapes (target: >= 10x at T=2048).
* ``train``: tokens/s of full training steps (forward, backward, AdamW) of ``ssm`` and
  ``baseline``, measured alternately in the same run (target: ssm >= baseline at nano, T=2048);
  both are built for ``--seq-len``, so the ratio can be followed over lengths
  (``--parts train --seq-len 4096``) and batch sizes (``--train-batch 4``).
* ``decode``: single-token decode tokens/s after a prefill of each context length, for ``ssm``
  (target: flat within 20% from 256 to 8k) and ``baseline`` for reference; the contexts are
  timed in turn, ``decode_rounds`` times, and the median is reported.

Reproduce (about 15 minutes on 2 CPU cores):

    python benchmarks/bench_ssm.py --size nano --seq-len 2048
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import tyro
from common import emit, fwd_bwd_seconds, interleaved_seconds, machine, peak_rss_mib

import memlab
from memlab.analysis.speed import decode_by_context, decode_length, train_step
from memlab.config import build_config
from memlab.ops.ssd import ssd_chunked, ssd_naive


@dataclass
class Args:
    parts: list[str] = field(default_factory=lambda: ["ssd", "train", "decode"])
    size: str = "nano"
    seq_len: int = 2048
    train_batch: int = 1
    """sequences per training step"""
    train_steps: int = 5
    """measured steps per variant (after one warm-up step each)"""
    contexts: list[int] = field(default_factory=lambda: [256, 1024, 2048, 4096, 8192])
    decode_tokens: int = 32
    decode_rounds: int = 5
    out: str | None = None


def ssd_inputs(
    size: str, seq_len: int, batch: int = 1, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Random SSD inputs with the head count, head width and state size of ``ssm`` at ``size``
    (x, B, C in ``dtype``; dt, A, D in float32, as the ssm layer passes them)."""
    cfg = build_config("ssm", size)
    H = cfg.ssm.expand * cfg.d_model // cfg.ssm.head_dim
    g = torch.Generator().manual_seed(0)
    shapes = dict(
        x=(batch, seq_len, H, cfg.ssm.head_dim),
        B=(batch, seq_len, cfg.ssm.n_groups, cfg.ssm.d_state),
        C=(batch, seq_len, cfg.ssm.n_groups, cfg.ssm.d_state),
    )
    args = {k: torch.randn(*s, generator=g).to(device, dtype) for k, s in shapes.items()}
    args["dt"] = F.softplus(torch.randn(batch, seq_len, H, generator=g) - 3).to(device)
    args["A"] = (-torch.rand(H, generator=g) * 15 - 1).to(device)
    args["D"] = torch.ones(H, device=device)
    return {k: v.requires_grad_() for k, v in args.items()}


def bench_ssd(args: Args) -> dict:
    inputs = ssd_inputs(args.size, args.seq_len)

    chunked = fwd_bwd_seconds(ssd_chunked, inputs, repeats=3)
    naive = fwd_bwd_seconds(ssd_naive, inputs, repeats=1)
    return {
        "seq_len": args.seq_len,
        "shapes": {k: list(v.shape) for k, v in inputs.items()},
        "chunked_fwd_bwd_s": chunked,
        "naive_fwd_bwd_s": naive,
        "speedup": naive / chunked,
    }


def bench_train(args: Args) -> dict:
    """One training step of each variant in alternating rounds (``train_steps`` of them); median."""
    models = {}
    for v in ("baseline", "ssm"):
        torch.manual_seed(0)
        models[v] = memlab.build_model(v, args.size, max_seq_len=args.seq_len).train()
    steps = {v: train_step(m, args.train_batch, args.seq_len) for v, m in models.items()}
    seconds = interleaved_seconds(steps, args.train_steps)
    tokens = args.train_batch * args.seq_len
    out = {
        v: {"params": models[v].num_params(), "step_s": seconds[v], "tokens_per_s": tokens / seconds[v]}
        for v in models
    }
    out["ssm_over_baseline"] = seconds["baseline"] / seconds["ssm"]
    out["seq_len"] = args.seq_len
    out["batch"] = args.train_batch
    return out


def bench_decode(args: Args) -> dict:
    """Decode tokens/s by context for ``ssm`` (and ``baseline`` for reference), contexts timed in turn."""
    out = {}
    for variant in ("ssm", "baseline"):
        torch.manual_seed(0)
        max_len = decode_length(args.contexts, args.decode_tokens)
        model = memlab.build_model(variant, args.size, max_seq_len=max_len).eval()
        out[variant] = decode_by_context(model, args.contexts, args.decode_tokens, rounds=args.decode_rounds)
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
