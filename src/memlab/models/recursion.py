"""Recursive model bodies: a parameter-shared loop, adaptive computation time, latent thoughts.

Each is a body like :class:`memlab.models.body.Stack` (``forward(h, states=None) -> h`` for
``h: (B, T, D)``, ``init_state``, ``state_nbytes``, ``max_depth``, ``aux_loss``, ``diagnostics``,
``flops_per_token``) and is chosen by ``config.recursion.kind``.

* ``shared_loop``: the ``n_layers`` unique blocks applied ``n_unroll`` times (6 blocks x 4 = 24
  block applications), optionally adding the body's input back before every iteration after the
  first.  In recurrent mode every application has its own state (its inputs differ).  The
  blocks start as the baseline's do: residual output projections scaled by 1/sqrt(2 * n_layers)
  of the unique blocks, not of the applications.
* ``act``: the blocks form one step of a shared core, repeated per position with Graves' (2016)
  adaptive computation time (see :class:`AdaptiveComputationTime`).
* ``latent``: the stack with a causal latent-thought stream between its lower and upper halves
  (see :mod:`memlab.mixers.thoughts`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from memlab.config import ModelConfig
from memlab.errors import MemlabError
from memlab.mixers.base import LastForward, Rows, real_positions
from memlab.mixers.thoughts import LatentThoughts
from memlab.models.block import build_blocks
from memlab.models.body import Stack, block_flops_per_token
from memlab.models.lm import BODIES
from memlab.ops.precision import at_least_float32


class LoopBody(nn.Module):
    """The unique blocks of a looped body and one application of them (one loop step)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.blocks = build_blocks(config)

    @property
    def n_steps(self) -> int:
        """Most loop steps a forward can take (read from the config, so evaluation may change it)."""
        raise NotImplementedError

    def step(self, h: torch.Tensor, inputs: torch.Tensor, n: int, states: list | None) -> torch.Tensor:
        """Loop step ``n`` (from 0) over ``h: (B, T, D)``; re-injects the body's ``inputs`` if configured."""
        if n > 0 and self.config.recursion.reinject:
            h = h + inputs
        nb = len(self.blocks)
        for i, block in enumerate(self.blocks):
            h = block(h, None if states is None else states[n * nb + i])
        return h

    @property
    def max_depth(self) -> int:
        return len(self.blocks) * self.n_steps

    def init_state(self, batch_size: int, device=None, dtype=None) -> list:
        """One state per block application: ``states[step * n_blocks + block]``."""
        return [b.mixer.init_state(batch_size, device, dtype) for _ in range(self.n_steps) for b in self.blocks]

    def state_nbytes(self, context_len: int, batch_size: int = 1, dtype=torch.float32) -> int:
        return self.n_steps * sum(b.mixer.state_nbytes(context_len, batch_size, dtype) for b in self.blocks)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token when all ``n_steps`` steps run (an upper bound for ACT)."""
        return self.n_steps * sum(block_flops_per_token(b, seq_len) for b in self.blocks)

    def aux_loss(self, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {}


class SharedLoop(LoopBody):
    """``n_unroll`` iterations over the unique blocks; parameters are those of the blocks alone."""

    @property
    def n_steps(self) -> int:
        return self.config.recursion.n_unroll

    def forward(self, h: torch.Tensor, states: list | None = None) -> torch.Tensor:
        inputs = h
        for n in range(self.n_steps):
            h = self.step(h, inputs, n, states)
        return h

    def diagnostics(self, valid: torch.Tensor | None = None) -> dict[str, float]:
        return {"effective_depth": float(self.max_depth)}


class AdaptiveComputationTime(LoopBody):
    """Per-position adaptive computation time over the blocks (one step = all blocks once).

    At step n every position still running is updated, ``h^n = core(h^{n-1})``.  A halted
    position stops computing: its value stays, and so does its input to every block, hence the
    keys and values later positions read from it there (the Universal Transformer instead runs a
    halted position's final value through the core again at every step, which costs every
    position every step; here nothing about it is computed after it halts).  From step
    ``act_min_steps`` on, a halting unit gives ``p^n = sigmoid(w . rmsnorm(h^n) + b)``; position
    t halts at the first step N where the sum of its p reaches ``act_threshold`` (or at
    ``act_max_steps``).  Its output is ``sum_{n<N} p^n h^n + R h^N`` with the remainder
    ``R = 1 - sum_{n<N} p^n``, and its ponder cost is ``N + R``; ``lambda_ponder * mean(N + R)``
    is the auxiliary loss, whose gradient reaches the halting unit through R.

    Each step computes only the running positions (:class:`memlab.mixers.base.Rows`) when every
    mixer of the core can (``mixes_rows``), so a step costs what the positions still running
    cost; the halted ones' keys and values are carried over.  Otherwise every position goes
    through the blocks with the halted ones' inputs frozen (``pack_rows = False`` forces this
    reference form).  The parallel form stops once every position has halted (on every process
    when the blocks are sharded by FSDP: each step gathers their weights, so all processes must
    take the same number of steps).  The recurrent form (with states) runs all ``act_max_steps``
    steps, so each step's state covers every position a later token may need (at rows, a step
    without running positions only appends the carried keys and values).
    ``act_fixed_steps = K`` runs exactly K steps and returns ``h^K`` (the shared loop with K
    iterations), for comparisons at a fixed compute; it may also be set on a built model
    (``model.config.recursion.act_fixed_steps = K``), before its states are made.
    """

    def __init__(self, config: ModelConfig) -> None:
        rc = config.recursion
        if not 1 <= rc.act_min_steps <= rc.act_max_steps or not 0 < rc.act_threshold <= 1:
            raise MemlabError("act needs 1 <= act_min_steps <= act_max_steps and 0 < act_threshold <= 1")
        if rc.act_fixed_steps is not None:
            _check_fixed_steps(rc.act_fixed_steps)
        super().__init__(config)
        self.halt = nn.Linear(config.d_model, 1)
        self.pack_rows = all(block.mixer.mixes_rows for block in self.blocks)
        self._last = LastForward(ponder=None)  # (B, T) N + R of the last forward, attached to the graph
        self._steps: torch.Tensor | None = None  # (B, T) N of the last forward

    @property
    def n_steps(self) -> int:
        rc = self.config.recursion
        return rc.act_fixed_steps or rc.act_max_steps

    def halting_probability(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T) probability of halting after this step, in at least float32 under
        autocast too (summed against the threshold: in bf16 it moved some positions' step counts)."""
        dtype = at_least_float32(h.dtype)
        with torch.autocast(h.device.type, enabled=False):
            h = F.rms_norm(h.to(dtype), (h.shape[-1],), eps=self.config.norm_eps)
            return torch.sigmoid(F.linear(h, self.halt.weight.to(dtype), self.halt.bias.to(dtype)).squeeze(-1))

    def forward(self, h: torch.Tensor, states: list | None = None) -> torch.Tensor:
        rc = self.config.recursion
        inputs = h
        if rc.act_fixed_steps is not None:
            for n in range(self.n_steps):
                h = self.step(h, inputs, n, states)
            self._steps, self._last.ponder = torch.full(h.shape[:2], float(self.n_steps), device=h.device), None
            return h
        running = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)  # (B, T)
        cum = h.new_zeros(h.shape[:2])  # sum of p over the steps before the current one
        steps, remainder, out = h.new_zeros(h.shape[:2]), h.new_zeros(h.shape[:2]), torch.zeros_like(h)
        stop_together = _sharded(self.blocks[0])
        # per block: its row state, or (reference form) the inputs frozen at each position's last step
        kept = [b.mixer.init_row_state() if self.pack_rows else None for b in self.blocks]
        for n in range(self.n_steps):
            if states is None and not _any_running(running, stop_together):
                break  # parallel form: nothing left to compute
            if self.pack_rows:
                h = self._step_at_rows(h, inputs, n, running, kept, states)
            else:
                h = self._step_frozen(h, inputs, n, running, states, kept)
            steps = steps + running
            if n + 1 < rc.act_min_steps:
                continue
            p = self.halting_probability(h)
            halts = running & ((cum + p >= rc.act_threshold) | (n + 1 == self.n_steps))
            weight = torch.where(halts, 1 - cum, torch.where(running, p, torch.zeros_like(p)))
            out = out + weight[..., None].to(h.dtype) * h  # (the halting sums are float32 in a bf16 model)
            remainder = torch.where(halts, 1 - cum, remainder)
            cum = torch.where(running & ~halts, cum + p, cum)
            running = running & ~halts
        self._steps, self._last.ponder = steps, steps + remainder
        return out

    def _step_at_rows(self, h: torch.Tensor, inputs: torch.Tensor, n: int, running: torch.Tensor,
                      kept: list, states: list | None) -> torch.Tensor:
        """Loop step ``n`` at the ``running (B, T)`` positions alone; ``kept`` holds each block's
        row state (the keys and values every position left at its last step), which with
        ``states`` also appends every position's to the step's caches."""
        rows = Rows.of(running)
        x = rows.gather(h)  # (N, D)
        if n > 0 and self.config.recursion.reinject:
            x = x + rows.gather(inputs)
        nb = len(self.blocks)
        for i, (block, state) in enumerate(zip(self.blocks, kept)):
            state.rows, state.cache = rows, None if states is None else states[n * nb + i]
            x = block(x, state)
        return rows.scatter(h, x)

    def _step_frozen(self, h: torch.Tensor, inputs: torch.Tensor, n: int, running: torch.Tensor,
                     states: list | None, frozen: list) -> torch.Tensor:
        """Loop step ``n`` over every position, where the positions not ``running (B, T)`` give
        each block the input of their last step, kept in ``frozen`` (B, T, D) per block."""
        x = h + inputs if n > 0 and self.config.recursion.reinject else h
        nb = len(self.blocks)
        for i, block in enumerate(self.blocks):
            if frozen[i] is not None:
                x = torch.where(running[..., None], x, frozen[i])
            frozen[i] = x
            x = block(x, None if states is None else states[n * nb + i])
        return torch.where(running[..., None], x, h)

    def aux_loss(self, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self._last.ponder is None:
            return {}
        ponder = real_positions(self._last.ponder, valid)
        return {"ponder": self.config.recursion.lambda_ponder * ponder.mean()}

    def diagnostics(self, valid: torch.Tensor | None = None) -> dict[str, float]:
        """Mean steps per token, the fraction of tokens at each step count, mean ponder cost N + R,
        over the positions ``valid`` (B, T) marks real (None: all), as the ponder loss counts them."""
        if self._steps is None:
            return {"effective_depth": float(self.max_depth)}
        steps = real_positions(self._steps.detach(), valid)
        mean = steps.mean().item()
        out = {"act.mean_steps": mean, "effective_depth": mean * len(self.blocks)}
        lowest = self.config.recursion.act_min_steps if self._last.ponder is not None else self.n_steps
        for k in range(lowest, self.n_steps + 1):
            out[f"act.steps_{k}_frac"] = (steps == k).float().mean().item()
        if self._last.ponder is not None:
            ponder = real_positions(self._last.ponder.detach(), valid)
            out["act.ponder"] = ponder.mean().item()
        return out

    def flops_per_token(self, seq_len: int) -> float:
        """Upper bound: every position runs all steps (measured steps are in :meth:`diagnostics`)."""
        return super().flops_per_token(seq_len) + self.n_steps * 6.0 * self.halt.weight.numel()


def _sharded(module: nn.Module) -> bool:
    """Whether FSDP shards ``module``'s parameters over processes."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _any_running(running: torch.Tensor, on_any_process: bool) -> bool:
    """Whether a position of ``running (B, T)`` still runs (on any process: a collective)."""
    if not on_any_process:
        return bool(running.any())
    more = running.any().to(torch.int32)
    torch.distributed.all_reduce(more, op=torch.distributed.ReduceOp.MAX)
    return bool(more)


def _check_fixed_steps(steps: int) -> None:
    if steps < 1:
        raise MemlabError(f"act_fixed_steps must be >= 1, not {steps}")


def fix_act_steps(model: nn.Module, steps: int) -> None:
    """Make a built ``act`` model run exactly ``steps`` steps at every position (before its
    states are made); any other model is refused."""
    if not isinstance(model.body, AdaptiveComputationTime):
        raise MemlabError(f"a fixed number of ACT steps (--act-steps) needs an act model, not {model.config.variant!r} "
                          f"(recursion {model.config.recursion.kind!r})")
    _check_fixed_steps(steps)
    model.config.recursion.act_fixed_steps = steps


class LatentThoughtStack(Stack):
    """The block stack with a causal latent-thought stream after its lower half.

    ``h = h + thoughts(norm(h))`` before block ``n_layers // 2``; the thought
    stream is the mixer :class:`memlab.mixers.thoughts.LatentThoughts` with layer index
    ``n_layers`` (so ablations and diagnostics address it like a layer); its state is the last
    entry of the body's state list.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.split = config.n_layers // 2  # thoughts are read before block `split`
        self.thought_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.thoughts = LatentThoughts(config, layer_idx=config.n_layers)

    def forward(self, h: torch.Tensor, states: list | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            if i == self.split:
                h = h + self.thoughts(self.thought_norm(h), None if states is None else states[-1])
            h = block(h, None if states is None else states[i])
        return h

    @property
    def max_depth(self) -> int:
        return len(self.blocks) + 1

    def init_state(self, batch_size: int, device=None, dtype=None) -> list:
        return [*super().init_state(batch_size, device, dtype), self.thoughts.init_state(batch_size, device, dtype)]

    def state_nbytes(self, context_len: int, batch_size: int = 1, dtype=torch.float32) -> int:
        thoughts = self.thoughts.state_nbytes(context_len, batch_size, dtype)
        return super().state_nbytes(context_len, batch_size, dtype) + thoughts

    def flops_per_token(self, seq_len: int) -> float:
        return super().flops_per_token(seq_len) + self.thoughts.flops_per_token(seq_len)


BODIES.update(shared_loop=SharedLoop, act=AdaptiveComputationTime, latent=LatentThoughtStack)
