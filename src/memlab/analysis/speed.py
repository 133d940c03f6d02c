"""``memlab bench``: how fast variants train and decode on this machine, against a baseline.

Training is timed as ``memlab train`` steps (forward with the auxiliary losses, backward,
clipping, AdamW) on fixed random tokens; decoding as single-token steps after an untimed prefill
of each context, every timed run starting from a copy of that context's state.  All variants
(and, for decoding, all contexts) are timed in the same alternating rounds
(:func:`memlab.analysis.timing.interleaved_seconds`), so the ratios to the baseline hold on a
busy machine.  Peak memory is measured per variant and part, each alone in a fresh process
(:func:`peak_memory`).  Writes ``bench.json``, ``bench.md`` and ``bench.png``.
"""

from __future__ import annotations

import contextlib
import copy
import gc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from tqdm.auto import tqdm

import memlab
from memlab.analysis.info import human
from memlab.analysis.speed_options import BenchConfig
from memlab.analysis.timing import (
    in_fresh_process,
    interleaved_seconds,
    machine,
    peak_rss_mib,
    reset_peak_rss,
    timed,
)
from memlab.cli_help import Precision
from memlab.config import build_config
from memlab.devices import resolve_device
from memlab.errors import MemlabError, check_at_least, check_dir_target, check_seed, choose
from memlab.jsonfile import write_json, write_text
from memlab.markdown import markdown_table
from memlab.plotting import pyplot, save_figure, staged_figures
from memlab.provenance import provenance
from memlab.train.allocator import keep_freed_memory, release_freed_memory
from memlab.train.config import TrainConfig
from memlab.train.optim import build_optimizer, no_decay_names
from memlab.train.trainer import autocast_dtype, precision_name


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


@dataclass(frozen=True)
class MemoryJob:
    """One variant's training steps or decoding, to be measured by :func:`peak_memory`."""

    variant: str
    model_size: str
    part: Literal["train", "decode"]
    batch: int  # sequences per training step, or decoded together
    seq_len: int = 0  # training: tokens per sequence
    context: int = 0  # decoding: the prefill's length
    new_tokens: int = 0  # decoding: tokens decoded after it
    device: str = "cpu"
    seed: int = 0
    precision: str = "auto"  # training's, as memlab train's --precision


def peak_memory(job: MemoryJob) -> dict[str, float | bool]:
    """Peak memory of ``job`` in this process: two :func:`train_step` calls (the second with AdamW's
    moments), or a prefill of ``context`` tokens and ``new_tokens`` decode steps, on a model built
    for it.  Run it alone in a fresh process (:func:`memlab.analysis.timing.in_fresh_process`).

    The job runs twice: the first run loads what torch loads on first use (about 170 MB of code
    and buffers for a training step on CPU, whatever the model), then its memory is freed and handed
    back to the OS; the second is measured.  ``peak_rss_mib``: the process's peak resident memory;
    ``above_idle_mib``: that less what the process held just before the second run, so the job's
    own memory, weights included; ``peak_reset``: whether the first run's peak could be cleared
    (Linux; where not, ``above_idle_mib`` reads low); on CUDA, ``peak_cuda_mib``: the peak that
    the caching allocator handed out in the second run."""
    keep_freed_memory()  # as memlab train does
    device = torch.device(job.device)
    _run_memory_job(job, device)
    gc.collect()
    release_freed_memory()
    peak_reset = reset_peak_rss()
    idle = peak_rss_mib()  # (what the process holds now, where the peak was reset)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _run_memory_job(job, device)
    peak = peak_rss_mib()
    out = {"peak_rss_mib": peak, "above_idle_mib": peak - idle, "peak_reset": peak_reset}
    if device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _run_memory_job(job: MemoryJob, device: torch.device) -> None:
    torch.manual_seed(job.seed)
    model = memlab.build_model(job.variant, job.model_size).to(device)
    if job.part == "train":
        step = train_step(model.train(), job.batch, job.seq_len, autocast_dtype(job.precision, device))
        step()
        step()
    else:
        decoder(model.eval(), job.context, job.new_tokens, job.batch).run()  # (one state: no restore)


