"""The training loop: ``train(TrainConfig) -> run directory``.

One step draws the global batch from the curriculum, runs ``grad_accum`` micro-batches on this
process's rows (loss = answer-only cross-entropy + the model's auxiliary losses), clips the
gradient norm and takes an AdamW step at the scheduled learning rate.  A step whose loss or
gradient is not finite is skipped and counted.  Every ``eval_interval`` steps the model is
evaluated (validation loss, task accuracy), the plots are refreshed and ``best_model/`` is kept;
every ``save_interval`` steps a checkpoint is written.  Re-running on the same directory resumes
from the newest whole checkpoint and continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_model

import memlab
from memlab.config import build_config
from memlab.data.shards import WINDOW_PLACEMENT, read_header
from memlab.data.tasks import GRID_VERSION, IGNORE_INDEX, get_task
from memlab.data.tokenizer import load_tokenizer
from memlab.errors import MemlabError, check_dir_target
from memlab.jsonfile import read_json_object, write_json, write_text
from memlab.locks import LockHeld, lock_beside
from memlab.models.lm import WEIGHTS_FILE, LanguageModel
from memlab.paths import BEST_FILE, checkpoint_dirs, is_model_dir, latest_whole_checkpoint
from memlab.provenance import provenance
from memlab.staging import clear_directory
from memlab.train import checkpoint as ckpt
from memlab.train import distributed
from memlab.train.allocator import keep_freed_memory
from memlab.train.config import (
    MODEL_FIELDS,
    RUN_FORMAT,
    TrainConfig,
    read_yaml,
    run_config_section,
    shown_changes,
)
from memlab.train.data import RunData, build_data
from memlab.train.evaluate import EvalResult, evaluate
from memlab.train.metrics import MetricsLog, summary_writer
from memlab.train.optim import build_optimizer, lr_at, no_decay_names, set_lr
from memlab.train.plots import plot_accuracy, plot_loss

log = logging.getLogger(__name__)
RECORDED_BEST = "best_model.recorded"  # the best_model/ a newer one replaced, until a checkpoint records that
CONFIG_FILE, SUMMARY_FILE = "config.yaml", "summary.json"


class TrainingDiverged(MemlabError):
    """Too many consecutive steps with a non-finite loss or gradient."""


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) the run ``cfg`` describes; returns the run directory."""
    cfg.validate()
    d = distributed.setup(cfg.device)
    if d.device.type == "cpu":
        keep_freed_memory()
    try:
        _check_before_any_work(cfg, d)
        with _run_lock(cfg.run_dir, d):
            return Trainer(cfg, d).run()
    finally:
        distributed.teardown(d)


@contextlib.contextmanager
def _run_lock(run_dir: Path, d: distributed.Dist) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside the run directory for the run (main process): a second run into
    the same directory is refused (the two had interleaved one metrics.jsonl), on every process.
    Where the parent cannot hold the lock file (read-only), the run goes on without one."""
    lock, problem = None, None
    if d.is_main:
        try:
            check_dir_target(run_dir, "--output-dir")
            lock = lock_beside(run_dir)  # (a read-only parent had ended the run in a traceback: none then)
        except LockHeld as e:
            problem = (f"another memlab process is training in {run_dir} (it holds {e.path}); wait for it "
                       "or choose another --output-dir")
        except MemlabError as e:
            problem = str(e)
    problem = d.all_gather_object(problem)[0]  # (the other processes had waited for the main one forever)
    if problem:
        raise MemlabError(problem)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


# ------------------------------------------------------------------ run directory


def run_status(run_dir: Path) -> str | None:
    """The status summary.json records of the run in ``run_dir`` (None: no readable summary)."""
    try:
        return json.loads((run_dir / SUMMARY_FILE).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def run_completed(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` finished (its summary.json says ``completed``; an unreadable one does not)."""
    return run_status(run_dir) == "completed"


def read_run_config(run_dir: Path) -> TrainConfig:
    """The TrainConfig recorded in a run directory's config.yaml."""
    data = read_yaml(run_dir / CONFIG_FILE)
    if data.get("format") != RUN_FORMAT:
        raise MemlabError(f"{run_dir / CONFIG_FILE} is not the config of a memlab training run")
    return TrainConfig.from_yaml(run_dir / CONFIG_FILE)


