"""memlab: a laboratory for sequence-memory architectures in small language models.

>>> import memlab
>>> model = memlab.build_model("baseline", size="tiny")
>>> logits = model(input_ids)                         # (B, T) -> (B, T, vocab)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def list_variants() -> list[str]:
    """Names of the registered model variants."""
    from memlab.config import list_variants as _list

    return _list()


def build_model(variant: str = "baseline", size: str = "tiny", **overrides: Any):
    """A freshly initialised :class:`~memlab.models.lm.LanguageModel` of ``variant`` at ``size``."""
    from memlab.config import build_config
    from memlab.models.lm import LanguageModel

    return LanguageModel(build_config(variant, size, **overrides))


def load(path: str | Path, device: str = "cpu"):
    """Load a model from a model directory, a checkpoint, a run directory or an export, in eval mode
    (as evaluation loads it; ``.train()`` to fine-tune it)."""
    from memlab.models.lm import LanguageModel
    from memlab.paths import resolve_model_dir

    return LanguageModel.load(resolve_model_dir(path), device=device).eval()


def ablate(model, mode: str = "zero", horizon: int | None = None, layers: list[int] | None = None):
    """Context manager: ablate the model's memory (see :func:`memlab.models.ablation.ablate`)."""
    from memlab.models.ablation import ablate as _ablate

    return _ablate(model, mode=mode, horizon=horizon, layers=layers)


__all__ = ["__version__", "ablate", "build_model", "list_variants", "load"]
