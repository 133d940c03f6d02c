"""Comparing runs: one row per run (or per variant over seeds), and the source study's verdict.

A variant *wins* against the baseline when all four criteria hold (``Criteria``):

1. algorithmic accuracy (IID grid) at least ``min_alg_gain`` (5 points) above the baseline's;
2. better out-of-distribution accuracy (OOD grid) than the baseline;
3. training time (its steps, evaluation and checkpoints left out) at most ``max_time_ratio`` (2x) the baseline's
   (per token where the two trained other numbers of tokens; undecided between runs trained on another
   device kind, number of processes or precision);
4. no perplexity collapse: perplexity at most ``max_ppl_ratio`` (1.5x) the baseline's; a
   non-finite loss (perplexity written as null) in any seed is a collapse and fails it.

The accuracy criteria are decided on a 95% interval for the difference of the two accuracies.
Where both runs were scored on the same examples (their results keep per-example outcomes and the
examples' hashes agree: same tasks, grid, samples and evaluation seed), the interval pairs them:
Tango's score interval for paired proportions, which rests on the examples the two models
answer differently.  Two seed-averaged rows whose every seed was scored on those same examples
are paired by example as well: the interval adds both models' seed spread to the examples' noise
(:func:`memlab.eval.stats.seeds_and_examples_interval`).  Otherwise (results of an older memlab,
another evaluation seed, a seed-averaged row against one run) it is Newcombe's hybrid score
interval from the two Wilson intervals (for seed-averaged rows the same combination of their own
intervals, Zou and Donner's MOVER), which is conservative when the outcomes are positively
correlated, as two models' on one example set usually are.  A criterion
holds when the whole interval clears its threshold (at least +5 points; above 0 for OOD), fails
when the whole interval misses it, and is undecided (``None``, "within noise") otherwise.
Training time and perplexity are compared as measured (time has no interval).

A verdict is ``does not win`` when a criterion fails, ``wins`` when all hold, else
``incomplete`` when numbers are missing and ``within noise`` when an interval straddles a threshold.

One run per variant measures the examples' noise only: its verdict is about these two trained models,
not about the variants, whose training seeds also spread the accuracies.  (Two runs of one recipe
whose seeds spread OOD accuracy by about 4 points were called different in 35% of simulated
comparisons; seed-averaged rows of 2 or 3 seeds each, 2-4%.)  Train several seeds (``memlab study
--seeds 3``, ``memlab compare --aggregate-seeds``) before reading a verdict as the variant's.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from memlab.errors import MemlabError, check_dir_target
from memlab.eval.schema import read_results
from memlab.eval.stats import (
    mean_interval,
    parse_outcomes,
    seeds_and_examples_interval,
    tango_paired_interval,
    wilson_interval,
)
from memlab.jsonfile import read_json_object, write_text
from memlab.markdown import markdown_table
from memlab.paths import measured_model, resolve_model_dir, same_model_dir
from memlab.plotting import remove_stale_figures, staged_figures
from memlab.provenance import provenance

log = logging.getLogger(__name__)
FIGURES = ("compare.png", "compare_length.png", "compare_needle.png")  # what plot_comparison may write


@dataclass
class Metric:
    """A number with its 95% interval and what it rests on (examples, documents or seeds).

    ``collapsed`` counts the runs whose number was measured but is not finite (a diverged loss);
    a collapsed metric has no value and its ``n`` counts runs.
    """

    value: float | None = None
    ci95: list[float] | None = None
    n: int = 0
    collapsed: int = 0

    @classmethod
    def of_accuracy(cls, record: dict[str, Any] | None) -> Metric:
        if not record or record.get("accuracy") is None:
            return cls()
        return cls(record["accuracy"], record["ci95"], record["n"])


class Outcomes(NamedTuple):
    """An accuracy's per-example outcomes and the hash of the examples they were scored on."""

    examples_sha256: str
    correct: np.ndarray  # (n,) bool, in the order the hash covers


@dataclass
class Row:
    """What ``memlab compare`` shows of one run (or of one variant's seeds, ``runs`` > 1)."""

    name: str
    variant: str
    size: str
    params: int | None = None
    state_bytes: int | None = None  # per sequence at 2048 tokens
    algorithmic: Metric = field(default_factory=Metric)
    ood: Metric = field(default_factory=Metric)
    needle: Metric = field(default_factory=Metric)
    perplexity: Metric = field(default_factory=Metric)
    delta: Metric = field(default_factory=Metric)
    train_time_s: Metric = field(default_factory=Metric)
    runs: int = 1
    results: dict[str, Any] = field(default_factory=dict, repr=False)  # suite -> payload, for plots
    members: list[Row] = field(default_factory=list, repr=False)  # the runs an aggregated row averages
    measured_on: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)  # see check_comparable
    result_files: dict[str, str] = field(default_factory=dict)  # suite -> the results file it was read from
    recipe: dict[str, Any] = field(default_factory=dict, repr=False)  # the model and training, but the seed
    seed: int | None = None  # the training seed, when the run recorded it
    outcomes: dict[str, Outcomes] = field(default_factory=dict, repr=False)  # algorithmic / ood, where recorded
    trained_on: dict[str, Any] | None = field(default_factory=dict, repr=False)  # see training_time; None: mixed


