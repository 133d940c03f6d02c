"""Competitive Docking Memory: K gated EMA memory slots per layer (``C``), and the V2 hybrid (``K``).

Per layer, K slots of width D, started from learned initial slots.  For each token h_t::

    p(t)     = softmax(W_route h_t)                        routing distribution   (B, T, K)
    route(t) = p(t), or one_hot(argmax p(t)) with the straight-through gradient of p (hard)
    alpha(t) = sigmoid(eta(h_t))          V2: input-dependent, eta = Linear-SiLU-Linear
             = sigmoid(log_alpha)         V3: one learnable decay per slot, initialised equal
    gate(t)  = route(t) * alpha(t)                         write gate             (B, T, K)
    S_k(t)   = (1 - gate_k(t)) S_k(t-1) + gate_k(t) W_write h_t

Position t reads the slots *after* its own write (S(t), like the delta rule), so a token
can use what it just stored; nothing later is ever read.  Read-outs (``cdm.readout``):

* ``gate``:  sum_k c_k(t) S_k(t) with c = gate (V2) or c = p (V3, "slots @ route_probs");
* ``xattn``: slot cross-attention, one query per position and head over the K slots
  (the slot states are keys and values): softmax_k(q_h(t) . S_kh(t) / sqrt(Dh));
* ``both``: the two, concatenated into one output projection.

Auxiliary losses of the last forward (weighted, by name): ``cdm_entropy`` =
entropy_reg * (-H(mean_t p(t))), and ``cdm_load_balance`` = load_balance * K * sum_k f_k P_k
(f_k: share of tokens whose argmax is k, P_k: mean p_k).  Training runs the chunked
:func:`memlab.ops.slot_scan.slot_scan`; one decoded token is one :func:`slot_step`, so
decoding costs O(K D) time and memory per token whatever the context.  The recurrence runs
in float32 (float64 for float64 inputs), under autocast too.

Ablations: ``zero`` replaces the slot read-out by zeros (the slots still update; the hybrid
keeps its attention); ``horizon`` uses the exact generic windowed form of the mixer contract.

Differences from the source cards, on purpose:

* V3's card routes by similarity to the current slot contents (``x @ slots.T``), which makes
  the recurrence non-linear in the state; here the router is a learned projection, which keeps
  the parallel scan.  V3's card writes the raw input ``x``; here both versions write
  ``W_write h``, as V2's card does.
* V2's card lists its layer as attention -> CDM -> slot cross-attention -> FFN; here attention
  and the slot read-outs are parallel branches of one normalised input, summed (``K``), then
  the FFN.  The parameter counts are the cards' either way.
* V3's card writes its LBL as ``-entropy(mean_route_probs)`` at 0.01 and leaves the 0.02
  ``L_entropy`` undefined.  Its reported aux identifies that term: -0.443 at saturation is
  8 layers x 0.02 x ln 16, and 82% of it at the end.  So ``cdm_entropy`` (summed over layers,
  as every aux loss is) is the card's aux.  A second -H term could not "prevent saturation" as
  the card says LBL does, so ``cdm_load_balance`` is the Switch Transformer's load-balancing
  loss (Fedus et al., 2022), which penalises tokens piling onto one slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from memlab.config import ModelConfig
from memlab.mixers import register_mixer
from memlab.mixers.attention import Attention, KVCache
from memlab.mixers.base import LastForward, Mixer, MixerState, real_positions
from memlab.ops.precision import at_least_float32
from memlab.ops.slot_scan import score_read, slot_scan, slot_step, weighted_read


@dataclass
class SlotState(MixerState):
    """The K slot states of a layer: (B, K, D)."""

    slots: torch.Tensor


@dataclass
class HybridState(MixerState):
    """The hybrid layer's attention KV cache and slot states."""

    kv: KVCache
    slots: SlotState

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes + self.slots.nbytes


@dataclass
class SlotActivity:
    """What the slots did in the last forward, each (B, T, K): routing p, write gates, decays alpha."""

    routing: torch.Tensor
    gates: torch.Tensor
    alphas: torch.Tensor


