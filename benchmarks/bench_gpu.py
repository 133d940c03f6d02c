"""GPU throughput: the pure-PyTorch scans against the fused kernels they dispatch to, and the
main variants' training tokens/s (fp32, bf16 autocast, optionally ``torch.compile``) and decode
tokens/s, written as JSON and as markdown tables for ``benchmarks/RESULTS.md`` with the device's
name.

* ``kernels``: forward + backward tokens/s of the gated delta rule (ours against fla's Triton
  kernel) and of the SSD scan (ours against mamba_ssm's), in fp32 and bf16, each fused kernel
  where it is installed;
* ``models``: every variant at every size; delta-rule and SSD layers use the fused kernels
  when installed.

Reproduce on a CUDA machine (the issues' grid: five variants at nano and 125M):
    python benchmarks/bench_gpu.py --out benchmarks/gpu.json --markdown benchmarks/RESULTS.md
On the device tool's machine (no network), ``benchmarks/gpu/device_checks.sh`` runs it after the
CUDA tests.  A CPU smoke run of the same code: ``--device cpu --sizes tiny --seq-len 128 --batch 2``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import tyro
from bench_kernels import kernel_inputs
from bench_ssm import ssd_inputs
from common import emit, fwd_bwd_seconds, machine

import memlab
from memlab.analysis.speed import decode_tokens_per_s, step_tokens_per_s
from memlab.ops.gated_delta import fla_chunk_kernel, gated_delta_rule
from memlab.ops.ssd import mamba_chunk_kernel, ssd_chunked, ssd_scan


@dataclass
class Args:
    parts: list[str] = field(default_factory=lambda: ["kernels", "models"])
    variants: list[str] = field(default_factory=lambda: ["baseline", "gdn", "gdn_hybrid", "cdm_v3", "ssm"])
    sizes: list[str] = field(default_factory=lambda: ["nano", "125M"])
    seq_len: int = 2048
    batch: int = 8
    steps: int = 5
    kernel_batch: int = 8
    kernel_heads: int = 8
    """gated delta rule heads (K = V = 64); the SSD scan has the ``ssm`` layer's shape at the first size"""
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
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()  # this row's peak alone (the kernels' part may have run before)
    context = args.decode_context
    model = memlab.build_model(variant, size, max_seq_len=max(args.seq_len, context + args.decode_tokens))
    model = model.to(args.device).train()
    seq_len = args.seq_len
    shape = f"d{model.config.d_model}l{model.config.n_layers}"  # cdm_v3 keeps the source's shape at every size
    row = {"variant": variant, "size": size, "shape": shape, "params": model.num_params(), "seq_len": seq_len}
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
        row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20  # the largest of the row's parts
    return row


def heading(result: dict, what: str, batch: int) -> str:
    device = result["machine"]["cuda"] or result["machine"]["cpu"]
    return f"### {device}: {what} (torch {result['machine']['torch']}, batch {batch}, T={result['seq_len']})"


def markdown_table(result: dict) -> str:
    keys = ["fp32_tokens_per_s", "bf16_tokens_per_s", "bf16_compiled_tokens_per_s", "decode_tokens_per_s"]
    keys = [k for k in keys if any(k in r for r in result["rows"])]
    lines = [
        heading(result, "the variants", result["batch"]),
        "",
        f"(decode: batch 1, the tokens after a {result['rows'][0].get('decode_context', '-')}-token context)"
        if "decode_tokens_per_s" in keys else "",
        "",
        "| variant | size | shape | params | train T | " + " | ".join(k.removesuffix("_tokens_per_s") for k in keys)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(keys),
    ]
    for r in result["rows"]:
        cells = [f"{r[k]:,.0f}" if k in r else "" for k in keys]
        head = f"| {r['variant']} | {r['size']} | {r['shape']} | {r['params'] / 1e6:.1f}M | {r['seq_len']} | "
        lines.append(head + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def kernel_rows(args: Args) -> list[dict]:
    """Forward + backward tokens/s of each scan's pure-PyTorch path and, on CUDA where installed,
    of the fused kernel it dispatches to, in fp32 and bf16."""
    tokens = args.kernel_batch * args.seq_len
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        gdn = kernel_inputs(args.kernel_batch, args.seq_len, args.kernel_heads, 64, args.device, dtype)
        ssd = ssd_inputs(args.sizes[0], args.seq_len, args.kernel_batch, args.device, dtype)
        cases = {  # name: (inputs, our path, the entry point that dispatches to the fused kernel, that kernel)
            "gated_delta_rule": (
                gdn, partial(gated_delta_rule, backend="torch"), partial(gated_delta_rule, backend="fla"),
                fla_chunk_kernel(),
            ),
            "ssd": (ssd, ssd_chunked, ssd_scan, mamba_chunk_kernel()),
        }
        for name, (inputs, ours, fused, kernel) in cases.items():
            row = {"kernel": name, "dtype": str(dtype).removeprefix("torch."),
                   "shape": {k: list(v.shape) for k, v in inputs.items()},
                   "torch_tokens_per_s": tokens / fwd_bwd_seconds(ours, inputs, args.steps)}
            if args.device.startswith("cuda") and kernel is not None:
                row["fused_tokens_per_s"] = tokens / fwd_bwd_seconds(fused, inputs, args.steps)
                row["fused_over_torch"] = row["fused_tokens_per_s"] / row["torch_tokens_per_s"]
            rows.append(row)
    return rows


def kernel_table(result: dict, batch: int) -> str:
    lines = [
        heading(result, "our scans against the fused kernels, forward + backward", batch),
        "",
        "(dtype: of the inputs and outputs; our scans compute in float32 inside; fla's Triton kernels may "
        "take some fp32 products in TF32 on recent GPUs, ours never do)",
        "",
        "| kernel | dtype | ours, tokens/s | fused, tokens/s | fused / ours |",
        "|---|---|---|---|---|",
    ]
    for r in result["kernels"]:
        fused = "not run (no CUDA, or not installed) | "
        if "fused_tokens_per_s" in r:
            fused = f"{r['fused_tokens_per_s']:,.0f} | {r['fused_over_torch']:.2f}x"
        lines.append(f"| {r['kernel']} | {r['dtype']} | {r['torch_tokens_per_s']:,.0f} | {fused} |")
    return "\n".join(lines) + "\n"


def main(args: Args) -> dict:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; pass --device cpu for a smoke run", file=sys.stderr)
        raise SystemExit(2)
    result = {"benchmark": "gpu_throughput", "machine": machine(), "batch": args.batch, "seq_len": args.seq_len}
    tables = []
    if "kernels" in args.parts:
        result["kernels"] = kernel_rows(args)
        tables.append(kernel_table(result, args.kernel_batch))
    if "models" in args.parts:
        result["rows"] = [measure(args, variant, size) for size in args.sizes for variant in args.variants]
        tables.append(markdown_table(result))
    if args.markdown:
        with Path(args.markdown).open("a") as f:
            f.write("\n" + "\n".join(tables))
    return result


if __name__ == "__main__":
    args = tyro.cli(Args)
    emit(main(args), args.out)