METRICS = ("algorithmic", "ood", "needle", "perplexity", "delta", "train_time_s")
ACCURACIES = ("algorithmic", "ood", "needle")  # per-example records: their examples pool
RANGES = {"algorithmic": (0.0, 1.0), "ood": (0.0, 1.0), "needle": (0.0, 1.0), "delta": (-1.0, 1.0),
          "perplexity": (0.0, math.inf), "train_time_s": (0.0, math.inf)}  # where each metric can lie


@dataclass
class Criteria:
    min_alg_gain: float = 0.05
    max_time_ratio: float = 2.0
    max_ppl_ratio: float = 1.5


# ----------------------------------------------------------------------- loading


def eval_dir(run_dir: Path) -> Path:
    return run_dir / "eval" if (run_dir / "eval").is_dir() else run_dir


def load_payloads(
    run_dir: Path,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]], dict[str, str]]:
    """(suite -> newest payload, metadata of the newest file, suite -> what that payload was
    measured on, suite -> the file it was read from) from the run's results files of one model
    (a suite in two files, ``results_lm.json`` and an ``all``'s, is read from the later one): the
    one the run stands for (its best_model, else its newest checkpoint) where it was evaluated,
    else the newest file's.  The
    results of other checkpoints (an older memlab wrote them there too), or of weights saved over
    since (a best_model replaced by further training), are left out, with a warning."""
    files = sorted(eval_dir(run_dir).glob("results_*.json"))
    if not files:
        raise MemlabError(f"{run_dir} holds no results files (run `memlab eval --checkpoint {run_dir}` first)")
    docs = {path: read_results(path) for path in files}
    recorded = [doc["metadata"]["model_dir"] for doc in docs.values()]
    model_dir = _run_model_dir(run_dir)
    if model_dir is None or not any(same_model_dir(r, model_dir) for r in recorded):
        newest = max(docs.values(), key=lambda doc: doc["metadata"]["timestamp"])["metadata"]["model_dir"]
        model_dir = Path(newest or "")
    for path in [p for p, r in zip(docs, recorded) if r and not measured_model(docs[p]["metadata"], model_dir)]:
        log.warning("%s evaluated %s, another model of the run or weights saved over since: left out of the "
                    "comparison", path, docs.pop(path)["metadata"]["model_dir"])  # fmt: skip
    newest: dict[str, tuple[str, Any, dict[str, Any], Path]] = {}
    meta: dict[str, Any] = {}
    for path, doc in docs.items():
        stamp = doc["metadata"]["timestamp"]
        payloads = doc["results"] if doc["suite"] == "all" else {doc["suite"]: doc["results"]}
        for suite, payload in payloads.items():
            if suite not in newest or stamp >= newest[suite][0]:
                newest[suite] = (stamp, payload, doc["metadata"], path)
        if not meta or stamp >= meta["timestamp"]:
            meta = doc["metadata"]
    measured = {s: measured_on(s, p, m) for s, (_, p, m, _) in newest.items() if s in MEASURED_ON}
    files = {s: str(path) for s, (*_, path) in newest.items()}
    return {s: p for s, (_, p, _, _) in newest.items()}, meta, measured, files


def _run_model_dir(run_dir: Path) -> Path | None:
    """The model ``run_dir`` stands for (its best_model, else its newest checkpoint); None where it holds none."""
    try:
        return resolve_model_dir(run_dir, checksums=False)
    except MemlabError:
        return None


# What each compared suite's numbers were measured on, from its payload and its metadata: runs compared
# must agree on these (sample counts and seeds may differ: they change an interval, not what it estimates).
# The windows of a text are placed by their number (another number of them is other text), and haystack lengths
# and texts are counted in the tokenizer's tokens (a task grid counts elements).
MEASURED_ON = {
    "algorithmic": ("grids",),
    "longctx": ("tasks", "context_lengths", "depths", "retrieval_version"),
    "lm": ("corpus_request", "context_len", "tokens", "tokens_from"),
    "ablation": ("task", "context_len", "retrieval_version"),
}
# what a file that does not record the fact was measured on
UNRECORDED = {"retrieval_version": "memlab-retrieval-v1", "tokens_from": "prefix"}
MEASURED_WITH = {
    "algorithmic": ("grid_version",),
    "longctx": ("grid_version", "tokenizer_hash"),
    "lm": ("tokenizer_hash",),
    "ablation": ("tokenizer_hash",),
}


