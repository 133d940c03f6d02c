"""The training loop end to end on tiny runs: outputs, mixed objectives, accumulation, bad steps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import poison_forward, records, tiny_config

import memlab
from memlab.data.shards import data_checksum, read_header
from memlab.data.tokenizer import load_tokenizer
from memlab.errors import MemlabError
from memlab.models.lm import LanguageModel
from memlab.train import TrainingDiverged, train
from memlab.train.checkpoint import read_optimizer_state, read_trainer_state
from memlab.train.metrics import read_lines


@pytest.fixture(scope="module")
def run(tmp_path_factory, text_corpus):
    """12 steps: 6 of tasks then language with retrieval-free task replay; eval every 4, save every 4."""
    out = tmp_path_factory.mktemp("run") / "run"
    data = tmp_path_factory.mktemp("data") / "shards"
    cfg = tiny_config(
        out, steps=12, corpus=text_corpus, data_dir=str(data), tokenizer="byte", val_fraction=0.2,
        replay_fraction=0.25, eval_interval=4, save_interval=4, keep_last=2, log_interval=2, lr=1e-2,
    )
    cfg.alg_tokens = cfg.total_tokens // 2
    return cfg, train(cfg)


def test_run_directory_holds_every_output(run):
    cfg, run_dir = run
    assert run_dir == cfg.run_dir
    for name in ("config.yaml", "metrics.jsonl", "metrics.json", "summary.json", "loss.png", "accuracy.png"):
        assert (run_dir / name).stat().st_size > 0, name
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["lr"] == cfg.lr and config["model_config"]["d_model"] == 64
    assert config["data"]["data_dir"] == str(Path(cfg.data_dir).resolve()) and config["data"]["tokenizer"] == "byte"
    assert (config["data"]["val_fraction"], config["data"]["split_seed"]) == (0.2, 0)  # the held-out documents
    assert config["data"]["shards_sha256"] == data_checksum(read_header(cfg.data_dir))  # what eval can check
    assert json.loads((run_dir / "metrics.json").read_text()) == records(run_dir)

    steps = sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").iterdir())
    assert steps == [8, 12]  # keep_last=2
    for checkpoint in [run_dir / "checkpoints" / "step_12", run_dir / "best_model"]:
        for name in ("model.safetensors", "config.json", "config.yaml", "tokenizer.memlab.json", "manifest.json"):
            assert (checkpoint / name).is_file(), (checkpoint, name)
        assert load_tokenizer(checkpoint).hash == load_tokenizer(run_dir).hash
    best = json.loads((run_dir / "best_model" / "best.json").read_text())
    assert best["step"] in (4, 8, 12) and best["loss"] > 0  # the step it was saved at, for probes and reports
    evaluated = next(r for r in records(run_dir) if r["step"] == best["step"] and "acc" in r)
    assert best["acc"] == evaluated["acc"] and best["acc"]  # the saved model's own accuracies (they had been stale)
    state = read_trainer_state(run_dir / "checkpoints" / "step_12")
    assert state["step"] == 12 and state["tokens_seen"] == cfg.total_tokens
    assert {"python", "numpy", "torch"} <= set(state["rng"]) and state["curriculum"]["step"] == 12
    optimizer = read_optimizer_state(run_dir / "checkpoints" / "step_12", torch.device("cpu"))
    assert optimizer["state"] and len(optimizer["param_groups"]) == 2


def test_metrics_and_summary(run):
    cfg, run_dir = run
    lines = records(run_dir)
    assert [r["step"] for r in lines] == [2, 4, 6, 8, 10, 12]
    assert all({"loss", "ce", "lr", "grad_norm", "tokens_per_s", "loss_by_kind"} <= set(r) for r in lines)
    evals = [r for r in lines if "val_loss" in r]
    assert [r["step"] for r in evals] == [4, 8, 12]
    assert all(set(r["acc"]) == set(cfg.alg_tasks) and r["val_ppl"] > 1 for r in evals)
    kinds = set().union(*(r["loss_by_kind"] for r in lines))
    assert kinds == {"alg", "lm"}  # the split curriculum: tasks, then text with task replay
    assert "lm" not in lines[0]["loss_by_kind"]
    assert lines[-1]["loss"] < lines[0]["loss"]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 12
    assert summary["tokens_seen"] == cfg.total_tokens and summary["tokens_per_s"] > 0
    model = memlab.load(run_dir)
    assert summary["params"] == model.num_params()
    best = min(evals, key=lambda r: r["val_loss"])
    assert summary["best"]["val_loss"] == best["val_loss"] and summary["best"]["step"] == best["step"]
    assert summary["final"]["val_loss"] == evals[-1]["val_loss"]
    assert summary["metadata"]["seed"] == cfg.seed and summary["metadata"]["memlab_version"]
    from memlab.provenance import source_revision

    assert (summary["metadata"]["git_commit"], summary["metadata"]["git_dirty"]) == source_revision()


def test_the_run_directory_page_documents_every_field(run):
    """docs/run_directory.md names every field of summary.json and of the metrics.jsonl records."""
    _, run_dir = run
    page = (Path(__file__).resolve().parents[2] / "docs" / "run_directory.md").read_text()

    def documented(section: str) -> set[str]:
        text = page[page.index(section) :].split("\n## ")[0]
        return {name for line in text.splitlines() if line.startswith("| `")
                for name in re.findall(r"`([\w]+)`", line.split(" | ")[0])}  # fmt: skip

    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary) == documented("## `summary.json`")
    logged = set().union(*(r.keys() for r in records(run_dir))) - {"step", "tokens"}
    assert logged == documented("## `metrics.jsonl`")


def test_damaged_metrics_lines_are_dropped_and_the_rest_kept(tmp_path):
    """A torn line had dropped every record after it; bytes that are not UTF-8 or a line that holds
    no record had been tracebacks on resume."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n\xff\xfe\n[]\n{"loss": 1}\n{"step": 3, "loss": 1.5}\n')
    assert [r["step"] for r in read_lines(path)] == [1, 3]


