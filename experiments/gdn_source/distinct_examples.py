"""How many distinct examples the ablation suite drew (the fact NIAH has 8 names x 8 objects x 8 colours).

With the fact at the start every distractor is the same sentence, so an example is fixed by its
(name, object, colour): 100 draws from 512 repeat some.  (At a random position the index is drawn
too, for the haystack size that fits; ``--difficulty`` stands in for it.)  This replays the suite's draws
(``memlab.eval.hub.EvalContext.rng`` and ``memlab.eval.retrieval.retrieval_examples``, unchanged
since the GDN runs) without a model or tokenizer.

Usage (repo root): .venv/bin/python experiments/gdn_source/distinct_examples.py [--task niah:position=start] [--n 100]
"""

from __future__ import annotations

import argparse
import random

from memlab.data.tasks import get_task, parse_task_spec


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="niah:position=start")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", type=int, default=100, help="distractor sentences (any: the content is the same)")
    opts = p.parse_args()
    name, params = parse_task_spec(opts.task)
    task = get_task(name, **params)
    rng = random.Random(f"{opts.seed}/ablation")  # EvalContext.rng("ablation")
    seen = set()
    for _ in range(opts.n):
        ex = task(random.Random(rng.random()), opts.difficulty)
        seen.add((ex.prompt, ex.query, ex.answer))
    print(f"{opts.task}: {opts.n} examples, {len(seen)} distinct")


if __name__ == "__main__":
    main()
