"""Trajectory probe: the routing probe over every saved checkpoint of a run.

Tracks, per layer and on the same probe text, the largest slot share (a "scratchpad" slot
shows as a spike), the usage entropy and the bias-corrected MI(slot; indentation depth)
ratio over training steps: ``trajectory_probe_step<N>.json`` and ``.png`` (N: the newest
checkpoint probed, as the other probes name their files) in the run's ``probes/`` (or ``--out-dir``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from memlab.errors import MemlabError
from memlab.eval.hub import load_checkpoint
from memlab.paths import checkpoint_dirs, checkpoint_step
from memlab.plotting import staged_figures
from memlab.probes import plots
from memlab.probes.activity import slot_layers
from memlab.probes.routing import routing_results
from memlab.probes.runner import ProbeContext, ProbeOptions, default_out_dir, with_readable_windows, write_document

log = logging.getLogger(__name__)
METRICS = {
    "max slot share": lambda layer: layer["max_slot_share"],
    "usage entropy (bits)": lambda layer: layer["usage_entropy_bits"],
    "MI(slot; indent) / H(indent), soft, corrected": (
        lambda layer: layer["indent"]["mi"]["soft"]["ratio_corrected"] if layer["indent"]["tokens"] else None
    ),
    "MI(slot; indent) / H(indent), argmax, corrected": (
        lambda layer: layer["indent"]["mi"]["argmax"]["ratio_corrected"] if layer["indent"]["tokens"] else None
    ),
}


def trajectory_probe(run_dir: Path, out_dir: str | Path | None, options: ProbeOptions,
                     given_seq_len: int | None = None) -> Path:
    checkpoints = checkpoint_dirs(run_dir)
    if not checkpoints:
        raise MemlabError(f"{run_dir} holds no checkpoints/step_N: the trajectory probe needs a run directory")
    out = default_out_dir(run_dir, out_dir)
    texts: dict = {}  # the same probe text, in the first checkpoint's tokens, for every checkpoint
    rows, ctx, tokenizer = [], None, None
    for path in checkpoints:
        try:  # (eval's loading: checksums, and a tokenizer that belongs to the model)
            model, own_tokenizer, *_ = load_checkpoint(path, options.device)
            if tokenizer is not None and own_tokenizer.hash != tokenizer.hash:
                raise MemlabError(f"its tokenizer is not that of {rows[0]['checkpoint']}")
        except MemlabError as e:
            log.warning("skipping %s: %s", path, e)
            continue
        if tokenizer is None:
            tokenizer = own_tokenizer
        slot_layers(model)
        options = with_readable_windows(options, given_seq_len, model)  # (every checkpoint: the same model)
        ctx = ProbeContext(model, tokenizer, options, checkpoint_step(path), out, texts)
        text = ctx.text()
        results = routing_results(ctx.activity(text), text, options)
        rows.append({"step": ctx.step, "checkpoint": str(path), **{k: results[k] for k in ("layers", "summary")}})
        log.info("trajectory: step %d done", ctx.step)
    if ctx is None:
        raise MemlabError(f"no checkpoint of {run_dir} could be loaded")
    steps = [row["step"] for row in rows]
    series = {}
    for metric, read in METRICS.items():
        curves = {
            f"layer {layer['layer']}": [_nan_if_none(read(r["layers"][i])) for r in rows]
            for i, layer in enumerate(rows[0]["layers"])
        }
        values = np.array(list(curves.values()), dtype=float)
        if np.isnan(values).all():  # not measured (the soft correction without --permutations)
            continue
        curves["mean"] = np.nanmean(values, axis=0).tolist()
        series[metric] = curves
    out.mkdir(parents=True, exist_ok=True)
    with staged_figures(out) as staging:  # the figure moved in after the results file
        ctx.figure_dir = staging
        plots.lines(steps, series, ctx.figure("trajectory"), f"slot routing over training: {run_dir.name}", "step")
        results = {"corpus": options.corpus, "tokens": ctx.text().tokens, "steps": steps, "checkpoints": rows}
        results["series"] = series
        return write_document(ctx, "trajectory", results, str(run_dir), Path(rows[-1]["checkpoint"]))


def _nan_if_none(value: float | None) -> float:
    return np.nan if value is None else value
