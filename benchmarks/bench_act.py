"""ACT: wall time of a training step against the number of steps the positions take, and decode speed.

``train``: each row fixes, through the halting unit's output, how many steps every position takes:
all the same k (k = min .. max: mean = max = k), or a share of the positions halting at the minimum
and the rest running to the maximum (the same max, a smaller mean).  The rows' training steps
(forward, backward with the ponder loss, AdamW) are timed in alternating rounds, and the step
time is fitted against the mean and against the max steps per token (``follows`` in the JSON
says which fit is better).  The parallel form runs only the positions still running, so the time
should follow the mean: 2026-12-01, r^2 0.975-0.995 against the mean, 0.40-0.48 against the max.

``decode``: single-token decode tokens/s after a ``decode_context``-token prefill with every token
halting after the minimum or the maximum steps, at rows (halted tokens only carry their keys and
values into the later steps' caches) and in the reference form (every step runs every token).
Prints JSON.

Reproduce (about 5 minutes on 2 CPU cores):

    python benchmarks/bench_act.py --size nano --seq-len 256 --batch 4
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import tyro
from common import emit, interleaved_seconds, machine, peak_rss_mib

import memlab
from memlab.analysis.speed import decoder


@dataclass
class Args:
    parts: list[str] = field(default_factory=lambda: ["train", "decode"])
    size: str = "nano"
    seq_len: int = 256
    batch: int = 4
    rounds: int = 3
    """timed rounds (every row once per round); the median is reported"""
    early_shares: list[float] = field(default_factory=lambda: [0.5, 0.9])
    """rows at the maximum steps where this share of the positions halts at the minimum"""
    decode_context: int = 256
    decode_tokens: int = 16
    decode_rounds: int = 5
    out: str | None = None


def halting(model, steps: torch.Tensor):
    """A halting unit that makes each position halt after ``steps`` steps (between the model's
    min and max; one count for all, or one per position of the batch): constant probabilities,
    1 / (steps - min + 1) per step from the minimum."""
    rc = model.config.recursion
    p = (1.0 / (steps - rc.act_min_steps + 1).float()).clamp(max=0.999).masked_fill(steps >= rc.act_max_steps, 1e-4)
    return lambda h: p.to(h.dtype).expand(h.shape[:2])


def main(args: Args) -> dict:
    torch.manual_seed(0)
    model = memlab.build_model("act", args.size).train()
    out = {"benchmark": "act", "size": args.size, "n_blocks": model.config.n_layers, "machine": machine()}
    if "train" in args.parts:
        out["train"] = train_rows(model, args)
    if "decode" in args.parts:
        out["decode"] = decode_rows(model.eval(), args)
    return out | {"peak_rss_mib": peak_rss_mib()}


def train_rows(model, args: Args) -> dict:
    """Training step time by plan of steps, fitted against the mean and the max steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: the model stays as it is
    rc = model.config.recursion
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len + 1), generator=g)
    shape = (args.batch, args.seq_len)
    plans = {f"all {k}": torch.full(shape, k) for k in range(rc.act_min_steps, rc.act_max_steps + 1)}
    for share in args.early_shares:
        early = torch.rand(shape, generator=g) < share
        plans[f"{share:.0%} at {rc.act_min_steps}, the rest {rc.act_max_steps}"] = torch.where(
            early, rc.act_min_steps, rc.act_max_steps)  # fmt: skip

    def step():
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        (loss + sum(model.aux_losses().values())).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    setups = {name: functools.partial(_configure, model, steps, True) for name, steps in plans.items()}
    seconds = interleaved_seconds({name: step for name in plans}, args.rounds, setups=setups)
    rows = []
    for name, steps in plans.items():
        setups[name]()
        with torch.no_grad():
            model(x[:, :-1])
        taken = model.body._steps
        assert torch.equal(taken, steps.float()), name  # the plan is what ran
        rows.append({"plan": name, "mean_steps": taken.mean().item(), "max_steps": taken.max().item(),
                     "step_s": seconds[name], "tokens_per_s": args.batch * args.seq_len / seconds[name]})
    fits = {key: _fit([r[key] for r in rows], [r["step_s"] for r in rows]) for key in ("mean_steps", "max_steps")}
    return {
        "seq_len": args.seq_len,
        "batch": args.batch,
        "results": rows,
        "fit_step_s": {key: dict(zip(("per_step", "intercept", "r2"), fit)) for key, fit in fits.items()},
        "follows": "max" if fits["max_steps"][2] > fits["mean_steps"][2] else "mean",
    }


def decode_rows(model, args: Args) -> dict:
    """Decode tokens/s with every token halting after the min or the max steps, at rows and in the
    reference form, timed in alternating rounds."""
    rc = model.config.recursion
    runs, setups = {}, {}
    for steps in (rc.act_min_steps, rc.act_max_steps):
        for form in ("rows", "reference"):
            configure = functools.partial(_configure, model, torch.tensor(steps), form == "rows")
            configure()
            d = decoder(model, args.decode_context, args.decode_tokens)
            runs[steps, form] = d.run
            setups[steps, form] = lambda configure=configure, restore=d.restore: (configure(), restore())
    seconds = interleaved_seconds(runs, args.decode_rounds, setups=setups)
    rows = [{"steps": steps, "form": form, "tokens_per_s": args.decode_tokens / s}
            for (steps, form), s in seconds.items()]  # fmt: skip
    return {"context": args.decode_context, "results": rows}


def _configure(model, steps: torch.Tensor, pack_rows: bool) -> None:
    """Positions halt after ``steps`` steps, computed at rows or in the reference form."""
    model.body.halting_probability = halting(model, steps)
    model.body.pack_rows = pack_rows


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
