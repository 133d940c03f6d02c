"""Alphas probe: the decay gate of every slot, layer by layer; which slots are fast and which slow.

``alpha_k`` is the write strength of slot k when it is routed to: V3 learns one per slot
(sigmoid(log_alpha_k)); V2 computes one per token (sigmoid(eta(h))), reported as its mean over
the probe text.  The write gates per slot (routing x alpha, per token) give each slot's memory
timescale, the tokens over which its content fades by e: a write of gate g keeps 1 - g of it,
so the timescale is 1 / mean(-ln(1 - g)) (about 1 / mean gate while gates are small).  The
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
        alpha, gates = a.alpha_mean.astype(np.float64), a.gates.astype(np.float64)
        with np.errstate(divide="ignore"):  # a gate of 1 overwrites the slot: a rate of inf, a timescale of 0
            rate = -np.log1p(-gates).mean(0)  # (K,) mean log-decay per token
            timescale = np.divide(1.0, rate, out=np.full_like(rate, np.inf), where=rate > 0)
        written = np.flatnonzero(rate > 0)  # a slot never written has no timescale to rank
        order = written[np.argsort(-rate[written], kind="stable")]  # fastest turnover first
        listed = min(3, len(order) // 2)  # the fastest and slowest lists never share a slot
        layers.append({
            "layer": a.layer,
            "alpha": alpha.tolist(),
            "mean_gate": gates.mean(0).tolist(),
            "timescale_tokens": timescale.tolist(),
            "alpha_mean": float(alpha.mean()),
            "alpha_spread": float(alpha.max() - alpha.min()),
            "alpha_std": float(alpha.std()),
            "fastest_slots": [int(k) for k in order[:listed]],
            "slowest_slots": [int(k) for k in order[::-1][:listed]],
            "unused_slots": np.flatnonzero(rate == 0).tolist(),
        })  # fmt: skip
    version = ctx.model.config.cdm.version
    matrix = np.array([layer["alpha"] for layer in layers])
    plots.heatmaps(
        [("alpha per slot", matrix)], [f"layer {layer['layer']}" for layer in layers],
        [str(k) for k in range(matrix.shape[1])], ctx.figure("alphas"),
        f"slot decay gates alpha ({version}), step {ctx.step}", "alpha", vmin=0.0, vmax=1.0,
    )
    return {
        "corpus": ctx.options.corpus,
        "tokens": text.tokens,
        "alpha_kind": "learned per slot: sigmoid(log_alpha)" if version == "v3" else "per token sigmoid(eta(h)), mean",
        "layers": layers,
    }
