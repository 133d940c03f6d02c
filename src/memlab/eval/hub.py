"""The evaluation hub: suites registered by name, one results file per call.

::

    from memlab.eval import evaluate, EvalOptions
    doc = evaluate("runs/tiny_gdn", suite="algorithmic", out_dir="runs/tiny_gdn/eval")

A suite is a function ``(ctx: EvalContext) -> dict`` (its payload), registered with
:func:`register_suite` in its own module.  ``suite="all"`` runs every suite in
:data:`SUITE_ORDER` and writes one ``results_all.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from torch import nn

from memlab.data.shards import HEADER_FILE, read_header
from memlab.data.tasks import TokenizedExample
from memlab.data.tokenizer import META_FILE as TOKENIZER_FILE
from memlab.data.tokenizer import Tokenizer, load_tokenizer
from memlab.devices import resolve_device
from memlab.errors import MemlabError, check_dir_target, choose
from memlab.eval import schema
from memlab.eval.exact_match import exact_match
from memlab.eval.options import EvalOptions
from memlab.models.lm import LanguageModel
from memlab.models.recursion import fix_act_steps
from memlab.paths import EXPORT_FILE, resolve_model_dir, weights_sha256
from memlab.plotting import remove_stale_figures, staged_figures

log = logging.getLogger(__name__)
LOAD_ATTEMPTS = 5  # loads of a model directory that a run keeps saving again, before giving up

SUITE_ORDER = ("algorithmic", "longctx", "lm", "ablation", "selftest")
T = TypeVar("T")
DECODING = {"strategy": "greedy", "temperature": 0.0, "scoring": "exact match, teacher-forced (== greedy decoding)"}


@dataclass
class EvalContext:
    """What a suite receives: the model in eval mode, its tokenizer and the options."""

    model: nn.Module
    tokenizer: Tokenizer
    options: EvalOptions
    out_dir: Path | None = None  # where plots go; None: no plots
    run_dir: Path | None = None  # the training run, or where the model records it (trained_by): its data, split
    progress: bool = False  # progress bars while scoring
    figure_prefix: str = ""  # before a figure's file name: the results file's it goes with ("all_" for results_all)
    figure_dir: Path | None = None  # where figures are written while the suites run (None: out_dir)
    weights_sha256: str | None = None  # of the weights loaded (None: those in model_dir when results are written)

    def figure_path(self, name: str) -> Path:
        """Where the figure ``name`` (as its results record it) is written now."""
        return (self.figure_dir or self.out_dir) / name

    def rng(self, name: str) -> random.Random:
        """A generator fixed by the seed and ``name``: a suite draws the same examples every time."""
        return random.Random(f"{self.options.seed}/{name}")

    def score(self, examples: list[TokenizedExample], what: str) -> np.ndarray:
        """(n,) bool: greedy exact match of each example (see :func:`memlab.eval.exact_match.exact_match`)."""
        bar = what if self.progress else None
        return exact_match(self.model, examples, self.tokenizer.pad_id, self.options.batch_tokens, bar)


FILE_NAME_CHARS = 120  # a path component may hold 255 bytes; the rest is left to suffixes (".png", ".tmp")


def file_safe(name: str) -> str:
    """``name`` (a corpus or task spec) with every run of other characters than letters, digits, ``_.-``
    made one ``_``: a file or directory name.  A longer one than ``FILE_NAME_CHARS`` (a corpus in a deep
    directory) is cut, and ends in a hash of the whole ``name`` so that two cut alike stay apart."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    if len(safe) <= FILE_NAME_CHARS:
        return safe
    digest = hashlib.blake2b(name.encode(), digest_size=8).hexdigest()
    return f"{safe[:FILE_NAME_CHARS - len(digest) - 1]}-{digest}"