def measured_on(suite: str, payload: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The facts of :data:`MEASURED_ON` and :data:`MEASURED_WITH` for one payload, and a fixed ACT depth."""
    facts = {key: payload.get(key, UNRECORDED.get(key)) for key in MEASURED_ON[suite]}
    if isinstance(facts.get("tasks"), dict):  # longctx's results by task: compared by name
        facts["tasks"] = sorted(facts["tasks"])
    facts.update({key: meta.get(key) for key in MEASURED_WITH[suite]})
    facts["act_steps"] = (meta.get("options") or {}).get("act_steps")
    return facts


def check_comparable(rows: Sequence[Row]) -> None:
    """Refuse runs whose suites were measured on different things, in one line naming the first
    difference and the two results files; a fact a run's (older) results file does not record is not compared."""
    first: dict[str, Row] = {}  # suite -> the first run that has it
    for row in (m for r in rows for m in (r.members or [r])):
        for suite, facts in row.measured_on.items():
            reference_row = first.setdefault(suite, row)
            name, reference = reference_row.name, reference_row.measured_on[suite]
            for key, value in facts.items():
                if value is not None and reference.get(key) is not None and value != reference[key]:
                    outdated = key in UNRECORDED  # a version fact: one of the files is an older memlab's
                    advice = "evaluate both with this memlab" if outdated else "evaluate them with the same options"
                    raise MemlabError(
                        f"the {suite} results of {name} and {row.name} were measured on different {key} "
                        f"({_difference(reference[key], value)}; {_file(suite, reference_row)} vs "
                        f"{_file(suite, row)}): {advice}"
                    )


def _file(suite: str, row: Row) -> str:
    return row.result_files.get(suite, "its results")


def _difference(a: Any, b: Any, path: str = "") -> str:
    """Where two values first differ, briefly: the keys down to it (within dicts) and both sides there
    (two grids cut to their first 60 characters had read alike when one lacked its ood part)."""
    if isinstance(a, dict) and isinstance(b, dict):
        key = next(k for k in sorted(a.keys() | b.keys(), key=str) if a.get(k, _ABSENT) != b.get(k, _ABSENT))
        return _difference(a.get(key, _ABSENT), b.get(key, _ABSENT), f"{path}{key}.")
    return f"{path.rstrip('.')}{': ' if path else ''}{_brief(a)} vs {_brief(b)}"


_ABSENT = object()  # a key one side lacks


def _brief(value: Any, width: int = 60) -> str:
    if value is _ABSENT:
        return "absent"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def training_time(run_dir: Path) -> tuple[float | None, dict[str, Any]]:
    """The run's time in training steps over every resumed session (``train_time_s`` of its
    summary.json: evaluation, plots and checkpoints left out, which --eval-interval had made a
    criterion of; an older run's wall time, with a warning, where it records none), and what that
    time measured: ``tokens`` trained, ``device`` kind, ``processes`` and ``precision`` (those the
    summary records).  (None, {}) without a summary."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None, {}
    summary = read_json_object(path)
    seconds = summary.get("train_time_s")
    if not isinstance(seconds, (int, float)):
        seconds = summary.get("wall_time_s")
        if isinstance(seconds, (int, float)):
            log.warning("%s records no train_time_s (an older memlab): its training time is its wall time, "
                        "evaluation and checkpoints included", path)
    device = summary.get("device")
    setup = {"tokens": summary.get("tokens_seen"), "device": device.split(":")[0] if isinstance(device, str) else None,
             "processes": summary.get("world_size"), "precision": summary.get("precision")}
    seconds = float(seconds) if isinstance(seconds, (int, float)) else None
    return seconds, {k: v for k, v in setup.items() if v is not None}


def load_run(run_dir: str | Path) -> Row:
    """The comparison row of one run directory (or of a directory holding results files)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MemlabError(f"no such run directory: {run_dir}")
    payloads, meta, measured, files = load_payloads(run_dir)
    try:
        row = _row(run_dir, payloads, meta, measured)
    except (KeyError, TypeError, AttributeError, ValueError) as e:  # damaged by hand below the validated top level
        raise MemlabError(f"the results in {run_dir} do not follow the schema ({type(e).__name__}: {e})") from None
    row.result_files = files
    seconds, row.trained_on = training_time(run_dir)
    if seconds is not None:
        row.train_time_s = Metric(seconds, None, 1)
    return row


def _row(run_dir: Path, payloads: dict[str, Any], meta: dict[str, Any], measured: dict[str, dict[str, Any]]) -> Row:
    model = meta["model"]
    row = Row(
        name=run_dir.name,
        variant=model["variant"],
        size=model["size"],
        params=model["params"],
        state_bytes=model["state_bytes"].get("2048"),
        results=payloads,
        measured_on=measured,
    )
    row.recipe, row.seed = training_recipe(run_dir, meta)
    if "algorithmic" in payloads:
        summary = payloads["algorithmic"]["summary"]
        row.algorithmic, row.ood = Metric.of_accuracy(summary.get("iid")), Metric.of_accuracy(summary.get("ood"))
        row.outcomes = {name: o for name, split in (("algorithmic", "iid"), ("ood", "ood"))
                        if (o := recorded_outcomes(summary.get(split))) is not None}
    if "longctx" in payloads:
        row.needle = Metric.of_accuracy(payloads["longctx"]["overall"])
    if "lm" in payloads:
        lm = payloads["lm"]
        ppl = lm["perplexity"]
        if ppl is None or not math.isfinite(ppl):  # a non-finite loss: the run collapsed
            row.perplexity = Metric(n=1, collapsed=1)
        else:
            row.perplexity = Metric(ppl, lm.get("perplexity_ci95"), lm.get("documents", lm.get("windows", 0)))
    if "ablation" in payloads:
        d = payloads["ablation"]["delta"]
        row.delta = Metric(d["delta"], d["ci95"], d["n"])
    return row


def recorded_outcomes(record: dict[str, Any] | None) -> Outcomes | None:
    """The per-example outcomes an accuracy record keeps (None where it keeps none); a ValueError
    (reported as a schema error) where they are not 0s and 1s or disagree with its counts."""
    if not record or "outcomes" not in record or "examples_sha256" not in record:
        return None
    correct = parse_outcomes(record["outcomes"])
    if correct.size != record["n"] or int(correct.sum()) != record["correct"]:
        raise ValueError(f"outcomes that do not add up to n={record['n']} and correct={record['correct']}")
    return Outcomes(record["examples_sha256"], correct)


def training_recipe(run_dir: Path, meta: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """(what a run trained: its model config and, where config.yaml records it, its training options
    other than the seed and the operational ones, its data by the checksum of its shards rather than
    where they lie (a study moved, or seeds trained on two machines); its seed)."""
    from memlab.train.config import MODEL_FIELDS, OPERATIONAL_FIELDS, run_config_section

    train = run_config_section(run_dir, "train")
    left_out = {*OPERATIONAL_FIELDS, *MODEL_FIELDS, "seed", "data_dir"}  # the model: by its built config (the
    options = {k: v for k, v in train.items() if k not in left_out}  # overrides' form had differed by version)
    options["data"] = run_config_section(run_dir, "data").get("shards_sha256") or train.get("data_dir")
    return {"model": meta.get("config"), "train": options}, train.get("seed")


def check_seeds_of_one_model(variant: str, members: Sequence[Row]) -> None:
    """Refuse to average runs that are not seeds of one model and recipe (or that share a seed)."""
    first = members[0]
    for other in members[1:]:
        for part in ("model", "train"):
            a, b = first.recipe.get(part) or {}, other.recipe.get(part) or {}
            changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            if changed:
                raise MemlabError(f"--aggregate-seeds: {first.name} and {other.name} ({variant}) differ in more than "
                                  f"their seed ({part}: {', '.join(changed[:4])}); compare them apart")
    seeds = [m.seed for m in members if m.seed is not None]
    if len(set(seeds)) != len(seeds):
        raise MemlabError(f"--aggregate-seeds: runs of {variant} share a seed ({seeds}): they are not independent")


def aggregate(rows: Sequence[Row]) -> list[Row]:
    """One row per (variant, size): each metric's mean over the runs with a t interval over runs
    (for an accuracy whose runs were all scored on the same examples, one that adds those examples'
    noise, which a t interval over the runs misses: :func:`memlab.eval.stats.seeds_and_examples_interval`);
    the runs must be seeds of one model and training recipe (:func:`check_seeds_of_one_model`).

    A metric that any run lacks is missing, and one that any run collapsed is collapsed (with the
    count): no run is left out of a mean.  Intervals are clipped to the range a metric can take; a
    metric on which the seeds agree exactly (a t interval of zero width) keeps the uncertainty of
    its examples (:func:`_agreeing_seeds_interval`).
    The per-length and needle plots of an aggregated row show its first run's curves.
    An aggregated row, even of a single run, is named after its variant, or ``variant-size`` where the
    variant comes in several sizes.
    """
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.variant, row.size), []).append(row)
    sized = {variant for variant, size in groups if sum(v == variant for v, _ in groups) > 1}
    out = []
    for (variant, size), members in groups.items():
        name = f"{variant}-{size}" if variant in sized else variant
        if len(members) == 1:  # one seed: the same name as a mean over several (it had kept its run's)
            out.append(replace(members[0], name=name, members=members))  # (its run still named in plots)
            continue
        check_seeds_of_one_model(variant, members)
        setups = [m.trained_on for m in members]
        agg = Row(name=name, variant=variant, size=size,
                  params=members[0].params, state_bytes=members[0].state_bytes, runs=len(members),
                  results=members[0].results, members=members,
                  trained_on=setups[0] if all(s == setups[0] for s in setups) else None)
        for name in METRICS:
            metrics = [getattr(m, name) for m in members]
            collapsed = sum(m.collapsed for m in metrics)
            if collapsed or any(m.value is None for m in metrics):
                setattr(agg, name, Metric(None, None, len(members) if collapsed else 0, collapsed))
                continue
            stat = mean_interval([m.value for m in metrics])
            shared = seed_outcomes(agg, name) if name in ACCURACIES else None
            ci = seeds_and_examples_interval(shared[1]) if shared is not None else stat["ci95"]
            lo, hi = RANGES[name]
            ci = [min(max(v, lo), hi) for v in ci] if ci is not None and ci[0] is not None else None
            if shared is not None and ci is None:  # nothing varies: as seeds that agree exactly
                ci = [stat["mean"], stat["mean"]]
            if ci is not None and ci[0] == ci[1]:  # seeds that agree exactly: their examples' own uncertainty
                ci = _agreeing_seeds_interval(name, metrics) or ci
            setattr(agg, name, Metric(stat["mean"], ci, stat["n"]))
        out.append(agg)
    return out


