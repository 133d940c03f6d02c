"""The ``memlab`` command line: one dataclass of options per command, parsed by tyro.

Flags accept hyphens or underscores (``--model-size`` / ``--model_size``).  Errors a user
can cause end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import re
import shlex
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import tyro

from memlab.analysis.speed_options import BenchConfig
from memlab.analysis.study import StudyConfig
from memlab.cli_help import DefaultInDoc
from memlab.errors import MemlabError, check_at_least, check_seed
from memlab.eval.options import EvalOptions
from memlab.launcher import fail, stop_interrupted
from memlab.probes.options import ProbeOptions
from memlab.train.config import TrainArgs

LOGS_PROGRESS = {"eval", "probe", "study"}  # the commands whose progress lines (logged at INFO) are shown


def _log_progress(prefix: str, quiet: bool = False) -> None:
    """Progress messages of the library's loggers on stderr as ``<prefix>: message`` (warnings only if
    quiet); a later command in the same process sets its own (the first one's had stuck)."""
    had = list(logging.root.handlers)
    logging.basicConfig()  # a handler on stderr, where neither a host nor an earlier command set one up
    for handler in logging.root.handlers:
        handler.addFilter(_printed_by_its_own_logger)
        if not had:
            handler.memlab_progress = True  # type: ignore[attr-defined]
    ours = [h for h in logging.root.handlers if getattr(h, "memlab_progress", False)]
    if ours:  # (a host's logging is left as it is)
        logging.root.setLevel(logging.WARNING if quiet else logging.INFO)
        for handler in ours:
            handler.setFormatter(logging.Formatter(f"{prefix}: %(message)s"))


def _printed_by_its_own_logger(record: logging.LogRecord) -> bool:
    """False for a record that a handler of its own logger's line already prints (huggingface_hub's and
    lm_eval's print theirs: every retry of an offline Hub request had been printed twice)."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None and logger is not logging.root:
        if logger.handlers:
            return False
        logger = logger.parent if logger.propagate else None
    return True


# ------------------------------------------------------------------------ info


@dataclass
class InfoArgs:
    """Parameter counts, layer pattern, FLOPs and per-sequence state bytes of a variant at a size."""

    variant: Annotated[str | None, DefaultInDoc] = None
    """the variant to describe (default: baseline)"""
    model_size: str = "tiny"
    context_len: int = 2048
    """context length at which the recurrent state is measured"""
    vocab_size: Annotated[int | None, DefaultInDoc] = None
    """vocabulary size (default: the preset's); 50257 gives the counts the source cards quote with GPT-2's"""
    all: bool = False
    """every registered variant (at --model-size), as a markdown table"""


def run_info(args: InfoArgs) -> None:
    from memlab.analysis.info import describe, variants_table
    from memlab.config import list_variants

    check_at_least(args, ("context_len", "vocab_size"), 1)  # (the model's own check named vocab_size, no flag)
    overrides = {} if args.vocab_size is None else {"vocab_size": args.vocab_size}
    if args.all:
        if args.variant is not None:
            raise MemlabError("--all describes every variant: give it or --variant, not both")
        rows, unbuilt = [], {}
        for v in list_variants():  # (one variant that cannot be built at the size had failed the whole table)
            try:
                rows.append(describe(v, args.model_size, args.context_len, **overrides))
            except MemlabError as e:
                unbuilt[v] = str(e)
        if not rows:  # the size or the context, not a variant
            raise MemlabError(next(iter(unbuilt.values())))
        print(variants_table(rows))
        for v, why in unbuilt.items():
            print(f"\n`{v}` is left out at {args.model_size}: {why}")
        return
    variant = "baseline" if args.variant is None else args.variant  # ("" is an unknown variant)
    for key, value in describe(variant, args.model_size, args.context_len, **overrides).items():
        print(f"{key:>22}: {value}")


# -------------------------------------------------------------------- generate


@dataclass
class GenerateArgs:
    """Generate a continuation of a prompt from a checkpoint (or a fresh model with --init)."""

    prompt: str
    checkpoint: str | None = None
    init: bool = False
    """use a freshly initialised model (with --variant/--model-size and the byte tokenizer)"""
    variant: Annotated[str | None, DefaultInDoc] = None
    """with --init: the variant (default: baseline)"""
    model_size: Annotated[str | None, DefaultInDoc] = None
    """with --init: the size (default: tiny)"""
    max_new_tokens: int = 64
    temperature: float = 0.0
    """0: greedy; else sample from softmax(logits / temperature)"""
    top_k: int | None = None
    """sample from the k most likely tokens only"""
    top_p: float | None = None
    """sample from the smallest set of tokens whose probability reaches p (nucleus sampling)"""
    seed: int = 0


def run_generate(args: GenerateArgs) -> None:
    import torch

    import memlab
    from memlab.data.tokenizer import build_tokenizer
    from memlab.eval.hub import load_checkpoint
    from memlab.models.lm import check_sampling

    if args.init == (args.checkpoint is not None):
        raise MemlabError("give exactly one of --checkpoint DIR or --init")
    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                   spell=lambda name: "--" + name.replace("_", "-"))  # before the model loads, as generate will
    check_seed(args)
    torch.manual_seed(args.seed)
    if args.checkpoint is not None and (args.variant, args.model_size) != (None, None):  # (they had been ignored)
        raise MemlabError("--variant and --model-size describe a fresh model (--init); a checkpoint has its own")
    if args.init:
        tokenizer = build_tokenizer("byte")
        variant = "baseline" if args.variant is None else args.variant  # ("" is an unknown variant)
        size = "tiny" if args.model_size is None else args.model_size
        model = memlab.build_model(variant, size, vocab_size=tokenizer.vocab_size)
    else:
        model, tokenizer, *_ = load_checkpoint(args.checkpoint, "cpu")  # refuses a tokenizer of another model
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError:  # (bytes the shell passed that are not UTF-8: a traceback had followed)
        raise MemlabError("--prompt is not UTF-8 text") from None
    ids = torch.tensor([tokenizer.encode(args.prompt)])
    if ids.shape[1] == 0:
        raise MemlabError("the prompt encodes to no token")
    out = model.eval().generate(
        ids, args.max_new_tokens, args.temperature, args.top_k, tokenizer.eos_id,
        torch.Generator().manual_seed(args.seed), args.top_p,
    )
    new = out[0, ids.shape[1] :].tolist()
    if new[-1:] == [tokenizer.eos_id]:  # the end of the text, not a part of it (it had printed <|eos|>)
        new = new[:-1]
    print(args.prompt + tokenizer.decode_continuation(ids[0].tolist(), new))


# ---------------------------------------------------------------- data prepare


@dataclass
class DataPrepareArgs:
    """Tokenise a corpus into memory-mapped train/val token shards (reused when up to date)."""

    source: str
    """stdlib-code, stdlib-docs, hf:NAME[:SPLIT] or files:GLOB"""
    out: str
    """output directory: shards.json, {train,val}_NNN.bin and the tokenizer"""
    tokenizer: str = "bpe"
    """bpe (trained on the corpus), byte, a run/checkpoint/export directory (its tokenizer), or a local HF name/path"""
    vocab_size: Annotated[int | None, DefaultInDoc] = None
    """the vocabulary size of a bpe tokenizer trained here (default: 8192)"""
    val_fraction: float = 0.01
    """fraction of documents (chosen by a hash of their text) in the validation split"""
    split_seed: int = 0
    max_docs: int | None = None
    text_field: Annotated[str | None, DefaultInDoc] = None
    """field/column holding the text (default: text, content, story, code or document)"""
    streaming: bool = False
    """hf: stream the dataset instead of loading it from the local cache"""
    bpe_train_bytes: int = 10_000_000
    """characters of text the BPE is trained on (the first documents of the training split, the last whole)"""
    force: bool = False
    """rebuild even when the shards are up to date"""


def run_data_prepare(args: DataPrepareArgs) -> None:
    from memlab.data.sources import open_source
    from memlab.data.text import BPE_VOCAB_SIZE, prepare_shards

    if args.vocab_size is not None and args.tokenizer != "bpe":  # (it had been ignored)
        raise MemlabError(f"--vocab-size sizes a bpe tokenizer trained here; --tokenizer {args.tokenizer} has its own")
    source = open_source(args.source, text_field=args.text_field, streaming=args.streaming)
    vocab_size = BPE_VOCAB_SIZE if args.vocab_size is None else args.vocab_size  # (0 had become 8192)
    result = prepare_shards(
        source, args.tokenizer, args.out, vocab_size=vocab_size, val_fraction=args.val_fraction,
        split_seed=args.split_seed, max_docs=args.max_docs, bpe_train_bytes=args.bpe_train_bytes,
        force=args.force, progress=True,
    )
    print(result.summary())


# ------------------------------------------------------------------------ eval


@dataclass
class EvalArgs:
    """Evaluate a checkpoint: algorithmic, longctx, lm, ablation, selftest (or all) suites."""

    checkpoint: str
    """a run directory, a checkpoint (checkpoints/step_N) or a model directory"""
    suite: str = "all"
    """algorithmic, longctx, lm, ablation, selftest, lm-eval or all (all: every suite but lm-eval)"""
    out_dir: Annotated[str | None, DefaultInDoc] = None
    """where results_<suite>.json and plots go (default: eval/ of the run)"""
    options: Annotated[EvalOptions, tyro.conf.arg(name="")] = field(default_factory=EvalOptions)


def run_eval(args: EvalArgs) -> None:
    from memlab.eval.hub import evaluate, summary_lines

    doc = evaluate(args.checkpoint, args.suite, args.out_dir, args.options, progress=True)
    print("\n".join(summary_lines(doc)))


# --------------------------------------------------------------------- compare


@dataclass
class CompareArgs:
    """Compare evaluated runs: a table (terminal, markdown, CSV), verdicts against the baseline, plots."""

    runs: tyro.conf.Positional[list[str]]
    """run directories (each holding eval/results_*.json)"""
    out_dir: str = "compare"
    baseline: Annotated[str | None, DefaultInDoc] = None
    """run name or variant of the baseline (default: the 'baseline' variant, else the first run)"""
    aggregate_seeds: bool = False
    """average the runs of each variant (mean and interval over seeds)"""
    min_alg_gain: float = 0.05
    """win criterion: algorithmic accuracy gain over the baseline (0.05 = 5 points)"""
    max_time_ratio: float = 2.0
    """win criterion: at most this multiple of the baseline's training time"""
    max_ppl_ratio: float = 1.5
    """win criterion (no collapse): at most this multiple of the baseline's perplexity"""


def run_compare(args: CompareArgs) -> None:
    from memlab.analysis.compare import Criteria, compare

    criteria = Criteria(args.min_alg_gain, args.max_time_ratio, args.max_ppl_ratio)
    result = compare(args.runs, args.out_dir, args.baseline, args.aggregate_seeds, criteria)
    print(result.terminal)
    print(f"\nwrote {', '.join(str(f) for f in result.files)}")


# ----------------------------------------------------------------------- train


def run_train(args: TrainArgs) -> None:
    import json

    from memlab.train import train

    main_process = os.environ.get("RANK", "0") == "0"
    _log_progress("memlab", quiet=not main_process)
    run_dir = train(args.to_config())
    if main_process:
        summary = json.loads((run_dir / "summary.json").read_text())
        final, acc = summary["final"], summary["final"]["acc"] or {}
        print(f"run: {run_dir}  steps: {summary['steps']}  tokens: {summary['tokens_seen']}  "
              f"loss: {final['loss']}  val_ppl: {final['val_ppl']}  "
              f"mean task accuracy: {sum(acc.values()) / len(acc) if acc else None}")


# ---------------------------------------------------------------------- export


@dataclass
class ExportArgs:
    """Export a model as a self-contained directory: config, weights, tokenizer, model card."""

    checkpoint: str
    """a run directory, a checkpoint (checkpoints/step_N), a model directory or an export"""
    out: str
    """the directory to write (config.json, model.safetensors, tokenizer files, README.md)"""
    overwrite: bool = False
    """replace a non-empty --out"""


def run_export(args: ExportArgs) -> None:
    from memlab.export import export

    out = export(args.checkpoint, args.out, args.overwrite)
    print(f"exported to {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))


# ----------------------------------------------------------------------- scale


@dataclass
class ScaleArgs:
    """Train a ladder of sizes per variant; fit L(N) = a N^-alpha + c and L(FLOPs); plot; go/no-go verdict."""

    variant: Annotated[list[str], tyro.conf.UseAppendAction] = field(default_factory=list)
    """a variant to scale (repeat the flag, or a,b); default: the --config recipe's, else baseline"""
    sizes: str = "1M,2M,4M,8M"
    """comma-separated presets (tiny, 125M), width/depth pairs (d256l4) or parameter counts (1M, 2.5M, 300K);
    a decisive verdict needs more than 3 (3 sizes fit the 3 parameters of the law exactly), each measured on at least
    10 validation documents (--eval-tokens), or 6 sizes without per-document losses"""
    tokens: int | None = None
    """training tokens of every rung"""
    tokens_per_param: float | None = None
    """training tokens per non-embedding parameter (the ladder's N); Chinchilla's 20 is per total parameter,
    embeddings included, so 20 here trains on fewer tokens than Chinchilla's rule"""
    out_dir: str = "scaling"
    """the ladder: <out_dir>/<variant>/<size>/ runs, data/, scaling.json, scaling.md, scaling.png"""
    config: str | None = None
    """a `memlab train` YAML used as the recipe of every rung; what it does not set is language modelling only"""
    corpus: Annotated[str | None, DefaultInDoc] = None
    """recipe overrides (default: from --config, else memlab train's defaults): the text corpus"""
    data_dir: Annotated[str | None, DefaultInDoc] = None
    """prepared shards shared by every rung (default: <out_dir>/data, prepared before the first rung)"""
    tokenizer: Annotated[str | None, DefaultInDoc] = None
    """recipe override (default: the recipe's): the tokenizer"""
    seq_len: Annotated[int | None, DefaultInDoc] = None
    """recipe override (default: the recipe's): tokens per training sequence"""
    batch_size: Annotated[int | None, DefaultInDoc] = None
    """recipe override (default: the recipe's): sequences per step"""
    lr: Annotated[float | None, DefaultInDoc] = None
    """recipe override (default: the recipe's): the peak learning rate"""
    eval_tokens: Annotated[int | None, DefaultInDoc] = None
    """validation tokens measured per rung (their windows drive the bootstrap; default: the recipe's)"""
    device: Annotated[str | None, DefaultInDoc] = None
    """recipe override (default: the recipe's, else auto)"""
    seed: int = 0
    """training seed of every rung, and the bootstrap's"""
    aspect: float = 32.0
    """size rule: the width/depth ratio aimed at for parameter-count sizes"""
    bootstrap: int = 1000
    """bootstrap replicates of the interval for alpha"""


def run_scale(args: ScaleArgs) -> None:
    import dataclasses
    from pathlib import Path

    from memlab.analysis.ladder import default_recipe, run_ladder
    from memlab.train.config import TrainConfig

    recipe = TrainConfig.from_yaml(args.config, base=default_recipe()) if args.config else default_recipe()
    given = {k: getattr(args, k) for k in ("corpus", "data_dir", "tokenizer", "seq_len", "batch_size", "lr",
                                           "eval_tokens", "device") if getattr(args, k) is not None}
    recipe = dataclasses.replace(recipe, seed=args.seed, **given).validate()
    # the recipe's variant by default (a run's config.yaml as the recipe had scaled baseline)
    variants = [v for item in args.variant or [recipe.variant] for v in item.split(",") if v]
    if not variants:  # (--variant "" had written an empty report)
        raise MemlabError("--variant is empty; name a variant (memlab info --all lists them)")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    run_ladder(variants, sizes, recipe, args.out_dir, args.tokens, args.tokens_per_param, args.aspect,
               args.bootstrap, args.seed)
    print((Path(args.out_dir) / "scaling.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out_dir}/scaling.json, scaling.md, scaling.png")


# ----------------------------------------------------------------------- study


def run_study(args: StudyConfig) -> None:
    from memlab.analysis.study import run_study as study

    result = study(args)
    print(result.comparison.terminal)
    print(f"\nwrote {result.report}")


# ----------------------------------------------------------------------- bench


def run_bench(args: BenchConfig) -> None:
    from memlab.analysis.speed import markdown_report
    from memlab.analysis.speed import run_bench as bench

    print(markdown_report(bench(args)))
    print(f"\nwrote {args.output_dir}/bench.json, bench.md, bench.png")


# ----------------------------------------------------------------------- probe


@dataclass
class ProbeArgs:
    """Probe what a model's memory slots store: routing, gates, alphas, domains or trajectory."""

    checkpoint: str
    """a run directory, a checkpoint (checkpoints/step_N) or a model directory; trajectory: a run directory"""
    probe: str = "routing"
    """routing, gates, alphas, domains or trajectory"""
    out_dir: Annotated[str | None, DefaultInDoc] = None
    """where <probe>_probe_step<N>.json and .png go (default: probes/ of the run)"""
    options: Annotated[ProbeOptions, tyro.conf.arg(name="")] = field(default_factory=ProbeOptions)


def run_probe(args: ProbeArgs) -> None:
    from memlab.eval.schema import read_results
    from memlab.probes import run_probe as probe

    written = probe(args.checkpoint, args.probe, args.out_dir, args.options)
    figures = [written.parent / name for name in read_results(written)["results"]["figures"]]
    print(f"wrote {', '.join(str(f) for f in [written, *figures])}")  # (the figures had gone to the log)


# ---------------------------------------------------------------------- main

COMMANDS: dict[str, tuple[type, Callable[[Any], None]]] = {
    "info": (InfoArgs, run_info),
    "generate": (GenerateArgs, run_generate),
    "data prepare": (DataPrepareArgs, run_data_prepare),
    "eval": (EvalArgs, run_eval),
    "compare": (CompareArgs, run_compare),
    "study": (StudyConfig, run_study),
    "export": (ExportArgs, run_export),
    "scale": (ScaleArgs, run_scale),
    "train": (TrainArgs, run_train),
    "probe": (ProbeArgs, run_probe),
    "bench": (BenchConfig, run_bench),
}


def _one_line(tyro_message: str) -> str:
    """The first content line of tyro's boxed error message, with the flags it lists when it is a
    heading ("Missing from memlab probe: --checkpoint")."""
    raw = [text for line in tyro_message.splitlines() if (text := line.strip().strip("│").strip())]
    if len(raw) > 1 and raw[1].startswith("---"):  # a title over a rule: tyro's layout where stdout is not UTF-8
        raw = raw[1:]
    lines = []
    for text in raw:
        if text.startswith("For full helptext"):
            break
        if not text.startswith(("╭", "╰", "─", "---")):
            lines.append(text)
    if not lines:
        return "invalid arguments"
    flags = [text.split()[0] for text in lines[1:] if text.startswith("--")]
    if lines[0].endswith(":") and lines[1:2] and lines[1].startswith("--"):  # a list of flags (not a value wrapped)
        return f"{lines[0]} {', '.join(flags)}"
    first = lines[0]  # the box wraps a long message (a list of choices) at the terminal's width: join it back
    for text in lines[1:]:
        if first.endswith((".", ")")) or text.startswith(("--", "Argument", "Usage")):
            break
        first += " " + text
    return first


_MISSING_VALUE = re.compile(r"Missing value for argument '(--[\w.-]+)'")


def _with_dash_value_advice(message: str, argv: list[str]) -> str:
    """``message``, with how to give a value that starts with '-' where it is the missing value of a
    flag followed by one (``--prompt -x`` reads -x as a flag)."""
    missing = _MISSING_VALUE.match(message)
    if missing is None:
        return message
    flag = missing.group(1)
    for given, following in zip(argv, argv[1:]):
        if "--" + given[2:].replace("_", "-") == flag and following.startswith("-"):
            return f"{message.rstrip('.')}: {following!r} reads as a flag; write {flag}={shlex.quote(following)}"
    return message


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = sorted(COMMANDS)
    if not argv:
        fail(f"give a command: {', '.join(names)} (memlab --help describes them)")
    if argv[0] in ("-h", "--help"):
        print("usage: memlab {" + ",".join(names) + "} [--help] | --version\n" + _listing(names))
        sys.exit(0)
    if argv[0] in ("-V", "--version"):  # (what a results file's memlab_version will say)
        from memlab import __version__

        print(f"memlab {__version__}")
        sys.exit(0)
    command = argv[0]
    if len(argv) > 1 and f"{argv[0]} {argv[1]}" in COMMANDS:  # two-word commands: memlab data prepare
        command, argv = f"{argv[0]} {argv[1]}", argv[1:]
    if subcommands := [n for n in names if n.startswith(f"{command} ")]:  # memlab data [--help]
        if argv[1:2] in (["-h"], ["--help"]):
            words = ",".join(n.split()[1] for n in subcommands)
            print(f"usage: memlab {command} {{{words}}} [--help]\n" + _listing(subcommands))
            sys.exit(0)
        fail(f"give a subcommand: {', '.join(subcommands)} (memlab {command} --help describes them)")
    if command not in COMMANDS:
        fail(f"unknown command {command!r}; valid choices: {', '.join(names)}")
    if command != "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every process would do the whole job
        fail(f"memlab {command} runs in one process; under torchrun only memlab train does")
    args_type, run = COMMANDS[command]
    try:  # a command may take its defaults from a file (--config run.yaml)
        default = args_type.defaults_from(argv[1:]) if hasattr(args_type, "defaults_from") else None
    except MemlabError as e:
        fail(str(e))
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = tyro.cli(args_type, args=argv[1:], default=default, prog=f"memlab {command}")
    except SystemExit as e:
        if e.code not in (0, None):
            fail(f"{_with_dash_value_advice(_one_line(stderr.getvalue()), argv)} (see memlab {command} --help)")
        raise
    if command != "train":  # (which logs warnings alone on the processes after the first)
        _log_progress(f"memlab {command}", quiet=command not in LOGS_PROGRESS)  # (export's warnings had no prefix)
    previous = signal.signal(signal.SIGTERM, _terminate)  # a scheduler's preemption ends a run as Ctrl-C does
    try:
        refuse_empty_options(args)
        run(args)
    except (MemlabError, OSError) as e:  # OSError: the file system refused (no such directory, no permission, full)
        fail(str(e))
    except KeyboardInterrupt as e:  # a training run has recorded the interruption and kept its checkpoints
        stop_interrupted(terminated=isinstance(e, Terminated))
    finally:
        signal.signal(signal.SIGTERM, previous)


def refuse_empty_options(args: object) -> None:
    """Refuse an option given as '' (an unset shell variable, an empty YAML value): no memlab option means
    anything there (an empty --out-dir had written into the working directory, an empty --corpus had
    trained on the default one)."""
    for f in dataclasses.fields(args):  # type: ignore[arg-type]
        value = getattr(args, f.name)
        if dataclasses.is_dataclass(value):  # (options whose flags have no prefix: --corpus of memlab eval)
            refuse_empty_options(value)
        elif value == "":
            raise MemlabError(f"--{f.name.replace('_', '-')} is empty")


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled as Ctrl-C is (the trainer records it and keeps its checkpoints)."""


def _terminate(signum, frame) -> None:
    raise Terminated


def _listing(names: list[str]) -> str:
    """A line per command: its name and the first line of its arguments' docstring."""
    return "\n".join(f"  {n:<14} {(COMMANDS[n][0].__doc__ or '').strip()}" for n in names)


if __name__ == "__main__":
    main()