def distinct(draw: Callable[[], T], n: int, key: Callable[[T], Hashable], draws_per_example: int = 20) -> list[T]:
    """Up to ``n`` examples of distinct ``key`` from ``draw()``, found within ``draws_per_example * n``
    draws: fewer where the task has fewer (two-bit parity has 4).  Repeats would count one example
    as several independent ones and narrow its interval."""
    found: dict[Hashable, T] = {}
    for _ in range(draws_per_example * n):
        example = draw()
        found.setdefault(key(example), example)
        if len(found) == n:
            break
    return list(found.values())


Suite = Callable[[EvalContext], dict[str, Any]]
SUITES: dict[str, Suite] = {}
SUITE_CHECKS: dict[str, Callable[[EvalContext], object]] = {}


def register_suite(name: str, check: Callable[[EvalContext], object] | None = None) -> Callable[[Suite], Suite]:
    """Register a suite; ``check(ctx)`` refuses options it cannot run, before any suite runs (so that
    ``--suite all`` does not spend the earlier suites' time on a run that then fails): the suite
    itself, run through :func:`evaluate_model`, takes its options as checked."""

    def wrap(fn: Suite) -> Suite:
        SUITES[name] = fn
        if check is not None:
            SUITE_CHECKS[name] = check
        return fn

    return wrap


def suite_names() -> list[str]:
    """Every registered suite, then ``all`` (which runs the suites of :data:`SUITE_ORDER`)."""
    _load_suites()
    return [*SUITE_ORDER, *sorted(set(SUITES) - set(SUITE_ORDER)), "all"]


# --------------------------------------------------------------------- loading


def find_tokenizer(model_dir: Path) -> Tokenizer:
    """The tokenizer saved with the model, or with the checkpoint/run that holds it."""
    for directory in (model_dir, model_dir.parent, model_dir.parent.parent):
        if (directory / TOKENIZER_FILE).is_file():
            return load_tokenizer(directory)
    raise MemlabError(f"no tokenizer ({TOKENIZER_FILE}) saved with the model in {model_dir} or its run directory")


def run_dir_of(model_dir: Path) -> Path | None:
    """The training run that holds ``model_dir`` (``best_model/`` or ``checkpoints/step_N/``), if any;
    none for an export, which carries its own record (one written inside a run's directory had been
    taken for the run's checkpoint and refused for its tokenizer)."""
    if (model_dir / EXPORT_FILE).is_file():
        return None
    for directory in (model_dir, model_dir.parent, model_dir.parent.parent):
        if (directory / "config.yaml").is_file() and (directory / "checkpoints").is_dir():
            return directory
    return None


def trained_by(model_dir: Path) -> Path | None:
    """The directory recording how ``model_dir`` was trained: its run (config.yaml), or the model
    directory itself where it holds a record (an export's training.yaml, a checkpoint's config.yaml)."""
    from memlab.train.config import training_record

    run = run_dir_of(model_dir)
    return run if run is not None or training_record(model_dir) is None else model_dir


def default_out_dir(model_dir: Path, run_dir: Path | None, act_steps: int | None) -> Path:
    """Where ``memlab eval`` writes without --out-dir: the run's ``eval/`` for the model the run
    stands for (its best_model, else its newest checkpoint: what compare and study evaluate),
    ``eval/<checkpoint>/`` for another of its checkpoints (they had shared, and overwritten, the
    run's files), the model directory's ``eval/`` outside a run; ``act_steps_K/`` below for a fixed ACT depth."""
    out = (run_dir or model_dir) / "eval"
    if run_dir is not None and model_dir.resolve() != resolve_model_dir(run_dir, checksums=False).resolve():
        out = out / model_dir.name
    return out if act_steps is None else out / f"act_steps_{act_steps}"


def run_data(run_dir: Path) -> dict[str, Any]:
    """The ``data`` entry of a training run's config.yaml: corpus, data_dir (the prepared shards;
    None for tasks only), the shards' val_fraction and split_seed, the tokenizer."""
    from memlab.train.config import run_config_section

    return run_config_section(run_dir, "data")


def run_data_dir(run_dir: Path | None) -> str | None:
    """The shard directory a training run read its language data from, if it is still there
    (an older run's relative path is taken from the working directory, as it was recorded)."""
    value = None if run_dir is None else run_data(run_dir).get("data_dir")
    return str(value) if value and (Path(value) / HEADER_FILE).is_file() else None


