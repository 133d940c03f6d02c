"""Domains probe: the slot-usage profile of several corpora and how similar the profiles are.

A corpus has two profiles per layer: the soft one, its mean routing distribution over the K
slots, and the argmax one, the share of its tokens whose largest routing weight is slot k (which
slot wins each token); across layers, the profiles of all layers concatenated.  Soft profiles
of routing that is near uniform are all near the uniform vector, so their cosines sit near 1
whichever slots win; the argmax profiles show which slots each corpus actually uses.
Similarity is the cosine of two profiles (1 = same usage); the mean over the pairs of different
corpora summarises how domain-specific routing is.  The soft profiles and their similarities
are the top-level entries of the results, the argmax ones the same entries under ``argmax``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memlab.probes import plots
from memlab.probes.runner import ProbeContext
from memlab.probes.stats import argmax_shares, cosine_similarity_matrix


def domains_probe(ctx: ProbeContext) -> dict[str, Any]:
    domains = ctx.options.domain_sources()
    names = list(domains)
    soft, hard, tokens = [], [], {}
    for name, source in domains.items():
        text = ctx.text(source)
        tokens[name] = text.tokens
        activity = ctx.activity(text)
        soft.append(np.stack([a.routing.mean(0, dtype=np.float64) for a in activity]))  # (layers, K)
        hard.append(np.stack([argmax_shares(a.routing) for a in activity]))  # (layers, K)
    layer_ids = [m.layer_idx for m in ctx.model.mixers if hasattr(m, "slot_activity")]
    reports = {kind: similarities(names, np.stack(p), layer_ids) for kind, p in (("soft", soft), ("argmax", hard))}
    panels = [(f"{kind}, all layers", np.array(r["similarity"])) for kind, r in reports.items()]
    for i, layer in enumerate(layer_ids):
        panels += [(f"{kind}, layer {layer}", np.array(r["layers"][i]["similarity"])) for kind, r in reports.items()]
    plots.heatmaps(
        panels, names, names, ctx.figure("domains"),
        f"cosine similarity of slot-usage profiles (soft: mean routing; argmax: winning slot), step {ctx.step}",
        "cosine", vmin=0.0, vmax=1.0,
    )  # fmt: skip
    return {"domains": domains, "tokens": tokens, **reports["soft"], "argmax": reports["argmax"]}


def similarities(names: list[str], profiles: np.ndarray, layer_ids: list[int]) -> dict[str, Any]:
    """Cosine similarities of the ``(domains, layers, K)`` profiles, over all layers and per layer."""
    overall = cosine_similarity_matrix(profiles.reshape(len(names), -1))
    per_layer = [cosine_similarity_matrix(profiles[:, i]) for i in range(profiles.shape[1])]
    return {
        "profiles": {n: p.tolist() for n, p in zip(names, profiles)},
        "similarity": overall.tolist(),
        "pairs": {f"{a}~{b}": float(overall[i, j]) for i, a in enumerate(names) for j, b in enumerate(names) if i < j},
        "mean_cross_domain_similarity": _off_diagonal_mean(overall),
        "layers": [
            {"layer": i, "similarity": m.tolist(), "mean_cross_domain_similarity": _off_diagonal_mean(m)}
            for i, m in zip(layer_ids, per_layer)
        ],
    }


def _off_diagonal_mean(matrix: np.ndarray) -> float:
    n = len(matrix)
    return float((matrix.sum() - np.trace(matrix)) / (n * (n - 1)))