def _agreeing_seeds_interval(name: str, metrics: list[Metric]) -> list[float] | None:
    """The interval of a metric on which every seed gave the same value (a t interval of zero
    width would overstate certainty): an accuracy's Wilson interval over one seed's examples (its
    fewest: seeds are scored on the same examples, which pooled had counted once per seed), else
    the seeds' own intervals averaged (a Delta's paired interval); None where the seeds have none."""
    if name in ACCURACIES:
        fewest = min(metrics, key=lambda m: m.n)
        return list(wilson_interval(round(fewest.value * fewest.n), fewest.n))
    if any(m.ci95 is None or m.ci95[0] is None for m in metrics):
        return None
    return [sum(m.ci95[0] for m in metrics) / len(metrics), sum(m.ci95[1] for m in metrics) / len(metrics)]


# ---------------------------------------------------------------------- verdicts


def difference_interval(a: Metric, b: Metric) -> list[float] | None:
    """95% interval of ``a - b`` for two independent estimates with their own intervals: Newcombe's
    hybrid score interval when these are Wilson intervals (MOVER, Zou and Donner 2008); None without both."""
    if a.value is None or b.value is None or not a.ci95 or not b.ci95 or None in (*a.ci95, *b.ci95):
        return None
    (a_lo, a_hi), (b_lo, b_hi), d = a.ci95, b.ci95, a.value - b.value
    return [d - math.hypot(a.value - a_lo, b_hi - b.value), d + math.hypot(a_hi - a.value, b.value - b_lo)]


