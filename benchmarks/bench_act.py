"""ACT: wall time of a training step against the number of steps the positions take.

The halting unit is set so that every position halts after exactly k steps (weight 0, constant
probability 1 / (k - min + 1)), for k = min .. max; a last row uses a random halting unit, so
positions halt after different numbers of steps.  Each row reports the measured mean and max steps
per token (from the model's diagnostics) and the median seconds per training step (forward,
backward with the ponder loss, AdamW).  The parallel form runs until every position of the batch
has halted, so the time follows the batch's max steps; with equal steps, mean = max.  Prints JSON.

Reproduce (about 5 minutes on 2 CPU cores):

    python benchmarks/bench_act.py --size nano --seq-len 256 --batch 4
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import tyro
from common import emit, machine, peak_rss_mib

import memlab


@dataclass
class Args:
    size: str = "nano"
    seq_len: int = 256
    batch: int = 4
    repeats: int = 3
    out: str | None = None


def set_halting(model, k: int | None, generator: torch.Generator) -> None:
    """Halt every position after exactly ``k`` steps, or (``k=None``) at random, position-dependent steps."""
    rc, halt = model.config.recursion, model.body.halt
    with torch.no_grad():
        if k is None:
            halt.weight.copy_(torch.randn(halt.weight.shape, generator=generator) * 3 / model.config.d_model**0.5)
            halt.bias.fill_(-1.0)
            return
        p = min(1 / (k - rc.act_min_steps + 1), 0.999) if k < rc.act_max_steps else 1e-4
        halt.weight.zero_()
        halt.bias.fill_(math.log(p / (1 - p)))


def main(args: Args) -> dict:
    torch.manual_seed(0)
    model = memlab.build_model("act", args.size).train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: the halting settings stay as set
    rc = model.config.recursion
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len + 1), generator=g)

    def step() -> float:
        start = time.perf_counter()
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        (loss + sum(model.aux_losses().values())).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    rows = []
    for k in [*range(rc.act_min_steps, rc.act_max_steps + 1), None]:
        set_halting(model, k, g)
        step()  # warm-up
        times = [step() for _ in range(args.repeats)]
        steps = model.body._steps
        rows.append({
            "forced_steps": k,
            "mean_steps": steps.mean().item(),
            "max_steps": steps.max().item(),
            "step_s": statistics.median(times),
            "tokens_per_s": args.batch * args.seq_len / statistics.median(times),
        })
    forced = [r for r in rows if r["forced_steps"] is not None]
    slope, intercept, r2 = _fit([r["mean_steps"] for r in forced], [r["step_s"] for r in forced])
    return {
        "benchmark": "act",
        "size": args.size,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "n_blocks": model.config.n_layers,
        "machine": machine(),
        "results": rows,
        "fit_step_s": {"per_mean_step": slope, "intercept": intercept, "r2": r2},
        "max_over_min_step_time": forced[-1]["step_s"] / forced[0]["step_s"],
        "peak_rss_mib": peak_rss_mib(),
    }


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares line y = slope * x + intercept and its r^2."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    ss_res = sum((y - slope * x - intercept) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return slope, intercept, 1 - ss_res / ss_tot


if __name__ == "__main__":
    args = tyro.cli(Args)
    emit(main(args), args.out)