def plan_start(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from (None: start afresh); refuses a directory holding another run."""
    run = cfg.run_dir
    occupied = run.is_dir() and any(run.iterdir())
    check_dir_target(run, "--output-dir")  # a file, or inside one
    if is_model_dir(run):
        raise MemlabError(f"--output-dir {run} is a checkpoint or model directory, not a run; choose another")
    if occupied and not (run / CONFIG_FILE).is_file():
        raise MemlabError(f"{run} is not empty and holds no memlab run ({CONFIG_FILE}); choose another --output-dir")
    if cfg.overwrite or not occupied:
        if cfg.resume:
            raise MemlabError(f"--resume: there is no run in {run} to resume")
        if occupied:
            read_run_config(run)  # refuse to delete what is not a training run
        return None
    previous = read_run_config(run)
    differences = cfg.differences(previous)
    model_changes = {k: v for k, v in differences.items() if k in MODEL_FIELDS}
    if model_changes and cfg.resume:
        raise MemlabError(f"--resume continues the model of {run}, which these settings change "
                          f"({shown_changes(model_changes)}); start a new run in another --output-dir")
    if "seed" in differences and cfg.resume:  # (config.yaml had said 7 of a run drawn with 0)
        new, old = differences["seed"]
        raise MemlabError(f"--resume continues the random stream of {run} (seed {old!r}); --seed {new} takes effect "
                          "in a new run only: give another --output-dir")
    if differences and not cfg.resume:
        advice = ("start a new run in another --output-dir" if model_changes  # (--resume had been advised)
                  else "pass --resume to continue it with these settings")
        raise MemlabError(f"{run} holds a different run ({shown_changes(differences)}); {advice} or --overwrite to "
                          "start again")
    latest = latest_whole_checkpoint(run)
    if latest is None and checkpoint_dirs(run):  # starting afresh would prune them: refuse, keep them
        raise MemlabError(
            f"no checkpoint in {run / 'checkpoints'} is whole (see the warnings above), so the run cannot be "
            "continued; start again with --overwrite"
        )
    if latest is None and cfg.resume:  # (it had started again from step 0 without a word)
        log.warning("--resume: %s holds no checkpoint (it stopped before its first save): training starts afresh", run)
    return latest


def _check_before_any_work(cfg: TrainConfig, d: distributed.Dist) -> None:
    """What can be refused before the data is prepared (which may take long) or a run directory touched:
    the model options, the window against the model's context, the task names, --fsdp without torchrun."""
    max_seq_len = build_config(cfg.variant, cfg.model_size, **cfg.model).max_seq_len
    if cfg.seq_len > max_seq_len:
        raise MemlabError(f"--seq_len {cfg.seq_len} exceeds the model's max_seq_len={max_seq_len}")
    for spec in (*cfg.alg_tasks, *cfg.retrieval_tasks):
        get_task(spec)
    if cfg.fsdp and not d.enabled:
        raise MemlabError("--fsdp shards over processes: launch with torchrun --nproc_per_node N (N >= 2)")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--precision`` on ``device`` (None: fp32); auto is bf16 (else fp16) on CUDA."""
    if precision == "auto":
        precision = "fp32"
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    """What results record of an autocast dtype (None: float32): ``bfloat16``, ``float32``."""
    return str(dtype or torch.float32).removeprefix("torch.")


def _autocast(precision: str, device: torch.device) -> tuple[torch.dtype | None, Any]:
    dtype = autocast_dtype(precision, device)
    return dtype, torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


# ------------------------------------------------------------------------ trainer


class Trainer:
    """One run: set up (or resume) in ``__init__``, train to ``total_tokens`` in :meth:`run`."""

    def __init__(self, cfg: TrainConfig, d: distributed.Dist) -> None:
        t0 = time.perf_counter()
        self.cfg, self.d, self.run_dir = cfg, d, cfg.run_dir  # (train() has run _check_before_any_work)
        resume_from = plan_start(cfg)
        if cfg.tensorboard:
            summary_writer()  # missing, it is refused before the run directory is touched
        run_tokenizer = load_tokenizer(resume_from) if resume_from is not None else None
        run_checksum = run_config_section(resume_from, "data").get("shards_sha256") if resume_from else None
        self.data: RunData = build_data(cfg, d, run_tokenizer, run_checksum)
        self.tokenizer = self.data.tokenizer

        # model, optimizer
        _seed_everything(cfg.seed)
        self.model_config = build_config(cfg.variant, cfg.model_size, **self._model_overrides())
        self.raw_model = LanguageModel(self.model_config)
        if resume_from is not None:
            try:
                load_model(self.raw_model, str(resume_from / WEIGHTS_FILE), strict=True)
            except Exception as e:  # safetensors raises several types for mismatched shapes or keys
                raise MemlabError(
                    f"the weights in {resume_from} do not fit this model ({str(e).splitlines()[0][:160]}); "
                    "resume with the run's model options or start again with --overwrite"
                ) from None
        self.raw_model.to(d.device).train()
        if d.rank:  # the same initial weights everywhere, then a random stream per process (a local drop per row)
            torch.manual_seed(cfg.seed + d.rank)
        no_decay = no_decay_names(self.raw_model)
        if cfg.compile:
            self.raw_model.compile()
        self.model = distributed.wrap(self.raw_model, d, cfg.fsdp)
        self.optimizer = build_optimizer(
            self.raw_model, no_decay, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2)
        )
        self.amp_dtype, self.autocast = _autocast(cfg.precision, d.device)
        if self.amp_dtype == torch.float16 and cfg.fsdp:
            raise MemlabError("--fsdp trains in bf16 or fp32, not fp16; use --precision bf16")
        self.scaler = torch.amp.GradScaler(d.device.type) if self.amp_dtype == torch.float16 else None

        # progress
        self.tokens_per_step = cfg.seq_len * cfg.batch_size * cfg.grad_accum * d.world_size
        self.total_steps = math.ceil(cfg.total_tokens / self.tokens_per_step)
        self.step, self.skipped, self.bad_in_row, self.lr = 0, 0, 0, 0.0
        self.last_valid: torch.Tensor | None = None  # the real positions of the last micro-batch (None: all)
        self.best: dict[str, Any] = {"loss": None, "step": None, "acc": {}, **self._validation_windows()}
        self.wall_before = 0.0  # seconds of earlier sessions of this run
        self.train_before: float | None = 0.0  # their seconds in training steps (None: an older checkpoint's run)
        self.window = _Window()
        if d.is_main:  # every check has passed: only now is the run --overwrite replaces deleted
            if cfg.overwrite and self.run_dir.exists():  # (through a symbolic link, the directory it names;
                clear_directory(self.run_dir.resolve())  # a mount point had been emptied, then not removable)
            self.run_dir.resolve().mkdir(parents=True, exist_ok=True)
            ckpt.remove_partial(self.run_dir)
        d.barrier()
        if resume_from is not None:
            self._load(resume_from)
        if d.is_main:  # before metrics.jsonl: a directory holding it alone had been refused as no run's
            self._write_config()
        self.metrics = MetricsLog(self.run_dir, d.is_main, self.step, cfg.tensorboard)
        self.loop_start, self.session_steps = time.perf_counter(), 0  # run() restarts the clock
        self.seconds = {"setup": time.perf_counter() - t0, "train": 0.0, "eval": 0.0, "checkpoint": 0.0, "outputs": 0.0}
        if resume_from is not None and d.is_main:
            log.info("resumed %s from %s (step %d of %d)", self.run_dir, resume_from, self.step, self.total_steps)

    def _model_overrides(self) -> dict[str, Any]:
        overrides = dict(self.cfg.model)
        vocab = overrides.get("vocab_size")
        if vocab is not None and vocab < self.tokenizer.vocab_size:
            raise MemlabError(f"vocab_size={vocab} is smaller than the tokenizer's {self.tokenizer.vocab_size} ids")
        overrides["vocab_size"] = vocab or self.tokenizer.vocab_size
        return overrides

    # ------------------------------------------------------------- state I/O
    def _write_config(self) -> None:
        shards = self.data.data_dir
        split = read_header(shards)["request"] if shards else {"val_fraction": None, "split_seed": None}
        data = {
            "format": RUN_FORMAT,
            "memlab_version": memlab.__version__,
            "train": dataclasses.replace(self.cfg, resume=False, overwrite=False).to_dict(),  # not actions to repeat
            "model_config": self.model_config.to_dict(),
            "data": {
                "corpus": self.data.corpus,
                "data_dir": str(shards.resolve()) if shards else None,  # found from any working directory
                "val_fraction": split["val_fraction"],  # the documents held out (for probes and eval)
                "split_seed": split["split_seed"],
                "tokenizer": self.tokenizer.kind,
                "tokenizer_hash": self.tokenizer.hash,
                "shards_sha256": self.data.checksum,  # data_checksum; TokenShards(checksum=) refuses other data
            },
        }
        write_text(self.run_dir / CONFIG_FILE, yaml.safe_dump(data, sort_keys=False))
        self.tokenizer.save(self.run_dir)

    def _trainer_state(self, rng_by_rank: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens_per_step": self.tokens_per_step,
            "tokens_seen": self.step * self.tokens_per_step,
            "skipped_steps": self.skipped,
            "bad_in_row": self.bad_in_row,
            "best": self.best,
            "wall_time_s": self.wall_before + self.session_wall(),
            "train_time_s": self.train_time(),
            "window": self.window.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "world_size": self.d.world_size,
            "rng": rng_by_rank[0],  # the main process's, as older checkpoints kept it
            "rng_by_rank": rng_by_rank,  # each process's own stream
            "curriculum": self.data.curriculum.state_dict(),
        }

    def _load(self, checkpoint: Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        state = ckpt.read_trainer_state(checkpoint)
        self._check_global_batch(checkpoint, state.get("tokens_per_step"))  # absent from older checkpoints
        configured = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in self.optimizer.param_groups]
        set_optimizer_state_dict(
            self.model, self.optimizer, ckpt.read_optimizer_state(checkpoint, self.d.device), options=_sd_options(self)
        )
        for group, hyperparameters in zip(self.optimizer.param_groups, configured):
            group.update(hyperparameters)  # the moments are the checkpoint's, weight decay and betas this run's
        self.step, self.skipped, self.bad_in_row = state["step"], state["skipped_steps"], state["bad_in_row"]
        if self.step > self.total_steps:
            raise MemlabError(f"{checkpoint} has trained {self.step * self.tokens_per_step} tokens, more than "
                              f"--total_tokens {self.cfg.total_tokens}; resume with at least that many")
        self.best, self.wall_before = state["best"], state["wall_time_s"]
        self.train_before = state.get("train_time_s")  # (absent from older checkpoints)
        if self.data.val is not None and self.best["loss"] is not None:
            measured_on = self._measured_elsewhere()
            if measured_on:
                log.warning("the best validation loss of %s was measured %s, so the next evaluation starts the "
                            "comparison for best_model/ afresh", checkpoint, measured_on)
                self.best["loss"] = None
        self.best.update(self._validation_windows())
        self.window.load_state_dict(state["window"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.data.curriculum.load_state_dict(state["curriculum"])
        by_rank = state.get("rng_by_rank") or []  # (older checkpoints kept the main process's alone)
        if len(by_rank) == self.d.world_size:
            ckpt.set_rng_state(by_rank[self.d.rank])
        else:  # another process count: the main process's streams, and a stream of its own for every other
            ckpt.set_rng_state(state["rng"])
            if self.d.rank:
                seed = np.random.SeedSequence([self.cfg.seed, self.step, self.d.rank]).generate_state(1)[0]
                torch.manual_seed(int(seed))
        gone = self._settle_best_model() if self.d.is_main else False
        if self.d.all_gather_object(gone)[0]:  # (on every process: under FSDP saving a best is a collective)
            self.best["loss"] = None

    def _validation_windows(self) -> dict[str, Any]:
        """What the validation loss is measured on (recorded with the best one): their placement, length, number."""
        count = max(1, self.cfg.eval_tokens // self.cfg.seq_len)  # (as validation_loss takes them)
        return {"val_windows": WINDOW_PLACEMENT, "val_seq_len": self.cfg.seq_len, "val_count": count}

    def _measured_elsewhere(self) -> str | None:
        """How the resumed best validation loss was measured, when on other windows than this run's (None: alike)."""
        if self.best.get("val_windows") != WINDOW_PLACEMENT:  # (absent: an older memlab's prefix)
            return ("on the start of the validation split (an older memlab); losses are now measured on windows "
                    "spread over it")
        ours = self._validation_windows()
        theirs = {k: self.best.get(k, ours[k]) for k in ours}  # (absent: a checkpoint from before they were kept)
        if theirs != ours:
            return (f"on {theirs['val_count']} windows of {theirs['val_seq_len']} tokens, this run measures "
                    f"{ours['val_count']} of {ours['val_seq_len']} (--eval-tokens, --seq-len)")
        return None

    def _check_global_batch(self, checkpoint: Path, saved: int | None) -> None:
        """Refuse to resume with another global batch: step counts, the schedule and the data stream assume it."""
        if saved is not None and saved != self.tokens_per_step:
            c = self.cfg
            raise MemlabError(
                f"{checkpoint} was trained with {saved} tokens per step (seq_len x batch_size x grad_accum x "
                f"world_size), this run has {self.tokens_per_step} = {c.seq_len} x {c.batch_size} x {c.grad_accum} x "
                f"{self.d.world_size}; resume with the same product or start again with --overwrite"
            )

    def _settle_best_model(self) -> bool:
        """Make best_model/ the one the resumed checkpoint records: one saved after the resumed step
        (of an abandoned continuation) is moved aside, and the one it replaced, kept as
        best_model.recorded/ until a checkpoint recorded the new one, is put back.  Returns whether
        the recorded best weights are gone (a resume from a checkpoint older than the newest)."""
        best, kept = self.run_dir / "best_model", self.run_dir / RECORDED_BEST
        for directory in (best, kept):
            saved_at = _best_step(directory)
            if (saved_at or 0) > self.step:
                names = (f"best_model.abandoned-step_{saved_at}" + f".{i}" * (i > 1) for i in itertools.count(1))
                aside = next(self.run_dir / n for n in names if not (self.run_dir / n).exists())
                directory.rename(aside)
                log.warning("%s/ is of step %d, after the resumed step %d: moved to %s", directory.name, saved_at,
                            self.step, aside)
        if kept.is_dir() and best.exists():  # (a checkpoint recorded best_model/, then the process was killed)
            ckpt.remove_directory(kept)
        elif kept.is_dir():
            kept.rename(best)
            log.warning("best_model/ is again the one the resumed checkpoint records (step %s)", self.best["step"])
        recorded = self.best["step"]  # (gone: resumed from a checkpoint older than the newest, damaged)
        if recorded is not None and _best_step(best) != recorded:
            log.warning("the best weights the resumed checkpoint records (step %s) are gone; best_model/ starts "
                        "again at the next evaluation", recorded)
            return True
        return False

    def _write_model_files(self, path: Path, model_state: dict | None) -> None:
        if model_state is None:
            self.raw_model.save(path)
        else:  # FSDP: the gathered full state, saved through an unsharded copy
            copy = LanguageModel(self.model_config)
            copy.load_state_dict(model_state)
            copy.save(path)
        (path / CONFIG_FILE).write_bytes((self.run_dir / CONFIG_FILE).read_bytes())
        self.tokenizer.save(path)

    def _full_model_state(self) -> dict | None:
        """Under FSDP the full weights gathered on every process (a collective); else None."""
        if not self.cfg.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.model, options=_sd_options(self))

    def save_checkpoint(self) -> None:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        model_state = self._full_model_state()
        optim_state = get_optimizer_state_dict(self.model, self.optimizer, options=_sd_options(self))
        rng_by_rank = self.d.all_gather_object(ckpt.rng_state())  # each process draws its own stream
        if self.d.is_main:
            self.metrics.sync()
            directory = self.run_dir / "checkpoints" / f"step_{self.step}"
            ckpt.save_checkpoint(directory, lambda path: self._write_model_files(path, model_state), optim_state,
                                 self._trainer_state(rng_by_rank))
            ckpt.remove_directory(self.run_dir / RECORDED_BEST)  # this checkpoint records best_model/
            ckpt.prune(self.run_dir, self.cfg.keep_last, directory)
        self.d.barrier()

    def save_best(self, acc: dict[str, float]) -> None:
        """Save the model as best_model/, with best.json: its step, selection loss and accuracy per task."""
        model_state = self._full_model_state()
        if self.d.is_main:
            kept = self.run_dir / RECORDED_BEST  # the replaced best_model/, which the last checkpoint records
            keep = None if kept.exists() else kept
            with ckpt.atomic_directory(self.run_dir / "best_model", keep_replaced=keep) as tmp:
                self._write_model_files(tmp, model_state)
                record = {"loss": self.best["loss"], "step": self.best["step"], "acc": acc}
                (tmp / BEST_FILE).write_text(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ loop
    def train_time(self) -> float | None:
        """Seconds in training steps over every session of the run (evaluation and checkpoints left out)."""
        return None if self.train_before is None else self.train_before + self.seconds["train"]

    def session_wall(self) -> float:
        return time.perf_counter() - self.loop_start

    def run(self) -> Path:
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.loop_start, self.session_steps = time.perf_counter(), 0
        window_seconds, window_steps = 0.0, 0  # pure training-step time since the last log line
        bar = tqdm(
            total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
            disable=not (cfg.progress and self.d.is_main), desc=f"train {cfg.variant}/{cfg.model_size}",
        )
        status = "failed"
        try:
            while self.step < self.total_steps:
                self.step += 1
                t = time.perf_counter()
                self._train_step()
                seconds = time.perf_counter() - t
                self.seconds["train"] += seconds
                window_seconds += seconds
                window_steps += 1
                self.session_steps += 1
                last = self.step == self.total_steps
                record: dict[str, Any] = {}
                if self.step % cfg.log_interval == 0 or last:
                    tokens_per_s = window_steps * self.tokens_per_step / window_seconds
                    record.update(self.window.flush(), lr=self.lr, tokens_per_s=tokens_per_s)
                    record["diagnostics"] = self.raw_model.diagnostics(self.last_valid)  # the step's last micro-batch
                    record["skipped_steps"] = self.skipped
                    window_seconds, window_steps = 0.0, 0
                    loss = record["loss"] if record["loss"] is not None else math.nan
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.lr:.2e}", tok_s=f"{tokens_per_s:.0f}")
                evaluated = bool(cfg.eval_interval and self.step % cfg.eval_interval == 0) or last
                if evaluated:
                    t = time.perf_counter()
                    record.update(self._evaluate())
                    self.seconds["eval"] += time.perf_counter() - t
                if record:
                    self.metrics.write({"step": self.step, "tokens": self.step * self.tokens_per_step, **record})
                if evaluated and not last:  # the last refresh follows the loop
                    t = time.perf_counter()
                    self._refresh_outputs("running")
                    self.seconds["outputs"] += time.perf_counter() - t
                if (cfg.save_interval and self.step % cfg.save_interval == 0) or last:
                    t = time.perf_counter()
                    self.save_checkpoint()
                    self.seconds["checkpoint"] += time.perf_counter() - t
                bar.update(1)
            status = "completed"
        except TrainingDiverged:
            status = "diverged"
            raise
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            bar.close()
            try:
                self._refresh_outputs(status)
            except OSError as e:  # (a full disk: it had replaced the error that stopped the run)
                if status == "completed":
                    raise
                log.warning("the %s run's outputs could not be written: %s", status, e)
            self.metrics.close()
        return self.run_dir

    def _train_step(self) -> None:
        cfg, d = self.cfg, self.d
        input_ids, labels = self.data.curriculum.next_batch()  # (R, T) the global batch
        kind, lengths = self.data.curriculum.last_kind, self.data.curriculum.last_lengths  # lengths: (R,) or None
        n_labels = max(1, int((labels != IGNORE_INDEX).sum()))  # labelled positions of the global batch
        n_real = input_ids.numel() if lengths is None else max(1, int(lengths.sum()))  # its real input positions
        rows = slice(d.rank * cfg.batch_size * cfg.grad_accum, (d.rank + 1) * cfg.batch_size * cfg.grad_accum)
        input_ids, labels = input_ids[rows], labels[rows]  # (A * B, T) this process's rows
        real = None if lengths is None else torch.arange(input_ids.shape[1]) < lengths[rows, None]  # not padding
        ce_sum = torch.zeros((), device=d.device)
        aux_sums: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            part = slice(micro * cfg.batch_size, (micro + 1) * cfg.batch_size)
            x, y = (t[part].to(d.device, non_blocking=True) for t in (input_ids, labels))
            valid = None if real is None else real[part].to(d.device, non_blocking=True)
            with distributed.no_sync(self.model, sync=micro == cfg.grad_accum - 1):
                # auxiliary losses are means over a micro-batch's real positions: weighted by its share of the
                # global batch's, they are those of the global mean, however the batch is split (as the CE is)
                share = (x.numel() if real is None else int(real[part].sum())) / n_real  # (counted on the CPU)
                with self.autocast:
                    ce = self.model(x, labels=y)  # summed over labelled positions, no (B, T, V) logits kept
                    aux = {name: value * share for name, value in self.raw_model.aux_losses(valid).items()}
                # gradients are averaged over processes: this scaling makes them those of the global mean
                loss = (ce / n_labels + sum(aux.values(), torch.zeros((), device=d.device))) * d.world_size
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            ce_sum += ce.detach()
            for name, value in aux.items():
                aux_sums[name] = aux_sums.get(name, 0.0) + value.detach().float()
        self.last_valid = valid
        names = sorted(aux_sums)
        totals = d.all_reduce_sum(torch.stack([ce_sum, *(aux_sums[n] for n in names)]))  # one sync
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.grad_clip or float("inf"))
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
        ce_total, *aux_totals, grad_norm = torch.cat([totals, grad_norm.reshape(1).double()]).tolist()
        ce_mean = ce_total / n_labels
        aux_means = dict(zip(names, aux_totals))
        loss_value = ce_mean + sum(aux_means.values())
        self.lr = lr_at(self.step, cfg.lr, cfg.warmup, self.total_steps, cfg.min_lr_ratio)
        finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
        if finite:
            set_lr(self.optimizer, self.lr)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.bad_in_row = 0
            self.window.add(kind, loss_value, ce_mean, aux_means, grad_norm)
        else:
            if self.scaler is not None:
                self.scaler.update()  # lowers the loss scale
            self.skipped += 1
            self.bad_in_row += 1
            log.warning("step %d: loss %s, grad norm %s: not finite; skipped", self.step, loss_value, grad_norm)
        self.optimizer.zero_grad(set_to_none=True)
        # a run shorter than max_bad_steps whose every step is bad has diverged too (it had been "completed")
        if self.bad_in_row >= min(cfg.max_bad_steps, self.total_steps):
            saved = checkpoint_dirs(self.run_dir)  # (it had named a checkpoint directory never written)
            kept = f"the last checkpoint, {saved[-1]}, is intact" if saved else "no checkpoint was saved before it"
            raise TrainingDiverged(
                f"training diverged: {self.bad_in_row} consecutive steps with a non-finite loss or gradient "
                f"(step {self.step}); {kept}; lower --lr or use --precision fp32"
            )

    def _evaluate(self) -> dict[str, Any]:
        cfg = self.cfg
        result: EvalResult = evaluate(
            self.model if cfg.fsdp else self.raw_model,
            self.data.curriculum,
            self.data.val,
            seq_len=cfg.seq_len,
            eval_tokens=cfg.eval_tokens,
            samples=cfg.eval_samples,
            max_new_tokens=cfg.eval_max_new_tokens,
            batch_tokens=cfg.batch_size * cfg.seq_len,
            autocast=self.autocast,
            d=self.d,
        )
        score = result.selection_loss
        finite = score is not None and math.isfinite(score)  # a NaN best would never be beaten again
        improved = finite and (self.best["loss"] is None or score < self.best["loss"])
        if improved:
            self.best.update(loss=score, step=self.step)
            self.save_best(result.acc)  # (best.json had held the best accuracies before this step's)
        for task, acc in result.acc.items():
            if acc > self.best["acc"].get(task, {}).get("acc", -1.0):
                self.best["acc"][task] = {"acc": acc, "step": self.step}
        return result.record()

    # --------------------------------------------------------------- outputs
    def _refresh_outputs(self, status: str) -> None:
        """metrics.json, summary.json and the plots (main process)."""
        if not self.d.is_main:
            return
        records = self.metrics.records
        if self.session_steps or not (status == "completed" and run_completed(self.run_dir)):  # a re-run that
            write_json(self.run_dir / SUMMARY_FILE, self.summary(status))  # trained nothing keeps the summary
        self.metrics.write_json()  # (after the summary: on a full disk its status had stayed "running")
        plot_loss(records, self.run_dir / "loss.png")
        if any("acc" in r for r in records):
            plot_accuracy(records, self.run_dir / "accuracy.png")

    def summary(self, status: str) -> dict[str, Any]:
        records = self.metrics.records

        def last(key: str):
            return next((r[key] for r in reversed(records) if r.get(key) is not None), None)

        session = self.session_wall()
        session_tokens = self.session_steps * self.tokens_per_step
        return {
            "status": status,
            "variant": self.cfg.variant,
            "model_size": self.cfg.model_size,
            "params": self.raw_model.num_params(),
            "non_embedding_params": self.raw_model.num_params(non_embedding=True),
            "layer_pattern": self.model_config.pattern,
            "steps": self.step,
            "total_steps": self.total_steps,
            "tokens_seen": self.step * self.tokens_per_step,
            "tokens_per_step": self.tokens_per_step,
            "skipped_steps": self.skipped,
            "wall_time_s": self.wall_before + session,
            "train_time_s": self.train_time(),  # the steps alone: what compare's time criterion weighs
            "tokens_per_s": session_tokens / session if session > 0 else None,
            "train_tokens_per_s": session_tokens / self.seconds["train"] if self.seconds["train"] else None,
            "seconds": dict(self.seconds),  # of this session: setup, train steps, eval, checkpoints, outputs
            "final": {k: last(k) for k in ("loss", "val_loss", "val_ppl", "task_loss", "acc")},
            "best": {"val_loss": self.best["loss"], "step": self.best["step"], "acc": self.best["acc"]},
            "world_size": self.d.world_size,
            "device": str(self.d.device),
            "precision": precision_name(self.amp_dtype),
            "metadata": {
                **provenance(),
                "seed": self.cfg.seed,
                "tokenizer_hash": self.tokenizer.hash,
                "grid_version": GRID_VERSION,
            },
        }


