"""How many distinct examples the GDN runs' fact-at-start ablation drew.

The runs (commits f161ae7 and 29986a4) drew the fact NIAH from 8 names x 8 objects x 8 colours; with
the fact at the start every distractor is the same sentence, so an example is fixed by its (name,
object, colour), and 100 draws from 512 repeat some.  This replays those draws exactly as the code of
the runs made them (``EvalContext.rng("ablation")`` seeds one ``random.Random`` per example, from which
``FactNIAH`` draws name, object and colour in that order), with the word lists of that code copied here:
the task generator has changed since, so this does not import it.

Usage (repo root): .venv/bin/python experiments/gdn_source/distinct_examples.py [--n 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import random

# memlab.data.tasks.retrieval at f161ae7 / 29986a4
NAMES = ("Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Henry")
OBJECTS = ("ball", "car", "hat", "book", "pen", "cup", "ring", "lamp")
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "white")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100, help="--ablation-samples of the run")
    p.add_argument("--seed", type=int, default=0, help="the eval seed")
    opts = p.parse_args()
    rng = random.Random(f"{opts.seed}/ablation")  # EvalContext.rng("ablation")
    seen = set()
    for _ in range(opts.n):
        example = random.Random(rng.random())  # retrieval_examples: one generator per example
        seen.add((example.choice(NAMES), example.choice(OBJECTS), example.choice(COLORS)))
    print(f"niah:position=start: {opts.n} examples, {len(seen)} distinct")


if __name__ == "__main__":
    main()
