"""Suite ``ablation``: does the model use its memory, and how far back does it reach?

On one set of retrieval examples (the answer is only in the context, at a random depth of it
by default; ``--ablation-task niah:position=start`` puts it farthest back, beyond the reach of a
hybrid's windows and convolutions, which a needle just before the question is not):

* ``zero``: accuracy with every memory-carrying layer's read-out zeroed, and with each
  such layer alone zeroed.  Delta = accuracy(normal) - accuracy(zeroed) on the same
  examples, with Tango's paired score interval.  A model without memory-carrying layers
  (baseline, act, shared_loop: attention only) has nothing to zero: ``zeroed`` is null and
  Delta is null (not applicable), with the reason in ``delta_note``.  What zeroing removes in
  each mixer is listed in :func:`memlab.models.ablation.ablate`.
* ``horizon``: accuracy when every mixer sees only its last ``h`` tokens, for a sweep of
  ``h``.  Mixers stack: through its ``max_depth`` mixer applications a position still reaches
  ``max_depth (h - 1) + 1`` tokens back (``reach``, at most the context), so where the accuracy
  rises bounds how far back the model needs to reach, in those units.

Ablations go through :func:`memlab.ablate` (the mixer contract), never a re-implemented forward.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

import memlab
from memlab.data.tasks import RETRIEVAL_VERSION
from memlab.errors import MemlabError
from memlab.eval.exact_match import check_context
from memlab.eval.hub import EvalContext, register_suite
from memlab.eval.retrieval import ContextTooShort, retrieval_examples
from memlab.eval.stats import accuracy_record, paired_delta

NO_MEMORY = "no memory-carrying layer (attention only): nothing to zero, Delta does not apply"


def default_horizons(context_len: int) -> list[int]:
    """1, 4, 16, ... (powers of four) below the context, then the whole context."""
    out, h = [], 1
    while h < context_len:
        out.append(h)
        h *= 4
    return [*out, context_len]


def check(ctx: EvalContext) -> None:
    """Refuse an ablation context beyond the model's, or a task that does not fit it (one example is drawn)."""
    T = ctx.options.ablation_context
    check_context(ctx.model, T, "the ablation context (--ablation-context)")
    try:
        retrieval_examples(ctx, ctx.options.ablation_task, T, 1, random.Random(0))
    except ContextTooShort as e:
        raise MemlabError(f"{e}; give a longer --ablation-context") from None


@register_suite("ablation", check=check)
def run(ctx: EvalContext) -> dict[str, Any]:
    model, options = ctx.model, ctx.options
    T = options.ablation_context  # checked by evaluate_model before any suite ran
    examples = retrieval_examples(ctx, options.ablation_task, T, options.ablation_samples, ctx.rng("ablation"))

    normal = ctx.score(examples, "ablation: normal")
    memory = sorted({m.layer_idx: type(m).__name__ for m in model.mixers if m.carries_memory}.items())
    zeroed, delta, note = None, {"delta": None, "ci95": [None, None], "n": len(examples)}, NO_MEMORY
    if memory:
        with memlab.ablate(model, mode="zero"):
            hits = ctx.score(examples, "ablation: zeroed")
        zeroed, delta, note = accuracy_record(hits), paired_delta(normal, hits), None
    per_layer = []
    for layer, mixer in memory:
        with memlab.ablate(model, mode="zero", layers=[layer]):
            alone = ctx.score(examples, f"ablation: layer {layer} zeroed")
        per_layer.append({"layer": layer, "mixer": mixer, "zeroed": accuracy_record(alone),
                          "delta": paired_delta(normal, alone)})

    horizons = options.horizons or default_horizons(T)
    subset = examples[: options.horizon_samples]
    sweep = []
    for h in sorted(set(horizons)):
        with memlab.ablate(model, mode="horizon", horizon=h):
            sweep.append({"horizon": h, "reach": min(T, model.body.max_depth * (h - 1) + 1),
                          **accuracy_record(ctx.score(subset, f"ablation: horizon {h}"))})
    return {
        "task": options.ablation_task,
        "retrieval_version": RETRIEVAL_VERSION,
        "context_len": T,
        "memory_layers": [layer for layer, _ in memory],
        "chance": float(np.mean([e.meta["chance"] for e in examples])),
        "normal": accuracy_record(normal),
        "zeroed": zeroed,
        "delta": delta,
        "delta_note": note,
        "per_layer": per_layer,
        "horizon": sweep,
    }
