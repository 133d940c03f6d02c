"""A lenient NIAH score closer to the source's top-5 metric: which colour does the model prefer?

On the ablation suite's own examples (same seed and generator name, so the same 200 examples), the
model reads the prompt up to the answer separator and we compare its next-token logits over the
first tokens of the 8 colours (BPE-512: purple and pink share the first token "p", so it is a 7-way
choice; chance is 1/8 per colour, 2/8 for p).  Correct: the argmax among them is the true colour's
first token.  Normal vs every memory layer zeroed (memlab.ablate), Delta with Tango's paired interval.

Usage: .venv/bin/python experiments/gdn_source/colour_choice.py RUN_DIR [--task niah] [--context 1344] [--samples 200]
Writes RUN_DIR/eval/colour_choice.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import memlab
from memlab.data.tasks.retrieval import COLORS
from memlab.eval.hub import EvalContext, load_checkpoint
from memlab.eval.options import EvalOptions
from memlab.eval.retrieval import retrieval_examples
from memlab.eval.stats import accuracy_record, paired_delta


@torch.no_grad()
def choices(model, prompts: list[list[int]], candidates: list[int], pad_id: int, rows: int = 8) -> np.ndarray:
    """(n,) index into ``candidates`` of the largest next-token logit after each prompt."""
    out = []
    for i in range(0, len(prompts), rows):
        chunk = prompts[i : i + rows]
        width = max(map(len, chunk))
        x = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for j, p in enumerate(chunk):
            x[j, : len(p)] = torch.tensor(p)  # right padding: causal, so the prompt's last logit is unaffected
        logits = model(x)  # (b, T, V)
        last = logits[torch.arange(len(chunk)), torch.tensor([len(p) - 1 for p in chunk])]  # (b, V)
        out.append(last[:, candidates].argmax(-1).numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--task", default="niah", help="the fact NIAH spec (niah:distractors=sky: the source's task)")
    ap.add_argument("--context", type=int, default=1344)
    ap.add_argument("--samples", type=int, default=200)
    args = ap.parse_args()
    model, tokenizer, *_ = load_checkpoint(args.run, device="cpu")
    model.eval()
    options = EvalOptions(ablation_context=args.context, ablation_samples=args.samples)
    ctx = EvalContext(model=model, tokenizer=tokenizer, options=options)
    examples = retrieval_examples(ctx, args.task, args.context, args.samples, ctx.rng("ablation"))  # the suite's draw
    first = {c: tokenizer.encode(c)[0] for c in COLORS}
    candidates = sorted(set(first.values()))
    prompts, truth, buckets = [], [], []
    for e in examples:
        start = list(e.loss_mask).index(True)  # first answer token
        prompts.append(list(e.ids[:start]))
        truth.append(candidates.index(e.ids[start]))
        buckets.append(e.meta["bucket"])
    truth = np.array(truth)
    normal = choices(model, prompts, candidates, tokenizer.pad_id) == truth
    with memlab.ablate(model, mode="zero"):
        zeroed = choices(model, prompts, candidates, tokenizer.pad_id) == truth
    result = {
        "metric": "argmax over the colours' first tokens at the answer position (7 distinct; purple/pink share one)",
        "task": args.task,
        "context_len": args.context,
        "normal": accuracy_record(normal),
        "zeroed": accuracy_record(zeroed),
        "delta": paired_delta(normal, zeroed),
        "normal_by_bucket": {b: accuracy_record(normal[np.array(buckets) == b]) for b in ("early", "middle", "late")},
        "zeroed_by_bucket": {b: accuracy_record(zeroed[np.array(buckets) == b]) for b in ("early", "middle", "late")},
    }
    path = Path(args.run) / "eval" / "colour_choice.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    n, z, d = result["normal"], result["zeroed"], result["delta"]
    print(f"{args.run}: colour choice normal {100 * n['accuracy']:.1f}% {n['ci95']}, zeroed {100 * z['accuracy']:.1f}% "
          f"{z['ci95']}, Delta {100 * d['delta']:+.1f} {d['ci95']} (n={n['n']})")


if __name__ == "__main__":
    main()
