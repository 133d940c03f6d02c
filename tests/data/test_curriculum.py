"""The training stream: split curriculum, mixing ratios, competence and dag strategies, exact resume."""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch

from memlab.data.curriculum import Curriculum, CurriculumConfig, _warn_left_out
from memlab.data.shards import TokenShards
from memlab.data.tasks import IGNORE_INDEX, exact_match
from memlab.data.tokenizer import build_tokenizer
from memlab.errors import MemlabError


def oracle_logits(labels: torch.Tensor, vocab: int) -> torch.Tensor:
    """A perfect model: the label itself is the argmax wherever there is one."""
    logits = torch.zeros(*labels.shape, vocab)
    logits.scatter_(-1, labels.clamp(min=0).unsqueeze(-1), 1.0)
    return logits


def accuracy(curriculum: Curriculum, task: str, perfect: bool) -> float:
    batch = curriculum.eval_batch(task, 8)
    vocab = curriculum.tokenizer.vocab_size
    logits = oracle_logits(batch.labels, vocab) if perfect else torch.zeros(*batch.labels.shape, vocab)
    return exact_match(logits, batch.labels).float().mean().item()


def tasks_only(**kw) -> CurriculumConfig:
    base = dict(seq_len=64, batch_size=4, alg_tokens=10**9, total_tokens=10**9)
    return CurriculumConfig(**{**base, **kw})


def parity_bits(curriculum: Curriculum, batches: int) -> list[int]:
    tok = curriculum.tokenizer
    text = "".join(tok.decode(curriculum.next_batch()[0].flatten().tolist()) for _ in range(batches))
    return [len(bits) for bits in re.findall(r"parity: ([01]+)", text)]


def test_split_curriculum_then_language(byte_tok, byte_shards):
    lm = TokenShards(byte_shards, "train", tokenizer=byte_tok)
    cfg = CurriculumConfig(seq_len=32, batch_size=2, alg_tokens=3 * 64, total_tokens=8 * 64)
    c = Curriculum(cfg, byte_tok, lm=lm)
    kinds = []
    while not c.done:
        x, y = c.next_batch()
        assert x.shape == y.shape == (2, 32) and x.dtype == y.dtype == torch.int64
        kinds.append(c.last_kind)
        if c.last_kind == "lm":
            assert (y[:, :-1] == x[:, 1:]).all() and (y != IGNORE_INDEX).all() and c.last_lengths is None
        else:
            assert (y == IGNORE_INDEX).any() and byte_tok.decode(x[0].tolist()).startswith("<|bos|>")
            padding = torch.arange(32) >= c.last_lengths[:, None]  # the packed rows' tails, and only them
            assert (x[padding] == byte_tok.pad_id).all() and (y[padding] == IGNORE_INDEX).all()
    assert kinds == ["alg"] * 3 + ["lm"] * 5 and c.tokens_seen == 8 * 64


@pytest.mark.parametrize("replay, retrieval", [(0.5, 0.0), (0.0, 0.3), (0.2, 0.3)])
def test_language_phase_mixes_at_the_ratios(byte_tok, byte_shards, replay, retrieval):
    lm = TokenShards(byte_shards, "train")
    cfg = CurriculumConfig(
        seq_len=128, batch_size=1, tasks=["copy", "parity"], retrieval_tasks=["niah"], levels={"niah": [0, 2]},
        replay_fraction=replay, retrieval_ratio=retrieval,
    )  # fmt: skip
    c = Curriculum(cfg, byte_tok, lm=lm)
    kinds = []
    for _ in range(200):
        x, _ = c.next_batch()
        kinds.append(c.last_kind)
        if c.last_kind == "retrieval":
            assert byte_tok.query_id in x[0].tolist()
    assert abs(kinds.count("alg") / 200 - replay) < 0.1
    assert abs(kinds.count("retrieval") / 200 - retrieval) < 0.1


