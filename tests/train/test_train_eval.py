"""Periodic evaluation: exact match from one forward, the generation cap, curriculum observations."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from memlab.data.curriculum import Curriculum, CurriculumConfig
from memlab.data.tasks import IGNORE_INDEX
from memlab.data.tokenizer import build_tokenizer
from memlab.train.evaluate import evaluate

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
