"""Crash safety: a run killed with SIGKILL and resumed logs exactly what an uninterrupted run logs;
what a resume with other settings keeps, takes from the command line, or refuses."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, cli_args, curve, poison_forward, records, subprocess_env, tiny_config

from memlab.errors import MemlabError
from memlab.paths import resolve_model_dir, write_manifest
from memlab.train import checkpoint as ckpt
from memlab.train import train
from memlab.train.checkpoint import TRAINER_STATE_FILE, read_optimizer_state
from memlab.train.evaluate import EvalResult


def _command(cfg) -> list[str]:
    return [sys.executable, "-m", "memlab", "train", *cli_args(cfg)]


def test_sigkill_then_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    def config(name):  # a task curriculum, so that evaluation feeds back into the data stream
        return tiny_config(
            tmp_path / name, steps=20, eval_interval=5, save_interval=4, keep_last=3, log_interval=3,
            use_task_curriculum=True, curriculum_min_task_evals=1, curriculum_cooldown=1, curriculum_threshold=0.0,
        )

    whole, crashed = config("whole"), config("crashed")
    env = subprocess_env()
    uninterrupted = subprocess.Popen(_command(whole), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim = subprocess.Popen(_command(crashed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = crashed.run_dir / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints / "step_8").is_dir() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert uninterrupted.wait() == 0, uninterrupted.stderr.read().decode()

    # the newest checkpoint is damaged as well: the resume must fall back to the one before it
    *_, previous, newest = sorted(checkpoints.iterdir(), key=lambda p: int(p.name.split("_")[1]))
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    resumed = subprocess.run(_command(crashed), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipping checkpoint {newest}" in resumed.stderr and f"resumed {crashed.run_dir} from {previous}" in resumed.stderr

    assert len(curve(whole.run_dir)) == 9  # every 3rd step and every evaluation (every 5th)
    assert curve(crashed.run_dir) == curve(whole.run_dir)
    assert (crashed.run_dir / "best_model" / "model.safetensors").read_bytes() == (
        whole.run_dir / "best_model" / "model.safetensors"
    ).read_bytes()


def test_resume_continues_the_random_stream_training_draws_from(tmp_path, monkeypatch):
    """gdn_hybrid's local drop draws a keep mask per sequence from torch's global RNG: a resume that did
    not restore the checkpoint's RNG state drew other masks than the uninterrupted run from then on."""
    def config(name, **overrides):
        return tiny_config(tmp_path / name, steps=6, variant="gdn_hybrid", save_interval=3, keep_last=0,
                           model={**TINY_MODEL, "gdn.local_drop_prob": 0.5}, **overrides)

    whole = config("whole")
    train(whole)
    save = ckpt.save_checkpoint

    def killed_after_step_3(directory, *args):
        save(directory, *args)
        if directory.name == "step_3":
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_checkpoint", killed_after_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(config("crashed"))
    monkeypatch.undo()
    crashed = config("crashed", resume=True)
    train(crashed)

    assert [r["step"] for r in records(crashed.run_dir)] == [1, 2, 3, 4, 5, 6]
    assert curve(crashed.run_dir) == curve(whole.run_dir)
    assert (crashed.run_dir / "checkpoints" / "step_6" / "model.safetensors").read_bytes() == (
        whole.run_dir / "checkpoints" / "step_6" / "model.safetensors"
    ).read_bytes()


def _as_an_older_memlab_wrote(checkpoint, missing: str) -> None:
    """Leave ``missing`` out of the checkpoint's trainer state (a field an older memlab did not record)."""
    state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
    del state[missing]
    (checkpoint / TRAINER_STATE_FILE).write_text(json.dumps(state))
    write_manifest(checkpoint)


def test_resume_refuses_another_global_batch(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, steps=2, batch_size=4))  # 48 x 4 = 192 tokens per step
    with pytest.raises(MemlabError, match=r"trained with 192 tokens per step \(seq_len x batch_size x grad_accum x "
                                          r"world_size\), this run has 384 = 48 x 8 x 1 x 1; resume with the same"):
        train(tiny_config(run, steps=2, batch_size=8, resume=True))
    train(tiny_config(run, steps=3, batch_size=2, grad_accum=2, resume=True))  # the same global batch
    assert json.loads((run / "summary.json").read_text())["tokens_seen"] == 3 * 192

    # a checkpoint written before the global batch was recorded is resumed as before
    _as_an_older_memlab_wrote(run / "checkpoints" / "step_3", "tokens_per_step")
    train(tiny_config(run, steps=4, resume=True))
    assert json.loads((run / "summary.json").read_text())["steps"] == 4


