"""Training-step throughput (tokens/s) and MFU of a variant, against this machine's matmul peak.

The fp32 matmul peak is measured in the same run, so MFU is relative to what this CPU
really does.  Prints JSON.  Reproduce the foundation targets (baseline, nano, T=256, B=8):

    python benchmarks/bench_train.py --variant baseline --size nano --seq-len 256 --batch 8
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import tyro
from common import emit, machine, matmul_peak_flops, peak_rss_mib, timed

import memlab


@dataclass
class Args:
    variant: str = "baseline"
    size: str = "nano"
    seq_len: int = 256
    batch: int = 8
    steps: int = 5
    bf16: bool = True
    """also measure bf16 autocast and report its ratio to fp32"""
    out: str | None = None


def step_tokens_per_s(model, batch: int, seq_len: int, steps: int, autocast_dtype=None) -> float:
    """Tokens/s of full training steps (forward, backward, AdamW) on random tokens."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, model.config.vocab_size, (batch, seq_len + 1))
    ctx = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()

    def step():
        with ctx:
            logits = model(x[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return batch * seq_len / timed(step, steps, warmup=2)


def main(args: Args) -> dict:
    torch.manual_seed(0)
    model = memlab.build_model(args.variant, args.size).train()
    peak = matmul_peak_flops()
    flops_per_token = model.estimate_flops_per_token(args.seq_len)
    fp32 = step_tokens_per_s(model, args.batch, args.seq_len, args.steps)
    result = {
        "benchmark": "train_step",
        "variant": args.variant,
        "size": args.size,
        "params": model.num_params(),
        "seq_len": args.seq_len,
        "batch": args.batch,
        "machine": machine(),
        "matmul_peak_fp32_gflops": peak / 1e9,
        "flops_per_token": flops_per_token,
        "fp32_tokens_per_s": fp32,
        "fp32_mfu": fp32 * flops_per_token / peak,
    }
    if args.bf16:
        bf16 = step_tokens_per_s(model, args.batch, args.seq_len, args.steps, torch.bfloat16)
        result.update(bf16_tokens_per_s=bf16, bf16_over_fp32=bf16 / fp32)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


if __name__ == "__main__":
    args = tyro.cli(Args)
    emit(main(args), args.out)
