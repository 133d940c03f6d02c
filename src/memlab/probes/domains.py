"""Domains probe: the slot-usage profile of several corpora and how similar the profiles are.

A corpus's profile in a layer is its mean routing distribution over the K slots; across layers,
the profiles of all layers concatenated.  Similarity is the cosine of two profiles (1 = same
usage); the mean over the pairs of different corpora summarises how domain-specific routing is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memlab.probes import plots
from memlab.probes.runner import ProbeContext
from memlab.probes.stats import cosine_similarity_matrix


def domains_probe(ctx: ProbeContext) -> dict[str, Any]:
    domains = ctx.options.domain_sources()
    profiles, tokens = {}, {}
    for name, source in domains.items():
        text = ctx.text(source)
        tokens[name] = text.tokens
        profiles[name] = np.stack([a.routing.mean(0) for a in ctx.activity(text)])  # (layers, K)
    names = list(domains)
    stacked = np.stack([profiles[n] for n in names])  # (domains, layers, K)
    layer_ids = [m.layer_idx for m in ctx.model.mixers if hasattr(m, "slot_activity")]
    overall = cosine_similarity_matrix(stacked.reshape(len(names), -1))
    per_layer = [cosine_similarity_matrix(stacked[:, i]) for i in range(stacked.shape[1])]
    plots.heatmaps(
        [("all layers", overall)] + [(f"layer {i}", m) for i, m in zip(layer_ids, per_layer)], names, names,
        ctx.path("domains", ".png"), f"cosine similarity of slot-usage profiles, step {ctx.step}", "cosine",
        vmin=0.0, vmax=1.0,
    )
    return {
        "domains": domains,
        "tokens": tokens,
        "profiles": {n: profiles[n].tolist() for n in names},
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
