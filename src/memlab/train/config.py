"""The training configuration: one flat dataclass, the flag names of the source experiments.

``TrainConfig`` is what :func:`memlab.train.train` takes.  ``model`` holds overrides of any
:class:`~memlab.config.ModelConfig` field (dotted names for sub-configs: ``{"gdn.chunk_size": 32}``).
``TrainArgs`` is the command line's view: the same fields, ``--config run.yaml`` for defaults, and
one optional flag per model field (``--d-model 256``, ``--gdn.chunk-size 32``), all derived from
the dataclasses.  Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro
import yaml

from memlab.cli_help import DefaultInDoc, Precision
from memlab.config import ModelConfig, build_config, check_types, flat_overrides, from_dict
from memlab.errors import MemlabError, check_at_least, check_finite, check_seed, choose

ALG_TASKS = [
    "mod_add", "parity", "addition", "multiplication", "copy", "reverse", "dyck", "chain", "compare", "successor"
]

RUN_FORMAT = "memlab-train-v1"  # the config.yaml of a run: {format, train: <these fields>, model_config, data}
TRAINING_RECORD = "training.yaml"  # an export's copy of the config.yaml its model was trained under

# Fields that do not change what is trained: a run directory may be re-run with other values.
MODEL_FIELDS = frozenset({"variant", "model_size", "model"})  # what builds the model; a resumed run must keep it
OPERATIONAL_FIELDS = frozenset(
    {"output_dir", "resume", "overwrite", "progress", "tensorboard", "keep_last", "save_interval", "log_interval",
     "compile", "device"}
)


@dataclass
class TrainConfig:
    """Train a model variant on algorithmic tasks, retrieval tasks and text; resumable, DDP-ready."""

    # ------------------------------------------------------------------ model
    variant: str = "baseline"
    """model variant (`memlab info --all` lists them)"""
    model_size: str = "tiny"
    """size preset (tiny, nano, 50M, 125M, ...) or a width/depth pair like d256l4"""
    model: Annotated[dict[str, Any], tyro.conf.Suppress] = field(default_factory=dict)
    """ModelConfig overrides, dotted names for sub-configs ({"gdn.chunk_size": 32})"""

    # ------------------------------------------------------------------- data
    tokenizer: Annotated[str | None, DefaultInDoc] = None
    """byte, bpe (trained on the corpus; vocab_size of the size preset), the directory of a saved one (a run,
    checkpoint or export) or a local Hugging Face tokenizer; default: a prepared --data-dir's, else bpe"""
    corpus: Annotated[str | None, DefaultInDoc] = None
    """text source: stdlib-code, stdlib-docs, hf:NAME[:SPLIT], files:GLOB, or none (tasks only);
    default: the shards of a prepared --data-dir, else stdlib-code"""
    text_field: Annotated[str | None, DefaultInDoc] = None
    """field/column of a files:/hf: corpus's rows holding the text (default: text, content, story, code or document)"""
    data_dir: Annotated[str | None, DefaultInDoc] = None
    """where the corpus's token shards are (or are prepared); default: a cache under ~/.cache/memlab"""
    corpus_max_docs: int | None = None
    """use only the first N documents of the corpus"""
    val_fraction: float = 0.01
    """fraction of the corpus's documents held out for validation"""
    alg_tasks: list[str] = field(default_factory=lambda: list(ALG_TASKS))
    """algorithmic tasks trained and evaluated"""
    alg_tokens: int = 200_000
    """split curriculum: algorithmic batches only for the first alg_tokens tokens, then language"""
    total_tokens: int = 400_000
    """tokens to train on (all ranks, all micro-batches): token positions, seq_len x rows, a task batch's
    padding included (as in tokens_seen and tokens/s)"""
    replay_fraction: float = 0.0
    """fraction of language-phase batches that replay algorithmic tasks"""
    retrieval_tasks: list[str] = field(default_factory=list)
    """retrieval tasks for mixed LM + retrieval training (niah, sniah2:n_keys=4, mqar, ...)"""
    retrieval_ratio: float = 0.0
    """fraction of language-phase batches that are retrieval examples"""
    use_task_curriculum: bool = False
    """per-task competence tracking: raise a task's difficulty once its evaluated accuracy shows it is learned
    (adaptive: at least curriculum_min_task_evals evaluations per level)"""
    task_curriculum_strategy: Literal["competence", "dag"] = "competence"
    """competence: per-task levels; dag: also staged unlocking of tasks by prerequisites"""
    curriculum_cooldown: int = 100
    """steps between difficulty changes of a task"""
    curriculum_min_task_evals: int = 3
    """evaluations of a task before its difficulty may change"""
    curriculum_jitter: float = 0.1
    """probability of replaying an easier level of a task"""
    curriculum_threshold: float = 0.9
    """accuracy (EMA) at which a task counts as learned"""
    curriculum_ema_decay: float = 0.5
    """weight of the old value in a task's accuracy EMA (restarted at each level)"""
    curriculum_dag_patience: int = 0
    """dag: unlock the next stage after this many task observations (one per task per evaluation) without
    progress (0: never)"""
    seq_len: int = 256
    batch_size: int = 16
    """sequences per micro-batch per process"""
    grad_accum: int = 1
    """micro-batches per optimizer step (global batch = batch_size x grad_accum x processes)"""

    # ----------------------------------------------------------- optimisation
    lr: float = 1e-3
    """peak learning rate"""
    min_lr_ratio: float = 0.1
    """the cosine schedule ends at min_lr_ratio x lr"""
    warmup: int = 50
    """linear warm-up steps"""
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    """clip the global gradient norm (0: off)"""
    precision: Precision = "auto"
    """autocast dtype; auto: bf16 on a CUDA GPU that has it, fp16 on one that has not, fp32 on the CPU"""
    compile: bool = False
    """torch.compile the model"""
    fsdp: bool = False
    """shard parameters, gradients and optimizer state with FSDP2 (fully_shard) under torchrun"""
    max_bad_steps: int = 10
    """stop after this many consecutive steps with a non-finite loss or gradient"""
    seed: int = 0
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:N"""

    # ------------------------------------------------------ evaluation & output
    eval_interval: int = 100
    """steps between evaluations (0: only at the end)"""
    eval_samples: int = 100
    """examples per task at each evaluation"""
    eval_max_new_tokens: int = 32
    """an answer (with its EOS) longer than this counts as wrong, as capped greedy decoding would"""
    eval_tokens: int = 16384
    """validation tokens of the corpus per evaluation"""
    log_interval: int = 10
    """steps between lines of metrics.jsonl"""
    save_interval: int = 100
    """steps between checkpoints (0: only at the end)"""
    keep_last: int = 2
    """checkpoints kept (0: all)"""
    output_dir: Annotated[str | None, DefaultInDoc] = None
    """the run directory; default runs/<variant>_<model_size>"""
    resume: bool = False
    """continue the run in --output-dir from its last checkpoint, with the same model and global batch;
    a larger --total_tokens extends it (the learning-rate schedule then follows the new total)"""
    overwrite: bool = False
    """delete the run in --output-dir and start again"""
    progress: bool = True
    """show a progress bar"""
    tensorboard: bool = False
    """also log to TensorBoard (needs the tensorboard package)"""

    # ---------------------------------------------------------------- helpers
    def __post_init__(self) -> None:
        self.model = flat_overrides(self.model or {})  # one form, as config.yaml records it
        if self.data_dir:  # absolute, as config.yaml records it: a resume from another directory had prepared
            self.data_dir = str(Path(self.data_dir).expanduser().resolve())  # the corpus afresh in a stray dir

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.variant}_{self.model_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return from_dict(cls, d)

    @classmethod
    def from_yaml(cls, path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
        """Options from a YAML file: a mapping of fields, or a run's own config.yaml; the fields
        it does not set are ``base``'s (default: memlab train's defaults)."""
        data = read_yaml(path)
        if data.get("format") == RUN_FORMAT:
            data = data.get("train")
            if not isinstance(data, dict):
                raise MemlabError(f"{path} holds no `train:` mapping of training options")
        check_types(cls, data, path)
        check_types(ModelConfig, data.get("model") or {}, path, prefix="model.")
        try:
            return cls.from_dict({**(base.to_dict() if base else {}), **data})
        except MemlabError as e:  # an unknown key: which file holds it
            raise MemlabError(f"{path}: {e}") from None

    def differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """Fields (other than the operational ones) whose values differ: name -> (self's, other's); the
        variant, size and model overrides only where they build another model (``gdn: {chunk_size: 16}``
        and ``gdn.chunk_size: 16``, or a size's own width given again, had been a change of model)."""
        a, b = self.to_dict(), other.to_dict()
        out = {k: (a[k], b[k]) for k in a if k not in OPERATIONAL_FIELDS and a[k] != b.get(k)}
        if MODEL_FIELDS & out.keys() and (built := self.model_config()) is not None and built == other.model_config():
            out = {k: v for k, v in out.items() if k not in MODEL_FIELDS}
        return out

    def model_config(self) -> ModelConfig | None:
        """The model these options build; None where they build none (a value the model refuses)."""
        try:
            return build_config(self.variant, self.model_size, **self.model)
        except MemlabError:
            return None

    def changes_from(self, previous: TrainConfig) -> str:
        """The differences from ``previous``, for an error message (:func:`shown_changes`; '' if none)."""
        return shown_changes(self.differences(previous))

    def validate(self) -> TrainConfig:
        check_finite(self)
        check_at_least(self, ("seq_len", "batch_size", "grad_accum", "total_tokens", "eval_samples", "max_bad_steps",
                              "log_interval", "eval_max_new_tokens", "curriculum_min_task_evals", "corpus_max_docs"),
                       1, flag_separator="_")  # fmt: skip
        check_at_least(self, ("alg_tokens", "warmup", "eval_interval", "save_interval", "keep_last", "grad_clip",
                              "weight_decay", "eval_tokens", "curriculum_cooldown", "curriculum_dag_patience"),
                       0, flag_separator="_")  # fmt: skip
        check_seed(self, flag_separator="_")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise MemlabError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr} and {self.min_lr_ratio}")
        for name, low, high in (("val_fraction", 0, 1), ("beta1", 0, 1), ("beta2", 0, 1),
                                ("curriculum_ema_decay", 0, 1)):
            if not low <= getattr(self, name) < high:
                raise MemlabError(f"--{name} must be in [{low}, {high}), got {getattr(self, name)}")
        for name in ("replay_fraction", "retrieval_ratio", "curriculum_jitter", "curriculum_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise MemlabError(f"--{name} must be in [0, 1], got {getattr(self, name)}")
        if self.replay_fraction + self.retrieval_ratio > 1:
            raise MemlabError(f"--replay_fraction + --retrieval_ratio must be at most 1, got "
                              f"{self.replay_fraction} + {self.retrieval_ratio}")
        if self.retrieval_ratio > 0 and self.alg_tokens >= self.total_tokens:  # (its tasks had counted as trained)
            raise MemlabError(f"--retrieval_ratio shares out the language phase, which starts after --alg_tokens "
                              f"{self.alg_tokens}, at or past --total_tokens {self.total_tokens}: no retrieval batch "
                              "would be drawn; lower --alg_tokens")
        if self.resume and self.overwrite:
            raise MemlabError("--resume and --overwrite exclude each other")
        choose("precision", self.precision, typing.get_args(Precision))
        choose("task curriculum strategy", self.task_curriculum_strategy, ("competence", "dag"))
        return self


def shown_changes(differences: dict[str, tuple[Any, Any]], shown: int = 4) -> str:
    """The first ``shown`` of :meth:`TrainConfig.differences` as ``name: previous -> this``."""
    return ", ".join(f"{k}: {old!r} -> {new!r}" for k, (new, old) in list(differences.items())[:shown])


def training_record(directory: Path) -> Path | None:
    """The config.yaml a training run (or checkpoint) wrote in ``directory``, or an export's copy of
    it (TRAINING_RECORD); None where there is neither."""
    return next((p for p in (Path(directory) / "config.yaml", Path(directory) / TRAINING_RECORD) if p.is_file()), None)


def run_config_section(run_dir: Path, section: str) -> dict[str, Any]:
    """One section (``train``, ``data``) of a training record (:func:`training_record`); {} where there is none."""
    path = training_record(run_dir)
    value = read_yaml(path).get(section) if path is not None else None
    return value if isinstance(value, dict) else {}


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, but a number in exponent form without a dot (``3e-4``) is a float, as
    YAML 1.2 and the command line have it (PyYAML had read a string, which `lr` then refused), and a key
    given twice in one mapping is an error, as YAML has it (PyYAML had kept the last without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # (``<<: *base``, whose keys the mapping may override)
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice (line {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def read_yaml(path: str | Path) -> dict[str, Any]:
    if not str(path):  # (Path("") is ".": "no such config file: .")
        raise MemlabError("--config needs a YAML file")
    path = Path(path)
    if path.is_dir():
        raise MemlabError(f"--config {path} is a directory; give its YAML file (a run's is config.yaml)")
    if not path.is_file():
        raise MemlabError(f"no such config file: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_YamlLoader) or {}
    except yaml.YAMLError as e:
        raise MemlabError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise MemlabError(f"{path} is not a text (UTF-8) YAML file") from None
    if not isinstance(data, dict):
        raise MemlabError(f"{path} must hold a mapping of training options")
    return data


# ---------------------------------------------------------------- command line


def _optional_fields(cls: type, skip: tuple[str, ...] = ()) -> type:
    """A dataclass mirroring ``cls`` with every field optional and ``None`` by default (= not given)."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            sub = _optional_fields(kind)
            fields.append((f.name, sub, dataclasses.field(default_factory=sub)))
        else:
            doc = tyro.conf.arg(help="model option (default: set by --variant and --model-size)", help_behavior_hint="")
            fields.append((f.name, Annotated[kind | None, doc], dataclasses.field(default=None)))
    return dataclasses.make_dataclass(f"{cls.__name__}Overrides", fields)


ModelOverrides = _optional_fields(ModelConfig, skip=("variant", "size"))


def _given(flags: Any, prefix: str = "") -> dict[str, Any]:
    """The dotted names and values of the fields of ``flags`` that were set (not None)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(flags):
        value = getattr(flags, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_given(value, f"{prefix}{f.name}."))
        elif value is not None:
            out[prefix + f.name] = value
    return out


@dataclass
class TrainArgs(TrainConfig):
    """Train a model variant on algorithmic tasks, retrieval tasks and text; resumable, DDP-ready."""

    config: str | None = None
    """a YAML file of training options (and a `model:` mapping of overrides) used as defaults"""
    model_overrides: Annotated[ModelOverrides, tyro.conf.arg(name="", prefix_name=False)] = field(  # type: ignore[valid-type]
        default_factory=ModelOverrides
    )

    @classmethod
    def defaults_from(cls, argv: list[str]) -> TrainArgs | None:
        """The defaults that ``--config FILE`` in ``argv`` sets (None without one)."""
        paths = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
        paths += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
        if len(paths) > 1:  # (the last one had been used, the others dropped)
            raise MemlabError(f"--config is given {len(paths)} times ({', '.join(paths)}); give one file")
        if not paths:
            return None
        return cls(**dataclasses.asdict(TrainConfig.from_yaml(paths[0])), config=paths[0])

    def to_config(self) -> TrainConfig:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        values["model"] = {**self.model, **_given(self.model_overrides)}
        return TrainConfig(**values).validate()
