"""Suite ``selftest``: is this checkpoint sane?  It loads, generates, is causal, and its
recurrent (prefill + token-by-token decode) form equals its parallel form."""

from __future__ import annotations

from typing import Any

import torch

from memlab.eval.hub import EvalContext, register_suite

TOLERANCE = 1e-3  # fp32 logits; kernels are tested far tighter, this catches real breakage


@register_suite("selftest")
@torch.no_grad()
def run(ctx: EvalContext) -> dict[str, Any]:
    model = ctx.model
    T = min(48, model.config.max_seq_len)
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
        "sample": ctx.tokenizer.decode(new),
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
    return {"checks": checks, "passed": all(c["passed"] for c in checks.values())}
