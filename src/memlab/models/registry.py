"""The registry of model variants: each turns a size-preset config into its architecture.

A new variant is one registration here: ``@register_variant("name")`` on a function that
edits the config in place (layer pattern, mixer options, recursion).
"""

from __future__ import annotations

from memlab.config import ModelConfig, register_variant


@register_variant("baseline")
def baseline(cfg: ModelConfig) -> None:
    """Transformer: RoPE, SwiGLU, RMSNorm, full causal attention (GQA via n_kv_heads)."""
    cfg.layer_pattern = "A"


@register_variant("nano_baseline")
def nano_baseline(cfg: ModelConfig) -> None:
    """Transformer with learned absolute positions (the length-generalisation control)."""
    cfg.layer_pattern = "A"
    cfg.pos_encoding = "learned"
