"""Competitive Docking Memory speed: the chunked slot scan, training throughput and decoding.

Three measurements, printed as one JSON object:

* ``scan``: forward + backward of one CDM layer's recurrence and both read-outs (gate read
  and slot cross-attention) at ``--seq-len``: the chunked scan against the per-token loop (the
  source's way: state update and reads token by token) and against the op's reference (a loop
  for the states, reads batched), with the largest difference between the outputs;
* ``train``: full training steps (AdamW) of the ``cdm_v3`` preset with the GPT-2 vocabulary
  (37.1M parameters, as in the source card) at ``--seq-len``, beside a transformer of the same
  shape measured in the same run;
* ``decode``: tokens/s of single-token decoding after contexts of 256 .. 8192 tokens, for the
  slot-only ``cdm`` variant at ``--decode-size`` (O(1) state) and the hybrid ``cdm_v3``
  (attention KV cache grows with the context).

Reproduce (the numbers in the issue report, on a 2-core CPU):

    python benchmarks/bench_cdm.py --seq-len 512 --batch 4 --train-steps 5 --new-tokens 128
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial

import torch
import tyro
from common import emit, interleaved_seconds, machine, peak_rss_mib

import memlab
from memlab.analysis.speed import decode_by_context, decode_length, train_step
from memlab.config import CDMConfig
from memlab.ops.slot_scan import score_read, slot_scan, slot_states_naive, slot_step, weighted_read

CHUNK = CDMConfig.chunk_size


@dataclass
class Args:
    seq_len: int = 512
    batch: int = 4
    slots: int = 16
    d_model: int = 384
    heads: int = 8
    vocab_size: int = 50257
    """vocabulary of the training measurement (GPT-2's, as in the source)"""
    scan_rounds: int = 5
    """rounds of the scan measurement, each timing the three forms in turn; medians compared"""
    train_steps: int = 3
    decode_size: str = "d384l8"
    contexts: list[int] = field(default_factory=lambda: [256, 1024, 2048, 4096, 8192])
    new_tokens: int = 32
    decode_rounds: int = 5
    """timed rounds per context, the contexts visited in turn; the median is reported"""
    skip: list[str] = field(default_factory=list)
    """parts to leave out: scan, train, decode"""
    threads: int | None = None
    """torch threads (default: torch's choice)"""
    out: str | None = None


def layer_inputs(B: int, T: int, K: int, D: int, H: int) -> list[torch.Tensor]:
    """Gates, write values, initial slots, gate-read weights and queries of one layer."""
    gates = torch.softmax(torch.randn(B, T, K), -1) * torch.rand(B, T, K)
    tensors = [gates, torch.randn(B, T, D), torch.randn(B, K, D), torch.randn(B, T, H, D // H)]
    return [t.requires_grad_() for t in tensors]


def layer_read(form: str, gates, values, initial, q) -> torch.Tensor:
    """Recurrence + gate read + slot cross-attention read: (B, T, 2D), computed in one of FORMS."""
    log_decay = torch.log1p(-gates)
    scale = q.shape[-1] ** -0.5
    if form == "loop":  # the source's way: one token at a time, reads inside the loop
        state, outs = initial, []
        for t in range(values.shape[1]):
            state = slot_step(state, log_decay[:, t], gates[:, t], values[:, t])
            states = state[:, None]  # (B, 1, K, D)
            attn = torch.softmax(score_read(states, q[:, t : t + 1]) * scale, dim=-1)
            outs.append(weighted_read(states, read_weights(gates[:, t : t + 1], attn)))
        return torch.cat(outs, dim=1).flatten(2)
    if form == "reference":  # the op's naive reference: a loop for the states, reads batched
        states = slot_states_naive(log_decay, gates, values, initial)
        read_w, read_s = partial(weighted_read, states), partial(score_read, states)
    else:
        scan = slot_scan(log_decay, gates, values, initial, CHUNK, q.shape[2])
        read_w, read_s = scan.weighted_read, scan.score_read
    attn = torch.softmax(read_s(q) * scale, dim=-1)
    return read_w(read_weights(gates, attn)).flatten(2)


def read_weights(gates: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """The gate read's weights (the gates, for every head) and the attention's: (B, T, 2, H, K), as the mixer."""
    return torch.stack([gates[:, :, None].expand_as(attn), attn], dim=2)


def bench_scan(args: Args) -> dict:
    torch.manual_seed(0)
    inputs = layer_inputs(args.batch, args.seq_len, args.slots, args.d_model, args.heads)
    cotangent = torch.randn(args.batch, args.seq_len, 2 * args.d_model)
    forms = ("loop", "reference", "chunked")

    def clear_gradients() -> None:  # (untimed: a backward into a .grad left by the last run also adds)
        for t in inputs:
            t.grad = None

    seconds = interleaved_seconds(
        {form: partial(lambda f: layer_read(f, *inputs).backward(cotangent), form) for form in forms}, args.scan_rounds,
        setups=dict.fromkeys(forms, clear_gradients),
    )
    with torch.no_grad():
        outputs = {form: layer_read(form, *inputs) for form in forms}
    tokens = args.batch * args.seq_len
    return {
        "shape": {"B": args.batch, "T": args.seq_len, "K": args.slots, "D": args.d_model, "H": args.heads},
        "chunk_size": CHUNK,
        "fwd_bwd_s": seconds,
        "tokens_per_s": {form: tokens / s for form, s in seconds.items()},
        "speedup_over_loop": seconds["loop"] / seconds["chunked"],
        "speedup_over_reference": seconds["reference"] / seconds["chunked"],
        "max_abs_diff_vs_loop": (outputs["chunked"] - outputs["loop"]).abs().max().item(),
    }


def bench_train(args: Args) -> dict:
    """cdm_v3 and a transformer of the same shape, training steps timed in alternating rounds."""
    models = {}
    for variant in ("cdm_v3", "baseline"):
        torch.manual_seed(0)
        overrides = dict(vocab_size=args.vocab_size)
        if variant == "baseline":  # the same shape as the CDM presets, attention only
            overrides.update(d_model=384, n_layers=8, n_heads=8, n_kv_heads=4, d_ff=1024)
        models[variant] = memlab.build_model(variant, "tiny", **overrides).train()
    steps = {v: train_step(m, args.batch, args.seq_len) for v, m in models.items()}
    seconds = interleaved_seconds(steps, args.train_steps, warmup=2)
    rows = {v: {"params": m.num_params(), "tokens_per_s": args.batch * args.seq_len / seconds[v]}
            for v, m in models.items()}
    rows["cdm_v3_over_baseline"] = seconds["baseline"] / seconds["cdm_v3"]
    return {"seq_len": args.seq_len, "batch": args.batch, **rows}


def bench_decode(args: Args) -> dict:
    out = {}
    for variant, size in (("cdm", args.decode_size), ("cdm_v3", "tiny")):
        torch.manual_seed(0)
        max_len = decode_length(args.contexts, args.new_tokens)
        model = memlab.build_model(variant, size, vocab_size=args.vocab_size, max_seq_len=max_len).eval()
        out[variant] = {"size": size, "vocab_size": args.vocab_size, "params": model.num_params(),
                        **decode_by_context(model, args.contexts, args.new_tokens, rounds=args.decode_rounds)}
    return out


def main(args: Args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"benchmark": "cdm", "machine": machine(), "load_average_1m_before": os.getloadavg()[0]}
    for name, fn in (("scan", bench_scan), ("train", bench_train), ("decode", bench_decode)):
        if name not in args.skip:
            result[name] = fn(args)
    result["peak_rss_mib"] = peak_rss_mib()
    result["load_average_1m_after"] = os.getloadavg()[0]  # other jobs sharing the CPU
    return result


if __name__ == "__main__":
    args = tyro.cli(Args)
    emit(main(args), args.out)
