"""The training data stream: what the trainer asks for each step.

::

    curriculum = Curriculum(CurriculumConfig(...), tokenizer, lm=TokenShards(data_dir, "train"))
    while not curriculum.done:
        input_ids, labels = curriculum.next_batch()        # (B, T), (B, T) shifted, -100: no loss
        ...
        for task in curriculum.task_specs:                 # every so often
            batch = curriculum.eval_batch(task, 64)
            acc = exact_match(model(batch.input_ids), batch.labels).float().mean().item()
            curriculum.observe(task, acc)                  # under DDP: the all-reduced accuracy
    checkpoint["curriculum"] = curriculum.state_dict()     # JSON; load_state_dict resumes exactly

Each batch is of one kind, so its mean loss weighs its own objective:

- ``alg``: packed examples of the algorithmic ``tasks`` (loss on answers only).  The split
  curriculum serves only these until ``alg_tokens`` tokens, then language up to ``total_tokens``,
  where a ``replay_fraction`` of batches are still algorithmic;
- ``retrieval``: packed examples of ``retrieval_tasks``, a ``retrieval_ratio`` of the language
  phase's batches, drawn batch by batch (the mixed LM + retrieval objective);
- ``lm``: random windows of the token shards.

Difficulty per task (``strategy``): ``uniform`` samples every training level; ``competence``
keeps an EMA of each task's observed accuracy and moves to the next level when the EMA reaches
``threshold`` after at least ``min_evals`` observations and ``cooldown_steps`` steps since the last
change; with probability ``jitter`` an easier level is replayed.  It is adaptive, not a step
schedule: each model climbs at its own pace (the kinds of batch stay the same for all), and a
level costs at least ``min_evals`` evaluations, so a run needs that many evaluations per level to
reach the top.  ``dag`` adds staged unlocking:
a task is sampled once all its prerequisites (``dag``, default :data:`DEFAULT_DAG`) have reached
the threshold, or after ``dag_patience`` observations without progress; mastered tasks (top level,
at threshold) get a ``dag_replay`` share of the samples.  Everything is drawn from seeded
generators that are part of ``state_dict()``, so a resumed run draws the same batches.

Task examples are packed into rows one after another, with nothing masked between them: a row's
later examples see its earlier ones (evaluation scores one example per row).
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch

from memlab.data.shards import TokenShards
from memlab.data.tasks import (
    TASKS,
    Batch,
    TokenizedExample,
    encode_example,
    get_task,
    pack_examples,
    pad_batch,
    task_levels,
)
from memlab.data.tokenizer import Tokenizer
from memlab.errors import MemlabError

log = logging.getLogger(__name__)
STATE_VERSION = 1
FIT_SAMPLES = 128  # examples per level the start-up length check draws: lengths vary within a level
REDRAWS = 100  # draws of a training example, at most, until one fits in seq_len
DEFAULT_DAG: dict[str, list[str]] = {
    "copy": [],
    "parity": [],
    "compare": [],
    "successor": [],
    "reverse": ["copy"],
    "addition": ["successor"],
    "dyck": ["parity"],
    "chain": ["addition"],
    "mod_add": ["addition"],
    "multiplication": ["addition"],
}


@dataclass
class CurriculumConfig:
    """What the training stream is made of and how task difficulty evolves."""

    seq_len: int = 256
    batch_size: int = 16
    seed: int = 0
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    """algorithmic task specs"""
    alg_tokens: int = 0
    """split curriculum: algorithmic batches only for the first alg_tokens tokens"""
    total_tokens: int = 0
    """the stream is done after this many tokens (0: never)"""
    replay_fraction: float = 0.0
    """fraction of language-phase batches that replay algorithmic tasks"""
    retrieval_tasks: list[str] = field(default_factory=list)
    """retrieval task specs, e.g. niah, sniah2:n_keys=4, mqar"""
    retrieval_ratio: float = 0.0
    """fraction of language-phase batches that are retrieval examples"""
    strategy: Literal["uniform", "competence", "dag"] = "uniform"
    levels: dict[str, list[int]] = field(default_factory=dict)
    """per-task training difficulties, easiest first (default: the task's grid)"""
    ema_decay: float = 0.5
    """weight of the old value in a task's accuracy EMA: after a first evaluation at 0, four at 100%
    reach 0.94 (0.9 would need 22, longer than most short runs)"""
    threshold: float = 0.9
    cooldown_steps: int = 100
    min_evals: int = 3
    jitter: float = 0.1
    dag: dict[str, list[str]] = field(default_factory=dict)
    """task -> prerequisites (default: DEFAULT_DAG restricted to the tasks in use)"""
    dag_patience: int = 0
    """unlock the next stage after this many observations without an unlock (0: never)"""
    dag_replay: float = 0.2
    """share of task samples given to mastered tasks under the dag strategy"""


@functools.cache  # once per process: a study builds a curriculum per variant
def _warn_left_out(spec: str, levels: tuple[int, ...], seq_len: int, problem: str) -> None:
    log.warning("task %s: difficulties %s do not fit in seq_len=%d (%s) and are left out; raise seq_len to train "
                "them", spec, list(levels), seq_len, problem)  # fmt: skip


@dataclass
class TaskState:
    level: int = 0  # index into the task's levels
    ema: float | None = None  # at the current level
    evals: int = 0  # observations at the current level
    changed_at: int = 0  # step of the last level change
    passed: bool = False  # has reached the threshold at some level
    unlocked: bool = True


class Curriculum:
    """The one object a trainer draws batches from and reports task accuracy to.

    ``lm``: the training split's shards (this rank's slice under DDP); ``rank`` seeds a distinct
    stream per DDP rank.
    """

    def __init__(
        self,
        config: CurriculumConfig,
        tokenizer: Tokenizer,
        lm: TokenShards | None = None,
        rank: int = 0,
    ) -> None:
        self.config, self.tokenizer, self.lm, self.rank = config, tokenizer, lm, rank
        c = config
        if c.seq_len < 1 or c.batch_size < 1:
            raise MemlabError(f"seq_len and batch_size must be positive, got {c.seq_len} and {c.batch_size}")
        if c.strategy not in ("uniform", "competence", "dag"):
            raise MemlabError(f"unknown curriculum strategy {c.strategy!r}; valid choices: uniform, competence, dag")
        if min(c.replay_fraction, c.retrieval_ratio) < 0 or c.replay_fraction + c.retrieval_ratio > 1:
            raise MemlabError("replay_fraction and retrieval_ratio must be >= 0 and add up to at most 1")
        if not 0 <= c.ema_decay < 1:
            raise MemlabError(f"curriculum ema_decay must lie in [0, 1), got {c.ema_decay}")
        if lm is not None and lm.tokenizer_hash != tokenizer.hash:
            raise MemlabError("the token shards were made with a different tokenizer than the curriculum's")
        self.groups = {"alg": list(c.tasks), "retrieval": list(c.retrieval_tasks)}
        self.task_specs = self.groups["alg"] + self.groups["retrieval"]
        if len(set(self.task_specs)) != len(self.task_specs):
            raise MemlabError(f"a task is listed twice: {self.task_specs}")
        self._check_streams()
        self._tasks = {s: get_task(s, tokenizer=tokenizer, seq_len=c.seq_len) for s in self.task_specs}
        self._levels = {s: self._fitting_levels(s) for s in self.task_specs}
        self._redrawn: set[tuple[str, int]] = set()  # (task, level) whose too-long examples were warned of
        self._prereqs = self._dag() if c.strategy == "dag" else {}
        self.state = {s: TaskState(unlocked=not self._prereqs.get(s)) for s in self.task_specs}
        self.step = self.tokens_seen = self._since_unlock = 0
        self.last_kind = ""
        self.last_lengths: torch.Tensor | None = None  # (B,) real input length of each row; None: no padding
        self._rng = random.Random(f"memlab-curriculum:{c.seed}:{rank}")
        self._eval_rng = random.Random(f"memlab-eval:{c.seed}:{rank}")
        self._lm_rng = np.random.default_rng([c.seed, rank])

    @property
    def trained_specs(self) -> list[str]:
        """The tasks whose batches the run serves: the algorithmic ones with alg_tokens or replay,
        the retrieval ones with a retrieval ratio (a task evaluated but never trained selects nothing)."""
        c = self.config
        return ((self.groups["alg"] if c.alg_tokens > 0 or c.replay_fraction > 0 else [])
                + (self.groups["retrieval"] if c.retrieval_ratio > 0 else []))  # fmt: skip

    # ------------------------------------------------------------ validation
    def _check_streams(self) -> None:
        c = self.config
        if (c.alg_tokens > 0 or c.replay_fraction > 0) and not self.groups["alg"]:
            raise MemlabError("alg_tokens / replay_fraction need at least one algorithmic task")
        if c.retrieval_ratio > 0 and not self.groups["retrieval"]:
            raise MemlabError("retrieval_ratio > 0 needs at least one retrieval task (e.g. niah)")
        language_phase = c.total_tokens == 0 or c.total_tokens > c.alg_tokens
        if language_phase and c.replay_fraction + c.retrieval_ratio < 1 and self.lm is None:
            raise MemlabError(
                "language batches need token shards (memlab data prepare); or train on tasks only "
                "with alg_tokens == total_tokens or replay_fraction + retrieval_ratio == 1"
            )

    def _fitting_levels(self, spec: str) -> tuple[int, ...]:
        """The task's levels (configured, else its defaults that fit in seq_len); fail now, not mid-run.

        A level fits when the longest of ``FIT_SAMPLES`` examples drawn with a fixed seed does.
        """
        configured = self.config.levels.get(spec)
        problems = []

        def fits(level: int) -> bool:
            rng = random.Random(0)
            try:
                for _ in range(FIT_SAMPLES):
                    needed = len(self._encode(spec, rng, level)) - 1
                    if needed > self.config.seq_len:
                        problems.append(f"difficulty {level} needs {needed} tokens")
                        return False
            except MemlabError as e:  # impossible at this level: an error for configured levels only
                if configured:
                    raise
                problems.append(str(e))
                return False
            return True

        levels = tuple(configured or task_levels(spec))
        fitting = tuple(level for level in levels if fits(level))
        if not fitting or (configured and fitting != levels):
            raise MemlabError(
                f"task {spec} does not fit in seq_len={self.config.seq_len} ({problems[0]}); "
                f"raise seq_len or set easier levels for {spec}"
            )
        if fitting != levels:  # (a NIAH curriculum at seq_len 256 stops short of its 100 distractors)
            _warn_left_out(spec, tuple(lv for lv in levels if lv not in fitting), self.config.seq_len, problems[0])
        return fitting

    def _dag(self) -> dict[str, list[str]]:
        dag = self.config.dag or DEFAULT_DAG
        unknown = sorted(set(dag) - set(self.task_specs))
        if self.config.dag and unknown:
            raise MemlabError(f"dag names tasks not in use: {unknown}; tasks: {', '.join(self.task_specs)}")
        prereqs = {t: [p for p in dag.get(t, []) if p in self.task_specs] for t in self.task_specs}
        seen: dict[str, int] = {}  # 1: visiting, 2: done

        def visit(t: str) -> None:
            if seen.get(t) == 1:
                raise MemlabError(f"the task dag has a cycle through {t}")
            if not seen.get(t):
                seen[t] = 1
                for p in prereqs[t]:
                    visit(p)
                seen[t] = 2

        for t in prereqs:
            visit(t)
        for group, specs in self.groups.items():
            if specs and all(prereqs[t] for t in specs):
                raise MemlabError(f"the task dag leaves no {group} task unlocked at the start: {', '.join(specs)}")
        return prereqs

    # --------------------------------------------------------------- sampling
    def _encode(self, spec: str, rng: random.Random, difficulty: int) -> TokenizedExample:
        example = encode_example(self._tasks[spec](rng, difficulty), self.tokenizer)
        if max(example.ids) >= self.tokenizer.vocab_size:
            raise MemlabError(f"task {spec} produced ids >= the vocabulary size {self.tokenizer.vocab_size}")
        return example

    def difficulty(self, spec: str) -> int:
        """The level a task is evaluated at: its current training level (``uniform``, which trains
        every level: the hardest; its easiest had made every accuracy curve saturate at once)."""
        if self.config.strategy == "uniform":
            return self._levels[spec][-1]
        return self._levels[spec][self.state[spec].level]

    def _sample_difficulty(self, spec: str) -> int:
        levels = self._levels[spec]
        if self.config.strategy == "uniform":
            return self._rng.choice(levels)
        index = self.state[spec].level
        if index and self._rng.random() < self.config.jitter:
            index = self._rng.randint(0, index - 1)
        return levels[index]

    def _mastered(self, spec: str) -> bool:
        st, c = self.state[spec], self.config
        top = st.level == len(self._levels[spec]) - 1
        return top and st.ema is not None and st.evals >= c.min_evals and st.ema >= c.threshold

    def _sample_task(self, group: str) -> str:
        specs = [s for s in self.groups[group] if self.state[s].unlocked]
        if self.config.strategy == "dag":
            mastered = [s for s in specs if self._mastered(s)]
            learning = [s for s in specs if s not in mastered]
            if mastered and learning:
                specs = mastered if self._rng.random() < self.config.dag_replay else learning
        return self._rng.choice(specs)

    def _examples(self, group: str) -> Iterator[TokenizedExample]:
        while True:
            spec = self._sample_task(group)
            yield self._fitting_example(spec, self._sample_difficulty(spec))

    def _fitting_example(self, spec: str, level: int) -> TokenizedExample:
        """An example of ``spec`` at ``level`` that fits in seq_len. One longer than all the start-up check
        saw (a rare long name, say) is drawn again, with a warning (once per task and level); a level whose
        examples no longer fit at all is an error."""
        for _ in range(REDRAWS):
            example = self._encode(spec, self._rng, level)
            if len(example) - 1 <= self.config.seq_len:
                return example
            if (spec, level) not in self._redrawn:
                self._redrawn.add((spec, level))
                log.warning("task %s at difficulty %d drew an example of %d tokens, more than seq_len=%d and than "
                            "the %d examples checked at start-up: such examples are drawn again (raise seq_len to "
                            "train on them)", spec, level, len(example) - 1, self.config.seq_len, FIT_SAMPLES)
        raise MemlabError(
            f"task {spec} at difficulty {level} drew {REDRAWS} examples in a row longer than seq_len="
            f"{self.config.seq_len} (the {FIT_SAMPLES} checked at start-up fit); raise seq_len or set easier "
            f"levels for {spec}"
        )

    def _kind(self) -> str:
        """The next batch's kind, drawn from (seed, step) alone: the same schedule for every model
        trained with these flags, however their adaptive difficulties move (a draw from the task
        generator had shifted with the accuracy-driven draws)."""
        c = self.config
        if self.tokens_seen < c.alg_tokens:
            return "alg"
        u = random.Random(f"memlab-kind:{c.seed}:{self.rank}:{self.step}").random()
        return "alg" if u < c.replay_fraction else "retrieval" if u < c.replay_fraction + c.retrieval_ratio else "lm"

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, T) and shifted labels (B, T) with -100 where there is no loss; ``last_kind`` and
        ``last_lengths`` (the real input length of each packed row, None for language windows) describe it."""
        c = self.config
        kind = self._kind()
        if kind == "lm":
            windows = self.lm.random_windows(c.batch_size, c.seq_len, self._lm_rng)  # (B, T + 1)
            input_ids, labels = windows[:, :-1], windows[:, 1:]
            self.last_lengths = None
        else:
            batch = pack_examples(self._examples(kind), c.seq_len, self.tokenizer.pad_id, n_rows=c.batch_size)
            input_ids, labels, self.last_lengths = batch
        self.step += 1
        self.tokens_seen += c.batch_size * c.seq_len
        self.last_kind = kind
        return input_ids.contiguous(), labels.contiguous()

    @property
    def done(self) -> bool:
        return self.config.total_tokens > 0 and self.tokens_seen >= self.config.total_tokens

    def eval_batch(self, spec: str, n: int, difficulty: int | None = None) -> Batch:
        """``n`` fresh examples of ``spec`` at ``difficulty`` (default: its current level), one per row."""
        if spec not in self._tasks:
            raise MemlabError(f"task {spec!r} is not in this curriculum; tasks: {', '.join(self.task_specs)}")
        d = self.difficulty(spec) if difficulty is None else difficulty
        return pad_batch([self._encode(spec, self._eval_rng, d) for _ in range(n)], self.tokenizer.pad_id)

    # ------------------------------------------------------------- competence
    def observe(self, spec: str, accuracy: float) -> None:
        """Report ``spec``'s accuracy (exact match, 0..1) at its current level."""
        if spec not in self.state:
            raise MemlabError(f"task {spec!r} is not in this curriculum; tasks: {', '.join(self.task_specs)}")
        c, st = self.config, self.state[spec]
        st.ema = accuracy if st.ema is None else c.ema_decay * st.ema + (1 - c.ema_decay) * accuracy
        st.evals += 1
        ready = st.evals >= c.min_evals and st.ema >= c.threshold
        st.passed = st.passed or ready
        can_rise = st.level < len(self._levels[spec]) - 1 and self.step - st.changed_at >= c.cooldown_steps
        if c.strategy != "uniform" and ready and can_rise:
            st.level, st.ema, st.evals, st.changed_at = st.level + 1, None, 0, self.step
        if c.strategy == "dag":
            self._unlock()

    def _unlock(self) -> None:
        locked = [s for s in self.task_specs if not self.state[s].unlocked]
        ready = [s for s in locked if all(self.state[p].passed for p in self._prereqs[s])]
        self._since_unlock += 1
        if not ready and locked and 0 < self.config.dag_patience <= self._since_unlock:
            ready = [s for s in locked if all(self.state[p].unlocked for p in self._prereqs[s])]
        for s in ready:
            self.state[s].unlocked = True
        if ready:
            self._since_unlock = 0

    def stats(self) -> dict[str, dict]:
        """Per task: current difficulty, EMA accuracy, unlocked (for logs)."""
        return {
            s: {"difficulty": self.difficulty(s), "ema": self.state[s].ema, "unlocked": self.state[s].unlocked}
            for s in self.task_specs
        }

    # ----------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        """Everything needed to continue the stream exactly, as JSON-serialisable values."""
        version, internal, gauss = self._rng.getstate()
        e_version, e_internal, e_gauss = self._eval_rng.getstate()
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "since_unlock": self._since_unlock,
            "rng": [version, list(internal), gauss],
            "eval_rng": [e_version, list(e_internal), e_gauss],
            "lm_rng": self._lm_rng.bit_generator.state,
            "tasks": {s: asdict(st) for s, st in self.state.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise MemlabError(f"curriculum state version {state.get('version')} is not {STATE_VERSION}")
        if sorted(state["tasks"]) != sorted(self.task_specs):
            raise MemlabError(
                f"the curriculum state is for tasks {sorted(state['tasks'])}, this run has {sorted(self.task_specs)}"
            )
        beyond = {s: v["level"] for s, v in state["tasks"].items() if v["level"] >= len(self._levels[s])}
        if beyond:  # (a shorter seq_len fits fewer levels: the first batch had raised an IndexError)
            spec, level = next(iter(beyond.items()))
            raise MemlabError(
                f"the curriculum state has {spec} at its level {level + 1}, beyond the {len(self._levels[spec])} "
                f"that fit in seq_len {self.config.seq_len}; resume with the seq_len the run trained at"
            )
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self._since_unlock = state["since_unlock"]
        self._rng.setstate((state["rng"][0], tuple(state["rng"][1]), state["rng"][2]))
        self._eval_rng.setstate((state["eval_rng"][0], tuple(state["eval_rng"][1]), state["eval_rng"][2]))
        self._lm_rng.bit_generator.state = state["lm_rng"]
        self.state = {s: TaskState(**v) for s, v in state["tasks"].items()}
