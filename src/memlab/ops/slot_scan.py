"""The gated EMA slot recurrence of Competitive Docking Memory, and reads from its states.

K slots of width D share one write vector per token; each slot has its own decay and
write weight (gate)::

    S_k(t) = a_k(t) * S_k(t-1) + b_k(t) * w(t)        a = exp(log_a), 0 < a <= 1

with ``log_a, b: (B, T, K)``, ``w: (B, T, D)`` and ``S: (B, K, D)``.  This is gated linear
attention with keys ``b``, values ``w`` and a per-key decay, so two reads cover every
read-out a CDM layer needs (``H`` heads split ``D`` into ``H x Dh``; ``H = 1`` is allowed):

* weighted read ``o_rh(t) = sum_k r_rhk(t) S_kh(t)``        ``r: (B, T, R, H, K) -> (B, T, R, H, Dh)``
  (R reads of each head at once: one pass over the write kernel serves them all)
* score read    ``s_hk(t) = q_h(t) . S_kh(t)``               ``q: (B, T, H, Dh) -> (B, T, H, K)``

Position ``t`` reads the state *after* its own write (like the delta rule).

Two forms: :func:`slot_states_naive` runs the literal recurrence (:func:`slot_step` per
token) and returns every state; :func:`slot_scan` is the chunked form used in training.
Within a chunk of ``C`` tokens it uses the cumulative log-decay ``L(t)``; the weight of
write ``s`` in state ``t`` is ``exp(L(t) - L(s)) b(s)`` (exponent <= 0: stable); the states
at chunk starts come from one elementwise step per chunk.  No (B, T, K, D)
tensor is materialised: reads contract the chunk start states and the (C, C) write
kernel directly.  Cost per token ~ C (K H + D) + K D; memory ~ C K floats per token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from memlab.ops.chunk_recurrence import chunk_recurrence

_MIN_LOG_DECAY = -60.0  # exp(-60) ~ 1e-26: smaller decays change no result


# ------------------------------------------------------------------- reference
def slot_step(state: torch.Tensor, log_a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """One token of the recurrence: ``state (B, K, D)``, ``log_a, b (B, K)``, ``w (B, D)`` -> (B, K, D)."""
    return log_a.exp()[..., None] * state + b[..., None] * w[:, None, :]


def slot_states_naive(
    log_a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, initial_state: torch.Tensor
) -> torch.Tensor:
    """Every state of the recurrence, token by token: (B, T, K, D).  The reference."""
    state, states = initial_state, []
    for t in range(w.shape[1]):
        state = slot_step(state, log_a[:, t], b[:, t], w[:, t])
        states.append(state)
    return torch.stack(states, dim=1)


def weighted_read(states: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``states (B, T, K, D)``, ``r (B, T, R, H, K)`` -> (B, T, R, H, D/H): per read and head, sum_k r_k S_k."""
    B, T, K, D = states.shape
    H = r.shape[3]
    return torch.einsum("btrhk,btkhe->btrhe", r, states.view(B, T, K, H, D // H))


def score_read(states: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``states (B, T, K, D)``, ``q (B, T, H, Dh)`` -> (B, T, H, K): per head, q . S_k."""
    B, T, K, D = states.shape
    H = q.shape[2]
    return torch.einsum("bthe,btkhe->bthk", q, states.view(B, T, K, H, D // H))


# --------------------------------------------------------------------- chunked
@dataclass
class SlotScan:
    """The recurrence over a sequence in chunks, ready to be read (see :func:`slot_scan`)."""

    length: int  # T, the unpadded length
    start_decay: torch.Tensor  # (B, N, C, K): exp(L(t)), the chunk's start state decayed to position t
    kernel: torch.Tensor  # (B, N, C, C, K): weight of write s in state t, exp(L(t) - L(s)) b(s), s <= t
    values: torch.Tensor  # (B, N, H, C, Dh): the write vectors w, split into the reads' heads, head-major
    chunk_states: torch.Tensor  # (B, N, K, D): the state before each chunk
    final_state: torch.Tensor  # (B, K, D): the state after token T

    def _heads(self, H: int) -> int:
        """The scan's head count, which a read's ``H`` must equal."""
        if H != self.values.shape[2]:
            raise ValueError(f"a read with {H} heads from a slot scan made for {self.values.shape[2]}")
        return H

    def weighted_read(self, r: torch.Tensor) -> torch.Tensor:
        """``r (B, T, R, H, K)`` -> (B, T, R, H, Dh), equal to ``weighted_read(states, r)``.

        Computed head-major, (B, N, H, R * C, Dh), where every contraction is a plain batched
        matmul; one permutation at the end gives the output its layout.
        """
        B, N, C, K = self.start_decay.shape
        R, H = r.shape[2], self._heads(r.shape[3])
        Dh = self.values.shape[-1]
        rr = _chunk(r, C)  # (B, N, C, R, H, K)
        starts = self.chunk_states.view(B, N, K, H, Dh).transpose(2, 3)  # (B, N, H, K, Dh)
        decayed = rr * self.start_decay[:, :, :, None, None]  # reads of the chunk's start state
        inter = decayed.permute(0, 1, 4, 3, 2, 5).reshape(B, N, H, R * C, K) @ starts
        mix = torch.einsum("bncrhk,bncsk->bnhrcs", rr, self.kernel).reshape(B, N, H, R * C, C)
        out = torch.baddbmm(inter.flatten(0, 2), mix.flatten(0, 2), self.values.flatten(0, 2))  # (B N H, R C, Dh)
        out = out.view(B, N, H, R, C, Dh).permute(0, 1, 4, 3, 2, 5).reshape(B, N * C, R, H, Dh)
        return out[:, : self.length]

    def score_read(self, q: torch.Tensor) -> torch.Tensor:
        """``q (B, T, H, Dh)`` -> (B, T, H, K), equal to ``score_read(states, q)``."""
        B, N, C, K = self.start_decay.shape
        H, Dh = self._heads(q.shape[2]), q.shape[3]
        qq = _chunk(q, C)  # (B, N, C, H, Dh)
        starts = self.chunk_states.view(B, N, K, H, Dh)
        inter = torch.einsum("bnche,bnkhe->bnchk", qq, starts) * self.start_decay[:, :, :, None]
        qw = qq.transpose(2, 3) @ self.values.transpose(-1, -2)  # (B, N, H, C, C)
        intra = torch.einsum("bnhcs,bncsk->bnchk", qw, self.kernel)
        return (inter + intra).flatten(1, 2)[:, : self.length]


def slot_scan(
    log_a: torch.Tensor,
    b: torch.Tensor,
    w: torch.Tensor,
    initial_state: torch.Tensor,
    chunk_size: int = 16,
    heads: int = 1,
) -> SlotScan:
    """Chunked form of the recurrence: ``log_a, b (B, T, K)``, ``w (B, T, D)``, ``initial_state (B, K, D)``.

    Returns a :class:`SlotScan` whose reads (of ``heads`` heads each) equal the reads of
    :func:`slot_states_naive`'s states and whose ``final_state`` is the state after the last
    token.  The chunk is ``min(chunk_size, T)``; a ragged tail is padded with no-op tokens
    (decay 1, no write).
    """
    T = w.shape[1]
    C = max(1, min(chunk_size, T))
    la, bb, ww = _chunk(log_a, C), _chunk(b, C), _chunk(w, C)  # (B, N, C, K), (B, N, C, K), (B, N, C, D)
    L = la.cumsum(dim=2)  # (B, N, C, K)
    kernel = _WriteKernel.apply(la, bb)  # (B, N, t, s, K)
    # the kernel's last row, computed apart (no slice of the big kernel to backpropagate through): the
    # log-decay after each write, summed forward (not L[-1] - L, whose gradient would cancel, see _WriteKernel)
    after = F.pad(la.flip(2)[:, :, :-1].cumsum(2), (0, 0, 1, 0)).flip(2)  # (B, N, s, K): sum of la over (s, C)
    to_end = _decay(after) * bb
    chunk_writes = torch.einsum("bnsk,bnsd->bnkd", to_end, ww)
    chunk_states, final_state = _chunk_starts(L[:, :, -1], chunk_writes, initial_state)
    B, N, _, D = ww.shape
    values = ww.view(B, N, C, heads, D // heads).transpose(2, 3).contiguous()  # (B, N, H, C, Dh)
    return SlotScan(T, _decay(L), kernel, values, chunk_states, final_state)


class _WriteKernel(torch.autograd.Function):
    """The weight of write s in state t of a chunk, ``exp(L(t) - L(s)) b(s)`` for s <= t, else 0,
    with ``L`` the cumulative sum of the log-decays ``la``.

    (B, N, C, K) log-decays ``la`` and write gates b -> (B, N, t, s, K).  The backward is the closed
    form ``dpre = dK * kernel`` (the gradient of the exponent), ``dla(i) = sum over s < i <= t of
    dpre(t, s)``, ``db(s) = sum_t dK exp(L(t) - L(s))``.  ``dla`` is summed over the pairs that
    decay i takes part in, each carrying its factor exp(la(i)): taken as a difference of sums over
    all pairs, it would cancel to float32 rounding, an error that the chain through
    ``la = log(1 - gate)`` multiplies by 1 / (1 - gate) where a gate nears 1.  Decays below
    exp(-60) are floored (no sub-normal floats); their gradient is ~1e-26 of the others' instead of 0.
    """

    @staticmethod
    def forward(ctx, la: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        C = la.shape[2]
        L = la.cumsum(2)
        causal = torch.ones(C, C, dtype=torch.bool, device=la.device).tril()[:, :, None]  # (t, s, 1)
        decay = (L[:, :, :, None] - L[:, :, None, :]).clamp_(_MIN_LOG_DECAY, 0.0).exp_().mul_(causal)
        kernel = decay * b[:, :, None]
        ctx.save_for_backward(decay, kernel)
        return kernel

    @staticmethod
    @once_differentiable
    def backward(ctx, d_kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        decay, kernel = ctx.saved_tensors
        B, N, C, _, K = kernel.shape
        d_pre = d_kernel * kernel  # gradient of the exponent L(t) - L(s)
        d_la = _spanning_pairs(C, kernel.dtype, kernel.device) @ d_pre.reshape(B, N, C * C, K)  # (B, N, C, K)
        d_b = (d_kernel * decay).sum(2)
        return d_la, d_b


@functools.cache
def _spanning_pairs(C: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(C, C * C): row i is 1 at the pairs (t, s) with s < i <= t (the decays of token i span them);
    made once per chunk size, dtype and device (every backward of the scan uses it)."""
    i, t, s = (torch.arange(C, device=device).view(shape) for shape in ((C, 1, 1), (1, C, 1), (1, 1, C)))
    return ((s < i) & (i <= t)).to(dtype).view(C, C * C)


def _chunk_starts(
    chunk_log_decay: torch.Tensor, chunk_writes: torch.Tensor, initial_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """States before each chunk and after the last: ``S_{n+1} = a_n S_n + U_n``.

    ``chunk_log_decay (B, N, K)`` is each chunk's total log-decay and ``chunk_writes (B, N, K, D)``
    its writes as seen at its end -> (B, N, K, D) (a view) and (B, K, D).
    """
    decay = _decay(chunk_log_decay).transpose(0, 1)[..., None]  # (N, B, K, 1)
    starts, final = chunk_recurrence(decay, chunk_writes.transpose(0, 1), initial_state)
    return starts.transpose(0, 1), final


def _decay(log_decay: torch.Tensor) -> torch.Tensor:
    """exp(log_decay) of log-decays <= 0, floored at exp(-60).  Sub-normal floats (< 1e-38 in
    fp32) make CPU arithmetic many times slower; the floor keeps them from appearing and
    changes no result."""
    return log_decay.clamp(_MIN_LOG_DECAY, 0.0).exp()


def _chunk(x: torch.Tensor, C: int) -> torch.Tensor:
    """(B, T, ...) -> (B, N, C, ...), zero-padding T up to a multiple of ``C``."""
    T = x.shape[1]
    pad = -T % C
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad))
    return x.view(x.shape[0], -1, C, *x.shape[2:])
