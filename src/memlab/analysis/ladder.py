"""A scaling ladder: train each variant at several sizes under one recipe, then fit and judge.

Sizes are size presets (``tiny``, ``nano``, ``125M``, ...), width/depth pairs (``d256l4``) or
target parameter counts (``1M``, ``2.5M``, ``300K``, ``1.3B``; a preset of the same name wins).
A target count N is met by the **size rule**: among widths d (multiples of 64, one head per 64
dimensions) and depths l whose aspect ratio d / l lies within [aspect / 2, 2 * aspect]
(default aspect 32, as in the source ladder 1M = d128l4, 10M = d256l8), pick the pair that
minimises ``|log(count / N)| + 0.1 * |log((d / l) / aspect)|``, where ``count`` is the
variant's *non-embedding* parameter count (estimated from shallow builds on the meta device,
then measured exactly for the best candidates).
N counts non-embedding parameters (as in Kaplan et al., 2020): the vocabulary then does not
move the ladder.  Counts are of the model the recipe builds: its ``model`` overrides
(``gdn.expand_v``, ``layer_pattern``, ...) apply to every count, to the size rule and to a
``--tokens-per-param`` budget.

Every rung is a training run ``<out_dir>/<variant>/<size>``; a finished run with the same
recipe is not retrained, an unfinished one resumes.  All rungs share one data directory (one
tokenizer).  Each rung's loss is the mean validation loss of its final model over the same
validation windows the trainer uses, kept per document (the split's EOS ids end them): the fit's
bootstrap resamples whole documents, the same for every rung, since the consecutive windows of one
document are correlated (resampling windows had given intervals narrower than the evaluation noise).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memlab.analysis.info import human
from memlab.config import SIZES, ModelConfig, build_config, size_fields
from memlab.errors import MemlabError, check_dir_target
from memlab.eval.lm import document_losses
from memlab.eval.stats import document_bootstrap
from memlab.jsonfile import write_json, write_text
from memlab.locks import working_alone
from memlab.markdown import markdown_table
from memlab.models.lm import LanguageModel
from memlab.plotting import staged_figures
from memlab.provenance import provenance

log = logging.getLogger(__name__)
MIN_BOOTSTRAP = 200  # replicates for a 95% percentile interval

_COUNT = re.compile(r"^(\d+(?:\.\d+)?)([KMB])$", re.IGNORECASE)
_UNITS = {"K": 1e3, "M": 1e6, "B": 1e9}
MAX_DEPTH = 128


# ---------------------------------------------------------------------- sizes


def parse_param_count(label: str) -> float | None:
    """``"10M"`` -> 1e7, ``"2.5k"`` -> 2500; None for anything else."""
    m = _COUNT.match(label)
    return float(m.group(1)) * _UNITS[m.group(2).upper()] if m else None


Overrides = dict[str, Any] | None  # a recipe's model overrides (TrainConfig.model)


def _config(variant: str, size: str, model: Overrides = None) -> ModelConfig:
    """The config of ``variant`` at ``size`` with the recipe's ``model`` overrides."""
    return build_config(variant, size, **(model or {}))


def non_embedding_params(variant: str, size: str, model: Overrides = None) -> int:
    """The variant's non-embedding parameter count at ``size`` with the ``model`` overrides."""
    return _non_embedding_params(variant, size, json.dumps(model or {}, sort_keys=True))


@cache
def _non_embedding_params(variant: str, size: str, model_json: str) -> int:
    with torch.device("meta"):  # (no memory: the count alone)
        return LanguageModel(_config(variant, size, json.loads(model_json))).num_params(non_embedding=True)