def paired_outcomes(row: Row, base: Row, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The two runs' outcomes on accuracy ``name``, example by example, where both were scored on
    the same examples (None otherwise: unrecorded, other examples, or a seed-averaged row)."""
    a, b = row.outcomes.get(name), base.outcomes.get(name)
    if a is None or b is None or a.examples_sha256 != b.examples_sha256 or not a.correct.size == b.correct.size > 0:
        return None
    return a.correct, b.correct


def seed_outcomes(row: Row, name: str) -> tuple[str, np.ndarray] | None:
    """(examples hash, (S, n) outcomes) of accuracy ``name`` for a row averaging S >= 2 seeds that
    were all scored on the same examples; None otherwise."""
    found = [m.outcomes.get(name) for m in row.members] if len(row.members) > 1 else [None]
    if any(o is None for o in found) or len({(o.examples_sha256, o.correct.size) for o in found}) != 1:
        return None
    return found[0].examples_sha256, np.stack([o.correct for o in found]).astype(float)


def verdict(row: Row, base: Row, criteria: Criteria) -> dict[str, Any]:
    """``{"criteria": {name: {"passed", "detail"[, "interval", "paired"]}}, "verdict": "wins" | "does not win" |
    "within noise" | "incomplete"}``; an accuracy criterion's ``interval`` is that of the difference,
    ``paired`` whether it paired the examples both runs were scored on."""
    c: dict[str, dict[str, Any]] = {
        "algorithmic": _gain(row, base, "algorithmic", criteria.min_alg_gain, True, ""),
        "ood": _gain(row, base, "ood", 0.0, False, " OOD"),
        "train_time": _time_ratio(row, base, criteria.max_time_ratio),
    }
    if row.perplexity.collapsed:
        seeds = f" in {row.perplexity.collapsed} of {row.perplexity.n} seeds" if row.perplexity.n > 1 else ""
        c["perplexity"] = {"passed": False, "detail": f"collapsed (non-finite loss{seeds})"}
    else:
        c["perplexity"] = _ratio(row.perplexity, base.perplexity, criteria.max_ppl_ratio)
    passed = [v["passed"] for v in c.values()]
    if any(p is False for p in passed):
        overall = "does not win"
    elif all(p is True for p in passed):
        overall = "wins"
    elif any(v["passed"] is None and "interval" not in v for v in c.values()):
        overall = "incomplete"
    else:
        overall = "within noise"
    return {"criteria": c, "verdict": overall}


def _both(a: Metric, b: Metric) -> bool:
    return a.value is not None and b.value is not None and math.isfinite(a.value) and math.isfinite(b.value)


def _gain(row: Row, base: Row, name: str, limit: float, at_least: bool, what: str) -> dict[str, Any]:
    """Whether ``row``'s accuracy ``name`` beats the baseline's by ``limit`` (or more, ``at_least``): the
    difference's interval paired by example where both were scored on the same ones, else over seeds."""
    a, b = getattr(row, name), getattr(base, name)
    pairs = paired_outcomes(row, base, name)
    seeds = [seed_outcomes(row, name), seed_outcomes(base, name)]
    seeds = seeds if None not in seeds and seeds[0][0] == seeds[1][0] else None  # all on the same examples
    if pairs is not None:
        ci = list(tango_paired_interval(*pairs))
    elif seeds is not None:  # (where nothing varies, Tango's interval of one seed of each)
        ci = seeds_and_examples_interval(seeds[0][1], seeds[1][1]) or list(
            tango_paired_interval(seeds[0][1][0] > 0, seeds[1][1][0] > 0))
    else:
        ci = difference_interval(a, b) if _both(a, b) else None
    if ci is None:
        return {"passed": None, "detail": "missing"}
    lo, hi = (round(x, 9) for x in ci)
    clears = lo >= limit if at_least else lo > limit
    ok = True if clears else (False if (hi < limit if at_least else hi <= limit) else None)
    shown = f"{_pts(a.value - b.value)} [{_signed_pts(lo, limit)}, {_signed_pts(hi, limit)}]"
    rule = f"{'>=' if at_least else '>'} {100 * limit:+g} pts"
    state = {True: "passes", False: "fails", None: "within noise"}[ok]
    how = " paired" if pairs is not None else " paired over seeds" if seeds is not None else ""
    return {"passed": ok, "detail": f"{shown}{how}{what} vs {rule}: {state}", "interval": ci,
            "paired": pairs is not None or seeds is not None}


def _ratio(a: Metric, b: Metric, limit: float) -> dict[str, Any]:
    """Whether a / b stays within ``limit``."""
    if not (_both(a, b) and b.value > 0):
        return {"passed": None, "detail": "baseline collapsed" if b.collapsed else "missing"}
    r = a.value / b.value
    ok = round(r, 9) <= limit
    return {"passed": ok, "detail": f"{_beside(r, limit, 2)}x vs <= {limit:g}x: {'passes' if ok else 'fails'}"}


def _time_ratio(row: Row, base: Row, limit: float) -> dict[str, Any]:
    """The training times' ratio, per token where the two trained other numbers of tokens; none
    between runs trained on another device kind, number of processes or precision."""
    a, b = row.trained_on, base.trained_on
    if a is None or b is None:
        mixed = row.name if a is None else base.name
        return {"passed": None, "detail": f"not comparable: the seeds of {mixed} trained on different setups"}
    differ = [k for k in ("device", "processes", "precision") if k in a and k in b and a[k] != b[k]]
    if differ:
        return {"passed": None, "detail": "not comparable: trained with " + ", ".join(
            f"{k} {a[k]} vs {b[k]}" for k in differ)}
    if a.get("tokens") and b.get("tokens") and a["tokens"] != b["tokens"]:
        per_token = [Metric(None if m.value is None else m.value / t, None, m.n)
                     for m, t in ((row.train_time_s, a["tokens"]), (base.train_time_s, b["tokens"]))]
        out = _ratio(*per_token, limit)
        return {**out, "detail": out["detail"] + f" (per token: {a['tokens']:,} vs {b['tokens']:,} trained)"}
    return _ratio(row.train_time_s, base.train_time_s, limit)


def pick_baseline(rows: Sequence[Row], baseline: str | None) -> Row:
    """The row named ``baseline`` (run name or variant); default: the ``baseline`` variant, else the first."""
    if baseline is None:
        return next((r for r in rows if r.variant == "baseline"), rows[0])
    for row in rows:
        if baseline in (row.name, row.variant):
            return row
    names = sorted({r.name for r in rows} | {r.variant for r in rows})  # (variants are taken too)
    raise MemlabError(f"unknown baseline {baseline!r}; valid choices (a run or a variant): {', '.join(names)}")


# ------------------------------------------------------------------------ tables

COLUMNS = ("run", "variant", "params", "state B@2k", "alg acc %", "OOD acc %", "needle acc %", "ppl",
           "Delta pts", "train s", "verdict")


def _pts(x: float) -> str:
    return f"{100 * x:+.1f} pts"


def _beside(x: float, limit: float, digits: int, sign: str = "") -> str:
    """``x`` to ``digits`` decimals, or as many more as it takes not to print as ``limit`` when it is not it."""
    d = digits
    while d < digits + 8 and not math.isclose(x, limit, abs_tol=1e-9) and f"{x:{sign}.{d}f}" == f"{limit:{sign}.{d}f}":
        d += 1
    return f"{x:{sign}.{d}f}"


def _signed_pts(x: float, limit: float) -> str:
    """A difference in points, with the decimals that show on which side of ``limit`` it lies."""
    return _beside(100 * x, 100 * limit, 1, "+")


def _fmt(m: Metric, scale: float = 1.0, digits: int = 1) -> str:
    if m.collapsed:
        return "collapsed" + (f" ({m.collapsed}/{m.n})" if m.n > 1 else "")
    if m.value is None:
        return "-"
    text = f"{scale * m.value:.{digits}f}"
    if m.ci95 and None not in m.ci95 and m.ci95[0] != m.ci95[1]:
        text += f" [{scale * m.ci95[0]:.{digits}f}, {scale * m.ci95[1]:.{digits}f}]"
    return text


def table_rows(rows: Sequence[Row], verdicts: dict[str, dict[str, Any]]) -> list[list[str]]:
    from memlab.analysis.info import human

    return [
        [
            r.name + (f" (x{r.runs})" if r.runs > 1 else ""),
            r.variant,
            human(r.params) if r.params is not None else "-",
            human(r.state_bytes) if r.state_bytes is not None else "-",
            _fmt(r.algorithmic, 100),
            _fmt(r.ood, 100),
            _fmt(r.needle, 100),
            _fmt(r.perplexity, 1, 2),
            _fmt(r.delta, 100),
            _fmt(r.train_time_s, 1, 0),
            verdicts[r.name]["verdict"],
        ]
        for r in rows
    ]


def markdown(rows: Sequence[Row], verdicts: dict[str, dict[str, Any]]) -> str:
    return markdown_table(COLUMNS, table_rows(rows, verdicts))


def terminal(rows: Sequence[Row], verdicts: dict[str, dict[str, Any]]) -> str:
    cells = [list(COLUMNS), *table_rows(rows, verdicts)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def criteria_markdown(rows: Sequence[Row], verdicts: dict[str, dict[str, Any]], base: Row, criteria: Criteria) -> str:
    head = (f"Verdicts against `{base.name}` (wins = algorithmic >= +{100 * criteria.min_alg_gain:g} pts, better OOD, "
            f"training time <= {criteria.max_time_ratio:g}x, perplexity <= {criteria.max_ppl_ratio:g}x; an accuracy "
            "criterion holds when the 95% interval of the difference, shown in brackets, clears its threshold; "
            "\"paired\" where both runs were scored on the same examples; each verdict is its own test at 95%, "
            "uncorrected for comparing several variants with one baseline; "
            + ("the intervals count the spread of the training seeds" if all(len(r.members) > 1 for r in rows) else
               "where a variant has one run, its interval measures the examples' noise, not the spread of training "
               "seeds: train several seeds before reading its verdict as the variant's")
            + "):\n\n")
    def mark(c: dict[str, Any]) -> str:  # an undecided criterion has an interval; a missing one none
        return {True: "yes", False: "no", None: "?" if "interval" in c else "n/a"}[c["passed"]]

    table = markdown_table(
        ["run", "algorithmic", "OOD", "training time", "perplexity", "verdict"],
        ([r.name, *(f"{mark(c)} ({c['detail']})" for c in verdicts[r.name]["criteria"].values()),
          f"**{verdicts[r.name]['verdict']}**"] for r in rows if verdicts[r.name]["verdict"] != "baseline"),
    )
    return head + table


def write_csv(path: Path, rows: Sequence[Row], verdicts: dict[str, dict[str, Any]]) -> None:
    header = ["run", "variant", "size", "runs", "params", "state_bytes_2048"]
    for name in METRICS:
        header += [name, f"{name}_ci_low", f"{name}_ci_high", f"{name}_n", f"{name}_collapsed"]
    header += ["verdict"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")  # (the file's line ends are the platform's, as write_text's)
    writer.writerow(header)
    for r in rows:
        line: list[Any] = [r.name, r.variant, r.size, r.runs, r.params, r.state_bytes]
        for name in METRICS:
            m: Metric = getattr(r, name)
            line += [m.value, *(m.ci95 or [None, None]), m.n, m.collapsed]
        writer.writerow([*line, verdicts[r.name]["verdict"]])
    write_text(path, text.getvalue())


# ------------------------------------------------------------------------- entry


@dataclass
class Comparison:
    rows: list[Row]
    baseline: str
    criteria: Criteria
    verdicts: dict[str, dict[str, Any]]
    files: list[Path]
    terminal: str


def compare_rows(
    rows: list[Row], out_dir: str | Path | None, baseline: str | None = None, criteria: Criteria | None = None,
    plots: bool = True,
) -> Comparison:
    """Verdicts, tables and plots of already-loaded rows; files go to ``out_dir`` when given."""
    if not rows:
        raise MemlabError("nothing to compare: give at least one run directory")
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise MemlabError(f"run names must be unique, got {names}: a run is named by its directory, so give the "
                          "runs that share a name directories (or links) of their own names")
    check_comparable(rows)
    criteria = criteria or Criteria()
    for name in ("max_time_ratio", "max_ppl_ratio", "min_alg_gain"):  # (inf had crashed after writing half the files)
        value, low = getattr(criteria, name), -math.inf if name == "min_alg_gain" else 0
        if not low < value < math.inf:
            raise MemlabError(f"--{name.replace('_', '-')} must be a finite number{' > 0' if low == 0 else ''}, "
                              f"got {value} (a large one switches a criterion off)")
    if out_dir is not None:
        check_dir_target(out_dir, "--out-dir")
    base = pick_baseline(rows, baseline)
    verdicts = {r.name: verdict(r, base, criteria) for r in rows}
    verdicts[base.name] = {"criteria": {}, "verdict": "baseline"}
    files: list[Path] = []
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with staged_figures(out) as staging:  # the files and figures all written there, then moved in
            figures = []
            if plots:
                from memlab.analysis.compare_plots import plot_comparison  # (matplotlib: slow to import)

                figures = plot_comparison(rows, staging)
            write_text(staging / "compare.md",  # (a full disk had left a new compare.md beside an old compare.json)
                       markdown(rows, verdicts) + "\n\n" + criteria_markdown(rows, verdicts, base, criteria) + "\n")
            write_csv(staging / "compare.csv", rows, verdicts)
            data = {"metadata": provenance(), "baseline": base.name, "criteria": asdict(criteria),
                    "verdicts": verdicts, "rows": [{k: v for k, v in asdict(r).items() if k not in
                                                    ("results", "members", "measured_on", "recipe", "outcomes")}
                                                   for r in rows]}
            write_text(staging / "compare.json", json.dumps(data, indent=2, allow_nan=False, default=str) + "\n")
        files += [out / "compare.md", out / "compare.csv", out / "compare.json", *(out / f.name for f in figures)]
        remove_stale_figures([out / name for name in FIGURES], files)
    return Comparison(rows, base.name, criteria, verdicts, files, terminal(rows, verdicts))


def compare(
    run_dirs: Sequence[str | Path], out_dir: str | Path | None = None, baseline: str | None = None,
    aggregate_seeds: bool = False, criteria: Criteria | None = None, plots: bool = True,
) -> Comparison:
    """Load the runs, optionally average seeds per variant, and compare them against the baseline."""
    rows = [load_run(d) for d in run_dirs]
    return compare_rows(aggregate(rows) if aggregate_seeds else rows, out_dir, baseline, criteria, plots)


__all__ = ["Comparison", "Criteria", "Metric", "Row", "aggregate", "compare", "compare_rows",
           "load_run", "verdict"]
