"""``memlab bench``: how fast variants train and decode on this machine, against a baseline.

Training is timed as ``memlab train`` steps (forward with the auxiliary losses, backward,
clipping, AdamW) on fixed random tokens; decoding as single-token steps after an untimed prefill
of each context, every timed run starting from a copy of that context's state.  All variants
(and, for decoding, all contexts) are timed in the same alternating rounds
(:func:`memlab.analysis.timing.interleaved_seconds`), so the ratios to the baseline hold on a
busy machine.  Writes ``bench.json``, ``bench.md`` and ``bench.png``.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import memlab
from memlab.analysis.info import human
from memlab.analysis.speed_options import BenchConfig
from memlab.analysis.timing import interleaved_seconds, machine, peak_rss_mib, timed
from memlab.devices import resolve_device
from memlab.errors import MemlabError, check_at_least, check_dir_target, choose
from memlab.markdown import markdown_table
from memlab.plotting import pyplot, save_figure
from memlab.provenance import provenance
from memlab.train.config import TrainConfig
from memlab.train.optim import build_optimizer, no_decay_names


def train_step(model, batch: int, seq_len: int, autocast_dtype=None) -> Callable[[], None]:
    """One full training step as ``memlab train`` makes it (forward with the model's auxiliary
    losses, backward, gradient clipping, AdamW as it builds it) on fixed random tokens, on the
    model's device; data loading and logging left out."""
    device = next(model.parameters()).device
    cfg = TrainConfig()  # memlab train's defaults
    opt = build_optimizer(model, no_decay_names(model), cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    x = torch.randint(0, model.config.vocab_size, (batch, seq_len + 1), device=device)  # (B, T + 1)
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()

    def step():
        with ctx:
            loss = model(x[:, :-1], labels=x[:, 1:]) / x[:, 1:].numel()
            loss = loss + sum(model.aux_losses().values(), torch.zeros((), device=device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def step_tokens_per_s(model, batch: int, seq_len: int, steps: int, autocast_dtype=None) -> float:
    """Tokens/s of :func:`train_step` (median of ``steps`` after two warm-up steps)."""
    return batch * seq_len / timed(train_step(model, batch, seq_len, autocast_dtype), steps, warmup=2)


@dataclass
class Decoder:
    """Decode steps from a fixed context: ``restore()`` (untimed) puts back the state of the
    context, so that every timed ``run()`` decodes at the same positions."""

    run: Callable[[], None]
    restore: Callable[[], None]
    state_bytes: int  # of the context's state


def decoder(model, context: int, new_tokens: int, batch: int = 1) -> Decoder:
    """``new_tokens`` single-token decode steps after an untimed ``context``-token prefill, each run
    from the same state: the tokens decoded see ``context`` .. ``context + new_tokens - 1`` tokens
    before them.  The context's last token goes in as a decode step, so the caches have grown
    before the state is kept (not while timed)."""
    device = next(model.parameters()).device
    x = torch.randint(0, model.config.vocab_size, (batch, context), device=device)  # (B, context)
    kept = model.init_state(batch)
    with torch.no_grad():
        if context > 1:
            model(x[:, :-1], kept, logits_to_keep=1)  # (not a batch x context x vocab tensor)
        model(x[:, -1:], kept)
    current = [kept]
    token = x[:, -1:]  # (B, 1)

    def restore():
        current[0] = copy.deepcopy(kept)

    @torch.no_grad()
    def run():
        for _ in range(new_tokens):
            model(token, current[0])

    return Decoder(run, restore, kept.nbytes)


def decode_tokens_per_s(model, context: int, new_tokens: int, batch: int = 1, repeats: int = 3) -> tuple[float, int]:
    """Tokens/s of a :func:`decoder` (``repeats`` + 1 runs, the first a warm-up) and the state bytes."""
    d = decoder(model, context, new_tokens, batch)
    return batch * new_tokens / timed(d.run, repeats, setup=d.restore), d.state_bytes


def decode_length(contexts: list[int], new_tokens: int) -> int:
    """The ``max_seq_len`` a model needs for :func:`decoder` at every context."""
    return max(contexts) + new_tokens


def timed_decoding(
    models: dict[str, Any], contexts: list[int], new_tokens: int, batch: int = 1, rounds: int = 3,
    progress: str | None = None,
) -> dict[tuple[str, int], tuple[float, int]]:
    """``{(model name, context): (decode tokens/s, state bytes)}``, every model and context timed in
    turn each round (median of ``rounds``)."""
    decoders = {(name, c): decoder(m, c, new_tokens, batch) for name, m in models.items() for c in contexts}
    seconds = interleaved_seconds({k: d.run for k, d in decoders.items()}, rounds,
                                  setups={k: d.restore for k, d in decoders.items()}, progress=progress)
    return {k: (batch * new_tokens / seconds[k], d.state_bytes) for k, d in decoders.items()}


def decode_by_context(model, contexts: list[int], new_tokens: int, batch: int = 1, rounds: int = 3) -> dict:
    """Decode tokens/s after each context (:func:`timed_decoding`), with the state bytes and the
    slowest/fastest ratio (1 = flat)."""
    speeds = timed_decoding({"": model}, contexts, new_tokens, batch, rounds)
    rows = [{"context": c, "decode_tokens_per_s": speeds["", c][0], "state_bytes": speeds["", c][1]} for c in contexts]
    rates = [r["decode_tokens_per_s"] for r in rows]
    return {"results": rows, "slowest_over_fastest": min(rates) / max(rates)}


# ------------------------------------------------------------------ memlab bench


def check(cfg: BenchConfig) -> None:
    """Refuse settings that cannot be timed, before any model is built."""
    if not cfg.variants or len(set(cfg.variants)) != len(cfg.variants):
        raise MemlabError("--variants needs distinct variants, the first the baseline of every ratio")
    for variant in cfg.variants:
        choose("variant", variant, memlab.list_variants())
    if not cfg.parts:
        raise MemlabError("--parts is empty; give train, decode or both")
    if not cfg.contexts and "decode" in cfg.parts:
        raise MemlabError("--contexts is empty; give the context lengths to decode after")
    check_at_least(cfg, ("seq_len", "batch_size", "new_tokens", "decode_batch", "rounds"), 1)
    check_at_least(cfg, ("seed",), 0)
    if min(cfg.contexts, default=1) < 1:
        raise MemlabError(f"--contexts must be >= 1, got {min(cfg.contexts)}")
    check_dir_target(cfg.output_dir, "--out-dir")


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Build every variant at the size, time the parts, write and return the report."""
    check(cfg)
    device = resolve_device(cfg.device)
    facts = machine()  # (it keeps freed memory in the process, as memlab train does, before any model is built)
    torch.manual_seed(cfg.seed)
    max_len = max(cfg.seq_len, decode_length(cfg.contexts, cfg.new_tokens) if "decode" in cfg.parts else 0)
    models = {v: memlab.build_model(v, cfg.model_size, max_seq_len=max_len).to(device) for v in cfg.variants}
    report: dict[str, Any] = {
        "metadata": {**provenance(), "machine": facts, "device": str(device)},
        "settings": asdict(cfg),
        "variants": {v: {"params": m.num_params(), "non_embedding_params": m.num_params(non_embedding=True),
                         "layer_pattern": m.config.pattern} for v, m in models.items()},
    }
    if "train" in cfg.parts:
        _time_training(cfg, models, report["variants"])
    if "decode" in cfg.parts:
        _time_decoding(cfg, models, report["variants"])
    report["peak_rss_mib"] = peak_rss_mib()  # the whole process's, over every variant and part
    if device.type == "cuda":
        report["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(markdown_report(report) + "\n")
    plot_bench(report, out / "bench.png")
    return report


def _time_training(cfg: BenchConfig, models: dict, rows: dict[str, dict]) -> None:
    steps = {v: train_step(m.train(), cfg.batch_size, cfg.seq_len) for v, m in models.items()}
    seconds = interleaved_seconds(steps, cfg.rounds, warmup=2, progress="training steps")
    baseline = seconds[cfg.variants[0]]
    for v in cfg.variants:
        rows[v]["train_tokens_per_s"] = cfg.batch_size * cfg.seq_len / seconds[v]
        rows[v]["train_ratio"] = baseline / seconds[v]


def _time_decoding(cfg: BenchConfig, models: dict, rows: dict[str, dict]) -> None:
    speeds = timed_decoding({v: m.eval() for v, m in models.items()}, cfg.contexts, cfg.new_tokens,
                            cfg.decode_batch, cfg.rounds, progress="decoding")
    for v in cfg.variants:
        rows[v]["decode"] = [
            {"context": c, "tokens_per_s": speeds[v, c][0], "ratio": speeds[v, c][0] / speeds[cfg.variants[0], c][0],
             "state_bytes": speeds[v, c][1]}
            for c in cfg.contexts
        ]


def markdown_report(report: dict[str, Any]) -> str:
    """One row per variant: parameters, training and decoding tokens/s with their ratio to the baseline."""
    s, rows = report["settings"], report["variants"]
    first = next(iter(rows.values()))
    contexts = [d["context"] for d in first.get("decode", [])]
    headers = ["variant", "params", "pattern"]
    if "train_tokens_per_s" in first:
        headers.append(f"train tok/s (B={s['batch_size']}, T={s['seq_len']})")
    headers += [f"decode tok/s after {c}" for c in contexts] + ([f"state @ {contexts[-1]}"] if contexts else [])

    def cells(name: str, row: dict) -> list[str]:
        out = [name, human(row["params"]), f"`{row['layer_pattern']}`"]
        if "train_tokens_per_s" in row:
            out.append(f"{row['train_tokens_per_s']:,.0f} ({row['train_ratio']:.2f}x)")
        out += [f"{d['tokens_per_s']:,.1f} ({d['ratio']:.2f}x)" for d in row.get("decode", [])]
        return out + ([f"{human(row['decode'][-1]['state_bytes'])}B"] if contexts else [])

    machine_facts = report["metadata"]["machine"]
    return "\n".join([
        f"# Speed on {report['metadata']['device']} ({machine_facts['cpu']}, {machine_facts['threads']} threads), "
        f"{s['model_size']}",
        "",
        f"Ratios are to {s['variants'][0]}, timed in the same alternating rounds (medians of {s['rounds']}); "
        f"decoding {s['decode_batch']} sequence(s), {s['new_tokens']} tokens per run.",
        "",
        markdown_table(headers, [cells(name, row) for name, row in rows.items()]),
    ])


def plot_bench(report: dict[str, Any], path: Path) -> Path:
    """Training tokens/s per variant (bars) beside decoding tokens/s against the context (lines)."""
    rows = report["variants"]
    panels = [p for p in ("train", "decode") if p in report["settings"]["parts"]]
    fig, axes = pyplot().subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "train":
            ax.bar(list(rows), [r["train_tokens_per_s"] for r in rows.values()], color="tab:blue")
            ax.set(ylabel="training tokens/s", title="training")
            ax.tick_params(axis="x", rotation=30)
        else:
            for name, r in rows.items():
                ax.plot([d["context"] for d in r["decode"]], [d["tokens_per_s"] for d in r["decode"]], "o-",
                        label=name)
            contexts = report["settings"]["contexts"]
            ax.set_xscale("log", base=2)
            ax.set_xticks(contexts, [str(c) for c in contexts])
            ax.minorticks_off()
            ax.set(xlabel="context (tokens)", ylabel="decode tokens/s", title="decoding", ylim=(0, None))
            ax.legend()
    return save_figure(fig, path)