@register_mixer
class CDM(Mixer):
    """A layer of K competitive memory slots (no attention): V2 or V3 per ``config.cdm``."""

    letter = "C"
    options_section = "cdm"
    carries_memory = True

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        c, D = config.cdm, config.d_model
        self.n_slots, self.n_heads, self.head_dim = c.n_slots, config.n_heads, config.head_dim
        self.router = nn.Linear(D, c.n_slots, bias=False)
        if c.version == "v2":
            self.eta = nn.Sequential(nn.Linear(D, c.eta_hidden), nn.SiLU(), nn.Linear(c.eta_hidden, c.n_slots))
        else:
            self.log_alpha = nn.Parameter(torch.empty(c.n_slots))
            self.log_alpha._no_weight_decay = True
        self.write_proj = nn.Linear(D, D, bias=False)
        self.initial_slots = nn.Parameter(torch.empty(c.n_slots, D))
        self.initial_slots._no_weight_decay = True
        self.query_proj = nn.Linear(D, D, bias=False) if c.readout != "gate" else None
        self.out_proj = nn.Linear((2 if c.readout == "both" else 1) * D, D, bias=False)
        self._last = LastForward(activity=None)  # SlotActivity of the last forward, attached to the graph (aux losses)
        self.init_special_parameters()

    def init_special_parameters(self) -> None:
        """Initial slots ~ N(0, init_std); eta's output bias makes writes start small; equal V3 decays."""
        c = self.config.cdm
        with torch.no_grad():
            nn.init.normal_(self.initial_slots, std=self.config.init_std)
            if c.version == "v2":
                self.eta[-1].bias.fill_(c.eta_bias)
            else:
                self.log_alpha.fill_(c.alpha_init)

    # ------------------------------------------------------------------ forward
    def mix(self, x: torch.Tensor, state: SlotState | None) -> torch.Tensor:
        B, T, D = x.shape  # x: (B, T, D)
        dtype = at_least_float32(x.dtype)  # the recurrence runs in float32 (or float64)
        routing, gates, alphas, log_decay = self._route(x, dtype)  # (B, T, K) each
        self._last.activity = SlotActivity(routing, gates, alphas)
        values = self.write_proj(x).to(dtype)  # (B, T, D)
        queries = None if self.query_proj is None else self.query_proj(x).view(B, T, self.n_heads, -1).to(dtype)
        initial = (self.initial_slots.expand(B, -1, -1) if state is None else state.slots).to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            read, final = self._read_slots(
                routing, gates, log_decay, values, queries, initial, single_step=state is not None and T == 1
            )
        if state is not None:
            state.slots = final.to(state.slots.dtype)
        if read is None:
            return x.new_zeros(B, T, D)
        return self.out_proj(read.to(x.dtype))

    def _read_slots(
        self,
        routing: torch.Tensor,
        gates: torch.Tensor,
        log_decay: torch.Tensor,
        values: torch.Tensor,
        queries: torch.Tensor | None,
        initial: torch.Tensor,
        single_step: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Run the recurrence; return the read-outs (B, T, reads * D), None when zeroed, and the final slots."""
        c = self.config.cdm
        if single_step:  # decode: one step of the recurrence
            states = slot_step(initial, log_decay[:, 0], gates[:, 0], values[:, 0])[:, None]  # (B, 1, K, D)
            final = states[:, 0]
            read_weighted, read_scores = partial(weighted_read, states), partial(score_read, states)
        else:
            scan = slot_scan(log_decay, gates, values, initial, c.chunk_size, self.n_heads)
            final, read_weighted, read_scores = scan.final_state, scan.weighted_read, scan.score_read
        if self.zeroed:
            return None, final
        weights = []  # (B, T, H, K) each: every head of the gate read has the same weights
        if c.readout in ("gate", "both"):
            weights.append((gates if c.version == "v2" else routing)[:, :, None].expand(-1, -1, self.n_heads, -1))
        if queries is not None:
            weights.append(torch.softmax(read_scores(queries) * queries.shape[-1] ** -0.5, dim=-1))
        reads = read_weighted(torch.stack(weights, dim=2))  # (B, T, R, H, Dh), the reads together
        return reads.flatten(2), final  # (B, T, R * D): each read's heads in turn

    def _route(
        self, x: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Routing distribution, write gates, alphas and log(1 - gate) of each token: (B, T, K) each.

        ``log(1 - gate)`` is computed as ``log((1 - route) + route * sigmoid(-z))`` with ``alpha =
        sigmoid(z)``: exact where a gate nears 1, where ``log1p(-gate)`` would lose 1 - alpha to float32
        rounding and reach -inf (NaN in the scan) at a gate of exactly 1.
        """
        c = self.config.cdm
        with torch.autocast(x.device.type, enabled=False):  # in float32 at least, as MoE routers are: bf16
            logits = F.linear(x.to(dtype), self.router.weight.to(dtype))  # near-ties flip the hard route
        routing = torch.softmax(logits, dim=-1)
        route = routing
        if c.hard_routing:  # winner-take-all forward, gradient of the soft distribution
            winner = F.one_hot(routing.argmax(dim=-1), self.n_slots).to(routing.dtype)
            route = winner + (routing - routing.detach())  # exactly one_hot forward
        z = self.eta(x).to(dtype) if c.version == "v2" else self.log_alpha.to(dtype).expand_as(routing)
        alphas = torch.sigmoid(z)
        retained = (1 - route) + route * torch.sigmoid(-z)  # 1 - gate
        log_decay = retained.clamp_min(torch.finfo(dtype).tiny).log()
        return routing, route * alphas, alphas, log_decay

    # ------------------------------------------------------------- statistics
    def slot_activity(self) -> SlotActivity | None:
        """Routing, write gates and decays of the last forward, detached (what the probes read)."""
        a = self._last.activity
        return None if a is None else SlotActivity(a.routing.detach(), a.gates.detach(), a.alphas.detach())

    def aux_loss(self, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        c = self.config.cdm
        if self._last.activity is None:
            return {}
        routing = self._last.activity.routing
        routing = real_positions(routing, valid)  # (N, K) over the real tokens
        mean = routing.mean(dim=0)  # P_k
        out = {}
        if c.entropy_reg:
            out["cdm_entropy"] = c.entropy_reg * (mean * mean.clamp_min(1e-12).log()).sum()  # -H(P)
        if c.load_balance:
            share = F.one_hot(routing.argmax(dim=-1), self.n_slots).to(mean.dtype).mean(dim=0)  # f_k
            out["cdm_load_balance"] = c.load_balance * self.n_slots * (share * mean).sum()
        return out

    def diagnostics(self, valid: torch.Tensor | None = None) -> dict[str, float]:
        """max_slot_share (argmax), usage_entropy (bits, of the mean routing), mean_gate (total write
        per token) and alpha_spread (max - min over slots of the mean decay gate), over real positions."""
        a = self.slot_activity()
        if a is None:
            return {}
        routing = real_positions(a.routing, valid)  # (N, K)
        mean = routing.mean(dim=0)
        share = torch.bincount(routing.argmax(dim=-1), minlength=self.n_slots) / routing.shape[0]
        alpha = real_positions(a.alphas, valid).mean(dim=0)
        return {
            "max_slot_share": share.max().item(),
            "usage_entropy": -(mean * mean.clamp_min(1e-12).log2()).sum().item(),
            "mean_gate": real_positions(a.gates, valid).sum(dim=-1).mean().item(),
            "alpha_spread": (alpha.max() - alpha.min()).item(),
        }

    def extra_flops_per_token(self, seq_len: int) -> float:
        """The scan's contractions beyond the projections (forward + backward, 6 FLOPs per MAC)."""
        c, D, K = self.config.cdm, self.config.d_model, self.n_slots
        C = min(c.chunk_size, seq_len)
        macs = K * D + K * D / C  # chunk writes; the (K, D) state carried once per chunk
        if c.readout in ("gate", "both"):
            macs += K * D + C * K + C * D
        if self.query_proj is not None:
            macs += 2 * (K * D + C * D + C * K * self.n_heads)
        return 6.0 * macs

    # -------------------------------------------------------------------- state
    def init_state(self, batch_size: int, device=None, dtype=None) -> SlotState:
        """The slots are kept in float32 at least (a bf16 model's too): they accumulate over the whole context."""
        dtype = at_least_float32(dtype or self.initial_slots.dtype)
        slots = self.initial_slots.detach().to(device=device, dtype=dtype)
        return SlotState(slots.expand(batch_size, -1, -1).clone())

    def state_nbytes(self, context_len: int, batch_size: int = 1, dtype=torch.float32) -> int:
        return batch_size * self.n_slots * self.config.d_model * at_least_float32(dtype).itemsize


@register_mixer
class CDMHybrid(CDM):
    """The V2 layer: GQA causal self-attention + CDM slots (+ slot cross-attention), summed."""

    letter = "K"

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.attention = Attention(config, layer_idx)

    def mix(self, x: torch.Tensor, state: HybridState | None) -> torch.Tensor:
        kv, slots = (None, None) if state is None else (state.kv, state.slots)
        return self.attention.mix(x, kv) + super().mix(x, slots)

    def extra_flops_per_token(self, seq_len: int) -> float:
        return self.attention.extra_flops_per_token(seq_len) + super().extra_flops_per_token(seq_len)

    def init_state(self, batch_size: int, device=None, dtype=None) -> HybridState:
        kv = self.attention.init_state(batch_size, device, dtype)
        return HybridState(kv, super().init_state(batch_size, device, dtype))

    def state_nbytes(self, context_len: int, batch_size: int = 1, dtype=torch.float32) -> int:
        return self.attention.state_nbytes(context_len, batch_size, dtype) + super().state_nbytes(
            context_len, batch_size, dtype
        )