def test_best_model_is_the_model_of_the_best_step(run):
    _, run_dir = run
    summary = json.loads((run_dir / "summary.json").read_text())
    best = LanguageModel.load(run_dir / "best_model")
    if summary["best"]["step"] == 12:
        last = LanguageModel.load(run_dir / "checkpoints" / "step_12")
        x = torch.randint(0, best.config.vocab_size, (2, 16))
        assert torch.equal(best(x), last(x))
    out = best.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4)
    assert out.shape == (1, 7)


def test_rerunning_a_finished_run_trains_no_further(run):
    cfg, run_dir = run
    before = records(run_dir)
    assert train(cfg) == run_dir
    assert records(run_dir) == before


@pytest.mark.parametrize("variant", ["baseline", "cdm", "act"])
def test_gradient_accumulation_matches_the_full_batch(tmp_path, variant):
    """cdm and act have auxiliary losses: one not divided by grad_accum would count grad_accum times;
    act's ponder cost, a mean over real positions, had been a mean of the micro-batches' means (their
    rows hold different numbers of padded positions)."""
    full = train(tiny_config(tmp_path / "full", steps=3, batch_size=4, variant=variant))
    accumulated = train(tiny_config(tmp_path / "accum", steps=3, batch_size=2, grad_accum=2, variant=variant))
    a, b = records(full), records(accumulated)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5) and x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)


def test_auxiliary_losses_are_logged_separately_and_added(tmp_path, monkeypatch):
    masks = []
    aux_losses = LanguageModel.aux_losses
    monkeypatch.setattr(LanguageModel, "aux_losses", lambda self, valid=None: masks.append(valid) or aux_losses(self, valid))
    run_dir = train(tiny_config(tmp_path / "cdm", steps=2, variant="cdm", model={**tiny_config(tmp_path, 1).model}))
    assert len(masks) == 2 and all(m.dtype == torch.bool and m.any() for m in masks)  # task rows: padding left out
    assert any((~m).any() for m in masks)
    lines = records(run_dir)
    assert all(r["aux"] for r in lines)
    for r in lines:
        assert r["loss"] == pytest.approx(r["ce"] + sum(r["aux"].values()), rel=1e-9)