# ------------------------------------------------------------------ memlab bench


def check(cfg: BenchConfig) -> None:
    """Refuse settings that cannot be timed, before any model is built."""
    if not cfg.variants or len(set(cfg.variants)) != len(cfg.variants):
        raise MemlabError("--variants needs distinct variants, the first the baseline of every ratio")
    for variant in cfg.variants:
        choose("variant", variant, memlab.list_variants())
    if not cfg.parts:
        raise MemlabError("--parts is empty; give train, decode or both")
    choose("precision", cfg.precision, get_args(Precision))
    if not cfg.contexts and "decode" in cfg.parts:
        raise MemlabError("--contexts is empty; give the context lengths to decode after")
    check_at_least(cfg, ("seq_len", "batch_size", "new_tokens", "decode_batch", "rounds"), 1)
    check_seed(cfg)
    if min(cfg.contexts, default=1) < 1:
        raise MemlabError(f"--contexts must be >= 1, got {min(cfg.contexts)}")
    needed = max(cfg.seq_len, decode_length(cfg.contexts, cfg.new_tokens) if "decode" in cfg.parts else 0)
    for variant in cfg.variants:  # (the models are timed as trained: a longer table of positions is another model)
        model = build_config(variant, cfg.model_size)
        if model.pos_encoding == "learned" and needed > model.max_seq_len:
            raise MemlabError(f"{variant} at {cfg.model_size} has learned positions for {model.max_seq_len} tokens, "
                              f"fewer than the {needed} that --seq-len or --contexts + --new-tokens need; "
                              "shorten them or leave it out")
    check_dir_target(cfg.output_dir, "--out-dir")


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Build every variant at the size, time the parts, write and return the report."""
    check(cfg)
    device = resolve_device(cfg.device)
    facts = machine()  # (it keeps freed memory in the process, as memlab train does, before any model is built)
    torch.manual_seed(cfg.seed)
    models = {v: memlab.build_model(v, cfg.model_size).to(device) for v in cfg.variants}
    amp = autocast_dtype(cfg.precision, device)  # training as memlab train runs it on this device
    report: dict[str, Any] = {
        "metadata": {**provenance(), "machine": facts, "device": str(device), "train_precision": precision_name(amp)},
        "settings": asdict(cfg),
        "variants": {v: {"params": m.num_params(), "non_embedding_params": m.num_params(non_embedding=True),
                         "layer_pattern": m.config.pattern} for v, m in models.items()},
    }
    if "train" in cfg.parts:
        _time_training(cfg, models, report["variants"], amp)
    if "decode" in cfg.parts:
        _time_decoding(cfg, models, report["variants"])
    if cfg.peak_memory:
        _measure_memory(cfg, device, report["variants"])
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    with staged_figures(out) as staging:  # each file whole, and the figure moved in with the rest
        plot_bench(report, staging / "bench.png")
        write_json(out / "bench.json", report)
        write_text(out / "bench.md", markdown_report(report) + "\n")
    return report


def _time_training(cfg: BenchConfig, models: dict, rows: dict[str, dict], amp: torch.dtype | None) -> None:
    steps = {v: train_step(m.train(), cfg.batch_size, cfg.seq_len, amp) for v, m in models.items()}
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


def _measure_memory(cfg: BenchConfig, device: torch.device, rows: dict[str, dict]) -> None:
    """Each variant's peak memory in each part (decoding after the longest context), alone in a
    fresh process."""
    jobs = {}
    for v in cfg.variants:
        model = {"variant": v, "model_size": cfg.model_size, "device": str(device), "seed": cfg.seed}
        if "train" in cfg.parts:
            jobs[v, "train"] = MemoryJob(**model, part="train", batch=cfg.batch_size, seq_len=cfg.seq_len,
                                         precision=cfg.precision)
        if "decode" in cfg.parts:
            jobs[v, "decode"] = MemoryJob(**model, part="decode", batch=cfg.decode_batch, context=max(cfg.contexts),
                                          new_tokens=cfg.new_tokens)
    for (v, part), job in tqdm(jobs.items(), desc="peak memory", unit="process"):
        rows[v].setdefault("memory", {})[part] = in_fresh_process(peak_memory, job) | (
            {"context": job.context} if part == "decode" else {})


def markdown_report(report: dict[str, Any]) -> str:
    """One row per variant: parameters, training and decoding tokens/s with their ratio to the baseline."""
    s, rows = report["settings"], report["variants"]
    first = next(iter(rows.values()))
    contexts = [d["context"] for d in first.get("decode", [])]
    headers = ["variant", "params", "pattern"]
    if "train_tokens_per_s" in first:
        precision = report["metadata"].get("train_precision", "float32")  # (an older bench.json: fp32)
        headers.append(f"train tok/s (B={s['batch_size']}, T={s['seq_len']}, {precision})")
    headers += [f"decode tok/s after {c}" for c in contexts] + ([f"state @ {contexts[-1]}"] if contexts else [])
    memory_parts = list(first.get("memory", {}))
    headers += ["train memory" if part == "train" else f"prefill+decode memory @ {first['memory'][part]['context']}"
                for part in memory_parts]  # (the longest context, wherever --contexts puts it)

    def cells(name: str, row: dict) -> list[str]:
        out = [name, human(row["params"]), f"`{row['layer_pattern']}`"]
        if "train_tokens_per_s" in row:
            out.append(f"{row['train_tokens_per_s']:,.0f} ({row['train_ratio']:.2f}x)")
        out += [f"{d['tokens_per_s']:,.1f} ({d['ratio']:.2f}x)" for d in row.get("decode", [])]
        out += [f"{human(row['decode'][-1]['state_bytes'])}B"] if contexts else []
        return out + [f"{row['memory'][part]['above_idle_mib']:,.1f} MiB" for part in memory_parts]

    machine_facts = report["metadata"]["machine"]
    return "\n".join([
        f"# Speed on {report['metadata']['device']} ({machine_facts['cpu']}, {machine_facts['threads']} threads), "
        f"{s['model_size']}",
        "",
        f"Ratios are to {s['variants'][0]}, timed in the same alternating rounds (medians of {s['rounds']})"
        + (f"; decoding {s['decode_batch']} sequence(s), {s['new_tokens']} tokens per run." if contexts else ".")
        + (" Memory: the peak resident memory of each variant and part, alone in a fresh process, above what"
           " the process held before (after a first, unmeasured run)." if memory_parts else ""),
        "",
        markdown_table(headers, [cells(name, row) for name, row in rows.items()]),
    ])


def plot_bench(report: dict[str, Any], path: Path) -> Path:
    """Training tokens/s per variant (bars) beside decoding tokens/s against the context (lines) and
    each variant's peak memory per part (bars)."""
    rows = report["variants"]
    panels = [p for p in ("train", "decode") if p in report["settings"]["parts"]]
    panels += ["memory"] if report["settings"]["peak_memory"] else []
    fig, axes = pyplot().subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "train":
            ax.bar(list(rows), [r["train_tokens_per_s"] for r in rows.values()], color="tab:blue")
            ax.set(ylabel="training tokens/s", title="training")
            ax.tick_params(axis="x", rotation=30)
        elif panel == "memory":
            _memory_bars(ax, rows)
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


def _memory_bars(ax, rows: dict[str, dict]) -> None:
    """Grouped bars: each variant's peak memory in each part measured (:func:`peak_memory`)."""
    measured = next(iter(rows.values()))["memory"]
    width = 0.8 / len(measured)
    for i, (part, first) in enumerate(measured.items()):
        mib = [r["memory"][part]["above_idle_mib"] for r in rows.values()]
        label = part if part == "train" else f"prefill {first['context']} + decode"
        ax.bar([j + i * width for j in range(len(rows))], mib, width, label=label)
    ax.set_xticks([j + width * (len(measured) - 1) / 2 for j in range(len(rows))], list(rows), rotation=30)
    ax.set(ylabel="peak resident memory above idle (MiB)", title="memory")
    ax.legend()
