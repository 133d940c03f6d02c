"""Periodic evaluation: exact match from one forward, the generation cap, curriculum observations."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import records, tiny_config
from torch import nn

import memlab
from memlab.data.curriculum import Curriculum, CurriculumConfig
from memlab.data.shards import TokenShards
from memlab.data.tasks import IGNORE_INDEX
from memlab.data.text import prepare_shards
from memlab.data.tokenizer import build_tokenizer
from memlab.train import train
from memlab.train.evaluate import EvalResult, evaluate

TASKS = ["copy", "addition", "reverse"]


class Oracle(nn.Module):
    """Predicts the labels of the rows it has been shown (wrong everywhere on ``wrong_task``'s rows)."""

    def __init__(self, batches: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], vocab: int, wrong_task=None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.vocab, self.answers = vocab, {}
        for task, inputs in batches.items():
            for row, target in zip(inputs, labels[task]):
                target = torch.where(target == IGNORE_INDEX, 0, target)
                self.answers[tuple(row.tolist())] = (target + (task == wrong_task)) % vocab

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        targets = torch.stack([self.answers[tuple(row.tolist())] for row in x])
        return nn.functional.one_hot(targets, self.vocab).float()


def _setup(samples: int, wrong_task=None):
    tok = build_tokenizer("byte")
    cfg = CurriculumConfig(seq_len=64, batch_size=2, tasks=TASKS, alg_tokens=10, total_tokens=10, strategy="competence",
                           min_evals=1, cooldown_steps=0, threshold=0.5)
    curriculum = Curriculum(cfg, tok)
    peek = copy.deepcopy(curriculum)  # draws the same evaluation examples
    drawn = {t: peek.eval_batch(t, samples) for t in TASKS}
    oracle = Oracle({t: b.input_ids for t, b in drawn.items()}, {t: b.labels for t, b in drawn.items()},
                    tok.vocab_size, wrong_task)
    return curriculum, oracle, drawn


def test_accuracy_is_exact_match_and_is_reported_to_the_curriculum():
    curriculum, oracle, _ = _setup(12, wrong_task="addition")
    before = {t: curriculum.difficulty(t) for t in TASKS}
    result = evaluate(oracle, curriculum, None, seq_len=64, eval_tokens=0, samples=12, max_new_tokens=1000, batch_tokens=60)
    assert result.acc == {"copy": 1.0, "addition": 0.0, "reverse": 1.0}
    assert result.task_loss is not None and result.val_loss is None
    assert result.difficulty == before
    # learned tasks moved up a level (competence strategy, threshold 0.5, one evaluation needed)
    assert curriculum.difficulty("copy") > before["copy"] and curriculum.difficulty("addition") == before["addition"]


def test_the_curriculum_observes_the_mean_accuracy_of_the_processes():
    """Each process had reported its own accuracy: one differing evaluation parted their curricula and
    so their batches (audit)."""
    from memlab.train.distributed import Dist

    class OtherProcessLearnedNothing(Dist):  # the sum of this process's accuracy and a second one's 0
        def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
            return values.double()

    curriculum, oracle, _ = _setup(12, wrong_task="addition")
    result = evaluate(oracle, curriculum, None, seq_len=64, eval_tokens=0, samples=12, max_new_tokens=1000,
                      batch_tokens=60, d=OtherProcessLearnedNothing(world_size=2))
    assert result.acc == {"copy": 0.5, "addition": 0.0, "reverse": 0.5}  # what the curriculum observed


def test_the_task_loss_counts_the_tasks_the_run_trains(monkeypatch):
    """A run on retrieval alone had picked its best_model by the loss of algorithmic tasks it never trained."""
    tok = build_tokenizer("byte")
    trained = {}
    for name, streams in {"alg": dict(alg_tokens=10), "retrieval": dict(alg_tokens=0, retrieval_ratio=1.0),
                          "both": dict(alg_tokens=0, replay_fraction=0.5, retrieval_ratio=0.5)}.items():
        cfg = CurriculumConfig(seq_len=256, batch_size=2, tasks=TASKS, retrieval_tasks=["niah"], total_tokens=10,
                               **streams)  # fmt: skip
        trained[name] = Curriculum(cfg, tok).trained_specs
    assert trained == {"alg": TASKS, "retrieval": ["niah"], "both": [*TASKS, "niah"]}

    def task_loss(curriculum, oracle, _):
        return evaluate(oracle, curriculum, None, seq_len=64, eval_tokens=0, samples=6, max_new_tokens=1000,
                        batch_tokens=60).task_loss  # fmt: skip

    everything = task_loss(*_setup(6, wrong_task="addition"))
    monkeypatch.setattr(Curriculum, "trained_specs", property(lambda self: ["copy", "reverse"]))
    assert task_loss(*_setup(6, wrong_task="addition")) < everything  # the wrong answers of addition left out


def test_answers_longer_than_the_generation_cap_count_as_wrong():
    expected_by_cap = []
    for cap in (1, 2, 3, 6):  # below, among and above the answers' lengths
        curriculum, oracle, drawn = _setup(20)
        result = evaluate(oracle, curriculum, None, seq_len=64, eval_tokens=0, samples=20, max_new_tokens=cap,
                          batch_tokens=100)  # fmt: skip
        for task, batch in drawn.items():
            answer_lengths = (batch.labels != IGNORE_INDEX).sum(-1)  # answer tokens with the EOS
            expected = float((answer_lengths <= cap).float().mean())
            assert result.acc[task] == pytest.approx(expected), (cap, task)
            expected_by_cap.append(expected)
    assert 0.0 in expected_by_cap and 1.0 in expected_by_cap and any(0 < e < 1 for e in expected_by_cap)


def test_the_cap_is_on_each_answer_span_and_a_task_beyond_it_is_named(caplog):
    """MQAR scores 64 values of one token each across a sequence: capping their sum at 32 had scored
    a perfect model 0 (and held the task at its level for ever)."""
    tok = build_tokenizer("byte")
    cfg = CurriculumConfig(seq_len=256, batch_size=2, tasks=["copy"], retrieval_tasks=["mqar"], retrieval_ratio=0.5,
                           alg_tokens=10, total_tokens=10, levels={"mqar": [64], "copy": [16]})
    curriculum = Curriculum(cfg, tok)
    peek = copy.deepcopy(curriculum)  # draws the same evaluation examples, in the same order
    drawn = {t: peek.eval_batch(t, 6) for t in curriculum.task_specs}
    oracle = Oracle({t: b.input_ids for t, b in drawn.items()}, {t: b.labels for t, b in drawn.items()}, tok.vocab_size)
    assert int((drawn["mqar"].labels != IGNORE_INDEX).sum(-1).min()) > 32  # many values per row
    with caplog.at_level("WARNING"):
        result = evaluate(oracle, curriculum, None, seq_len=256, eval_tokens=0, samples=6, max_new_tokens=8,
                          batch_tokens=2048)
    assert result.acc == {"copy": 0.0, "mqar": 1.0}  # copy's 17 tokens (16 digits + EOS) exceed 8
    assert "copy: some answers run longer than --eval_max_new_tokens 8" in caplog.text and "mqar" not in caplog.text


def test_longest_answer_span():
    from memlab.train.evaluate import longest_answer_span

    labelled = torch.tensor([[0, 1, 1, 0, 1, 1, 1], [1, 0, 1, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert longest_answer_span(labelled).tolist() == [3, 1, 0]


def test_the_task_loss_is_the_mean_over_the_answer_positions_alone():
    """Divided by every position of the padded rows (prompts and padding too), the task loss of a
    perfect model had come out several times too small."""
    curriculum, oracle, drawn = _setup(6)
    vocab = build_tokenizer("byte").vocab_size
    result = evaluate(oracle, curriculum, None, seq_len=64, eval_tokens=0, samples=6, max_new_tokens=1000,
                      batch_tokens=60)  # fmt: skip
    # the oracle's logits are one-hot (1 on the answer, 0 elsewhere): each answer token costs log(V - 1 + e) - 1
    assert vocab == 261 and result.task_loss == pytest.approx(math.log(vocab - 1 + math.e) - 1, rel=1e-6)  # 4.57108
    assert result.task_loss == pytest.approx(4.57108, abs=1e-5)
    answers = sum(int((b.labels != IGNORE_INDEX).sum()) for b in drawn.values())
    assert answers < sum(b.labels.numel() for b in drawn.values()) // 2  # most positions are not answers


def test_the_validation_perplexity_is_e_to_the_validation_loss():
    """It had been 2 ** loss (bits), for a loss in nats."""
    record = EvalResult(val_loss=2.0, task_loss=3.0).record()
    assert record["val_ppl"] == pytest.approx(math.exp(2.0)) == pytest.approx(7.389056)
    assert record["task_loss"] == 3.0 and "acc" not in record


def test_the_run_evaluates_the_validation_split_token_weighted_and_at_its_last_step(tmp_path, text_corpus):
    """The trainer's val_loss is the cross-entropy per predicted token over the val split's evaluation
    windows, recomputed here from the final weights.  It had been divided by T + 1 tokens per window,
    had been read from the train split, and a run whose steps were not a multiple of eval_interval had
    ended unevaluated."""
    data = tmp_path / "data"
    prepare_shards(text_corpus, "byte", data, val_fraction=0.2)
    cfg = tiny_config(tmp_path / "run", steps=5, corpus=None, data_dir=str(data), eval_interval=3, eval_samples=2)
    cfg.alg_tokens = 0  # language only
    train(cfg)
    evaluated = [r for r in records(cfg.run_dir) if "val_loss" in r]
    assert [r["step"] for r in evaluated] == [3, 5]  # every 3 steps, and the last
    for r in evaluated:
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]), rel=1e-9)

    model = memlab.load(cfg.run_dir / "checkpoints" / "step_5").eval()
    val, total, count = TokenShards(data, "val"), 0.0, 0
    with torch.no_grad():
        for _, windows in val.evaluation_windows(3, cfg.seq_len, max_windows=cfg.eval_tokens // cfg.seq_len):
            logits = model(windows[:, :-1])  # (b, T, V)
            total += float(nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten(), reduction="sum"))
            count += windows[:, 1:].numel()
    assert count > 20 * cfg.seq_len  # the whole split: dozens of windows
    assert evaluated[-1]["val_loss"] == pytest.approx(total / count, rel=1e-5)