class _Window:
    """Running sums of the train metrics since the last log line (part of the checkpoint)."""

    def __init__(self) -> None:
        self.load_state_dict({})

    def add(self, kind: str, loss: float, ce: float, aux: dict[str, float], grad_norm: float) -> None:
        self.steps += 1
        self.loss += loss
        self.ce += ce
        self.grad_norm += grad_norm
        for name, value in aux.items():
            self.aux[name] = self.aux.get(name, 0.0) + value
        total, count = self.by_kind.get(kind, (0.0, 0))
        self.by_kind[kind] = (total + loss, count + 1)

    def flush(self) -> dict[str, Any]:
        """The window's means (None when every step of it was skipped), then a fresh window."""
        n = self.steps
        out = {
            "loss": self.loss / n if n else None,
            "ce": self.ce / n if n else None,
            "aux": {k: v / n for k, v in self.aux.items()},
            "loss_by_kind": {k: total / count for k, (total, count) in sorted(self.by_kind.items())},
            "grad_norm": self.grad_norm / n if n else None,
        }
        self.load_state_dict({})
        return out

    def state_dict(self) -> dict[str, Any]:
        keys = ("steps", "loss", "ce", "grad_norm", "aux", "by_kind")
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.loss, self.ce = state.get("steps", 0), state.get("loss", 0.0), state.get("ce", 0.0)
        self.grad_norm, self.aux = state.get("grad_norm", 0.0), dict(state.get("aux", {}))
        self.by_kind = {k: tuple(v) for k, v in state.get("by_kind", {}).items()}


def _best_step(directory: Path) -> int | None:
    """The step a best_model/ (or one kept or moved aside) was saved at, from its best.json; None without one."""
    record = directory / BEST_FILE
    if not record.is_file():
        return None
    return read_json_object(record, f"; move {directory.name}/ away to resume").get("step")


def _sd_options(trainer: Trainer):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    full = trainer.cfg.fsdp
    return StateDictOptions(full_state_dict=full, cpu_offload=full)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
