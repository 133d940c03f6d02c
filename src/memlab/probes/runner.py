"""``memlab probe``: load a checkpoint, run one probe, write its JSON document and its figure.

Every document is ``{"schema_version", "suite": "probe_<name>", "metadata", "results"}`` with
the metadata block of the evaluation results (version, commit, config, tokenizer, options,
timestamp), written to ``<out_dir>/<name>_probe_step<N>.json``: N is the probed checkpoint's
step (for ``trajectory``, over every checkpoint of a run, the newest one's).  The figure a probe
draws, ``<name>_probe_step<N>.png``, lies beside it, and ``results["figures"]`` names the
figures written (none for ``routing`` when the probe text holds no Python code).  Options left
unset are the run's: its held-out split and the seq_len it trained with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from memlab.devices import resolve_device
from memlab.errors import MemlabError, check_dir_target, choose
from memlab.eval import schema
from memlab.eval.exact_match import check_context
from memlab.eval.hub import held_out_split, load_checkpoint, run_data, run_dir_of, run_held_out_split, trained_by
from memlab.paths import checkpoint_step
from memlab.plotting import remove_stale_figures, staged_figures
from memlab.probes.activity import LayerActivity, record_activity, slot_layers
from memlab.probes.corpus import ProbeText, read_probe_text
from memlab.probes.options import PROBES, ProbeOptions
from memlab.train.config import run_config_section

DEFAULT_SEQ_LEN = 256  # probe windows of a model whose run does not record its training seq_len


@dataclass
class ProbeContext:
    """A loaded checkpoint and the probe's options; ``text(spec)`` and ``activity(text)`` are cached."""

    model: torch.nn.Module
    tokenizer: Any
    options: ProbeOptions
    step: int
    out_dir: Path
    weights_sha256: str | None = None  # of the weights loaded
    _texts: dict[str, ProbeText] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)  # the figures the probe wrote
    figure_dir: Path | None = None  # where they are drawn until the results file is written (None: out_dir)

    def text(self, spec: str | None = None) -> ProbeText:
        spec = spec or self.options.corpus
        if spec not in self._texts:
            o = self.options
            self._texts[spec] = read_probe_text(
                spec, self.tokenizer, o.max_tokens, o.seq_len, o.documents, o.val_fraction, o.split_seed,
                text_field=o.text_field,
            )
        return self._texts[spec]

    def activity(self, text: ProbeText) -> list[LayerActivity]:
        return record_activity(self.model, text, self.options.batch_size)

    def path(self, name: str, suffix: str) -> Path:
        return self.out_dir / f"{name}_probe_step{self.step}{suffix}"

    def figure(self, name: str) -> Path:
        """Where to draw the probe's figure, listed among the files the probe wrote."""
        path = self.path(name, ".png")
        self.figures.append(path)
        return (self.figure_dir or self.out_dir) / path.name


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
    choose("probe", probe, PROBES)
    options = options or ProbeOptions()
    options.check()
    if out_dir is not None:
        check_dir_target(out_dir, "--out-dir")
    given_seq_len = options.seq_len
    options = with_run_seq_len(with_held_out_split(options, Path(checkpoint)), Path(checkpoint))
    options = replace(options, device=str(resolve_device(options.device)))
    torch.manual_seed(options.seed)
    if probe == "trajectory":
        from memlab.probes.trajectory import trajectory_probe

        return trajectory_probe(Path(checkpoint), out_dir, options, given_seq_len)
    model, tokenizer, model_dir, weights = load_checkpoint(checkpoint, options.device)
    slot_layers(model)  # refuse a model without slots before reading any text
    options = with_readable_windows(options, given_seq_len, model)
    ctx = ProbeContext(model, tokenizer, options, checkpoint_step(model_dir), default_out_dir(model_dir, out_dir),
                       weights)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    with staged_figures(ctx.out_dir) as staging:  # the figures moved in after the results file
        ctx.figure_dir = staging
        return write_document(ctx, probe, probe_functions()[probe](ctx), str(checkpoint), model_dir)