def size_for_params(variant: str, target: float, aspect: float = 32.0, model: Overrides = None) -> str:
    """The ``dWlL`` size of ``variant`` closest to ``target`` non-embedding parameters (the size rule).

    Every candidate's count is first estimated as linear in depth from two shallow builds per
    width (one and two periods of the layer pattern); the best few estimates are then measured
    exactly on full builds, and the rule picks among those.
    """
    min_depth = _min_depth(variant, model)
    period = len(_config(variant, f"d64l{min_depth}", model).layer_pattern)

    def score(count: float, d: int, depth: int) -> float:
        return abs(math.log(count / target)) + 0.1 * abs(math.log(d / depth / aspect))

    estimates: list[tuple[float, int, int]] = []
    for d in range(64, 64 * 1024, 64):
        depths = range(max(min_depth, math.ceil(d / (2 * aspect))), min(MAX_DEPTH, math.floor(2 * d / aspect)) + 1)
        if not depths:
            continue
        one, two = (non_embedding_params(variant, f"d{d}l{depth}", model) for depth in (period, 2 * period))
        per_layer = (two - one) / period
        counts = [(one + per_layer * (depth - period), depth) for depth in depths]
        if min(c for c, _ in counts) > 4 * target:  # wider only grows
            break
        estimates += [(score(c, d, depth), d, depth) for c, depth in counts if c > 0]
    if not estimates:
        raise MemlabError(f"no width/depth pair of {variant} comes near {target:.3g} non-embedding parameters")
    shortlist = sorted(estimates)[:4]
    exact = [(score(non_embedding_params(variant, f"d{d}l{depth}", model), d, depth), d, depth)
             for _, d, depth in shortlist]
    _, d, depth = min(exact)
    return f"d{d}l{depth}"


def _min_depth(variant: str, model: Overrides = None) -> int:
    """The fewest layers that hold every kind of layer of ``variant`` (a hybrid needs two)."""
    for depth in range(1, MAX_DEPTH + 1):
        try:
            _config(variant, f"d64l{depth}", model)
            return depth
        except MemlabError:
            continue
    raise MemlabError(f"{variant} builds at no depth up to {MAX_DEPTH} layers")


def resolve_size(variant: str, label: str, aspect: float = 32.0, model: Overrides = None) -> str:
    """A size the model builder accepts: presets and ``dWlL`` as given, parameter counts by the size rule."""
    if label in SIZES or parse_param_count(label) is None:
        try:
            size_fields(label)
        except MemlabError:
            raise MemlabError(
                f"unknown size {label!r}; valid: a preset ({', '.join(SIZES)}), a width/depth pair like d256l4, "
                "or a parameter count like 1M, 2.5M, 300K"
            ) from None
        _config(variant, label, model)  # a pair that cannot be built (heads do not divide) fails here
        return label
    return size_for_params(variant, parse_param_count(label), aspect, model)  # type: ignore[arg-type]


# ----------------------------------------------------------------------- rungs


@dataclass
class Rung:
    """One trained point of the ladder."""

    variant: str
    label: str  # the size as asked for ("10M")
    size: str  # the size trained ("d320l10")
    run_dir: str
    params: int
    non_embedding_params: int
    tokens: int  # tokens trained on
    flops_per_token: float  # training FLOPs per token at the recipe's sequence length
    loss: float  # mean validation loss of the final model
    document_losses: list[float] = field(default_factory=list)  # mean NLL per validation document
    document_tokens: list[int] = field(default_factory=list)  # its predicted tokens

    @property
    def flops(self) -> float:
        return self.flops_per_token * self.tokens

    @property
    def loss_ci95(self) -> list[float | None]:
        """Bootstrap interval of the loss over whole documents (``[None, None]`` under ``MIN_DOCUMENTS``)."""
        tokens = np.asarray(self.document_tokens, dtype=float)
        return document_bootstrap(np.asarray(self.document_losses) * tokens, tokens)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "flops": self.flops, "loss_ci95": list(self.loss_ci95)}