def test_resume_refuses_another_seed(tmp_path):
    """A resume draws the checkpoint's random stream: config.yaml had recorded the new seed of a run drawn with
    the old, and compare --aggregate-seeds had averaged it as an independent seed."""
    run = tmp_path / "run"
    train(tiny_config(run, steps=2))
    before = (run / "config.yaml").read_text()
    with pytest.raises(MemlabError, match=r"continues the random stream of .* \(seed 0\); --seed 7 takes effect in a "
                                          "new run only"):
        train(tiny_config(run, steps=2, seed=7, resume=True))
    assert (run / "config.yaml").read_text() == before


def test_resume_of_a_run_stopped_before_its_first_checkpoint_says_it_starts_afresh(tmp_path, monkeypatch, caplog):
    from memlab.train.trainer import Trainer

    run = tmp_path / "run"
    monkeypatch.setattr(Trainer, "_train_step", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(run, steps=2))
    assert not (run / "checkpoints").exists() and (run / "config.yaml").is_file()
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING):
        train(tiny_config(run, steps=2, resume=True))
    assert "holds no checkpoint (it stopped before its first save): training starts afresh" in caplog.text
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


def test_a_run_with_a_relative_data_dir_resumes_from_another_directory(tmp_path, text_corpus, monkeypatch):
    """config.yaml had recorded `data_dir: shards` as given: a resume from elsewhere prepared the corpus in a stray
    ./shards with a new tokenizer, then refused it as another tokenizer's."""
    from memlab.train.config import TrainConfig

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    run = tmp_path / "run"
    train(tiny_config(run, steps=2, corpus=text_corpus, data_dir="shards", tokenizer="byte", alg_tokens=0))
    monkeypatch.chdir(tmp_path / "b")
    recorded = TrainConfig.from_yaml(run / "config.yaml")
    assert recorded.data_dir == str(tmp_path / "a" / "shards")
    train(dataclasses.replace(recorded, total_tokens=3 * recorded.total_tokens // 2, resume=True))
    assert json.loads((run / "summary.json").read_text())["steps"] == 3 and not any((tmp_path / "b").iterdir())


def test_the_same_model_written_otherwise_resumes_and_another_model_is_not_advised_to(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, steps=2, model={**TINY_MODEL, "gdn": {"chunk_size": 16}}))
    same = {**TINY_MODEL, "gdn.chunk_size": 16, "n_heads": 2}  # dotted, and a value given twice: one model
    train(tiny_config(run, steps=3, model=same, resume=True))  # had been refused as a change of model
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    with pytest.raises(MemlabError, match=r"holds a different run \(model: .*\); start a new run in another "
                                          "--output-dir or --overwrite"):  # --resume had been advised, then refused
        train(tiny_config(run, steps=3, model={**TINY_MODEL, "d_ff": 64}))


def test_resume_takes_weight_decay_and_betas_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, steps=2, weight_decay=0.1, beta1=0.9, beta2=0.95))
    train(tiny_config(run, steps=3, weight_decay=0.05, beta1=0.8, beta2=0.999, resume=True))
    groups = read_optimizer_state(run / "checkpoints" / "step_3", torch.device("cpu"))["param_groups"]
    assert [(g["weight_decay"], tuple(g["betas"])) for g in groups] == [(0.05, (0.8, 0.999)), (0.0, (0.8, 0.999))]