def with_held_out_split(options: ProbeOptions, checkpoint: Path) -> ProbeOptions:
    """``options`` with the validation split filled in where it is not given: that of the run
    holding ``checkpoint`` (:func:`memlab.eval.hub.held_out_split`: else memlab train's default,
    with a warning for a model outside a run).  Probing with another split than training's
    would read training documents as held out, so a run whose split cannot be read is refused."""
    if options.val_fraction is not None and options.split_seed is not None:
        return options
    run = trained_by(checkpoint)  # a run directory itself, a checkpoint or best_model/ in one, an export
    held_out = options.documents == "val"
    if held_out and run is not None and run_held_out_split(run) is None and run_data(run).get("data_dir"):
        raise MemlabError(
            f"the documents {run} held out are unknown: its data {run_data(run)['data_dir']} is not found; "
            "give --val-fraction and --split-seed, or --documents all"
        )
    fraction, seed = held_out_split(run, options.corpus if held_out else None)
    return replace(
        options,
        val_fraction=fraction if options.val_fraction is None else options.val_fraction,
        split_seed=seed if options.split_seed is None else options.split_seed,
    )


def with_run_seq_len(options: ProbeOptions, checkpoint: Path) -> ProbeOptions:
    """``options`` with the window length filled in where it is not given: the seq_len the run
    holding ``checkpoint`` trained with (its config.yaml), else DEFAULT_SEQ_LEN."""
    if options.seq_len is not None:
        return options
    run = trained_by(checkpoint)
    trained = None if run is None else run_config_section(run, "train").get("seq_len")
    return replace(options, seq_len=int(trained) if trained else DEFAULT_SEQ_LEN)


def with_readable_windows(options: ProbeOptions, given_seq_len: int | None, model: torch.nn.Module) -> ProbeOptions:
    """``options`` with windows ``model`` can read: learned positions stop at max_seq_len, so a
    longer default window is cut to it and a longer ``--seq-len`` refused (RoPE reads any length)."""
    if given_seq_len is None and model.config.pos_encoding == "learned":
        return replace(options, seq_len=min(options.seq_len, model.config.max_seq_len))
    check_context(model, options.seq_len, "a window of --seq-len")
    return options


def default_out_dir(model_dir: Path, out_dir: str | Path | None) -> Path:
    """``out_dir``, else ``probes/`` of the run holding the model, else ``probes/`` beside the weights."""
    if out_dir is not None:
        return Path(out_dir)
    return (run_dir_of(model_dir) or model_dir) / "probes"


def write_document(ctx: ProbeContext, probe: str, results: dict[str, Any], checkpoint: str, model_dir: Path) -> Path:
    """Write the probe's results file, naming the figures it wrote."""
    results = without_negative_zero({**results, "figures": [f.name for f in ctx.figures]})
    doc = schema.document(f"probe_{probe}", metadata(ctx, checkpoint, model_dir), results)
    written = schema.write_results(ctx.path(probe, ".json"), doc)
    remove_stale_figures([ctx.path(probe, ".png")], ctx.figures)  # (once no results file names it)
    return written


def without_negative_zero(value: Any) -> Any:
    """``value`` (dicts and lists of numbers) with every -0.0 made 0.0."""
    if isinstance(value, dict):
        return {k: without_negative_zero(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_negative_zero(v) for v in value]
    return 0.0 if isinstance(value, float) and value == 0 else value


def metadata(ctx: ProbeContext, checkpoint: str, model_dir: Path) -> dict[str, Any]:
    """The metadata block of a probe's results file (probes read the model: no decoding, no grid)."""
    return schema.metadata(ctx.model, ctx.tokenizer, ctx.options, checkpoint, str(model_dir), ctx.weights_sha256,
                           None, None, step=ctx.step)