def plan(
    variants: list[str], labels: list[str], aspect: float = 32.0, model: Overrides = None
) -> dict[str, list[tuple[str, str]]]:
    """Per variant, the (label, size) pairs to train with the ``model`` overrides; fails early on bad
    names and on too few sizes."""
    from memlab.config import list_variants
    from memlab.errors import choose

    for variant in variants:  # (a misspelt variant first: its fix is not another size)
        choose("variant", variant, list_variants())
        shape = _config(variant, "d64l2", model)
        if (shape.d_model, shape.n_layers) != (64, 2):  # (sizes had been "the same model; drop one")
            raise MemlabError(f"{variant} has a fixed shape (d{shape.d_model} x {shape.n_layers} layers, whatever the "
                              "size): it cannot be scaled")
    for label in labels:  # (a misspelt size next: "needs >= 3 sizes" had named it among the sizes counted)
        resolve_size(variants[0], label, aspect, model)
    if len(labels) < 3:
        raise MemlabError(f"a fit of L = a * N^-alpha + c needs >= 3 sizes, got {len(labels)}: {', '.join(labels)}")
    out = {}
    for variant in variants:
        sizes = [(label, resolve_size(variant, label, aspect, model)) for label in labels]
        counts: dict[int, str] = {}
        for label, size in sizes:
            n = non_embedding_params(variant, size, model)
            if n in counts:
                raise MemlabError(f"sizes {counts[n]} and {label} of {variant} are the same model ({size}); drop one")
            counts[n] = label
            if TRAINING_BYTES_PER_PARAM * n > machine_memory_bytes():  # (it had trained the smaller ones first)
                raise MemlabError(
                    f"size {label} of {variant} ({size}, {human(n)} parameters) needs over "
                    f"{human(TRAINING_BYTES_PER_PARAM * n)}B to train, more than this machine's "
                    f"{human(machine_memory_bytes())}B; choose smaller sizes"
                )
        out[variant] = sizes
    return out


TRAINING_BYTES_PER_PARAM = 16  # float32 weights, gradients and AdamW's two moments


def machine_memory_bytes() -> int:
    """The memory a run here can use at most: the host's RAM and every GPU's."""
    try:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # (no sysconf on Windows: nothing to check against)
        return sys.maxsize
    gpus = range(torch.cuda.device_count()) if torch.cuda.is_available() else ()
    return host + sum(torch.cuda.get_device_properties(i).total_memory for i in gpus)


def train_rung(recipe, variant: str, label: str, size: str, tokens: int, out_dir: Path) -> Rung:
    """Train (or resume, or reuse) one rung and measure its validation loss per window."""
    from memlab.train.trainer import CONFIG_FILE as RUN_CONFIG
    from memlab.train.trainer import SUMMARY_FILE, read_run_config, run_completed, train

    run_dir = out_dir / variant / label
    cfg = dataclasses.replace(
        recipe, variant=variant, model_size=size, total_tokens=tokens, output_dir=str(run_dir),
        resume=False, overwrite=False,
    )
    summary_file = run_dir / SUMMARY_FILE
    changes = cfg.changes_from(read_run_config(run_dir)) if (run_dir / RUN_CONFIG).is_file() else ""
    if changes:  # a rung of another recipe or budget: memlab scale has no --resume or --overwrite to settle it
        raise MemlabError(f"the {variant} {label} rung in {run_dir} was trained otherwise ({changes}); "
                          f"use another --out-dir, or delete {run_dir} to train it again")
    if run_completed(run_dir):
        log.info("%s %s: finished run in %s, not retrained", variant, label, run_dir)
    else:
        train(cfg)  # afresh, or resumed from its newest checkpoint
    summary = json.loads(summary_file.read_text())
    if summary.get("status") != "completed":
        raise MemlabError(f"the run {run_dir} ended {summary.get('status')!r}; see its metrics.jsonl")
    model, doc_nll, doc_tokens = final_model_losses(run_dir, cfg)
    return Rung(
        variant=variant, label=label, size=size, run_dir=str(run_dir), params=model.num_params(),
        non_embedding_params=model.num_params(non_embedding=True), tokens=int(summary["tokens_seen"]),
        flops_per_token=model.estimate_flops_per_token(cfg.seq_len),
        loss=float(doc_nll.sum() / doc_tokens.sum()), document_losses=(doc_nll / doc_tokens).tolist(),
        document_tokens=doc_tokens.tolist(),
    )