def run_held_out_split(run_dir: Path) -> tuple[float, int] | None:
    """(val_fraction, split_seed) of the documents a run held out from training: as its config
    records them, else as its shards' header does; None when neither can be read."""
    data = run_data(run_dir)
    if data.get("val_fraction") is not None and data.get("split_seed") is not None:
        return float(data["val_fraction"]), int(data["split_seed"])
    data_dir = run_data_dir(run_dir)
    if data_dir is None:
        return None
    request = read_header(data_dir)["request"]
    return request["val_fraction"], request["split_seed"]


def held_out_split(run_dir: Path | None, corpus: str | None) -> tuple[float, int]:
    """(val_fraction, split_seed) of the documents a model held out: its run's
    (:func:`run_held_out_split`), else memlab train's defaults, with a warning where the held-out
    documents of ``corpus`` are read (None: none are) for a model that carries no record of its
    training (documents it trained on may then be read as held out)."""
    from memlab.train.config import TrainConfig

    split = None if run_dir is None else run_held_out_split(run_dir)
    default = (TrainConfig.val_fraction, 0)  # prepare_shards' split_seed, which training keeps
    if run_dir is None and corpus is not None:
        log.warning("this model carries no record of its training: the documents of %s it held out are taken as "
                    "memlab train's default split (val_fraction %s, seed 0) where not given, which may not be the one "
                    "it trained with", corpus, default[0])
    return split or default


class Loaded(NamedTuple):
    """A model loaded by :func:`load_checkpoint`, in eval mode, with its tokenizer and where it came from."""

    model: nn.Module
    tokenizer: Tokenizer
    model_dir: Path
    weights_sha256: str | None  # of the weights loaded: a run may save others into model_dir meanwhile


def load_checkpoint(path: str | Path, device: str = "auto") -> Loaded:
    """The model of a run, checkpoint or model directory, its tokenizer, directory and weights' sha256.

    A run saving its best_model again while it loads is met by loading again (results had named the
    newer weights' sha256 beside the older weights' scores)."""
    device = resolve_device(device)
    for _ in range(LOAD_ATTEMPTS):
        model_dir = resolve_model_dir(path)
        weights = weights_sha256(model_dir)
        model = _load_model(model_dir, device)
        if weights_sha256(model_dir) == weights:
            break
        log.info("%s was saved again while it loaded (a run is at work): loading it again", model_dir)
    else:
        raise MemlabError(f"{model_dir} was saved again each of the {LOAD_ATTEMPTS} times it loaded (a run is at "
                          "work): load one of its checkpoints/step_N instead")
    tokenizer = find_tokenizer(model_dir)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise MemlabError(
            f"the tokenizer in {model_dir} has {tokenizer.vocab_size} ids but the model only "
            f"{model.config.vocab_size}: they do not belong together"
        )
    trained_with = trained_tokenizer_hash(model_dir)
    if trained_with is not None and trained_with != tokenizer.hash:
        raise MemlabError(f"the tokenizer in {model_dir} ({tokenizer.hash[:12]}) is not the one the model was "
                          f"trained with ({trained_with[:12]}): they do not belong together")
    return Loaded(model, tokenizer, model_dir, weights)


def _load_model(model_dir: Path, device: torch.device) -> LanguageModel:
    """The model in ``model_dir`` (resolved and checked: once), in eval mode; an error names a newer
    memlab that wrote it."""
    import memlab

    try:
        return LanguageModel.load(model_dir, device=device).eval()
    except MemlabError as e:
        written_by = _written_by(model_dir)
        if written_by is not None and _version(written_by) > _version(memlab.__version__):
            raise MemlabError(f"{e} (the checkpoint was written by memlab {written_by}, newer than this "
                              f"memlab {memlab.__version__}: upgrade memlab)") from None
        raise


