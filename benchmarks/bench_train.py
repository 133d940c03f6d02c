"""Training-step throughput (tokens/s) and MFU of a variant, against this machine's matmul peak.

The fp32 matmul peak is measured in the same run, in alternating rounds with the steps, so
MFU is relative to what this CPU really does under the same load.  Prints JSON.  Reproduce
the foundation targets (baseline, nano, T=256, B=8):

    python benchmarks/bench_train.py --variant baseline --size nano --seq-len 256 --batch 8

Full-loop mode (``--loop-steps N``): also runs ``memlab.train.train`` itself for N steps at the
same shapes (tasks, then the stdlib-code corpus with the byte tokenizer; evaluation and a
checkpoint every ``--loop-interval`` steps) and reports the loop's tokens/s against the bare
fp32 step measured in the same run, so the loop's overhead (data, logging, evaluation,
checkpointing) is a measured ratio.  Target: loop >= 0.9x bare step at nano:

    python benchmarks/bench_train.py --size nano --seq-len 256 --batch 8 --no-bf16 --loop-steps 60
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass

import torch
import tyro
from common import MATMUL_FLOPS, emit, interleaved_seconds, machine, peak_rss_mib, square_matmul

import memlab
from memlab.analysis.speed import step_tokens_per_s, train_step
from memlab.train.config import TrainConfig


@dataclass
class Args:
    variant: str = "baseline"
    size: str = "nano"
    seq_len: int = 256
    batch: int = 8
    steps: int = 5
    bf16: bool = True
    """also measure bf16 autocast and report its ratio to fp32"""
    loop_steps: int = 0
    """> 0: also run the full training loop (memlab train) for this many steps"""
    loop_interval: int = 30
    """full loop: steps between evaluations and between checkpoints"""
    out: str | None = None


def loop_throughput(args: Args, vocab_size: int) -> dict:
    """Run ``memlab.train.train`` for ``args.loop_steps`` steps; its summary's throughput and timings."""
    from memlab.train import train

    tokens = args.loop_steps * args.batch * args.seq_len
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(
            variant=args.variant, model_size=args.size, model={"vocab_size": vocab_size}, corpus="stdlib-code",
            tokenizer="byte", seq_len=args.seq_len, batch_size=args.batch, alg_tokens=tokens // 2,
            total_tokens=tokens, eval_interval=args.loop_interval, save_interval=args.loop_interval,
            output_dir=out, progress=False,
        )
        summary = json.loads((train(cfg) / "summary.json").read_text())
    return {
        "steps": summary["steps"],
        "eval_and_save_interval": args.loop_interval,
        "tokens_per_s": summary["tokens_per_s"],  # everything after set-up: steps, evals, checkpoints, plots
        "train_tokens_per_s": summary["train_tokens_per_s"],  # the steps alone: data, forward/backward, logging
        "seconds": summary["seconds"],
    }


def main(args: Args) -> dict:
    torch.manual_seed(0)
    model = memlab.build_model(args.variant, args.size).train()
    flops_per_token = model.estimate_flops_per_token(args.seq_len)
    fns = {"matmul_fp32": square_matmul(), "fp32": train_step(model, args.batch, args.seq_len)}
    if args.bf16:
        fns |= {"matmul_bf16": square_matmul(torch.bfloat16),
                "bf16": train_step(model, args.batch, args.seq_len, torch.bfloat16)}
    seconds = interleaved_seconds(fns, args.steps, warmup=2)  # the peak and the steps under the same load
    peak, fp32 = MATMUL_FLOPS / seconds["matmul_fp32"], args.batch * args.seq_len / seconds["fp32"]
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
        bf16 = args.batch * args.seq_len / seconds["bf16"]
        result.update(bf16_tokens_per_s=bf16, bf16_over_fp32=bf16 / fp32,
                      matmul_peak_bf16_gflops=MATMUL_FLOPS / seconds["matmul_bf16"] / 1e9)  # what bf16 can gain
    if args.loop_steps:
        loop = loop_throughput(args, model.config.vocab_size)
        # the bare step again after the loop: on a shared machine the load may have changed meanwhile
        after = step_tokens_per_s(model, args.batch, args.seq_len, args.steps)
        bare = (fp32 + after) / 2
        loop.update(
            bare_step_tokens_per_s_after=after,
            bare_step_tokens_per_s=bare,  # mean of the measurements before and after the loop
            steps_over_bare_step=loop["train_tokens_per_s"] / bare,
            loop_over_bare_step=loop["tokens_per_s"] / bare,
        )
        result["full_loop"] = loop
    result["peak_rss_mib"] = peak_rss_mib()
    return result


if __name__ == "__main__":
    args = tyro.cli(Args)
    emit(main(args), args.out)
