"""What a variant is at a size: parameters, pattern, depth, FLOPs and state bytes (all measured)."""

from __future__ import annotations

from typing import Any

import torch

from memlab.config import build_config
from memlab.errors import MemlabError
from memlab.markdown import markdown_table
from memlab.models.lm import LanguageModel


def describe(variant: str, size: str, context_len: int = 2048, **overrides: Any) -> dict[str, Any]:
    """Build the model on the meta device (no memory) and report what it really is."""
    config = build_config(variant, size, **overrides)
    if config.pos_encoding == "learned" and context_len > config.max_seq_len:  # (its figures had been given)
        raise MemlabError(f"{variant}'s learned positions end at max_seq_len={config.max_seq_len}: it cannot run "
                          f"--context-len {context_len}")
    with torch.device("meta"):
        model = LanguageModel(config)
    return {
        "variant": variant,
        "size": size,
        "params": model.num_params(),
        "non_embedding_params": model.num_params(non_embedding=True),
        "layer_pattern": config.pattern,
        "effective_depth": model.body.max_depth,
        "d_model": config.d_model,
        "vocab_size": config.vocab_size,
        "flops_per_token": model.estimate_flops_per_token(context_len),
        "context_len": context_len,
        "state_bytes_per_sequence": model.state_nbytes(context_len, batch_size=1),
    }


def human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def variants_table(rows: list[dict[str, Any]]) -> str:
    """`memlab info --all`: one line per variant of :func:`describe` rows."""
    return markdown_table(
        ["variant", "size", "params", "non-embedding", "pattern", "state bytes @ ctx"],
        ([r["variant"], r["size"], human(r["params"]), human(r["non_embedding_params"]), f"`{r['layer_pattern']}`",
          f"{human(r['state_bytes_per_sequence'])}B @ {r['context_len']}"] for r in rows),
    )