def test_the_batch_kinds_do_not_depend_on_how_the_model_learns(byte_tok):
    """The kind had been drawn from the generator the adaptive difficulty draws from: a perfect and a
    hopeless model trained with the same flags got other mixes of task and retrieval batches (audit)."""
    cfg = CurriculumConfig(seq_len=128, batch_size=1, tasks=["copy", "parity"], retrieval_tasks=["niah"],
                           levels={"niah": [0, 2]}, replay_fraction=0.5, retrieval_ratio=0.5,
                           strategy="competence", cooldown_steps=1, min_evals=1)  # fmt: skip
    kinds = {}
    for perfect in (True, False):
        c = Curriculum(cfg, byte_tok)
        kinds[perfect] = []
        for step in range(120):
            c.next_batch()
            kinds[perfect].append(c.last_kind)
            if step % 5 == 0:
                for task in c.task_specs:
                    c.observe(task, accuracy(c, task, perfect))
        assert (c.difficulty("copy") > c._levels["copy"][0]) == perfect  # the difficulties did move apart
    assert kinds[True] == kinds[False] and {"alg", "retrieval"} == set(kinds[True])


def test_competence_raises_difficulty_for_a_perfect_model_only(byte_tok):
    for perfect in (True, False):
        c = Curriculum(tasks_only(strategy="competence", cooldown_steps=2, min_evals=2), byte_tok)
        for step in range(60):
            c.next_batch()
            if step % 2 == 0:
                for task in c.task_specs:
                    c.observe(task, accuracy(c, task, perfect))
        levels = {t: c.difficulty(t) for t in c.task_specs}
        lowest = {t: c._levels[t][0] for t in c.task_specs}
        highest = {t: c._levels[t][-1] for t in c.task_specs}
        assert levels == (highest if perfect else lowest)


def test_cooldown_and_min_evals(byte_tok):
    c = Curriculum(tasks_only(tasks=["parity"], strategy="competence", cooldown_steps=5, min_evals=3), byte_tok)
    changes, level = [], c.difficulty("parity")
    for step in range(40):
        c.next_batch()
        c.observe("parity", 1.0)
        if c.difficulty("parity") != level:
            changes.append(step)
            level = c.difficulty("parity")
    assert changes and changes[0] >= 4  # 5 steps of cooldown
    assert all(b - a >= 3 for a, b in zip(changes, changes[1:]))  # 3 fresh evaluations per level
    assert c.stats()["parity"]["difficulty"] == level


def test_an_ema_exactly_at_the_threshold_raises_the_level(byte_tok):
    """Reaching the threshold is enough (ema >= threshold): three evaluations at exactly 0.9 had not raised it."""
    c = Curriculum(tasks_only(tasks=["parity"], strategy="competence", cooldown_steps=0, min_evals=3, threshold=0.9),
                   byte_tok)  # fmt: skip
    for _ in range(2):
        c.observe("parity", 0.9)
    assert c.difficulty("parity") == 1 and c.stats()["parity"]["ema"] == 0.9  # at the threshold, 2 of 3 evals
    c.observe("parity", 0.9)
    assert c.difficulty("parity") == 2


def test_a_new_level_starts_a_fresh_ema(byte_tok):
    """The EMA of the level left had carried over: 1.0 there and 0.85 at the next level averaged 0.925,
    past the 0.9 threshold, and the level had risen again on an evaluation below it."""
    c = Curriculum(tasks_only(tasks=["parity"], strategy="competence", cooldown_steps=0, min_evals=1), byte_tok)
    c.observe("parity", 1.0)
    assert c.difficulty("parity") == 2 and c.stats()["parity"]["ema"] is None and c.state["parity"].evals == 0
    c.observe("parity", 0.85)
    assert c.difficulty("parity") == 2 and c.stats()["parity"]["ema"] == 0.85


