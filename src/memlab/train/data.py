"""The run's data from a TrainConfig: tokenizer, token shards and the curriculum (built on memlab.data).

- ``--corpus none``: tasks only, byte tokenizer unless another is named;
- ``--data-dir DIR`` holding prepared shards (and no ``--corpus``): those shards (their sha256
  checksums verified) and their tokenizer;
- otherwise the corpus (default ``stdlib-code``) is prepared once into ``--data-dir`` or a cache
  directory (``$MEMLAB_CACHE``, default ``~/.cache/memlab``) and reused by later runs; the cache
  directory is named by a hash of the resolved request (source fingerprint, tokenizer, split), so
  other data never replaces shards that an earlier run read.

The curriculum draws the *global* batch of every step (all processes, all micro-batches) from
one seeded stream, and each process takes its own rows: the data a step trains on does not
depend on the number of processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from memlab.config import size_fields
from memlab.data.curriculum import Curriculum, CurriculumConfig
from memlab.data.shards import HEADER_FILE, SPLITS, TokenShards, data_checksum, read_header, verify_split
from memlab.data.sources import open_source
from memlab.data.text import data_request, prepare_shards
from memlab.data.tokenizer import Tokenizer, load_tokenizer
from memlab.errors import MemlabError
from memlab.train.config import TrainConfig
from memlab.train.distributed import Dist

log = logging.getLogger(__name__)
DEFAULT_CORPUS, NO_CORPUS = "stdlib-code", "none"


@dataclass
class RunData:
    tokenizer: Tokenizer
    data_dir: Path | None  # prepared shards of the corpus; None for tasks only
    corpus: str
    curriculum: Curriculum
    val: TokenShards | None  # validation split, None when there is no corpus or it is too small
    checksum: str | None  # data_checksum of the shards, recorded in the run's config; None for tasks only


def cache_dir() -> Path:
    return Path(os.environ.get("MEMLAB_CACHE", "~/.cache/memlab")).expanduser()


def bpe_vocab_size(cfg: TrainConfig) -> int:
    """The vocabulary a BPE tokenizer is trained with: ``vocab_size`` if overridden, else the size preset's."""
    return int(cfg.model.get("vocab_size") or size_fields(cfg.model_size)["vocab_size"])


def _check_tokenizer_request(spec: str, tokenizer: Tokenizer, where: Path) -> None:
    """A MemlabError unless tokenizer ``spec`` names the tokenizer that the shards in ``where`` use."""
    same = tokenizer.kind == "bpe" if spec == "bpe" else load_tokenizer(spec).hash == tokenizer.hash
    if not same:
        raise MemlabError(
            f"tokenizer mismatch: the shards in {where} were made with a {tokenizer.kind} tokenizer "
            f"({tokenizer.hash[:12]}), not --tokenizer {spec}; drop --tokenizer or choose another --data-dir"
        )


def _check_prepared_request(cfg: TrainConfig, request: dict, where: Path) -> None:
    """A MemlabError if --val_fraction or --corpus_max_docs, when set, differ from how ``where`` was prepared."""
    options = (("val_fraction", "val_fraction", TrainConfig.val_fraction), ("corpus_max_docs", "max_docs", None))
    for option, key, unset in options:  # (the option, its name in the request, its value when not set)
        value, used = getattr(cfg, option), request[key]
        if value != unset and value != used:
            raise MemlabError(
                f"the shards in {where} were prepared with {option}={used}, not --{option} {value}; "
                f"drop --{option} to use them, or name a new --data-dir to prepare the corpus with it"
            )


def _language_batches(cfg: TrainConfig) -> bool:
    """Whether the run draws language batches: a language phase that is not all replay and retrieval."""
    return cfg.alg_tokens < cfg.total_tokens and cfg.replay_fraction + cfg.retrieval_ratio < 1


