"""Alphas probe: the decay gate of every slot, layer by layer; which slots are fast and which slow.

``alpha_k`` is the write strength of slot k when it is routed to: V3 learns one per slot
(sigmoid(log_alpha_k)); V2 computes one per token (sigmoid(eta(h))), reported as its mean over
the probe text.  The mean write gate per slot (routing x alpha, averaged over tokens) gives
each slot's memory timescale: about 1 / mean gate tokens for its content to fade by e.  The
fastest and slowest slots are those of the shortest and longest timescales: a slot routed to
rarely turns over slowly whatever its alpha (ranked by alpha, a slot listed as fast had had the
second-longest timescale of its layer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memlab.probes import plots
from memlab.probes.runner import ProbeContext


def alphas_probe(ctx: ProbeContext) -> dict[str, Any]:
    text = ctx.text()
    activity = ctx.activity(text)
    layers = []
    for a in activity:
        alpha, gate = a.alpha_mean.astype(np.float64), a.gates.mean(0).astype(np.float64)
        order = np.argsort(-gate, kind="stable")  # fastest turnover first
        listed = min(3, len(order) // 2)  # the fastest and slowest lists never share a slot
        layers.append({
            "layer": a.layer,
            "alpha": alpha.tolist(),
            "mean_gate": gate.tolist(),
            "timescale_tokens": np.divide(1.0, gate, out=np.full_like(gate, np.inf), where=gate > 0).tolist(),
            "alpha_mean": float(alpha.mean()),
            "alpha_spread": float(alpha.max() - alpha.min()),
            "alpha_std": float(alpha.std()),
            "fastest_slots": [int(k) for k in order[:listed]],
            "slowest_slots": [int(k) for k in order[::-1][:listed]],
        })  # fmt: skip
    version = ctx.model.config.cdm.version
    matrix = np.array([layer["alpha"] for layer in layers])
    plots.heatmaps(
        [("alpha per slot", matrix)], [f"layer {layer['layer']}" for layer in layers],
        [str(k) for k in range(matrix.shape[1])], ctx.path("alphas", ".png"),
        f"slot decay gates alpha ({version}), step {ctx.step}", "alpha", vmin=0.0, vmax=1.0,
    )
    return {
        "corpus": ctx.options.corpus,
        "tokens": text.tokens,
        "alpha_kind": "learned per slot: sigmoid(log_alpha)" if version == "v3" else "per token sigmoid(eta(h)), mean",
        "layers": layers,
    }
