"""The evaluation hub: ``evaluate(checkpoint, suite, out_dir)`` and its suites.

Suites: ``algorithmic`` (IID/OOD exact match), ``longctx`` (needle heat-maps), ``lm``
(perplexity), ``ablation`` (memory Delta and horizon sweep), ``selftest``; ``all`` runs
them all.  Results files follow :mod:`memlab.eval.schema` (``docs/results_schema.md``).
"""

from __future__ import annotations

from typing import Any

_HUB = ("SUITE_ORDER", "EvalContext", "evaluate", "evaluate_model", "register_suite", "suite_names")


def __getattr__(name: str) -> Any:  # lazy: importing memlab.eval.options must not import torch
    if name == "EvalOptions":
        from memlab.eval.options import EvalOptions

        return EvalOptions
    if name in _HUB:
        from memlab.eval import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'memlab.eval' has no attribute {name!r}")


__all__ = ["EvalOptions", *_HUB]