def _prepared(cfg: TrainConfig, d: Dist) -> tuple[Tokenizer, Path | None, str]:
    """(tokenizer, shard directory or None, corpus name), preparing the shards if needed (main process first)."""
    explicit = Path(cfg.data_dir) if cfg.data_dir else None
    if cfg.corpus == NO_CORPUS:
        if explicit is not None or cfg.text_field is not None:
            raise MemlabError(f"--corpus none trains on tasks only; drop --{'data-dir' if explicit else 'text_field'}")
        if _language_batches(cfg):
            raise MemlabError(
                "--corpus none trains on tasks only: set --alg_tokens to --total_tokens "
                f"({cfg.total_tokens}), or name a corpus"
            )
        spec = cfg.tokenizer or "byte"
        if spec == "bpe":
            raise MemlabError("a bpe tokenizer is trained on a corpus; with --corpus none use --tokenizer byte")
        return load_tokenizer(spec), None, NO_CORPUS
    if explicit is not None and (explicit / HEADER_FILE).is_file():
        header = read_header(explicit)
        if cfg.corpus is not None and cfg.corpus != header["source"]:
            raise MemlabError(
                f"{explicit} holds shards of {header['source']}, not --corpus {cfg.corpus}; "
                "drop --corpus or choose another --data-dir"
            )
        _check_prepared_request(cfg, header["request"], explicit)
        if cfg.text_field is not None and open_source(header["source"], cfg.text_field).fingerprint != (
            header["request"]["fingerprint"]
        ):
            raise MemlabError(f"the shards in {explicit} were not prepared from text field {cfg.text_field!r} (or "
                              "their files changed since); drop --text_field, or name a new --data-dir")
        for split in SPLITS:
            verify_split(explicit, header, split)
        tokenizer = load_tokenizer(explicit)
        if cfg.tokenizer is not None:
            _check_tokenizer_request(cfg.tokenizer, tokenizer, explicit)
        return tokenizer, explicit, header["source"]
    corpus, spec = cfg.corpus or DEFAULT_CORPUS, cfg.tokenizer or "bpe"
    source, tokenizer = open_source(corpus, cfg.text_field), spec if spec == "bpe" else load_tokenizer(spec)
    options = {"vocab_size": bpe_vocab_size(cfg), "val_fraction": cfg.val_fraction, "max_docs": cfg.corpus_max_docs}
    directory = explicit or cache_dir() / "data" / _cache_name(corpus, spec, data_request(source, tokenizer, **options))
    if not d.is_main:
        d.barrier()  # the main process prepares, the others then reuse
    try:
        if d.is_main:
            log.info("preparing %s with the %s tokenizer in %s", corpus, spec, directory)
        result = prepare_shards(source, tokenizer, directory, **options, progress=d.is_main)
    finally:
        if d.is_main:
            d.barrier()
    return result.tokenizer, directory, corpus


def _cache_name(corpus: str, tokenizer: str, request: dict) -> str:
    """A readable cache directory name (corpus, tokenizer) made unique by a hash of the whole request."""
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{corpus}_{tokenizer}")[-64:].lstrip("-") + f"_{digest}"


def build_data(cfg: TrainConfig, d: Dist, run_tokenizer: Tokenizer | None, run_checksum: str | None = None) -> RunData:
    """The run's data; ``run_tokenizer`` (a resumed run's own) must be the one the shards use, and
    ``run_checksum`` (the ``shards_sha256`` it recorded) that of the shards: prepared again with
    other text, the directory would resume the run on other documents and another held-out split."""
    tokenizer, data_dir, corpus = _prepared(cfg, d)
    if run_tokenizer is not None and run_tokenizer.hash != tokenizer.hash:
        raise MemlabError(
            f"tokenizer mismatch: the run was trained with tokenizer {run_tokenizer.hash[:12]} but the data "
            f"{data_dir or corpus} uses {tokenizer.hash[:12]}; resume with the same --data-dir/--tokenizer "
            "or start a new run"
        )
    lm = None if data_dir is None else TokenShards(data_dir, "train", tokenizer, verify=False, checksum=run_checksum)
    if lm is not None and _language_batches(cfg) and lm.num_tokens < cfg.seq_len + 1:  # (had failed mid-run)
        raise MemlabError(
            f"the train split of {data_dir} has {lm.num_tokens} tokens, fewer than one window of "
            f"{cfg.seq_len + 1} (seq_len + 1); use a shorter --seq_len or more data"
        )
    val = None
    if data_dir is not None and cfg.eval_tokens > 0:
        val = TokenShards(data_dir, "val", tokenizer, verify=False)
        if val.num_sequential_windows(cfg.seq_len) == 0:
            log.warning("the validation split of %s is shorter than one window: no validation loss is measured%s",
                        data_dir, "; validation uses the tasks" if cfg.alg_tasks or cfg.retrieval_tasks else "")
            val = None
    curriculum = Curriculum(curriculum_config(cfg, d.world_size), tokenizer, lm=lm)
    return RunData(tokenizer, data_dir, corpus, curriculum, val, data_checksum(lm.header) if lm else None)


def curriculum_config(cfg: TrainConfig, world_size: int) -> CurriculumConfig:
    return CurriculumConfig(
        seq_len=cfg.seq_len,
        batch_size=cfg.batch_size * cfg.grad_accum * world_size,  # the global batch of one step
        seed=cfg.seed,
        tasks=list(cfg.alg_tasks),
        alg_tokens=cfg.alg_tokens,
        total_tokens=cfg.total_tokens,
        replay_fraction=cfg.replay_fraction,
        retrieval_tasks=list(cfg.retrieval_tasks),
        retrieval_ratio=cfg.retrieval_ratio,
        strategy=cfg.task_curriculum_strategy if cfg.use_task_curriculum else "uniform",
        threshold=cfg.curriculum_threshold,
        ema_decay=cfg.curriculum_ema_decay,
        cooldown_steps=cfg.curriculum_cooldown,
        min_evals=cfg.curriculum_min_task_evals,
        jitter=cfg.curriculum_jitter,
        dag_patience=cfg.curriculum_dag_patience,
    )