def test_resume_sets_aside_a_best_model_saved_after_the_resumed_step(tmp_path, caplog):
    run = tmp_path / "run"
    train(tiny_config(run, steps=4, eval_interval=4, save_interval=2, keep_last=0))  # best_model/ of step 4
    shutil.rmtree(run / "checkpoints" / "step_4")  # as if killed before its checkpoint was written
    with caplog.at_level(logging.WARNING, logger="memlab"):
        train(tiny_config(run, steps=2, eval_interval=4, save_interval=2, keep_last=0, resume=True))  # ends at step 2
    aside = run / "best_model.abandoned-step_4"
    assert json.loads((aside / "best.json").read_text())["step"] == 4 and str(aside) in caplog.text
    assert not (run / "best_model").exists()
    assert resolve_model_dir(run) == run / "checkpoints" / "step_2"  # what `memlab eval RUN` loads


def test_resume_puts_back_the_best_model_its_checkpoint_records(tmp_path, monkeypatch, caplog):
    """best_model/ of step 2 (which checkpoint step_2 records) was replaced at steps 3 and 4, then the run
    was killed before checkpoint step_4: its weights had been lost while summary.json named them best."""
    import memlab.train.trainer as trainer
    from memlab.models.lm import LanguageModel

    losses = iter(range(100, 0, -1))  # every evaluation improves on the one before
    monkeypatch.setattr(trainer, "evaluate", lambda *args, **kwargs: EvalResult(task_loss=float(next(losses))))
    real_save = trainer.Trainer.save_checkpoint

    def killed_at_step_4(self):
        if self.step == 4:
            raise KeyboardInterrupt
        real_save(self)

    monkeypatch.setattr(trainer.Trainer, "save_checkpoint", killed_at_step_4)
    run = tmp_path / "run"
    config = dict(eval_interval=1, save_interval=2, keep_last=0)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(run, steps=4, **config))
    assert json.loads((run / "best_model.recorded" / "best.json").read_text())["step"] == 2
    monkeypatch.setattr(trainer.Trainer, "save_checkpoint", real_save)
    with caplog.at_level(logging.WARNING, logger="memlab"):
        train(tiny_config(run, steps=2, **config, resume=True))
    assert json.loads((run / "best_model" / "best.json").read_text())["step"] == 2
    assert json.loads((run / "summary.json").read_text())["best"]["step"] == 2
    assert "again the one the resumed checkpoint records (step 2)" in caplog.text
    assert json.loads((run / "best_model.abandoned-step_4" / "best.json").read_text())["step"] == 4
    assert not (run / "best_model.recorded").exists()
    best, checkpoint = (LanguageModel.load(p).state_dict() for p in (run / "best_model", run / "checkpoints/step_2"))
    assert all(torch.equal(best[k], checkpoint[k]) for k in checkpoint)

    train(tiny_config(run, steps=4, **config, resume=True))  # a checkpoint records each new best: none is kept
    assert json.loads((run / "best_model" / "best.json").read_text())["step"] == 4
    assert not (run / "best_model.recorded").exists()


def test_a_run_killed_before_it_wrote_its_config_starts_again(tmp_path, monkeypatch):
    """metrics.jsonl had been written first: a directory holding it alone was refused as not a run's."""
    from memlab.train.trainer import Trainer

    run = tmp_path / "run"
    monkeypatch.setattr(Trainer, "_write_config", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(run, steps=2))
    monkeypatch.undo()
    train(tiny_config(run, steps=2))
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_a_second_run_into_a_directory_in_use_is_refused(tmp_path):
    """Two runs in one directory had interleaved one metrics.jsonl (and one died on the other's plot)."""
    from filelock import FileLock

    run = tmp_path / "run"
    with FileLock(tmp_path / ".run.lock"):  # as the process training there holds it
        with pytest.raises(MemlabError, match=r"another memlab process is training in .*run \(it holds .*\.run\.lock"):
            train(tiny_config(run, steps=2))
    assert not run.exists()
    train(tiny_config(run, steps=2))  # the lock released, and each run releases its own
    train(tiny_config(run, steps=3, resume=True))


def validated_runs(tmp_path, text_corpus):
    """A run directory and the configs of runs there that validate on shards of ``text_corpus``
    (evaluated and checkpointed every 2 steps, every checkpoint kept)."""
    from memlab.data.text import prepare_shards

    data, run = tmp_path / "data", tmp_path / "run"
    prepare_shards(text_corpus, "byte", data, val_fraction=0.2)

    def config(steps, **overrides):
        return tiny_config(run, steps=steps, corpus=None, data_dir=str(data), eval_interval=2, save_interval=2,
                           keep_last=0, **overrides)

    return run, config


