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


# ------------------------------------------- recursion and state-space variants (issue 8)


@register_variant("shared_loop")
def shared_loop(cfg: ModelConfig) -> None:
    """Parameter-shared depth: the n_layers unique blocks applied 4 times (nano: 6 x 4 = 24 applications)."""
    cfg.layer_pattern = "A"
    cfg.recursion.kind = "shared_loop"
    cfg.recursion.n_unroll = 4


@register_variant("latent")
def latent(cfg: ModelConfig) -> None:
    """Transformer + Z=16 latent thoughts refined K=4 times per segment, read causally by every position."""
    cfg.layer_pattern = "A"
    cfg.recursion.kind = "latent"
    cfg.recursion.n_thoughts = 16
    cfg.recursion.thought_iters = 4
    cfg.recursion.segment_len = 16 if cfg.size == "tiny" else 64


@register_variant("act")
def act(cfg: ModelConfig) -> None:
    """Adaptive computation time over the shared blocks: 2..8 steps per position, threshold 0.99, lambda 0.01."""
    cfg.layer_pattern = "A"
    cfg.recursion.kind = "act"
    cfg.recursion.act_min_steps = 2
    cfg.recursion.act_max_steps = 8
    cfg.recursion.act_threshold = 0.99
    cfg.recursion.lambda_ponder = 0.01


@register_variant("ssm")
def ssm(cfg: ModelConfig) -> None:
    """Mamba-2 backbone: 2 x n_layers Mamba-2 layers without FFN (parameter-matched to the transformer)."""
    cfg.layer_pattern = "M"
    cfg.n_layers *= 2
    cfg.d_ff = 0
    cfg.ssm.d_state = 64 if cfg.d_model < 1024 else 128


@register_variant("ssm_mem")
def ssm_mem(cfg: ModelConfig) -> None:
    """Mamba-2 backbone + a reader of 64 learned memory tokens after every 3 Mamba-2 layers (pattern MMMR)."""
    ssm(cfg)
    mamba_layers = cfg.n_layers
    cfg.n_layers += max(1, mamba_layers // 3)  # at least one reader, also in a model of 2 Mamba-2 layers
    cfg.layer_pattern = "M" * min(3, mamba_layers) + "R"
    cfg.recursion.n_memory_tokens = 64


# ------------------------------------------------- Competitive Docking Memory (issue 7)


@register_variant("cdm")
def cdm(cfg: ModelConfig) -> None:
    """CDM V2 slots only: every layer is K=16 gated EMA slots (gate + cross-attention read-out), no attention."""
    cfg.layer_pattern = "C"
    cfg.cdm.version = "v2"


@register_variant("cdm_hybrid")
def cdm_hybrid(cfg: ModelConfig) -> None:
    """CDM V2 hybrid layers: GQA attention + K=16 slots + slot cross-attention summed, then SwiGLU."""
    cfg.layer_pattern = "K"
    cfg.cdm.version = "v2"


def _cdm_source_shape(cfg: ModelConfig) -> None:
    """The source models' shape (both cards): d384, 8 layers, 8 heads / 4 KV heads, d_ff 1024, K=16."""
    cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff = 384, 8, 8, 4, 1024
    cfg.layer_pattern = "K"
    cfg.cdm.n_slots = 16
    cfg.cdm.readout = "both"


@register_variant("cdm_code")
def cdm_code(cfg: ModelConfig) -> None:
    """CDM-Code (source: 56.6M with GPT-2 vocab): V2 hybrid, eta decay network, untied head; fixed d384 x 8."""
    _cdm_source_shape(cfg)
    cfg.cdm.version = "v2"
    cfg.tie_embeddings = False


@register_variant("cdm_v3")
def cdm_v3(cfg: ModelConfig) -> None:
    """CDM V3 (source: 37.1M with GPT-2 vocab): per-slot alphas, hard routing, LBL 0.01; d384 x 8, context 512."""
    _cdm_source_shape(cfg)
    cfg.cdm.version = "v3"
    cfg.cdm.hard_routing = True
    cfg.cdm.load_balance = 0.01
    cfg.cdm.entropy_reg = 0.02
    cfg.max_seq_len = 512


@register_variant("gdn")
def gdn(cfg: ModelConfig) -> None:
    """Gated DeltaNet in every layer (delta-rule memory with a data-dependent decay)."""
    cfg.layer_pattern = "G"


@register_variant("deltanet")
def deltanet(cfg: ModelConfig) -> None:
    """DeltaNet in every layer (the delta rule without decay)."""
    cfg.layer_pattern = "D"


@register_variant("gdn_hybrid")
def gdn_hybrid(cfg: ModelConfig) -> None:
    """GDN + sliding window reading the preceding GDN state: GGGGGW repeated (GGGW at 4 layers)."""
    cfg.layer_pattern = "G" * min(5, max(1, cfg.n_layers - 1)) + "W"
    cfg.gdn.state_read = True


@register_variant("gdn_swa")
def gdn_swa(cfg: ModelConfig) -> None:
    """GDN interleaved with plain sliding-window attention, no state read (like GDN-H1)."""
    cfg.layer_pattern = "GS"
