"""A portable model directory: weights, config, tokenizer and a model card, nothing else needed.

``export(checkpoint, out)`` writes::

    out/config.json             the model's ModelConfig (what memlab.load reads)
    out/model.safetensors       the weights (no pickled code)
    out/tokenizer.memlab.json   the tokenizer (plus tokenizer.json for BPE)
    out/summary.json            the training summary, when the checkpoint belongs to a run
    out/training.yaml           the config.yaml it was trained under (its data, held-out split, seq_len)
    out/export.json             the training step of the weights and the directory they came from
    out/eval/results_*.json     the evaluation results of this very model directory, when present
    out/README.md               a model card: architecture, usage, training summary, evaluation

and ``memlab.load(out)`` / ``load_tokenizer(out)`` read it back.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import memlab
from memlab.analysis.info import human
from memlab.errors import MemlabError, check_dir_target
from memlab.eval.hub import default_out_dir, load_checkpoint, run_dir_of
from memlab.eval.schema import read_results
from memlab.jsonfile import read_json_object
from memlab.markdown import markdown_table
from memlab.models.lm import CONFIG_FILE
from memlab.paths import EXPORT_FILE, checkpoint_step, holds_training_output, measured_model, resolve_model_dir
from memlab.staging import clear_directory, move_contents, remove_abandoned, staged_directory
from memlab.train.checkpoint import replace_directory
from memlab.train.config import TRAINING_RECORD, training_record

SUMMARY_FILE, CARD_FILE = "summary.json", "README.md"
IN_PLACE_STAGING = "export"  # inside an --out that cannot be renamed: .export.HOST.PID.tmp


def export(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Export the model of a run, checkpoint, model or export directory into ``out``; returns ``out``."""
    model_dir = resolve_model_dir(checkpoint)
    run_dir = run_dir_of(model_dir)
    out = Path(out)
    check_dir_target(out, "--out")
    for kept in [model_dir, *([run_dir / "best_model", run_dir / "checkpoints"] if run_dir else [])]:
        if out.resolve().is_relative_to(kept.resolve()):  # (a resumed run prunes and replaces these)
            raise MemlabError(f"--out {out} is inside {kept}, which training replaces or prunes; "
                              "choose another directory")
    if model_dir.resolve().is_relative_to(out.resolve()):
        raise MemlabError(f"--out {out} holds the checkpoint {model_dir}; choose another directory")
    if out.is_dir():  # (what an export killed while writing into it in place left)
        remove_abandoned(out.resolve() / IN_PLACE_STAGING)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise MemlabError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
        if out.is_dir() and holds_training_output(out, deep=True):
            raise MemlabError(f"--out {out} holds a training run or checkpoints, which --overwrite does not "
                              "delete; choose another directory")
    model, tokenizer, _, weights = load_checkpoint(model_dir, "cpu")  # refuses a tokenizer of another model
    sources = [d for d in dict.fromkeys([model_dir, run_dir]) if d is not None]
    summary_file = next((d / SUMMARY_FILE for d in sources if (d / SUMMARY_FILE).is_file()), None)
    record = next(filter(None, map(training_record, sources)), None)  # (eval and probe read its held-out split)
    step = checkpoint_step(model_dir)
    results = {p.name: read_results(p) for p in sorted((model_dir / "eval").glob("results_*.json"))}  # an export's
    if run_dir is not None:  # this model's results in its run (an older memlab wrote every checkpoint's into eval/)
        places = dict.fromkeys([default_out_dir(model_dir, run_dir, None), run_dir / "eval"])
        for p in (p for place in places for p in sorted(place.glob("results_*.json"))):  # the model's own place first
            doc = read_results(p)
            if measured_model(doc["metadata"], model_dir, weights):  # not another checkpoint's, nor other weights'
                results.setdefault(p.name, doc)

    summary = read_json_object(summary_file) if summary_file is not None else None

    def write(staging: Path) -> None:
        model.save(staging)
        tokenizer.save(staging)
        if summary_file is not None:
            shutil.copy2(summary_file, staging / SUMMARY_FILE)
        if record is not None:
            shutil.copy2(record, staging / TRAINING_RECORD)
        origin = {"step": step, "source": str(model_dir.resolve())}  # (as typed, it named nothing elsewhere)
        (staging / EXPORT_FILE).write_text(json.dumps(origin, indent=2) + "\n")
        if results:
            (staging / "eval").mkdir()
            for name, doc in results.items():
                (staging / "eval" / name).write_text(json.dumps(doc, indent=2) + "\n")
        card = model_card(model, tokenizer, run_dir or model_dir, step, summary, results)
        (staging / CARD_FILE).write_text(card, encoding="utf-8")

    try:
        _write_whole(out.resolve(), write)  # through a symbolic link, the directory it names (the link stays)
    except OSError as e:  # (a read-only or full file system; its message had named the staging directory)
        raise MemlabError(f"--out {out} cannot be written: {e.strerror or e}") from None
    return out