@pytest.mark.parametrize("decay, evals_to_rise", [(0.5, 4), (0.9, 22)])
def test_a_failed_first_evaluation_delays_the_rise_by_the_ema_decay(byte_tok, decay, evals_to_rise):
    """After an evaluation at 0%, the EMA reaches the 0.9 threshold after this many at 100%."""
    c = Curriculum(tasks_only(tasks=["parity"], strategy="competence", cooldown_steps=0, min_evals=1,
                              ema_decay=decay), byte_tok)
    level = c.difficulty("parity")
    c.next_batch()
    c.observe("parity", 0.0)
    perfect_evals = 0
    while c.difficulty("parity") == level and perfect_evals < 40:
        c.next_batch()
        c.observe("parity", 1.0)
        perfect_evals += 1
    assert perfect_evals == evals_to_rise


def test_jitter_replays_easier_levels(byte_tok):
    for jitter in (0.0, 1.0):
        c = Curriculum(
            tasks_only(tasks=["parity"], strategy="competence", cooldown_steps=0, min_evals=1, jitter=jitter), byte_tok
        )
        for _ in range(3):
            c.observe("parity", 1.0)
        assert c.difficulty("parity") == 4
        bits = parity_bits(c, 4)
        assert bits and (set(bits) == {4} if jitter == 0 else max(bits) < 4)


def test_uniform_strategy_samples_every_level(byte_tok):
    c = Curriculum(tasks_only(tasks=["parity"]), byte_tok)
    assert set(parity_bits(c, 10)) == set(range(1, 9))
    assert c.difficulty("parity") == 8  # evaluated at the hardest level it trains (it had been the easiest)
    c.observe("parity", 1.0)
    assert c.difficulty("parity") == 8 and c.stats()["parity"]["ema"] == 1.0  # tracked, never raised
    batch = c.eval_batch("parity", 4)
    prompts = [byte_tok.decode(row[: int(n)].tolist()) for row, n in zip(batch.input_ids, batch.lengths)]
    assert all(p.count("0") + p.count("1") >= 8 for p in prompts)


def test_dag_unlocks_after_prerequisites(byte_tok):
    cfg = tasks_only(tasks=["copy", "reverse"], strategy="dag", min_evals=2, cooldown_steps=0)
    c = Curriculum(cfg, byte_tok)
    text = byte_tok.decode(c.next_batch()[0].flatten().tolist())
    assert "copy: " in text and "reverse: " not in text and not c.stats()["reverse"]["unlocked"]
    c.observe("copy", 1.0)
    assert not c.state["reverse"].unlocked
    c.observe("copy", 1.0)
    assert c.state["reverse"].unlocked
    assert "reverse: " in "".join(byte_tok.decode(c.next_batch()[0].flatten().tolist()) for _ in range(3))


def test_dag_patience_unlocks_a_stuck_stage(byte_tok):
    cfg = tasks_only(tasks=["copy", "reverse", "addition", "successor"], strategy="dag", dag_patience=3)
    c = Curriculum(cfg, byte_tok)
    assert [t for t in c.task_specs if not c.state[t].unlocked] == ["reverse", "addition"]
    for _ in range(3):
        c.observe("copy", 0.0)
    assert all(c.state[t].unlocked for t in c.task_specs)


def test_dag_replay_mixes_mastered_tasks(byte_tok):
    cfg = tasks_only(tasks=["copy", "reverse"], strategy="dag", min_evals=1, cooldown_steps=0, dag_replay=0.25)
    c = Curriculum(cfg, byte_tok, rank=0)
    for _ in range(len(c._levels["copy"]) + 1):
        c.observe("copy", 1.0)  # to the top level, and mastered there
    assert c.state["reverse"].unlocked and c._mastered("copy")
    text = "".join(byte_tok.decode(c.next_batch()[0].flatten().tolist()) for _ in range(20))
    n_copy, n_reverse = text.count("copy: "), text.count("reverse: ")
    assert 0.1 < n_copy / (n_copy + n_reverse) < 0.45


