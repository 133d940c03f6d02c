"""Exact-match scoring speed: one batched teacher-forced forward vs greedy decoding with generate.

Both give the same verdicts (tests/eval/test_exact_match.py proves it on a model planted to get
answers right); this measures what the batched form saves.  ``verdicts_agree`` is a check of the
run, telling only where some answers are right: ``correct`` says how many (an untrained model's
are all wrong, and agree trivially).  Examples are the algorithmic IID + OOD grids (``--samples`` per difficulty).
Prints JSON.  Reproduce:

    python benchmarks/bench_eval.py --variant baseline --size tiny --samples 4
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import tyro
from common import emit, interleaved_seconds, machine, peak_rss_mib

import memlab
from memlab.data.tasks import GRIDS, TASKS, encode_example
from memlab.data.tokenizer import build_tokenizer
from memlab.eval.exact_match import exact_match, exact_match_by_generation


@dataclass
class Args:
    variant: str = "baseline"
    size: str = "tiny"
    samples: int = 4
    """examples per task and difficulty"""
    batch_tokens: int = 16384
    rounds: int = 3
    """timed rounds, the two forms alternating, after one untimed round (the median is reported)"""
    out: str | None = None


def main(args: Args) -> dict:
    tok = build_tokenizer("byte")
    torch.manual_seed(0)
    model = memlab.build_model(args.variant, args.size, vocab_size=tok.vocab_size).eval()
    rng = random.Random(0)
    examples = [
        encode_example(TASKS[task](rng, d), tok)
        for task, grid in GRIDS.items()
        for d in (*grid.iid, *grid.ood)
        for _ in range(args.samples)
    ]
    tokens = sum(len(e) for e in examples)

    fast = exact_match(model, examples, tok.pad_id, args.batch_tokens)
    slow = exact_match_by_generation(model, examples)
    seconds = interleaved_seconds({  # (one run of each had varied by +-25% on a shared machine)
        "teacher_forced": lambda: exact_match(model, examples, tok.pad_id, args.batch_tokens),
        "generate": lambda: exact_match_by_generation(model, examples),
    }, args.rounds)
    batched_s, generate_s = seconds["teacher_forced"], seconds["generate"]
    return {
        "benchmark": "exact_match",
        "variant": args.variant,
        "size": args.size,
        "examples": len(examples),
        "tokens": tokens,
        "verdicts_agree": bool((fast == slow).all()),
        "correct": int(fast.sum()),
        "teacher_forced": {"seconds": batched_s, "examples_per_s": len(examples) / batched_s},
        "generate": {"seconds": generate_s, "examples_per_s": len(examples) / generate_s},
        "speedup": generate_s / batched_s,
        "rounds": args.rounds,
        "peak_rss_mib": peak_rss_mib(),
        "machine": machine(),
    }


if __name__ == "__main__":
    args = tyro.cli(Args)
    emit(main(args), args.out)
