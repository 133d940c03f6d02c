"""Running a model over probe text and keeping what its memory slots did at every token.

A layer takes part when its mixer exposes ``slot_activity()`` (routing, write gates and
decays of the last forward, each (B, T, K)); the CDM mixers do.  A model without such a
layer is refused with the list of variants that have one, and so is a model whose body applies
its layers several times per forward (a shared loop or ACT): a layer keeps the activity of its
last application only, which would be reported as the whole forward's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from memlab.errors import MemlabError
from memlab.probes.corpus import ProbeText


@dataclass
class LayerActivity:
    """One slot layer over all probe tokens: (N, K) routing distributions and write gates; (K,) mean decay."""

    layer: int
    routing: np.ndarray
    gates: np.ndarray
    alpha_mean: np.ndarray


def slot_layers(model: torch.nn.Module) -> list:
    """The mixers of ``model`` that expose their slot activity; a MemlabError when there are none or
    when each is applied more than once per forward."""
    config = model.config
    layers = [m for m in model.mixers if hasattr(m, "slot_activity")]
    if not layers:
        raise MemlabError(
            f"variant {config.variant!r} (layer pattern {config.pattern!r}) has no memory slots "
            f"to probe; variants with slots: {', '.join(slot_variants())}"
        )
    applications = getattr(model.body, "n_steps", 1)  # a looped body runs every block n_steps times
    if applications > 1:
        raise MemlabError(
            f"variant {config.variant!r} applies its slot layers up to {applications} times per forward "
            f"(recursion.kind={config.recursion.kind!r}) and the probes record only the last application; "
            "probe a model with recursion.kind 'stack' (or a shared loop of n_unroll 1)"
        )
    return layers


def slot_variants() -> list[str]:
    """Registered variants with at least one layer that exposes slot activity."""
    from memlab.config import build_config, list_variants
    from memlab.mixers import MIXERS

    names = []
    for name in list_variants():
        pattern = build_config(name, "tiny").pattern
        if any(hasattr(MIXERS[letter], "slot_activity") for letter in set(pattern)):
            names.append(name)
    return names


@torch.no_grad()
def record_activity(model: torch.nn.Module, text: ProbeText, batch_size: int = 8) -> list[LayerActivity]:
    """Run ``model`` over the windows of ``text`` (right-padded batches; causal, so padding is harmless)."""
    layers = slot_layers(model)
    device = next(model.parameters()).device
    routing: list[list[np.ndarray]] = [[] for _ in layers]
    gates: list[list[np.ndarray]] = [[] for _ in layers]
    alpha_sum = [0.0 for _ in layers]
    model.eval()
    for start in range(0, len(text.windows), batch_size):
        windows = text.windows[start : start + batch_size]
        lengths = torch.tensor([len(w) for w in windows])
        ids = torch.zeros(len(windows), int(lengths.max()), dtype=torch.long)
        for i, w in enumerate(windows):
            ids[i, : len(w)] = torch.from_numpy(w)
        model(ids.to(device))
        valid = torch.arange(ids.shape[1])[None, :] < lengths[:, None]  # (B, T)
        for i, layer in enumerate(layers):
            activity = layer.slot_activity()
            routing[i].append(activity.routing.float().cpu()[valid].numpy())
            gates[i].append(activity.gates.float().cpu()[valid].numpy())
            alpha_sum[i] = alpha_sum[i] + activity.alphas.float().cpu()[valid].sum(0).numpy()
    n = text.tokens
    return [
        LayerActivity(layer.layer_idx, np.concatenate(routing[i]), np.concatenate(gates[i]), alpha_sum[i] / n)
        for i, layer in enumerate(layers)
    ]