def test_a_task_is_mastered_only_after_min_evals_at_its_top_level(byte_tok):
    """Mastery had ignored min_evals: one evaluation at 100% on reaching the top level had counted."""
    cfg = tasks_only(tasks=["copy", "reverse"], strategy="dag", min_evals=3, cooldown_steps=0, levels={"copy": [2, 4]})
    c = Curriculum(cfg, byte_tok)
    for _ in range(3):
        c.observe("copy", 1.0)  # passed at the first level: up to the top one, reverse unlocked
    assert c.difficulty("copy") == 4 and c.state["reverse"].unlocked
    mastered = []
    for _ in range(3):
        c.observe("copy", 1.0)
        mastered.append(c._mastered("copy"))
    assert mastered == [False, False, True]


def test_resume_draws_the_same_batches(byte_tok, byte_shards):
    lm = TokenShards(byte_shards, "train")
    cfg = CurriculumConfig(
        seq_len=128, batch_size=3, seed=5, tasks=["addition", "dyck"], retrieval_tasks=["niah", "mqar"],
        levels={"niah": [0, 2]}, alg_tokens=2 * 384, replay_fraction=0.3, retrieval_ratio=0.3,
        strategy="competence", cooldown_steps=1, min_evals=1, jitter=0.5,
    )  # fmt: skip

    def run(c: Curriculum, steps: range) -> list[tuple]:
        out = []
        for step in steps:
            x, y = c.next_batch()
            if step % 3 == 0:
                c.observe("addition", 1.0)
                out.append(c.eval_batch("dyck", 2).input_ids)
            out += [x, y, c.last_kind]
        return out

    straight = Curriculum(cfg, byte_tok, lm=lm)
    first = run(straight, range(10))
    saved = json.loads(json.dumps(straight.state_dict()))  # it is plain JSON
    rest = run(straight, range(10, 25))

    resumed = Curriculum(cfg, byte_tok, lm=lm)
    resumed.load_state_dict(saved)
    again = run(resumed, range(10, 25))
    assert len(rest) == len(again)
    for a, b in zip(rest, again):
        assert (a == b).all() if isinstance(a, torch.Tensor) else a == b
    kinds = [k for k in first + rest if isinstance(k, str)]  # alg first (alg_tokens), then every kind is drawn
    assert kinds[:2] == ["alg", "alg"] and set(kinds[2:]) == {"alg", "retrieval", "lm"}
    assert resumed.stats() == straight.stats()


def test_ranks_and_seeds_draw_different_streams(byte_tok):
    batches = {}
    for rank, seed in ((0, 0), (1, 0), (0, 1), (0, 0)):
        c = Curriculum(tasks_only(seed=seed), byte_tok, rank=rank)
        batches.setdefault((rank, seed), []).append(c.next_batch()[0])
    assert (batches[(0, 0)][0] == batches[(0, 0)][1]).all()
    assert not torch.equal(batches[(0, 0)][0], batches[(1, 0)][0])
    assert not torch.equal(batches[(0, 0)][0], batches[(0, 1)][0])


@pytest.mark.parametrize(
    "kw, fragment",
    [
        (dict(tasks=["parity", "frobnicate"]), "unknown task 'frobnicate'"),
        (dict(tasks=["copy"], levels={"copy": [200]}), "raise seq_len or set easier levels"),
        (dict(alg_tokens=0, total_tokens=0), "language batches need token shards"),
        (dict(replay_fraction=0.7, retrieval_ratio=0.5, retrieval_tasks=["niah"]), "add up to at most 1"),
        (dict(retrieval_ratio=0.5), "needs at least one retrieval task"),
        (dict(strategy="annealing"), "unknown curriculum strategy"),
        (dict(strategy="dag", dag={"copy": ["reverse"], "reverse": ["copy"]}), "cycle"),
        (dict(strategy="dag", tasks=["copy"], dag={"chain": []}), "dag names tasks not in use"),
        (dict(strategy="dag", tasks=["copy"], retrieval_tasks=["niah"], dag={"copy": ["niah"]}), "no alg task"),
        (dict(tasks=["parity", "parity"]), "listed twice"),
        (dict(ema_decay=1.0), "ema_decay must lie in"),
        (dict(retrieval_tasks=["mqar:vocab_size=4096"], retrieval_ratio=1.0), "vocab_size=4096 exceeds the tokenizer.s 261 ids"),
    ],
)
def test_bad_configurations(byte_tok, kw, fragment):
    with pytest.raises(MemlabError, match=fragment):
        Curriculum(tasks_only(**kw), byte_tok)