def test_non_finite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    poison_forward(monkeypatch, {2, 3})
    run_dir = train(tiny_config(tmp_path / "run", steps=5))
    lines = records(run_dir)
    assert [r["loss"] for r in lines][1:3] == [None, None]  # a skipped step trains nothing
    assert all(r["loss"] is not None for r in lines[:1] + lines[3:])
    assert lines[-1]["skipped_steps"] == 2
    assert json.loads((run_dir / "summary.json").read_text())["skipped_steps"] == 2


def test_a_run_shorter_than_max_bad_steps_whose_every_step_is_bad_diverged(tmp_path, monkeypatch):
    """It had been reported completed."""
    poison_forward(monkeypatch, set(range(100)))
    cfg = tiny_config(tmp_path / "run", steps=3)
    with pytest.raises(TrainingDiverged, match="3 consecutive steps.*no checkpoint was saved before it"):
        train(cfg)  # (it had named checkpoints/ as intact: never written)
    assert json.loads((cfg.run_dir / "summary.json").read_text())["status"] == "diverged"


def test_too_many_bad_steps_in_a_row_stop_with_the_checkpoint_intact(tmp_path, monkeypatch):
    poison_forward(monkeypatch, set(range(4, 100)))
    cfg = tiny_config(tmp_path / "run", steps=20, save_interval=3, max_bad_steps=3)
    with pytest.raises(TrainingDiverged, match="3 consecutive steps.*step 6.*the last checkpoint, .*step_3, is intact"):
        train(cfg)
    assert [p.name for p in (cfg.run_dir / "checkpoints").iterdir()] == ["step_3"]
    assert json.loads((cfg.run_dir / "summary.json").read_text())["status"] == "diverged"
    model = memlab.load(cfg.run_dir / "checkpoints" / "step_3")
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_fp32_weights_close_to_fp32(tmp_path, precision):
    reference = records(train(tiny_config(tmp_path / "fp32", steps=2, precision="fp32")))
    run_dir = train(tiny_config(tmp_path / precision, steps=2, precision=precision))
    for a, b in zip(records(run_dir), reference):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-2)
    assert json.loads((run_dir / "summary.json").read_text())["precision"] == {"bf16": "bfloat16", "fp16": "float16"}[precision]
    assert all(p.dtype == torch.float32 for p in memlab.load(run_dir).parameters())


