"""AdamW with decoupled weight decay on matrices only, and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters AdamW must not decay: norms, biases, embeddings, ``_no_weight_decay`` ones.

    Computed on the unwrapped model (sharding replaces parameters and drops their attributes).
    A tied tensor (the embedding shared with the head) is listed under its first name.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {
        name
        for name, p in model.named_parameters()
        if p.ndim < 2 or id(p) in embeddings or getattr(p, "_no_weight_decay", False)
    }


def build_optimizer(
    model: nn.Module, no_decay: set[str], lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """AdamW with two groups: decayed matrices, and the ``no_decay`` parameters without weight decay.

    The fused implementation (one kernel over all tensors; 5x faster than the per-tensor loop
    for a 37M model on CPU) wherever the parameters' device has it.
    """
    groups: tuple[list, list] = ([], [])
    for name, p in model.named_parameters():  # a tied tensor is yielded once
        if p.requires_grad:
            groups[name in no_decay].append(p)
    fused = all(p.device.type in FUSED_ADAMW_DEVICES for p in groups[0] + groups[1])
    return torch.optim.AdamW(
        [{"params": groups[0], "weight_decay": weight_decay}, {"params": groups[1], "weight_decay": 0.0}],
        lr=lr,
        betas=betas,
        eps=1e-8,
        fused=fused or None,
    )


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Learning rate of optimizer step ``step`` (1-based): linear warm-up, then cosine to ``min_ratio * peak``."""
    if step <= warmup:
        return peak * step / max(warmup, 1)
    progress = min(1.0, (step - warmup) / max(total - warmup, 1))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