def test_a_level_fits_only_if_its_longest_examples_do(byte_tok, caplog):
    # niah with 10 distractors needs 260 to 291 tokens, by the names, objects and colours drawn
    niah = dict(tasks=[], retrieval_tasks=["niah"], retrieval_ratio=1.0, batch_size=4, total_tokens=10**9)
    assert Curriculum(CurriculumConfig(seq_len=291, **niah), byte_tok)._levels["niah"] == (0, 10)
    _warn_left_out.cache_clear()  # (it warns once per process)
    c = Curriculum(CurriculumConfig(seq_len=287, **niah), byte_tok)
    assert c._levels["niah"] == (0,)
    # the levels left out are named (a NIAH curriculum had silently stopped at 10 of its 100 distractors)
    assert "task niah: difficulties [10, 30, 50, 100] do not fit in seq_len=287" in caplog.text
    with pytest.raises(MemlabError, match=r"task niah does not fit in seq_len=287 \(difficulty 10 needs 2(8[89]|9[01]) "):
        Curriculum(CurriculumConfig(seq_len=287, levels={"niah": [0, 10]}, **niah), byte_tok)


def test_an_example_longer_than_the_checked_ones_is_drawn_again(byte_tok, caplog):
    """niah at seq_len 58 passed the start-up check, then a 60-token example (0.7% of draws) had ended
    the run mid-way; such an example is drawn again, and a level none of whose draws fit is an error."""
    c = Curriculum(tasks_only(tasks=["copy"], levels={"copy": [4]}, seq_len=32), byte_tok)
    copy, draws = c._tasks["copy"], itertools.count()
    c._tasks["copy"] = lambda rng, level: copy(rng, 40 if next(draws) % 3 == 0 else level)  # every third too long
    for _ in range(3):
        c.next_batch()  # packs the examples that fit, after drawing again
    assert caplog.text.count("task copy at difficulty 4 drew an example of 88 tokens, more than seq_len=32") == 1
    c._tasks["copy"] = lambda rng, level: copy(rng, 40)  # no example fits any longer
    with pytest.raises(MemlabError, match=r"task copy at difficulty 4 drew 100 examples in a row longer than seq_len=32"):
        c.next_batch()


def test_mismatched_inputs(byte_tok, byte_shards):
    other = build_tokenizer("bpe", texts=["some text 123"] * 10, vocab_size=300)
    with pytest.raises(MemlabError, match="different tokenizer"):
        Curriculum(tasks_only(), other, lm=TokenShards(byte_shards, "train"))
    c = Curriculum(tasks_only(tasks=["copy"]), byte_tok)
    state = Curriculum(tasks_only(tasks=["reverse"]), byte_tok).state_dict()
    with pytest.raises(MemlabError, match="state is for tasks"):
        c.load_state_dict(state)
    with pytest.raises(MemlabError, match="not in this curriculum"):
        c.observe("reverse", 1.0)


def test_a_level_beyond_what_a_shorter_seq_len_fits_is_refused_on_resume(byte_tok):
    """A resume at a shorter seq_len (the same tokens per step) had raised an IndexError in its first batch."""
    long = Curriculum(tasks_only(tasks=["copy"], seq_len=64), byte_tok)
    short = Curriculum(tasks_only(tasks=["copy"], seq_len=32, batch_size=8), byte_tok)  # leaves copy's top 4 out
    state = long.state_dict()
    state["tasks"]["copy"]["level"] = len(short._levels["copy"])  # the first level seq_len 64 leaves out
    assert state["tasks"]["copy"]["level"] < len(long._levels["copy"])
    long.load_state_dict(state)
    with pytest.raises(MemlabError, match="beyond the 12 that fit in seq_len 32; resume with the seq_len the run"):
        short.load_state_dict(state)