def test_a_best_loss_an_older_memlab_measured_on_the_split_prefix_is_not_compared(tmp_path, text_corpus, caplog):
    """Validation windows are now spread over the split: a resumed run's best loss of the prefix is other text."""
    run, config = validated_runs(tmp_path, text_corpus)

    train(config(2))
    checkpoint = run / "checkpoints" / "step_2"
    state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
    assert state["best"]["val_windows"] == "spread" and state["best"]["step"] == 2
    del state["best"]["val_windows"]
    state["best"]["loss"] = -1.0  # as an older memlab wrote it; lower than any loss, it would never be beaten
    (checkpoint / TRAINER_STATE_FILE).write_text(json.dumps(state))
    write_manifest(checkpoint)
    with caplog.at_level(logging.WARNING, logger="memlab"):
        train(config(4, resume=True))
    assert "measured on the start of the validation split" in caplog.text
    assert json.loads((run / "best_model" / "best.json").read_text())["step"] == 4



def test_a_resume_keeps_the_count_of_skipped_steps(tmp_path, monkeypatch):
    """The checkpoint's skipped steps are part of the resumed run's total (not restarted at 0)."""
    poison_forward(monkeypatch, {2})
    run = tmp_path / "run"
    train(tiny_config(run, steps=2))  # step 2 skipped, then checkpointed
    assert json.loads((run / "summary.json").read_text())["skipped_steps"] == 1
    train(tiny_config(run, steps=4, resume=True))
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["skipped_steps"]) == ("completed", 4, 1)
    assert [r["skipped_steps"] for r in records(run)] == [0, 1, 1, 1]


def test_training_time_counts_the_steps_of_every_session(tmp_path, monkeypatch):
    """compare's time criterion: steps only (evaluation, plots and checkpoints had been counted with them)."""
    from memlab.train.trainer import Trainer

    step = Trainer._train_step
    monkeypatch.setattr(Trainer, "_train_step", lambda self: time.sleep(0.05) or step(self))
    run = tmp_path / "run"
    train(tiny_config(run, steps=2))
    first = json.loads((run / "summary.json").read_text())
    assert 0.1 <= first["train_time_s"] <= sum(first["seconds"].values()) and first["train_time_s"] < first["wall_time_s"]
    train(tiny_config(run, steps=4, resume=True))
    both = json.loads((run / "summary.json").read_text())
    assert both["train_time_s"] == pytest.approx(first["train_time_s"] + both["seconds"]["train"])  # both sessions'

    # a checkpoint of an older memlab does not know its steps' time: unknown, not the second session's alone
    _as_an_older_memlab_wrote(run / "checkpoints" / "step_4", "train_time_s")
    train(tiny_config(run, steps=5, resume=True))
    assert json.loads((run / "summary.json").read_text())["train_time_s"] is None


def test_a_resume_keeps_the_count_of_bad_steps_in_a_row(tmp_path, monkeypatch):
    """A bad step just before the checkpoint and the first bad step after the resume are two in a row."""
    from memlab.train import TrainingDiverged

    poison_forward(monkeypatch, {2, 3})
    run = tmp_path / "run"
    train(tiny_config(run, steps=2, max_bad_steps=2))  # step 2 skipped, then checkpointed
    with pytest.raises(TrainingDiverged, match=r"2 consecutive steps .*\(step 3\)"):
        train(tiny_config(run, steps=4, max_bad_steps=2, resume=True))


def test_a_best_loss_measured_on_other_windows_is_not_compared(tmp_path, text_corpus, caplog):
    """A resume with another --eval-tokens had compared its losses with a best measured on other windows."""
    run, config = validated_runs(tmp_path, text_corpus)

    train(config(2, eval_tokens=96))
    state = json.loads((run / "checkpoints" / "step_2" / TRAINER_STATE_FILE).read_text())
    assert state["best"]["val_count"] == 2 and state["best"]["val_seq_len"] == 48
    with caplog.at_level(logging.WARNING, logger="memlab"):
        train(config(4, eval_tokens=192, resume=True))
    assert "measured on 2 windows of 48 tokens, this run measures 4 of 48" in caplog.text
    assert json.loads((run / "best_model" / "best.json").read_text())["step"] == 4
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="memlab"):
        train(config(6, eval_tokens=192, resume=True))  # measured alike: compared
    assert "measured on" not in caplog.text


