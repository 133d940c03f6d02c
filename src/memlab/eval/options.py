"""The options of ``memlab eval``: what each suite evaluates, and how much of it.

A plain dataclass (no torch import) so that the command line can be built from it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from memlab.cli_help import DefaultInDoc
from memlab.errors import MemlabError, check_at_least, check_seed

# options that count something: each must be >= 1 (None where allowed: the default)
COUNTS = ("samples", "needle_samples", "lm_tokens", "lm_context", "ablation_context", "ablation_samples",
          "horizon_samples", "batch_tokens", "act_steps")


DEFAULT_CONTEXT_LENGTHS = [256, 512, 1024, 2048]


@dataclass
class EvalOptions:
    """What the suites evaluate, and how much of it (every field is a CLI flag of ``memlab eval``)."""

    tasks: Annotated[list[str] | None, DefaultInDoc] = None
    """algorithmic: restrict to these tasks (default: every task); lm-eval: the tasks to run (required; its
    names may also be comma-separated, as lm_eval's --tasks takes them)"""
    grid: Literal["iid", "ood", "all"] = "all"
    """algorithmic: which grid of difficulties to evaluate"""
    samples: int = 100
    """algorithmic: distinct examples per task and difficulty (fewer where a level has fewer); lm-eval: per task"""
    needle_tasks: Annotated[list[str] | None, DefaultInDoc] = None
    """longctx: needle tasks, NAME[:key=value,...] (e.g. niah:distractors=sky; default: niah, sniah1, sniah2, sniah3)"""
    context_lengths: list[int] = field(default_factory=lambda: list(DEFAULT_CONTEXT_LENGTHS))
    """longctx: example lengths in tokens (haystack, needle, question and answer); the default stops at the
    size presets' max_seq_len (2048), which learned positions cannot pass, and leaves out a length too short for
    a task's needle and question in the tokenizer's tokens; add 4096 for the source's 1k/2k/4k grid"""
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    """longctx: needle depths as a fraction of the haystack"""
    needle_samples: int = 20
    """longctx: examples per (context length, depth) cell"""
    corpus: Annotated[str | None, DefaultInDoc] = None
    """lm: a prepared shard directory, or a corpus source (stdlib-docs, files:GLOB, ...); default: the run's data"""
    lm_tokens: int = 65536
    """lm: at most this many validation tokens"""
    lm_context: Annotated[int | None, DefaultInDoc] = None
    """lm: window length (default: min(max_seq_len, 512))"""
    ablation_task: str = "niah"
    """ablation: the retrieval task whose accuracy the memory ablation measures"""
    ablation_context: int = 256
    """ablation: context length of its examples in tokens"""
    ablation_samples: int = 200
    """ablation: examples (the same ones for every condition: Delta is paired)"""
    horizons: Annotated[list[int] | None, DefaultInDoc] = None
    """ablation: horizons h of the sweep (default: 1, 4, 16, ... and the whole context)"""
    horizon_samples: int = 50
    """ablation: examples per horizon (a horizon ablation recomputes windows: slow for recurrent mixers)"""
    act_steps: Annotated[int | None, DefaultInDoc] = None
    """act models: run exactly this many steps at every position instead of halting adaptively,
    to compare with shared_loop at the same depth (default: adaptive; results go to eval/act_steps_K/)"""
    seed: int = 0
    batch_tokens: int = 16384
    """tokens per forward batch"""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:N"""

    def check(self) -> None:
        """Refuse a count below 1 with one line naming its flag (run before any work)."""
        check_at_least(self, COUNTS, 1)
        check_seed(self)
        for name in ("tasks", "needle_tasks", "horizons"):  # given but empty: not "every one"
            if getattr(self, name) == []:
                raise MemlabError(f"--{name.replace('_', '-')} is empty")
        if self.horizons and min(self.horizons) < 1:
            raise MemlabError(f"--horizons must be >= 1, got {min(self.horizons)}")