@torch.no_grad()
def final_model_losses(run_dir: Path, cfg) -> tuple[LanguageModel, np.ndarray, np.ndarray]:
    """The run's final model, and its summed next-token loss and predicted tokens (D,), (D,) on each
    document of the validation windows the trainer reads."""
    from memlab.data.shards import TokenShards
    from memlab.paths import latest_whole_checkpoint

    checkpoint = latest_whole_checkpoint(run_dir)
    if checkpoint is None:
        raise MemlabError(f"{run_dir} has no whole checkpoint to measure")
    model = LanguageModel.load(checkpoint).eval()
    val = TokenShards(cfg.data_dir, "val", verify=False)
    return model, *document_losses(model, val, cfg.batch_size, cfg.seq_len, cfg.eval_tokens // cfg.seq_len)


# ---------------------------------------------------------------------- ladder


RUNG_SIZE_FIELDS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")  # what a rung's size decides


def with_prepared_data(recipe, out_dir: Path):
    """``recipe`` with its data prepared once for every rung (one tokenizer; in ``out_dir/data`` unless it
    names a directory), refused before any rung trains if its validation split holds no window."""
    from memlab.train.data import build_data
    from memlab.train.distributed import Dist

    recipe = dataclasses.replace(recipe, data_dir=recipe.data_dir or str(out_dir / "data"))
    data = build_data(recipe, Dist(), None)
    if data.val is None:  # (the first rung had trained, then its loss could not be measured)
        raise MemlabError(f"the validation split of {data.data_dir} holds no window of --seq-len {recipe.seq_len} "
                          "tokens, and a ladder is fitted to validation loss; raise val_fraction in the --config "
                          "recipe, or give more data")
    return recipe


def default_recipe():
    """The trainer's defaults for language modelling alone: no algorithmic phase, no task evaluation."""
    from memlab.train.config import TrainConfig

    return TrainConfig(alg_tokens=0, alg_tasks=[])


def run_ladder(
    variants: list[str],
    labels: list[str],
    recipe,
    out_dir: str | Path,
    tokens: int | None = None,
    tokens_per_param: float | None = None,
    aspect: float = 32.0,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Train the ladder, fit L(N) and L(C) per variant, write scaling.json/.md/.png; returns the report."""
    from memlab.analysis.scaling import plot_ladder

    _check_ladder(recipe, tokens, tokens_per_param, aspect, n_bootstrap)
    check_dir_target(out_dir, "--out-dir")
    out_dir = Path(out_dir)
    with working_alone(out_dir, "scaling ladder", "--out-dir"):  # (two had each rewritten scaling.json)
        plans = plan(variants, labels, aspect, recipe.model)
        recipe = with_prepared_data(recipe, out_dir)
        report: dict[str, Any] = {
            "metadata": {**provenance(), "seed": seed},
            "recipe": recipe.to_dict(),
            "tokens": tokens,
            "tokens_per_param": tokens_per_param,
            "size_rule": {"aspect": aspect, "params": "non-embedding"},
            "variants": {},
        }
        for variant, sizes in plans.items():
            rungs = []
            for label, size in sizes:
                n = non_embedding_params(variant, size, recipe.model)
                budget = tokens or max(1, round(tokens_per_param * n))  # type: ignore[operator]
                rungs.append(train_rung(recipe, variant, label, size, budget, out_dir))
            report["variants"][variant] = _fitted(rungs, n_bootstrap, seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        with staged_figures(out_dir) as staging:  # each file whole, and the figure moved in with the rest
            plot_ladder(report, staging / "scaling.png")
            write_json(out_dir / "scaling.json", report)
            write_text(out_dir / "scaling.md", markdown_report(report))
        return report


def _check_ladder(recipe, tokens: int | None, tokens_per_param: float | None, aspect: float,
                  n_bootstrap: int) -> None:
    """Refuse, before any rung trains, a budget, recipe or fit that the ladder cannot use."""
    if (tokens is None) == (tokens_per_param is None):
        raise MemlabError("give exactly one of --tokens N or --tokens-per-param R")
    if (tokens is not None and tokens < 1) or (tokens_per_param is not None and not 0 < tokens_per_param < math.inf):
        raise MemlabError("--tokens and --tokens-per-param must be positive (and finite)")
    if recipe.eval_tokens < recipe.seq_len:
        raise MemlabError(f"--eval-tokens {recipe.eval_tokens} is less than one window of --seq-len {recipe.seq_len}")
    if recipe.corpus == "none":
        raise MemlabError("a scaling ladder is fitted to validation loss: the recipe needs a corpus, not --corpus none")
    if not aspect > 0:
        raise MemlabError(f"--aspect (the width/depth ratio of the size rule) must be > 0, got {aspect}")
    if n_bootstrap != 0 and n_bootstrap < MIN_BOOTSTRAP:
        raise MemlabError(f"--bootstrap must be 0 (no interval) or >= {MIN_BOOTSTRAP} (for the 2.5 and 97.5 "
                          f"percentiles), got {n_bootstrap}")
    sized = sorted(k for k in recipe.model if k.split(".")[0] in RUNG_SIZE_FIELDS)
    if sized:  # (every rung had trained the one model they set, and the fit was refused at the end)
        raise MemlabError(f"the recipe's model sets {', '.join(sized)}, which each rung's size sets; remove "
                          f"{'it' if len(sized) == 1 else 'them'} from --config")


def _fitted(rungs: list[Rung], n_bootstrap: int, seed: int) -> dict[str, Any]:
    """One variant's rungs with L(N) and L(C) fitted to them (documents resampled) and the verdict."""
    from memlab.analysis.scaling import fit_power_law, verdict

    batches, doc_tokens = [r.document_losses for r in rungs], rungs[0].document_tokens  # the same documents
    losses = [r.loss for r in rungs]
    by_params = fit_power_law([r.non_embedding_params for r in rungs], losses, batches, n_bootstrap, seed, doc_tokens)
    by_compute = fit_power_law([r.flops for r in rungs], losses, batches, n_bootstrap, seed, doc_tokens)
    return {
        "rungs": [r.to_dict() for r in rungs],
        "fit_params": by_params.to_dict(),
        "fit_compute": by_compute.to_dict(),
        "verdict": dataclasses.asdict(verdict(by_params)),
    }


def _interval(ci: list[float | None]) -> str:
    return "" if ci[0] is None else f" [{ci[0]:.4f}, {ci[1]:.4f}]"


def markdown_report(report: dict[str, Any]) -> str:
    """The ladder's table and fits, one section per variant."""
    budget = (f"{report['tokens']:,} tokens per rung" if report["tokens"]
              else f"{report['tokens_per_param']} tokens per non-embedding parameter")
    budget += " asked for (a rung trains whole steps: its tokens column)"
    lines = ["# Scaling ladder", "", f"Recipe: {budget}; N = non-embedding parameters; C = training FLOPs.", ""]
    for variant, v in report["variants"].items():
        lines += [f"## {variant}", "", markdown_table(
            ["size", "trained as", "N", "params", "tokens", "C (FLOPs)", "val loss [95% CI]", "documents"],
            ([r["label"], r["size"], f"{r['non_embedding_params']:,}", f"{r['params']:,}", f"{r['tokens']:,}",
              f"{r['flops']:.3g}", f"{r['loss']:.4f}" + _interval(r["loss_ci95"]),
              len(r["document_losses"])] for r in v["rungs"]),
        )]
        fp, fc = v["fit_params"], v["fit_compute"]
        lines += [
            "",
            f"- L(N) = {fp['a']:.4g} N^-{fp['alpha']:.4f} + {fp['c']:.4f} (rmse {fp['rmse']:.2g})",
            f"- L(C) = {fc['a']:.4g} C^-{fc['alpha']:.4f} + {fc['c']:.4f} (rmse {fc['rmse']:.2g})",
            f"- verdict: {v['verdict']['text']}",
            "",
        ]
    return "\n".join(lines)