def test_a_kill_while_a_new_best_model_is_written_keeps_the_old_one(tmp_path, monkeypatch):
    """The replaced best_model/ had been moved away before the new one was whole: a kill then left none."""
    import memlab.train.trainer as trainer

    losses = iter(range(100, 0, -1))
    monkeypatch.setattr(trainer, "evaluate", lambda *args, **kwargs: EvalResult(task_loss=float(next(losses))))
    real_write = trainer.Trainer._write_model_files

    def killed_writing_the_best_of_step_3(self, path, model_state):
        if self.step == 3 and "best_model" in path.name:
            raise KeyboardInterrupt
        real_write(self, path, model_state)

    monkeypatch.setattr(trainer.Trainer, "_write_model_files", killed_writing_the_best_of_step_3)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(run, steps=4, eval_interval=1, save_interval=2, keep_last=0))
    assert json.loads((run / "best_model" / "best.json").read_text())["step"] == 2
    assert resolve_model_dir(run) == run / "best_model"


def test_the_log_is_on_disk_before_a_checkpoint_records_its_step(tmp_path, monkeypatch):
    """metrics.jsonl had been left to the page cache: a power cut after a checkpoint could lose log
    lines that a resume from it keeps."""
    synced = []  # ("log", its last step) or ("checkpoint", its step), in the order they reached the disk
    real_fsync = os.fsync

    def recording_fsync(fd):
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.name == "metrics.jsonl":
            synced.append(("log", json.loads(path.read_text().splitlines()[-1])["step"]))
        elif path.name == TRAINER_STATE_FILE:
            synced.append(("checkpoint", json.loads(path.read_text())["step"]))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    train(tiny_config(tmp_path / "run", steps=4, save_interval=2))
    checkpoints = [i for i, (kind, _) in enumerate(synced) if kind == "checkpoint"]
    assert [synced[i][1] for i in checkpoints] == [2, 4]
    for i in checkpoints:
        logged = [step for kind, step in synced[:i] if kind == "log"]
        assert logged and logged[-1] >= synced[i][1]


def test_a_resume_that_finds_the_recorded_best_gone_says_so_and_saves_the_next(tmp_path, monkeypatch, caplog):
    """Resumed from step_2 (step_4 damaged) after step_4's checkpoint had dropped the step-2 best: the run had
    kept naming step 2 best with no best_model/ at all."""
    import memlab.train.trainer as trainer

    losses = iter([5.0, 4.0, 3.0, 2.0, 9.0, 9.0])  # better and better, then worse after the resume
    monkeypatch.setattr(trainer, "evaluate", lambda *args, **kwargs: EvalResult(task_loss=next(losses)))
    run = tmp_path / "run"
    config = dict(eval_interval=1, save_interval=2, keep_last=0)
    train(tiny_config(run, steps=4, **config))
    weights = run / "checkpoints" / "step_4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING, logger="memlab"):
        train(tiny_config(run, steps=4, **config, resume=True))
    assert "records (step 2) are gone; best_model/ starts again at the next evaluation" in caplog.text
    assert json.loads((run / "best_model" / "best.json").read_text())["step"] == 3
    assert json.loads((run / "summary.json").read_text())["best"]["step"] == 3


def test_a_lock_the_parent_cannot_hold_is_done_without(tmp_path, monkeypatch):
    """A read-only parent (the run directory itself writable) had ended the run in a traceback."""
    from filelock import FileLock

    def read_only(self, *args, **kwargs):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(FileLock, "acquire", read_only)
    run = tmp_path / "run"
    train(tiny_config(run, steps=2))
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_a_run_refused_by_its_options_leaves_no_lock_behind(tmp_path):
    with pytest.raises(MemlabError, match="nosuchtask"):
        train(tiny_config(tmp_path / "new" / "run", steps=1, alg_tasks=["nosuchtask"]))
    assert not (tmp_path / "new").exists()