def _write_whole(target: Path, write: Callable[[Path], None]) -> None:
    """Have ``write`` fill a staging directory, then put it at ``target``: renamed over it (the old
    export stays whole until the new one is in place; a killed export's staging is removed by the
    next), or, where ``target`` is a directory that cannot be renamed (a mount point, a read-only
    parent, one whose parent is full), moved into it, config.json last: an interruption leaves nothing
    that loads as a model.  A mount point is filled in place at once (its parent may be a small disk)."""
    if not (target.is_dir() and os.path.ismount(target)):
        try:
            with staged_directory(target) as staging:
                write(staging)
                replace_directory(staging, target)
            return
        except OSError as e:
            if not (target.is_dir() and e.errno in (errno.EBUSY, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC)):
                raise
    with staged_directory(target / IN_PLACE_STAGING) as staging:
        write(staging)
        clear_directory(target, keep=staging.name)
        move_contents(staging, target, last=CONFIG_FILE)


# ------------------------------------------------------------------ model card


def model_card(
    model, tokenizer, source: Path, step: int, summary: dict | None, results: dict[str, dict]
) -> str:
    """The README.md of an export: what the model is (``step``: the training step of its weights, 0
    if unknown), how to load it, how it was trained and scored."""
    cfg = model.config
    title = f"memlab {cfg.variant} ({cfg.size})"
    lines = [
        f"# {title}",
        "",
        f"A `{cfg.variant}` language model exported by memlab {memlab.__version__} from `{source}`.",
        "",
        "## Use",
        "",
        "```python",
        "import memlab, torch",
        "from memlab.data.tokenizer import load_tokenizer",
        "model, tok = memlab.load(PATH), load_tokenizer(PATH)  # PATH: this directory; the model in eval mode",
        "ids = torch.tensor([tok.encode('def add(a, b):')])",
        "print(tok.decode(model.generate(ids, max_new_tokens=32)[0].tolist()))",
        "```",
        "",
        "## Model",
        "",
        markdown_table(["field", "value"], [
            ["variant", f"`{cfg.variant}`"],
            ["size", f"`{cfg.size}` (d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads)"],
            ["layer pattern", f"`{cfg.pattern}`"],
            ["parameters", f"{model.num_params():,} ({model.num_params(non_embedding=True):,} non-embedding)"],
            ["weights of training step", step or "unknown"],
            ["recurrent state per sequence @ 2048 tokens", f"{human(model.state_nbytes(2048))}B (fp32)"],
            ["max_seq_len", cfg.max_seq_len],
            ["tokenizer", f"{tokenizer.kind}, {tokenizer.vocab_size} ids, hash `{tokenizer.hash[:16]}`"],
        ]),
        "",
        "The full configuration is in `config.json`; the weights in `model.safetensors`.",
        "",
        "## Training",
        "",
    ]
    if summary is None:
        lines.append("No training summary was found with the checkpoint.")
    else:
        if step and (others := _fields_of_other_weights(summary, step)):  # (they had read as this model's)
            lines += [f"The summary of the whole run: its {others} of other weights than these (step {step}).", ""]
        lines.append(markdown_table(
            ["field", "value"], ([key, _fmt(value)] for key, value in _flat(summary) if not key.startswith("metadata."))
        ))
    lines += ["", "## Evaluation", ""]
    if not results:
        lines.append("No evaluation results (`eval/results_*.json`) were found with the checkpoint.")
    else:
        rows = []
        for name, doc in results.items():  # (a suite run alone and in `all` is two measurements: each names its file)
            payloads = doc["results"] if doc["suite"] == "all" else {doc["suite"]: doc["results"]}
            for suite, payload in payloads.items():
                rows += [[f"`{name}`", suite, *cells] for cells in _metric_rows(payload)]
        lines.append(markdown_table(["file", "suite", "metric", "value", "95% CI", "n"], rows))
        lines += ["", "Every result file is in `eval/`, with its metadata (seed, decoding, options, commit)."]
    return "\n".join(lines) + "\n"


