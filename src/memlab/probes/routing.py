"""Routing probe: where tokens dock, and what that says about Python nesting depth.

Per slot layer: the share of tokens whose argmax slot is k, the mean routing distribution,
the largest share and the usage entropy; for the indentation level and the bracket depth of
every Python token (depths >= ``max_depth`` pooled): MI(slot; depth) in bits and normalised
by H(depth), from argmax slots and from full distributions, each with its bias correction,
shuffled-label baseline and permutation p-value; P(slot | depth) and the slots that dominate
each depth (largest lift P(slot | depth) / P(slot), among slots with >= 10 tokens there).
The figure (P(slot | indentation depth) per layer) is drawn only when the text holds Python code.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from memlab.probes import plots
from memlab.probes.activity import LayerActivity
from memlab.probes.corpus import ProbeText
from memlab.probes.runner import ProbeContext, ProbeOptions
from memlab.probes.stats import argmax_shares, entropy_bits, mi_test

log = logging.getLogger(__name__)
DEPTHS = ("indent", "bracket")
MIN_COUNT = 10  # tokens of a slot at a depth before it can be called dominant there


def routing_probe(ctx: ProbeContext) -> dict[str, Any]:
    text = ctx.text()
    results = routing_results(ctx.activity(text), text, ctx.options)
    panels = [
        (f"layer {layer['layer']}", np.array(layer["indent"]["slot_given_depth"]))
        for layer in results["layers"]
        if layer["indent"]["tokens"]
    ]
    if panels:
        plots.heatmaps(
            panels, results["depth_classes"], [str(k) for k in range(panels[0][1].shape[1])],
            ctx.figure("routing"), f"P(argmax slot | indentation depth), step {ctx.step}", "P(slot | depth)",
            vmin=0.0,
        )
    else:
        log.info("no figure: the probe text holds no Python code, so no token has an indentation depth")
    return results


def routing_results(activity: list[LayerActivity], text: ProbeText, options: ProbeOptions) -> dict[str, Any]:
    depths = {name: text.flat(name) for name in DEPTHS}
    tokens = text.flat("ids")
    layers = []
    for a in activity:
        entry: dict[str, Any] = {"layer": a.layer, **slot_usage(a.routing)}
        for name, values in depths.items():
            entry[name] = depth_report(values, a.routing, options, tokens)
        layers.append(entry)
    summary: dict[str, Any] = {}
    for name in DEPTHS:
        for kind in ("argmax", "soft"):
            scored = [
                (layer[name]["mi"][kind]["ratio_corrected"], layer["layer"])
                for layer in layers
                if layer[name]["tokens"] and layer[name]["mi"][kind]["ratio_corrected"] is not None
            ]
            mean = float(np.mean([r for r, _ in scored])) if scored else None
            summary[f"{name}_{kind}_mi_ratio_corrected_mean"] = mean
            summary[f"{name}_{kind}_best_layer"] = max(scored)[1] if scored else None
    summary["max_slot_share_mean"] = float(np.mean([layer["max_slot_share"] for layer in layers]))
    summary["usage_entropy_bits_mean"] = float(np.mean([layer["usage_entropy_bits"] for layer in layers]))
    return {
        "corpus": options.corpus,
        "tokens": text.tokens,
        "documents": text.documents,
        "skipped_documents": text.skipped_documents,
        "depth_classes": depth_classes(options.max_depth),
        "layers": layers,
        "summary": summary,
    }


def depth_classes(max_depth: int) -> list[str]:
    return [str(d) for d in range(max_depth)] + [f"{max_depth}+"]


def slot_usage(routing: np.ndarray) -> dict[str, Any]:
    """Argmax shares, mean routing distribution, the largest share and the usage entropy (bits)."""
    share = argmax_shares(routing)
    mean = routing.mean(0, dtype=np.float64)  # (float32 sums of many tokens drift by ~1e-6)
    return {
        "slot_share_argmax": share.tolist(),
        "slot_mean_routing": mean.tolist(),
        "max_slot_share": float(share.max()),
        "usage_entropy_bits": entropy_bits(mean),
    }


def depth_report(
    depth: np.ndarray, routing: np.ndarray, options: ProbeOptions, tokens: np.ndarray | None = None
) -> dict[str, Any]:
    """MI(slot; depth) and P(slot | depth) over the tokens whose depth is known (Python code);
    ``tokens`` (the token ids) add the token-identity null to the MI test."""
    known = depth >= 0
    if not known.any():
        return {"tokens": 0, "note": "no Python code in the probe text: depth is undefined"}
    n_classes, K = options.max_depth + 1, routing.shape[1]
    labels = np.minimum(depth[known], options.max_depth).astype(np.int64)
    routing = routing[known]
    counts = np.bincount(labels * K + routing.argmax(1), minlength=n_classes * K).reshape(n_classes, K)
    per_depth = counts.sum(1, keepdims=True)
    given = np.divide(counts, per_depth, out=np.zeros(counts.shape), where=per_depth > 0)
    overall = counts.sum(0) / counts.sum()
    names = depth_classes(options.max_depth)
    dominant = {}
    for d in np.flatnonzero(per_depth[:, 0]):  # up to 3 slots with at least MIN_COUNT tokens at depth d, by lift
        qualified = np.flatnonzero(counts[d] >= MIN_COUNT)
        lift = given[d, qualified] / overall[qualified]  # overall > 0 where a depth's count is
        dominant[names[d]] = [
            {"slot": int(qualified[i]), "share": float(given[d, qualified[i]]), "lift": float(lift[i])}
            for i in np.argsort(-lift, kind="stable")[:3]
        ]
    return {
        "tokens": int(known.sum()),
        "tokens_per_depth": per_depth[:, 0].tolist(),
        "mi": mi_test(labels, routing, n_classes, options.permutations, options.seed,
                      None if tokens is None else tokens[known]),
        "slot_given_depth": given.tolist(),
        "dominant_slots": dominant,
    }
