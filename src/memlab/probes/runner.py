"""``memlab probe``: load a checkpoint, run one probe, write its JSON document and figures.

Every document is ``{"schema_version", "suite": "probe_<name>", "metadata", "results"}`` with
the metadata block of the evaluation results (version, commit, config, tokenizer, options,
timestamp), written to ``<out_dir>/<name>_probe_step<N>.json`` beside ``<name>_probe_step<N>.png``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memlab.errors import choose
from memlab.eval import schema
from memlab.eval.hub import load_checkpoint, run_dir_of
from memlab.models.paths import BEST_FILE
from memlab.probes.activity import LayerActivity, record_activity, slot_layers
from memlab.probes.corpus import ProbeText, read_probe_text
from memlab.probes.options import PROBES, ProbeOptions

log = logging.getLogger(__name__)


@dataclass
class ProbeContext:
    """A loaded checkpoint and the probe's options; ``text(spec)`` and ``activity(text)`` are cached."""

    model: torch.nn.Module
    tokenizer: Any
    options: ProbeOptions
    step: int
    out_dir: Path
    _texts: dict[str, ProbeText] = field(default_factory=dict)

    def text(self, spec: str | None = None) -> ProbeText:
        spec = spec or self.options.corpus
        if spec not in self._texts:
            o = self.options
            seq_len = min(o.seq_len, self.model.config.max_seq_len)
            self._texts[spec] = read_probe_text(
                spec, self.tokenizer, o.max_tokens, seq_len, o.documents, o.val_fraction, o.split_seed
            )
        return self._texts[spec]

    def activity(self, text: ProbeText) -> list[LayerActivity]:
        return record_activity(self.model, text, self.options.batch_size)

    def path(self, name: str, suffix: str) -> Path:
        return self.out_dir / f"{name}_probe_step{self.step}{suffix}"


ProbeFn = Callable[[ProbeContext], dict[str, Any]]


def probe_functions() -> dict[str, ProbeFn]:
    from memlab.probes.alphas import alphas_probe
    from memlab.probes.domains import domains_probe
    from memlab.probes.gates import gates_probe
    from memlab.probes.routing import routing_probe

    return {"routing": routing_probe, "gates": gates_probe, "alphas": alphas_probe, "domains": domains_probe}


def run_probe(
    checkpoint: str | Path, probe: str, out_dir: str | Path | None = None, options: ProbeOptions | None = None
) -> Path:
    """Run ``probe`` on ``checkpoint`` (a run, checkpoint or model directory); returns the JSON written."""
    options = options or ProbeOptions()
    choose("probe", probe, PROBES)
    torch.manual_seed(options.seed)
    if probe == "trajectory":
        from memlab.probes.trajectory import trajectory_probe

        return trajectory_probe(Path(checkpoint), out_dir, options)
    model, tokenizer, model_dir = load_checkpoint(checkpoint, options.device)
    slot_layers(model)  # refuse a model without slots before reading any text
    ctx = ProbeContext(model, tokenizer, options, checkpoint_step(model_dir), default_out_dir(model_dir, out_dir))
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return write_document(ctx, probe, probe_functions()[probe](ctx), str(checkpoint), model_dir)


def default_out_dir(model_dir: Path, out_dir: str | Path | None) -> Path:
    """``out_dir``, else ``probes/`` of the run holding the model, else ``probes/`` beside the weights."""
    if out_dir is not None:
        return Path(out_dir)
    return (run_dir_of(model_dir) or model_dir) / "probes"


def checkpoint_step(model_dir: Path) -> int:
    """The training step of a checkpoint (its trainer_state.json, a best_model's best.json, or its
    step_N name); 0 if unknown."""
    for record in (model_dir / "trainer_state.json", model_dir / BEST_FILE):
        if record.is_file():
            try:
                return int(json.loads(record.read_text())["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                pass
    name = model_dir.name
    return int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else 0


def write_document(ctx: ProbeContext, probe: str, results: dict[str, Any], checkpoint: str, model_dir: Path) -> Path:
    doc = schema.document(f"probe_{probe}", metadata(ctx, checkpoint, model_dir), results)
    return schema.write_results(ctx.path(probe, ".json"), doc)


def metadata(ctx: ProbeContext, checkpoint: str, model_dir: Path) -> dict[str, Any]:
    """The metadata block of a probe's results file (probes read the model: no decoding, no grid)."""
    return schema.metadata(ctx.model, ctx.tokenizer, ctx.options, checkpoint, str(model_dir), None, None, step=ctx.step)

