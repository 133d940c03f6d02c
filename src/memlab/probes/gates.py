"""Gates probe: how strongly each syntactic role writes into each slot, and what triggers each slot.

Per slot layer: the mean write gate of every (role, slot) pair (roles from ``tokenize`` types
and keywords in Python, or punctuation / function words / content words in prose); the role
each slot favours (the largest mean gate into it, among the roles seen at least
``min_token_count`` times; null when no role is that frequent or nothing writes to the slot)
with that mean gate and its ratio to the slot's mean gate over all tokens; and the tokens with
the largest mean gate per slot among those seen at least ``min_token_count`` times.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memlab.probes import plots
from memlab.probes.labels import ROLES
from memlab.probes.runner import ProbeContext


def gates_probe(ctx: ProbeContext) -> dict[str, Any]:
    text = ctx.text()
    activity = ctx.activity(text)
    roles, ids = text.flat("role"), text.flat("ids")
    present = [r for r in range(len(ROLES)) if (roles == r).any()]
    role_names = [ROLES[r] for r in present]
    role_counts = np.array([(roles == r).sum() for r in present])  # (roles,)
    frequent = np.flatnonzero(role_counts >= ctx.options.min_token_count)  # the roles a slot may favour
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    eligible = np.flatnonzero(counts >= ctx.options.min_token_count)
    layers = []
    for a in activity:
        K = a.gates.shape[1]
        by_role = np.stack([a.gates[roles == r].mean(0) for r in present])  # (roles, K)
        slot_mean = a.gates.mean(0)  # (K,)
        favoured = frequent[by_role[frequent].argmax(0)] if len(frequent) else None  # (K,) indices into present
        # a slot no token writes to (collapsed under hard routing) favours no role and has no triggers
        token_means = np.stack([np.bincount(inverse, weights=a.gates[:, k], minlength=len(uniq)) for k in range(K)], 1)
        token_means /= counts[:, None]
        slots = []
        for k in range(K):
            writers = eligible[token_means[eligible, k] > 0]
            top = writers[np.argsort(-token_means[writers, k], kind="stable")[: ctx.options.top_tokens]]
            role = favoured[k] if favoured is not None and slot_mean[k] > 0 else None
            slots.append({
                "slot": k,
                "mean_gate": float(slot_mean[k]),
                "favoured_role": None if role is None else role_names[role],
                "favoured_role_mean_gate": None if role is None else float(by_role[role, k]),
                "favoured_role_lift": None if role is None else float(by_role[role, k] / slot_mean[k]),
                "triggers": [
                    {"token": ctx.tokenizer.decode([int(uniq[t])]), "mean_gate": float(token_means[t, k]),
                     "count": int(counts[t])}
                    for t in top
                ],
            })  # fmt: skip
        layers.append({"layer": a.layer, "role_by_slot_mean_gate": by_role.tolist(), "slots": slots})
    plots.heatmaps(
        [(f"layer {layer['layer']}", np.array(layer["role_by_slot_mean_gate"])) for layer in layers],
        role_names, [str(k) for k in range(activity[0].gates.shape[1])],
        ctx.figure("gates"), f"mean write gate by role and slot, step {ctx.step}", "mean gate", vmin=0.0,
    )
    return {
        "corpus": ctx.options.corpus,
        "tokens": text.tokens,
        "documents": text.documents,
        "roles": role_names,
        "tokens_per_role": role_counts.tolist(),
        "layers": layers,
    }