def trained_tokenizer_hash(model_dir: Path) -> str | None:
    """The hash of the tokenizer the model was trained with, as its training record (:func:`trained_by`)
    or the summary.json beside it (an export's) records it; None where neither does."""
    run_dir = trained_by(model_dir)
    if run_dir is not None and (recorded := run_data(run_dir).get("tokenizer_hash")):
        return str(recorded)
    summary = model_dir / "summary.json"
    try:
        metadata = json.loads(summary.read_text()).get("metadata", {})
        return str(metadata["tokenizer_hash"])
    except (FileNotFoundError, KeyError):  # a model saved alone, or a summary that does not record it
        return None
    except (OSError, ValueError, AttributeError, TypeError) as e:  # (a damaged one had gone unnoticed)
        log.warning("%s is unreadable (%s): the tokenizer is not checked against the one the model was trained "
                    "with", summary, type(e).__name__)
        return None


def _written_by(model_dir: Path) -> str | None:
    try:
        return json.loads((model_dir / "config.json").read_text()).get("memlab_version")
    except (OSError, ValueError, AttributeError):
        return None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


# ------------------------------------------------------------------ evaluating


def evaluate(
    checkpoint: str | Path,
    suite: str = "all",
    out_dir: str | Path | None = None,
    options: EvalOptions | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint with ``suite``; writes ``results_<suite>.json`` into ``out_dir``.

    ``out_dir`` defaults to ``eval/`` of the run (or of the model directory).  Returns the document.
    """
    options = options or EvalOptions()
    options.check()
    choose("suite", suite, suite_names())
    model, tokenizer, model_dir, weights = load_checkpoint(checkpoint, options.device)
    run_dir = run_dir_of(model_dir)
    out = Path(out_dir) if out_dir is not None else default_out_dir(model_dir, run_dir, options.act_steps)
    if options.act_steps is not None:
        fix_act_steps(model, options.act_steps)
    check_dir_target(out, "--out-dir")  # before the suites run, not when their results are written
    made = [d for d in (out, *out.parents) if not d.exists()]  # deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # (a read-only or missing file system: it had been a traceback after all the work)
        raise MemlabError(f"--out-dir {out} cannot be made: {e.strerror or e}") from None
    prefix = "" if suite == "longctx" else f"{suite}_"  # results_longctx.json and results_all.json: their own
    try:
        with staged_figures(out) as staging:  # a failed evaluation leaves the last figures whole
            ctx = EvalContext(model, tokenizer, options, out, trained_by(model_dir), progress, prefix, staging, weights)
            doc = evaluate_model(ctx, suite, checkpoint=str(checkpoint), model_dir=str(model_dir))
            schema.write_results(out / schema.results_filename(suite), doc)
    except BaseException:  # (a refused option had left an empty eval/ behind)
        for directory in made:
            with contextlib.suppress(OSError):  # not empty: the lm suite prepared its corpus there
                directory.rmdir()
        raise
    remove_stale_figures(out.glob("*longctx_*.png"), heatmaps_named(out))
    return doc


def heatmaps_named(out: Path) -> set[str]:
    """The heatmaps that the longctx results in ``out`` name (results_longctx.json, results_all.json);
    any other ``*longctx_*.png`` there is of an earlier evaluation's needle tasks, evaluated no more."""
    named: set[str] = set()
    for suite in ("longctx", "all"):
        try:
            results = json.loads((out / schema.results_filename(suite)).read_text())["results"]
            tasks = (results["longctx"] if suite == "all" else results)["tasks"]
            named |= {task["heatmap"] for task in tasks.values() if task["heatmap"]}
        except (OSError, ValueError, KeyError, TypeError):  # no such file, or none memlab wrote
            continue
    return named


def evaluate_model(ctx: EvalContext, suite: str = "all", checkpoint: str = "", model_dir: str = "") -> dict[str, Any]:
    """Run ``suite`` on the model of ``ctx``; returns the results document (nothing is written but plots)."""
    names = list(SUITE_ORDER) if suite == "all" else [suite]
    ctx.options.check()
    choose("suite", suite, suite_names())
    for name in names:
        if name in SUITE_CHECKS:
            SUITE_CHECKS[name](ctx)
    torch.manual_seed(ctx.options.seed)
    payloads = {}
    for name in names:
        t0 = time.perf_counter()
        payloads[name] = SUITES[name](ctx)
        payloads[name]["seconds"] = round(time.perf_counter() - t0, 3)
        log.info("suite %s done in %.1f s", name, payloads[name]["seconds"])
    results = payloads if suite == "all" else payloads[suite]
    return schema.document(suite, metadata(ctx, checkpoint, model_dir), results)


def metadata(ctx: EvalContext, checkpoint: str, model_dir: str) -> dict[str, Any]:
    """The metadata block of an evaluation results file."""
    from memlab.data.tasks import GRID_VERSION

    state_bytes = {str(n): ctx.model.state_nbytes(n) for n in (256, 2048)}
    return schema.metadata(ctx.model, ctx.tokenizer, ctx.options, checkpoint, model_dir, ctx.weights_sha256,
                           DECODING, GRID_VERSION, state_bytes=state_bytes)


def _load_suites() -> None:
    """Importing a suite module registers it."""
    from memlab.eval import ablation, algorithmic, lm, lm_eval_suite, longctx, selftest  # noqa: F401


# --------------------------------------------------------------------- summary


def _acc(record: dict[str, Any] | None) -> str:
    if not record or record.get("accuracy") is None:
        return "-"
    lo, hi = record["ci95"]
    return f"{100 * record['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={record['n']})"


def _number(x: float | None, digits: int) -> str:
    return "non-finite" if x is None else f"{x:.{digits}f}"  # null: a non-finite number (a diverged model)


def delta_points(record: dict[str, Any]) -> str:
    """A delta record in points with its interval; ``n/a`` where Delta does not apply (no memory layer)."""
    if record["delta"] is None:
        return "n/a"
    lo, hi = record["ci95"]
    return f"{100 * record['delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """A few human lines of a results document (what ``memlab eval`` prints)."""
    payloads = doc["results"] if doc["suite"] == "all" else {doc["suite"]: doc["results"]}
    lines = []
    for suite, p in payloads.items():
        if suite == "algorithmic":
            lines.append(f"algorithmic: IID {_acc(p['summary'].get('iid'))}, OOD {_acc(p['summary'].get('ood'))}")
            lines += [f"  {t:<15} IID {_acc(r.get('iid'))}  OOD {_acc(r.get('ood'))}" for t, r in p["tasks"].items()]
        elif suite == "longctx":
            lines.append(f"longctx: {_acc(p['overall'])}")
            width = max([8, *map(len, p["tasks"])])  # (a task spec with parameters is longer)
            lines += [f"  {task:<{width}} {_acc(r['overall'])}" for task, r in p["tasks"].items()]
        elif suite == "lm":
            lines.append(f"lm: perplexity {_number(p['perplexity'], 2)} (loss {_number(p['loss'], 4)}) on "
                         f"{p['tokens']} tokens ({p.get('documents', '?')} documents) of {p['corpus']}, "
                         f"{p['tokens_per_s']:.0f} tokens/s")
        elif suite == "ablation":
            note = p.get("delta_note")
            delta = f"Delta {delta_points(p['delta'])}" + (f" ({note})" if note else " pts")
            lines.append(f"ablation ({p['task']} @ {p['context_len']} tokens, memory layers {p['memory_layers']}): "
                         f"normal {_acc(p['normal'])}, zeroed {_acc(p['zeroed'])}, {delta}")
            lines.append("  horizon sweep: " + ", ".join(f"h={r['horizon']}: {_acc(r)}" for r in p["horizon"]))
        elif suite == "selftest":
            failed = [name for name, c in p["checks"].items() if not c["passed"]]
            lines.append("selftest: " + ("passed" if p["passed"] else f"FAILED {', '.join(failed)}"))
        else:
            lines.append(f"{suite}: done")
    return lines
