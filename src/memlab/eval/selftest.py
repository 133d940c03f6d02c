"""Suite ``selftest``: is this checkpoint sane?  It loads, generates, is causal, and its
recurrent (prefill + token-by-token decode) form equals its parallel form.

The checks run on ``2 L + 17`` tokens, ``L`` the longest window, chunk or segment of the model's
mixers, so that the sequence crosses at least two of their boundaries and ends inside a block
(at least ``MIN_T``, at most ``MAX_T`` and the model's ``max_seq_len``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from memlab.eval.hub import EvalContext, register_suite
from memlab.mixers.attention import SlidingWindowAttention
from memlab.mixers.cdm import CDM
from memlab.mixers.gated_delta import GatedDeltaNet
from memlab.mixers.mamba2 import Mamba2
from memlab.mixers.thoughts import LatentThoughts

TOLERANCE = 1e-3  # fp32 logits; kernels are tested far tighter, this catches real breakage
MIN_T = 48
MAX_T = 2 * 1024 + 17  # a longer window or chunk is crossed once only


def block_length(model: nn.Module) -> int:
    """The longest window, chunk or segment (tokens) of the model's mixers; 1 when none has one."""
    c = model.config
    lengths = {SlidingWindowAttention: c.attention.window, GatedDeltaNet: c.gdn.chunk_size, CDM: c.cdm.chunk_size,
               Mamba2: c.ssm.chunk_size, LatentThoughts: c.recursion.segment_len}  # fmt: skip
    return max([1, *(n for m in model.mixers for kind, n in lengths.items() if isinstance(m, kind))])


def selftest_length(model: nn.Module) -> int:
    """Tokens the checks run on: ``2 L + 17`` (see the module docstring), capped."""
    return min(max(2 * block_length(model) + 17, MIN_T), MAX_T, model.config.max_seq_len)


@register_suite("selftest")
@torch.no_grad()
def run(ctx: EvalContext) -> dict[str, Any]:
    model = ctx.model
    T = selftest_length(model)
    g = torch.Generator().manual_seed(ctx.options.seed)
    device = next(model.parameters()).device
    x = torch.randint(0, ctx.tokenizer.vocab_size, (2, T), generator=g).to(device)  # (2, T)
    logits = model(x)  # (2, T, V)

    checks: dict[str, dict[str, Any]] = {
        "loads": {"passed": True, "params": model.num_params()},
        "finite_logits": {"passed": bool(torch.isfinite(logits).all())},
    }

    prompt = ctx.tokenizer.encode("x = 1") or [0]
    out = model.generate(torch.tensor([prompt], device=device), max_new_tokens=8, temperature=0.0)
    new = out[0, len(prompt) :].tolist()
    checks["generates"] = {
        "passed": len(new) == 8 and all(0 <= t < model.config.vocab_size for t in new),
        "sample": ctx.tokenizer.decode_continuation(prompt, new),
    }

    t = T // 2
    y = x.clone()
    y[:, t + 1 :] = torch.randint(0, ctx.tokenizer.vocab_size, (2, T - t - 1), generator=g).to(device)
    leak = (model(y)[:, : t + 1] - logits[:, : t + 1]).abs().max().item()
    checks["causality"] = {"passed": leak <= TOLERANCE, "max_abs_diff": leak}

    state = model.init_state(batch_size=2)
    prefix = max(1, T - 8)  # a forward needs a token
    steps = [model(x[:, :prefix], state)] + [model(x[:, i : i + 1], state) for i in range(prefix, T)]
    gap = (torch.cat(steps, dim=1) - logits).abs().max().item()
    checks["parallel_equals_recurrent"] = {"passed": gap <= TOLERANCE, "max_abs_diff": gap}

    predicted = model.state_nbytes(T, batch_size=2)
    checks["state_nbytes"] = {"passed": predicted == state.nbytes, "measured": state.nbytes, "predicted": predicted}
    return {"context_len": T, "checks": checks, "passed": all(c["passed"] for c in checks.values())}