def test_tensorboard_logging_when_installed(tmp_path):
    cfg = tiny_config(tmp_path / "run", steps=2, tensorboard=True)
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(MemlabError, match=r"pip install 'memlab\[tensorboard\]'"):
            train(cfg)
        assert not cfg.run_dir.exists()  # a metrics.jsonl left there had made the retry a "not a run" error
        return
    train(cfg)
    assert list((cfg.run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_a_nan_evaluation_is_not_a_best_model_and_a_rerun_keeps_the_summary(tmp_path, monkeypatch):
    """A NaN selection loss had become the best for good (nothing is below NaN); re-running a finished
    run had rewritten its summary with the empty session's throughput (0 tokens/s)."""
    import memlab.train.trainer as trainer

    real, calls = trainer.evaluate, []

    def first_nan(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            result.task_loss = float("nan")
        return result

    monkeypatch.setattr(trainer, "evaluate", first_nan)
    cfg = tiny_config(tmp_path / "run", steps=6, eval_interval=2, lr=1e-2)
    run = train(cfg)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["step"] in (4, 6) and summary["best"]["val_loss"] is not None
    json.loads((run / "best_model" / "best.json").read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN
    train(cfg)  # finished: trains nothing
    assert json.loads((run / "summary.json").read_text())["tokens_per_s"] == summary["tokens_per_s"] > 0


def test_every_parameter_group_trains_at_the_scheduled_learning_rate(tmp_path):
    """Warm-up 2 of 3 steps at lr 3e-3, floor 0.1: lr = peak * step / warmup while warming up, then
    peak * (0.1 + 0.9 * (1 + cos(pi * progress)) / 2), progress 1 at the last step. Step 1 must not train
    at lr 0, and the undecayed group (norms, biases, embeddings) must not stay at the peak."""
    cfg = tiny_config(tmp_path / "run", steps=3, save_interval=1, keep_last=0)
    run_dir = train(cfg)
    logged = [r["lr"] for r in records(run_dir)]
    assert logged == pytest.approx([1.5e-3, 3e-3, 3e-4], rel=1e-12)
    for step, lr in enumerate(logged, 1):
        groups = read_optimizer_state(run_dir / "checkpoints" / f"step_{step}", torch.device("cpu"))["param_groups"]
        assert len(groups) == 2 and [g["lr"] for g in groups] == [lr, lr], step


def test_a_good_step_resets_the_count_of_bad_steps_in_a_row(tmp_path, monkeypatch):
    """Three bad steps, none of them consecutive, are not a divergence at max_bad_steps=3."""
    poison_forward(monkeypatch, {2, 4, 6})
    run_dir = train(tiny_config(tmp_path / "run", steps=8, max_bad_steps=3))
    lines = records(run_dir)
    assert [r["step"] for r in lines if r["loss"] is None] == [2, 4, 6]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["skipped_steps"]) == ("completed", 8, 3)


def test_the_best_accuracy_of_each_task_is_its_highest_at_the_first_step_it_was_reached(tmp_path, monkeypatch):
    import memlab.train.trainer as trainer

    scripted = [  # the accuracies of the evaluations at steps 1, 2, 3, 4
        {"copy": 0.25, "parity": 0.5, "addition": 0.0},
        {"copy": 0.75, "parity": 0.5, "addition": 0.125},
        {"copy": 0.5, "parity": 0.25, "addition": 0.375},
        {"copy": 0.75, "parity": 0.125, "addition": 0.375},
    ]
    real, calls = trainer.evaluate, []

    def scripted_acc(*args, **kwargs):
        result = real(*args, **kwargs)
        result.acc = dict(scripted[len(calls)])
        calls.append(1)
        return result

    monkeypatch.setattr(trainer, "evaluate", scripted_acc)
    run_dir = train(tiny_config(tmp_path / "run", steps=4, eval_interval=1))
    best = json.loads((run_dir / "summary.json").read_text())["best"]["acc"]
    assert best == {"copy": {"acc": 0.75, "step": 2}, "parity": {"acc": 0.5, "step": 1},
                    "addition": {"acc": 0.375, "step": 3}}
    evaluated = [r for r in records(run_dir) if "acc" in r]
    assert [r["acc"] for r in evaluated] == scripted
    for task, b in best.items():
        top = max(r["acc"][task] for r in evaluated)
        assert b == {"acc": top, "step": next(r["step"] for r in evaluated if r["acc"][task] == top)}


@pytest.mark.parametrize("grad_clip, max_norm", [(1.0, 1.0), (0.0, float("inf"))])
def test_the_gradient_norm_is_clipped_to_grad_clip(tmp_path, monkeypatch, grad_clip, max_norm):
    """grad_clip=0 turns clipping off; the logged grad_norm is the norm before clipping."""
    clip, seen = torch.nn.utils.clip_grad_norm_, []

    def spy(parameters, limit, *args, **kwargs):
        parameters = list(parameters)
        before = clip(parameters, limit, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None]))
        seen.append((limit, float(before), float(after)))
        return before

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    run_dir = train(tiny_config(tmp_path / "run", steps=2, grad_clip=grad_clip))
    assert [limit for limit, _, _ in seen] == [max_norm, max_norm]
    assert [r["grad_norm"] for r in records(run_dir)] == pytest.approx([before for _, before, _ in seen], rel=1e-6)
    assert all(before > 1.5 for _, before, _ in seen)  # large enough for a limit of 1 to matter
    for _, before, after in seen:
        assert after == pytest.approx(min(before, max_norm), rel=1e-5)


def test_a_log_line_holds_the_means_over_its_window(tmp_path):
    """log_interval=3 logs the mean of the three steps' loss, ce and grad norm (not the last step's); with
    algorithmic batches alone, loss_by_kind["alg"] is that same mean (not the window's sum)."""
    every = records(train(tiny_config(tmp_path / "every", steps=3, log_interval=1)))
    window = records(train(tiny_config(tmp_path / "window", steps=3, log_interval=3)))
    assert [r["step"] for r in every] == [1, 2, 3] and [r["step"] for r in window] == [3]
    assert len({r["loss"] for r in every}) == 3  # distinct: the last step's loss is not the mean
    for key in ("loss", "ce", "grad_norm"):
        assert window[0][key] == pytest.approx(sum(r[key] for r in every) / 3, rel=1e-12), key
    for r in every + window:
        assert r["loss_by_kind"] == {"alg": pytest.approx(r["loss"], rel=1e-12)}


def test_padding_is_left_out_of_the_auxiliary_losses_and_the_diagnostics(tmp_path, monkeypatch):
    """The mask of real positions marks each row's real input length (not one pad position more), and the
    logged diagnostics are computed over it too (not over every position, padding included)."""
    from memlab.data.curriculum import Curriculum

    batches, masks, diagnosed = [], [], []
    next_batch, aux_losses, diagnostics = Curriculum.next_batch, LanguageModel.aux_losses, LanguageModel.diagnostics

    def drawn(self):
        input_ids, labels = next_batch(self)
        batches.append((input_ids.clone(), self.last_lengths.clone(), self.tokenizer.pad_id))
        return input_ids, labels

    monkeypatch.setattr(Curriculum, "next_batch", drawn)
    monkeypatch.setattr(LanguageModel, "aux_losses", lambda self, valid=None: masks.append(valid) or aux_losses(self, valid))
    monkeypatch.setattr(LanguageModel, "diagnostics",
                        lambda self, valid=None: diagnosed.append(valid) or diagnostics(self, valid))
    train(tiny_config(tmp_path / "run", steps=2, variant="cdm"))
    assert len(batches) == len(masks) == len(diagnosed) == 2
    for (input_ids, lengths, pad), mask, diagnosed_over in zip(batches, masks, diagnosed):
        assert (lengths < input_ids.shape[1]).any()  # some rows are padded
        assert mask.sum(dim=1).tolist() == lengths.tolist()
        for row, length, row_mask in zip(input_ids, lengths.tolist(), mask):
            assert row_mask[:length].all() and not row_mask[length:].any()
            assert row[length - 1] != pad and (row[length:] == pad).all()  # the first pad is the first masked position
        assert diagnosed_over is not None and torch.equal(diagnosed_over, mask)


def test_an_fp16_skipped_step_lowers_the_loss_scale(tmp_path, monkeypatch):
    """GradScaler halves its scale (65536 at the start) after a step with a non-finite gradient, and the next
    step trains."""
    poison_forward(monkeypatch, {2})
    run_dir = train(tiny_config(tmp_path / "run", steps=3, precision="fp16"))
    assert [r["loss"] is None for r in records(run_dir)] == [False, True, False]
    assert read_trainer_state(run_dir / "checkpoints" / "step_3")["scaler"]["scale"] == 32768.0


def test_a_full_disk_reports_the_error_that_stopped_the_run(tmp_path, monkeypatch, caplog):
    """The outputs written on the way out failed on the full disk too, and their error replaced the
    checkpoint's; and metrics.json, written before summary.json, had left the summary "running"."""
    import errno

    import memlab.train.metrics as metrics_module
    from memlab.train import checkpoint as ckpt

    full, save, write_json = [], ckpt.save_checkpoint, metrics_module.write_json

    def save_checkpoint(directory, *args, **kwargs):
        if directory.name == "step_2":
            full.append(directory)
            raise OSError(errno.ENOSPC, "No space left on device", str(directory / "model.safetensors"))
        return save(directory, *args, **kwargs)

    def no_room_for_metrics(path, data):
        if full:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write_json(path, data)

    monkeypatch.setattr(ckpt, "save_checkpoint", save_checkpoint)
    monkeypatch.setattr(metrics_module, "write_json", no_room_for_metrics)
    run = tmp_path / "run"
    with pytest.raises(OSError, match="model.safetensors"):
        train(tiny_config(run, steps=3, save_interval=1))
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert "the failed run's outputs could not be written" in caplog.text and "metrics.json" in caplog.text
