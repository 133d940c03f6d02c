"""GPU throughput of the main variants: training tokens/s (fp32, bf16 autocast, optionally
``torch.compile``) and decode tokens/s, written as JSON and as a markdown table for
``benchmarks/RESULTS.md`` with the device's name.  Delta-rule and SSD layers dispatch to
flash-linear-attention / mamba_ssm kernels when those are installed.

Reproduce on a CUDA machine (the issue's grid: five variants at nano and 125M):
    python benchmarks/bench_gpu.py --out benchmarks/gpu.json --markdown benchmarks/RESULTS.md
A CPU smoke run of the same code: ``--device cpu --sizes tiny --seq-len 128 --batch 2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro
from bench_decode import decode_tokens_per_s
from bench_train import step_tokens_per_s
from common import emit, machine

import memlab


@dataclass
class Args:
    variants: list[str] = field(default_factory=lambda: ["baseline", "gdn", "gdn_hybrid", "cdm_v3", "ssm"])
    sizes: list[str] = field(default_factory=lambda: ["nano", "125M"])
    seq_len: int = 2048
    batch: int = 8
    steps: int = 5
    compile: bool = False
    """also time the torch.compile'd model (bf16)"""
    decode_context: int = 4096
    decode_tokens: int = 64
    device: str = "cuda"
    out: str | None = None
    markdown: str | None = None
    """append a table of the results to this markdown file"""


def measure(args: Args, variant: str, size: str) -> dict:
    """Training and decode tokens/s of one variant at one size on ``args.device``."""
    torch.manual_seed(0)
    context = args.decode_context
    model = memlab.build_model(variant, size, max_seq_len=max(args.seq_len, context + 4 * args.decode_tokens))
    model = model.to(args.device).train()
    seq_len = args.seq_len
    row = {"variant": variant, "size": size, "params": model.num_params(), "seq_len": seq_len}
    row["fp32_tokens_per_s"] = step_tokens_per_s(model, args.batch, seq_len, args.steps)
    row["bf16_tokens_per_s"] = step_tokens_per_s(model, args.batch, seq_len, args.steps, torch.bfloat16)
    if args.compile:
        compiled = torch.compile(model)
        compiled.config = model.config
        row["bf16_compiled_tokens_per_s"] = step_tokens_per_s(compiled, args.batch, seq_len, args.steps, torch.bfloat16)
    row["decode_context"] = context
    row["decode_tokens_per_s"], row["decode_state_bytes"] = decode_tokens_per_s(
        model.eval(), context, args.decode_tokens
    )
    if args.device.startswith("cuda"):
        row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    return row


def markdown_table(result: dict) -> str:
    device = result["machine"]["cuda"] or result["machine"]["cpu"]
    keys = ["fp32_tokens_per_s", "bf16_tokens_per_s", "bf16_compiled_tokens_per_s", "decode_tokens_per_s"]
    keys = [k for k in keys if any(k in r for r in result["rows"])]
    lines = [
        f"### {device} (torch {result['machine']['torch']}, batch {result['batch']})",
        "",
        "| variant | size | params | train T | " + " | ".join(k.removesuffix("_tokens_per_s") for k in keys) + " |",
        "|---|---|---|---|" + "---|" * len(keys),
    ]
    for r in result["rows"]:
        cells = [f"{r[k]:,.0f}" if k in r else "" for k in keys]
        head = f"| {r['variant']} | {r['size']} | {r['params'] / 1e6:.1f}M | {r['seq_len']} | "
        lines.append(head + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(args: Args) -> dict:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device here; pass --device cpu for a smoke run")
    rows = [measure(args, variant, size) for size in args.sizes for variant in args.variants]
    result = {"benchmark": "gpu_throughput", "machine": machine(), "batch": args.batch, "rows": rows}
    if args.markdown:
        with Path(args.markdown).open("a") as f:
            f.write("\n" + markdown_table(result))
    return result


if __name__ == "__main__":
    args = tyro.cli(Args)
    emit(main(args), args.out)
