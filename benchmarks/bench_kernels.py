"""Gated delta rule speed: the chunked kernel against the per-token loop and fla's PyTorch
chunk reference (fwd + bwd), and the ``gdn`` model against ``baseline`` (training and decode).

Prints JSON.  Reproduce the issue-6 targets (B=4, H=4, T=2048, K=V=64, fp32; nano, T=2048,
decode after a 4k context, one sequence and a batch of 8):

    python benchmarks/bench_kernels.py --repeats 5                     # both cores (torch's default)
    OMP_NUM_THREADS=1 python benchmarks/bench_kernels.py --repeats 5   # one thread

The two models' training steps (and decode rounds) are timed alternately; ratios compare medians.

``--loop-repeats 0`` skips the per-token loop (about a minute), ``--no-models`` the model part.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
import tyro
from common import emit, fwd_bwd_seconds, fwd_bwd_step, interleaved_seconds, machine, peak_rss_mib

import memlab
from memlab.analysis.speed import decode_length, decoder, train_step
from memlab.ops.gated_delta import chunk_gated_delta_rule, naive_gated_delta_rule


@dataclass
class Args:
    batch: int = 4
    heads: int = 4
    seq_len: int = 2048
    head_dim: int = 64
    chunk_size: int = 64
    repeats: int = 5
    loop_repeats: int = 1
    """repeats of the per-token loop (slow); 0 skips it"""
    models: bool = True
    size: str = "nano"
    train_seq_len: int = 2048
    decode_context: int = 4096
    decode_tokens: int = 64
    decode_batch: list[int] = field(default_factory=lambda: [1, 8])
    """sequences decoded at once: 1 is bound by streaming the weights, larger batches by the KV cache"""
    out: str | None = None


def kernel_inputs(
    batch: int, seq_len: int, heads: int, head_dim: int, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Random q, k (unit), v (B, T, H, K), log-gates g and beta (B, T, H), all requiring grad."""
    B, T, H, K = batch, seq_len, heads, head_dim
    q, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
    k = F.normalize(torch.randn(B, T, H, K), dim=-1)
    g, beta = F.logsigmoid(torch.randn(B, T, H) + 3), torch.rand(B, T, H)
    return {name: t.to(device, dtype).requires_grad_() for name, t in zip("q k v g beta".split(), (q, k, v, g, beta))}


def fla_chunk_reference():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from fla.ops.gated_delta_rule.naive import naive_chunk_gated_delta_rule
    except Exception:
        return None
    return naive_chunk_gated_delta_rule


def kernel_results(args: Args) -> dict:
    tensors = kernel_inputs(args.batch, args.seq_len, args.heads, args.head_dim)
    tokens = args.batch * args.seq_len
    steps = {"ours": fwd_bwd_step(partial(chunk_gated_delta_rule, chunk_size=args.chunk_size), tensors)}
    fla = fla_chunk_reference()
    if fla is not None:
        steps["fla"] = fwd_bwd_step(partial(fla, chunk_size=args.chunk_size), tensors)
    seconds = interleaved_seconds(steps, args.repeats)  # ours and fla's reference under the same load
    ours = seconds["ours"]
    out = {"shape": {"B": args.batch, "H": args.heads, "T": args.seq_len, "K": args.head_dim, "V": args.head_dim},
           "chunk_fwd_bwd_s": ours, "chunk_tokens_per_s": tokens / ours}
    if args.loop_repeats > 0:  # ~50x slower, so timed on its own: drift cannot bring it near the 10x target
        loop = fwd_bwd_seconds(naive_gated_delta_rule, tensors, args.loop_repeats)
        out.update(loop_fwd_bwd_s=loop, speedup_vs_loop=loop / ours)
    if fla is not None:
        ref = seconds["fla"]
        out.update(fla_chunk_reference_fwd_bwd_s=ref, speedup_vs_fla_chunk_reference=ref / ours)
    return out


def model_results(args: Args) -> dict:
    """gdn against baseline: training steps and decode steps timed in alternating rounds."""
    rounds = args.repeats
    max_len = decode_length([args.decode_context], args.decode_tokens)
    models = {}
    for variant in ("baseline", "gdn"):
        torch.manual_seed(0)
        models[variant] = memlab.build_model(variant, args.size, max_seq_len=max_len)
    steps = {v: train_step(m.train(), 1, args.train_seq_len) for v, m in models.items()}
    train = interleaved_seconds(steps, rounds, warmup=2)
    out = {v: {"train_tokens_per_s": args.train_seq_len / train[v]} for v in models}
    out["train_ratio_gdn_over_baseline"] = train["baseline"] / train["gdn"]
    for batch in args.decode_batch:
        decoders = {v: decoder(m.eval(), args.decode_context, args.decode_tokens, batch) for v, m in models.items()}
        decode = interleaved_seconds({v: d.run for v, d in decoders.items()}, rounds,
                                     setups={v: d.restore for v, d in decoders.items()})  # fmt: skip
        del decoders
        for v in models:
            out[v][f"decode_tokens_per_s_batch{batch}"] = batch * args.decode_tokens / decode[v]
        out[f"decode_ratio_gdn_over_baseline_batch{batch}"] = decode["baseline"] / decode["gdn"]
    return out


def main(args: Args) -> dict:
    torch.manual_seed(0)
    result = {"benchmark": "gated_delta_kernels", "machine": machine(), "kernel": kernel_results(args)}
    if args.models:
        result["models"] = {"size": args.size, "train_seq_len": args.train_seq_len,
                            "decode_context": args.decode_context, **model_results(args)}
    result["peak_rss_mib"] = peak_rss_mib()
    return result


if __name__ == "__main__":
    args = tyro.cli(Args)
    emit(main(args), args.out)