def _fields_of_other_weights(summary: dict, step: int) -> str:
    """Which of a run summary's fields describe weights of another step than ``step``, in words
    (``"`final.*` fields (step 32) are"``); empty when both the final and the best are these."""
    best = summary.get("best") if isinstance(summary.get("best"), dict) else {}
    steps = {"final": summary.get("steps"), "best": best.get("step")}
    by_step: dict[Any, list[str]] = {}  # each task's best accuracy has its own step
    for task, record in (best.get("acc") if isinstance(best.get("acc"), dict) else {}).items():
        by_step.setdefault(record.get("step") if isinstance(record, dict) else None, []).append(task)
    for at, tasks in by_step.items():
        steps["best.acc" if len(by_step) == 1 else f"best.acc.{{{','.join(tasks)}}}"] = at
    others = [f"`{name}.*` fields (step {at})" for name, at in steps.items() if isinstance(at, int) and at != step]
    return " and ".join(others) + " are" if others else ""


def _flat(obj: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar leaves of a nested dict as (dotted key, value)."""
    rows: list[tuple[str, Any]] = []
    for key, value in obj.items():
        if isinstance(value, dict):
            rows += _flat(value, f"{prefix}{key}.")
        elif not isinstance(value, list):
            rows.append((prefix + key, value))
    return rows


def _metric_rows(payload: dict[str, Any], path: str = "", depth: int = 0) -> list[list[str]]:
    """``[metric, value, ci, n]`` rows of the records in a results payload (lists are left out).

    A record is a dict with ``ci95`` and one of ``accuracy``/``delta``/``value``, or a number
    ``x`` next to an ``x_ci95``; a boolean leaf (a self-test verdict) is a row without interval.
    """
    rows = []
    value_key = next((k for k in ("accuracy", "delta", "value") if k in payload), None)
    if value_key and "ci95" in payload:
        ci = payload["ci95"]
        interval = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "-"
        return [[path or value_key, _fmt(payload[value_key]), interval, _fmt(payload.get("n"))]]
    for key, value in payload.items():
        name = f"{path}/{key}" if path else key
        if isinstance(value, dict) and depth < 4:
            rows += _metric_rows(value, name, depth + 1)
        elif isinstance(value, bool):
            rows.append([name, str(value), "-", "-"])
        elif isinstance(value, (int, float)) and isinstance(payload.get(f"{key}_ci95"), list):
            lo, hi = payload[f"{key}_ci95"]
            n = payload.get("n", payload.get("documents", payload.get("windows")))  # lm: documents (schema 1: windows)
            rows.append([name, _fmt(value), f"[{_fmt(lo)}, {_fmt(hi)}]", _fmt(n)])
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
