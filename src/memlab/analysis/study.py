"""The main job: train a set of variants under one budget, evaluate them, compare, write a report.

::

    memlab study --preset quick --out_dir study        # every registered variant, tiny, ~minutes
    memlab study --preset nano --variants baseline gdn gdn_hybrid --seeds 3

Layout of ``out_dir``::

    study.json                 the plan (preset, variants, seeds) and per-run timings
    data/                      the corpus's token shards, prepared once and shared by every run
    runs/<variant>-s<seed>/    a training run (memlab train) with eval/results_all.json
    compare/                   compare.md / .csv / .json and the side-by-side plots
    report.md                  the table, the verdicts, the memory ablation and the plots

A run that diverges (too many non-finite steps in a row) is left out, with every seed of its
variant, and the report names it; it is not trained again on a rerun (the same seed and budget).
If the baseline diverges there is nothing to compare with, and the study ends with that error.

Every run uses the same budget (and, seed for seed, the same training seeds), and every model is
evaluated on the same examples (the evaluation seed is fixed), so differences are paired by
example (over the seeds too, with ``--seeds`` N).  An interrupted study resumes: a
finished run is not retrained and an evaluated run is not re-evaluated; a run cut off mid-way
resumes from its newest checkpoint (``memlab train``'s own resume).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from memlab.cli_help import DefaultInDoc
from memlab.errors import MAX_SEED, MemlabError, check_at_least, check_dir_target, check_seed, choose
from memlab.eval.options import EvalOptions
from memlab.jsonfile import read_json_object, write_json
from memlab.locks import working_alone

if TYPE_CHECKING:
    from memlab.analysis.compare import Comparison

log = logging.getLogger(__name__)
PLAN_FILE, REPORT_FILE = "study.json", "report.md"


@dataclass(frozen=True)
class Preset:
    """A study budget: the model size, the training recipe and the evaluation sizes."""

    description: str
    size: str
    train: dict[str, Any]  # TrainConfig fields
    eval: dict[str, Any]  # EvalOptions fields


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        description="smoke scale: tiny models, 32k training tokens each (16 steps), small evaluation "
        "samples; about 20 s per variant on a 2-core CPU (5 to 6 minutes for all 15). It exercises the whole "
        "pipeline; its numbers are close to chance and noisy: use --preset nano for conclusions. Its 128-token "
        "sequences hold niah's one-fact level only (its 10+ distractors need 289 byte tokens; the curriculum "
        "warns so): the retrieval training teaches the question's format, not the search.",
        size="tiny",
        train=dict(
            tokenizer="byte", corpus="stdlib-docs", corpus_max_docs=300, val_fraction=0.05, seq_len=128, batch_size=16,
            total_tokens=32_768, alg_tokens=20_480, retrieval_tasks=["niah"], retrieval_ratio=0.3,
            lr=3e-3, warmup=2, eval_interval=0, eval_samples=5, eval_tokens=4096, save_interval=0, keep_last=1,
        ),
        eval=dict(
            samples=4, context_lengths=[384, 512], depths=[0.0, 0.5, 1.0], needle_samples=2,
            needle_tasks=["niah", "sniah1"], lm_tokens=4096, lm_context=128, ablation_context=192,
            ablation_samples=24, horizons=[16, 192], horizon_samples=4,
        ),
    ),
    "nano": Preset(
        description="the source study's nano scale: 10M algorithmic then 10M language tokens per variant "
        "(a GPU job: hours on a CPU).",
        size="nano",
        train=dict(
            seq_len=512, batch_size=16, total_tokens=20_000_000, alg_tokens=10_000_000, retrieval_tasks=["niah"],
            retrieval_ratio=0.1, eval_interval=1000, eval_samples=100, save_interval=1000,
        ),
        eval=dict(samples=100, context_lengths=[256, 512, 1024, 2048], needle_samples=20, lm_tokens=262_144,
                  ablation_context=512, ablation_samples=200, horizon_samples=50),
    ),
}


@dataclass
class StudyConfig:
    """Train, evaluate and compare a set of variants under one budget."""

    preset: str = "quick"
    """quick (tiny, minutes on a CPU) or nano (the source study's scale)"""
    out_dir: str = "study"
    variants: Annotated[list[str] | None, DefaultInDoc] = None
    """variants to train (default: every registered variant)"""
    seeds: int = 1
    """seeds per variant; more than one aggregates to mean and interval over seeds"""
    seed: int = 0
    """the first seed"""
    baseline: str = "baseline"
    """the variant the verdicts compare against"""
    progress: bool = True
    """show training progress bars"""


@dataclass
class StudyResult:
    out_dir: Path
    report: Path
    comparison: Comparison
    runs: list[Path] = field(default_factory=list)


def run_dir_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


def check_plan(cfg: StudyConfig, out: Path) -> dict[str, Any]:
    """The study's plan; refuses to resume a study in ``out`` that trained under another budget."""
    import memlab

    choose("study preset", cfg.preset, PRESETS)
    if cfg.variants is not None and not cfg.variants:  # (an empty shell variable had started every variant)
        raise MemlabError(f"--variants is empty; valid choices: {', '.join(memlab.list_variants())}")
    variants = cfg.variants if cfg.variants is not None else memlab.list_variants()
    for v in variants:
        choose("variant", v, memlab.list_variants())
    if len(set(variants)) != len(variants):
        raise MemlabError(f"--variants lists a variant twice: {' '.join(variants)}")
    check_at_least(cfg, ("seeds",), 1)
    check_seed(cfg)
    if cfg.seed + cfg.seeds - 1 > MAX_SEED:  # the runs' seeds count up from --seed
        raise MemlabError(f"--seed {cfg.seed} and --seeds {cfg.seeds} reach seeds above {MAX_SEED}")
    if cfg.baseline not in variants:
        raise MemlabError(f"the baseline {cfg.baseline!r} is not among the variants {variants}; add it to --variants")
    preset = PRESETS[cfg.preset]
    plan = {"preset": cfg.preset, "budget": {"size": preset.size, "train": preset.train}, "variants": list(variants),
            "seeds": list(range(cfg.seed, cfg.seed + cfg.seeds)), "baseline": cfg.baseline, "runs": {}}
    check_dir_target(out, "--out-dir")
    previous = out / PLAN_FILE
    if previous.is_file():  # the evaluation may change (runs are then re-evaluated), the training may not
        old = read_json_object(previous, "; choose another --out_dir")
        budget = json.loads(json.dumps(plan["budget"]))
        if old.get("budget") != budget:
            before = old.get("budget") if isinstance(old.get("budget"), dict) else {}
            a, b = before.get("train") or {}, budget["train"]
            changed = ["size"] * (before.get("size") != budget["size"]) + sorted(
                k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            raise MemlabError(f"{out} holds a study with preset {old.get('preset')!r} trained under another budget "
                              f"({', '.join(changed)} differ: the preset changed since, or another was asked for); "
                              "choose another --out_dir")
        runs = old.get("runs", {})
        plan["runs"] = {k: v for k, v in runs.items() if isinstance(v, dict)} if isinstance(runs, dict) else {}
    return plan


def eval_options(preset: Preset, variants: list[str]) -> tuple[EvalOptions, str | None]:
    """The preset's evaluation options, with every context capped at the shortest ``max_seq_len`` of
    the variants (every model is evaluated on the same examples); and a note when capped."""
    from memlab.config import build_config

    limits = {v: build_config(v, preset.size, **preset.train.get("model", {})).max_seq_len for v in variants}
    shortest = min(limits, key=limits.get)
    limit = limits[shortest]
    options = EvalOptions(**preset.eval)
    if max(*options.context_lengths, options.ablation_context, options.lm_context or 0) <= limit:
        return options, None
    options.context_lengths = [n for n in options.context_lengths if n <= limit] or [limit]
    options.ablation_context = min(options.ablation_context, limit)
    options.lm_context = min(options.lm_context or limit, limit)
    return options, f"evaluation contexts capped at {limit} tokens, the max_seq_len of `{shortest}`"


def evaluated(run_dir: Path, options: EvalOptions) -> bool:
    """Whether the run holds results of these options in this memlab's schema (an older schema's, measured
    otherwise, would be refused beside new ones by the comparison, so the run is evaluated again)."""
    from memlab.eval.schema import SCHEMA_VERSION, read_results

    path = run_dir / "eval" / "results_all.json"
    if not path.is_file():
        return False
    try:
        doc = read_results(path)
    except MemlabError:
        return False
    return doc["schema_version"] == SCHEMA_VERSION and doc["metadata"]["options"] == asdict(options)


def run_study(cfg: StudyConfig) -> StudyResult:
    """Train what is not trained, evaluate what is not evaluated, then compare and write the report;
    one study at a time in ``out_dir`` (two had each rewritten study.json from its own copy)."""
    out = Path(cfg.out_dir)
    with working_alone(out, "study", "--out_dir"):
        return _run_study(cfg, out)


def _run_study(cfg: StudyConfig, out: Path) -> StudyResult:
    from memlab.analysis.compare import aggregate, compare_rows, load_run
    from memlab.analysis.report import write_report
    from memlab.eval.hub import evaluate
    from memlab.train import TrainConfig, train
    from memlab.train.trainer import TrainingDiverged, run_status

    plan = check_plan(cfg, out)
    preset = PRESETS[cfg.preset]
    out.mkdir(parents=True, exist_ok=True)
    options, plan["note"] = eval_options(preset, plan["variants"])  # one seed: every model, the same examples
    if plan["note"]:
        log.warning(plan["note"])
    _write_plan(out, plan)  # the budget, before any work: a study interrupted in its first run keeps its guard
    started = time.perf_counter()
    run_dirs, diverged = [], {}  # diverged: run name -> its variant (which has no verdict then)
    for seed in plan["seeds"]:
        for variant in plan["variants"]:
            name = run_dir_name(variant, seed)
            run_dir = out / "runs" / name
            record = plan["runs"].setdefault(name, {})
            status = run_status(run_dir)
            if status == "diverged":  # (the same seed and budget would diverge again)
                log.warning("%s diverged in an earlier session: it is not trained again", name)
                diverged[name] = variant
                continue
            trained = status != "completed"
            if trained:  # afresh, or resumed from the run's newest checkpoint
                log.info("training %s", name)
                t0 = time.perf_counter()
                try:
                    train(TrainConfig(**preset.train, variant=variant, model_size=preset.size, seed=seed,
                                      output_dir=str(run_dir), data_dir=str(out / "data"), progress=cfg.progress))
                except TrainingDiverged as e:  # (one variant's collapse had ended the study, unreported)
                    log.warning("%s: %s; the study goes on without it", name, str(e).split(";")[0])
                    diverged[name] = variant
                    continue
                record["train_s"] = time.perf_counter() - t0
            if trained or not evaluated(run_dir, options):
                log.info("evaluating %s", name)
                t0 = time.perf_counter()
                evaluate(run_dir, "all", run_dir / "eval", options, progress=cfg.progress)
                record["eval_s"] = time.perf_counter() - t0
            _write_plan(out, plan)
            run_dirs.append((variant, run_dir))
    if cfg.baseline in diverged.values():
        runs = ", ".join(name for name, variant in diverged.items() if variant == cfg.baseline)
        raise MemlabError(f"the baseline {cfg.baseline} diverged ({runs}): there is nothing to compare the other "
                          "variants with; choose another --baseline or another --out_dir")
    plan["diverged"] = list(diverged)
    rows = [load_run(d) for variant, d in run_dirs if variant not in diverged.values()]
    comparison = compare_rows(aggregate(rows) if len(plan["seeds"]) > 1 else rows, out / "compare", cfg.baseline)
    plan["session_s"] = time.perf_counter() - started
    _write_plan(out, plan)
    report = write_report(out / REPORT_FILE, plan, preset, comparison, out)
    return StudyResult(out, report, comparison, [d for _, d in run_dirs])


def _write_plan(out: Path, plan: dict[str, Any]) -> None:
    write_json(out / PLAN_FILE, plan)
