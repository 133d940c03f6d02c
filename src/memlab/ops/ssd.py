"""Mamba-2's state-space duality (SSD) scan: a naive reference, a chunked form and a decode step.

The recurrence, per head ``h`` (state ``S: (P, N)``, ``a_t = exp(dt_t * A_h)``)::

    S_t = a_t * S_{t-1} + dt_t * x_t B_t^T          x_t: (P,), B_t, C_t: (N,)
    y_t = S_t C_t + D_h * x_t

Layout follows ``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined`` (and
flash-linear-attention): ``x: (B, T, H, P)``, ``dt: (B, T, H)`` (already positive: softplus and
bias are the caller's), ``A: (H,)`` (negative), ``B, C: (B, T, G, N)`` with ``G`` groups shared
by ``H // G`` heads each, states ``(B, H, P, N)``.  :func:`ssd_scan` dispatches to the Triton
kernel of ``mamba_ssm`` when it is installed and the tensors are on CUDA, and to the pure-PyTorch
:func:`ssd_chunked` otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from memlab.ops.chunk_recurrence import carry_gradients, carry_states
from memlab.ops.optional_kernels import fused_kernel_takes, optional_kernel
from memlab.ops.precision import at_least_float32, full_precision


def _heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, G, N) -> (B, T, H, N): each group serves ``H // G`` consecutive heads."""
    return t.repeat_interleave(n_heads // t.shape[2], dim=2) if t.shape[2] != n_heads else t


def _check(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> None:
    Bsz, T, H, _ = x.shape
    if dt.shape != (Bsz, T, H) or A.shape != (H,) or B.shape != C.shape or B.shape[:2] != (Bsz, T):
        raise ValueError(f"bad SSD shapes x={tuple(x.shape)} dt={tuple(dt.shape)} A={tuple(A.shape)} "
                         f"B={tuple(B.shape)} C={tuple(C.shape)}")
    if H % B.shape[2]:
        raise ValueError(f"{H} heads are not divisible into {B.shape[2]} groups")


def _upcast(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The scan runs in at least float32 (decays are exponentials of long sums); outputs are cast back."""
    return [t if t is None else t.to(at_least_float32(t.dtype)) for t in tensors]


def _skip(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    if D is None:
        return y
    return torch.addcmul(y, x, D[:, None] if D.dim() == 1 else D)  # D: (H,) or (H, P)


@full_precision
def ssd_naive(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The literal per-token recurrence (reference).  Returns ``y: (B, T, H, P)`` and the final state."""
    _check(x, dt, A, B, C)
    out_dtype = x.dtype
    state_dtype = x.dtype if initial_state is None else initial_state.dtype
    x, dt, A, B, C, D, initial_state = _upcast(x, dt, A, B, C, D, initial_state)
    Bsz, T, H, P = x.shape
    Bh, Ch = _heads(B, H), _heads(C, H)  # (B, T, H, N)
    state = x.new_zeros(Bsz, H, P, B.shape[-1]) if initial_state is None else initial_state
    ys = []
    for t in range(T):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]  # (B, H, 1, 1)
        write = torch.einsum("bhp,bhn->bhpn", dt[:, t, :, None] * x[:, t], Bh[:, t])
        state = decay * state + write
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1) if ys else torch.zeros_like(x)
    return _skip(y, x, D).to(out_dtype), state.to(state_dtype) if output_final_state else None


@full_precision
def ssd_step(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step.  ``x: (B, H, P)``, ``dt: (B, H)``, ``B, C: (B, G, N)``, ``state: (B, H, P, N)``.

    Returns the new state and ``y: (B, H, P)``; the input state is not modified.
    """
    out_dtype, state_dtype = x.dtype, state.dtype
    x, dt, A, B, C, D, state = _upcast(x, dt, A, B, C, D, state)
    (Bsz, H, P), G = x.shape, B.shape[1]
    grouped = state.reshape(Bsz, G, H // G, P, -1)  # (B, G, hg, P, N): a group's heads share its B and C
    decay = torch.exp(dt * A).view(Bsz, G, -1, 1, 1)
    written = (dt[..., None] * x).view(Bsz, G, -1, P, 1)
    grouped = torch.addcmul(grouped * decay, written, B[:, :, None, None, :])
    y = (grouped @ C[:, :, None, :, None]).view(Bsz, H, P)  # the state read by C
    return grouped.view_as(state).to(state_dtype), _skip(y, x, D).to(out_dtype)


_HALF_SPAN = 60.0  # largest |log-decay| from a chunk's midpoint: e^60 ~ 1e26 keeps float32 far from overflow


def _chunk_length(log_decay: torch.Tensor, chunk_size: int) -> int:
    """The chunk length for :func:`ssd_chunked`: ``chunk_size`` (at most T), halved until no
    chunk's summed log-decay ``(B, T, H)`` spans more than ``2 * _HALF_SPAN``."""
    Bsz, T, H = log_decay.shape
    L = max(1, min(chunk_size, T))
    while L > 1:
        span = -F.pad(log_decay, (0, 0, 0, (-T) % L)).view(Bsz, -1, L, H).sum(2).min().item()
        if not span > 2 * _HALF_SPAN:  # (a NaN span keeps the chunk: the output is NaN anyway)
            break
        L //= 2
    return L


@full_precision
def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chunked SSD scan: matmuls within chunks shared by the heads of a group, and a linear
    recurrence across chunk states.

    Within a chunk, with ``c_i`` the log-decay summed from the chunk's start to token ``i`` and
    ``m`` its midpoint value, the decay between two tokens factorises as
    ``exp(c_i - c_j) = exp(c_i - m) exp(m - c_j)``: each token's input is scaled by
    ``exp(m - c_j)`` and each output by ``exp(c_i - m)``, so one causal ``C.B`` matrix per group
    serves all its heads in a single matmul, and no (heads x L x L) decay tensor is built.
    The factors stay below ``exp(_HALF_SPAN)`` because the chunk is halved wherever its decay
    spans more (:func:`_chunk_length`).  The states entering each chunk are carried as in the
    literal recurrence, one elementwise step per chunk.
    T is padded internally to a multiple of the chunk (padding has ``dt = 0``: no decay, no
    input), so any length works and the final state is that after the last real token.
    The chunk length is chosen for the whole call, so where decays are strong enough to halve it,
    a row's rounding (never its value beyond rounding) depends on the other rows and on later tokens.

    These per-token and per-chunk factors are computed here, under autograd; the work on
    full-size tensors is :class:`_ChunkedSSD`, with a hand-written backward.
    """
    _check(x, dt, A, B, C)
    out_dtype = x.dtype
    state_dtype = x.dtype if initial_state is None else initial_state.dtype
    x, dt, A, B, C, D, initial_state = _upcast(x, dt, A, B, C, D, initial_state)
    Bsz, T, H, P = x.shape
    G, N = B.shape[2:]
    hg = H // G  # heads per group: they share B and C
    log_decay = dt * A  # (B, T, H)
    L = _chunk_length(log_decay.detach(), chunk_size)
    pad = (-T) % L
    x_padded = x
    if pad:
        x_padded, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt, log_decay = (F.pad(t, (0, 0, 0, pad)) for t in (dt, log_decay))
    nc = (T + pad) // L

    cum = log_decay.view(Bsz, nc, L, H).cumsum(2)  # (B, nc, L, H)
    mid = (cum[:, :, :1] + cum[:, :, -1:]) / 2  # (B, nc, 1, H)
    from_mid = cum - mid  # |from_mid| <= _HALF_SPAN
    factors = (
        dt.view(Bsz, nc, L, H) * torch.exp(-from_mid),  # each input's scale
        torch.exp(from_mid),  # each within-chunk output's scale
        torch.exp(cum),  # each carried-state output's scale: exp(c_i) alone may be tiny where exp(c_i - m) is not
        torch.exp(cum[:, :, -1] - mid[:, :, 0]),  # (B, nc, H) a chunk's writes to its end, in [exp(-_HALF_SPAN), 1]
        torch.exp(cum[:, :, -1]),  # (B, nc, H) the decay over a whole chunk
    )
    S0 = None if initial_state is None else initial_state.view(Bsz, G, hg, P, N).permute(0, 1, 4, 2, 3)
    y, final = _ChunkedSSD.apply(x_padded, B, C, D, S0, *factors)  # y: (B, T + pad, H, P); final: (B, G, N, hg, P)
    if pad:  # (a full-length slice would still cost a zero-filled gradient)
        y = y[:, :T]
    final = final.permute(0, 1, 3, 4, 2).reshape(Bsz, H, P, N)
    return y.to(out_dtype), final.to(state_dtype) if output_final_state else None


class _ChunkedSSD(torch.autograd.Function):
    """The full-size work of :func:`ssd_chunked`, with ``u = x * input_scale`` per chunk::

        writes = B^T u,   within = tril(C B^T) u      (one matmul: [B^T; tril(C B^T)] u)
        S_{c+1} = chunk_decay S_c + to_end * writes    (:func:`carry_states`)
        y = within_scale * within + carried_scale * (C S_c) + D * x

    Forward and backward each make one matmul of the stacked ``[B^T; CB]`` where autograd would
    make two and add their results; the backward writes the gradients of the matmuls' outputs in
    place and makes none of autograd's extra passes (the scaling by ``addcmul``'s value, the
    sums of gradients that reach a tensor by two paths).
    Shapes: x (B, T, H, P), B and C (B, T, G, N), D (H,) or (H, P), S0 (B, G, N, hg, P), the
    per-token factors (B, nc, L, H), the per-chunk ones (B, nc, H).
    """

    @staticmethod
    def forward(ctx, x, B, C, D, S0, input_scale, within_scale, carried_scale, to_end, chunk_decay):
        Bsz, nc, L, H = input_scale.shape
        G, N = B.shape[2:]
        P = x.shape[-1]
        hg = H // G
        u = x.reshape(Bsz, nc, L, H, P) * input_scale[..., None]
        u = u.reshape(Bsz, nc, L, G, hg * P).transpose(2, 3).reshape(-1, L, hg * P)  # (B nc G, L, hg P)
        Bg = B.view(Bsz, nc, L, G, N).transpose(2, 3).reshape(-1, L, N)  # (B nc G, L, N)
        Cg = C.view(Bsz, nc, L, G, N).transpose(2, 3).reshape(-1, L, N)
        left = torch.cat([Bg.transpose(1, 2), (Cg @ Bg.transpose(1, 2)).tril_()], dim=1)  # (B nc G, N + L, L)
        out = left @ u  # (B nc G, N + L, hg P): the chunk's writes, then its within-chunk outputs
        writes = out[:, :N].view(Bsz, nc, G, N, hg, P) * to_end.view(Bsz, nc, G, 1, hg, 1)
        ctx.has_initial_state, ctx.groups = S0 is not None, G
        if S0 is None:
            S0 = x.new_zeros(Bsz, G, N, hg, P)
        decay = chunk_decay.view(Bsz, nc, G, 1, hg, 1).movedim(1, 0)
        states = carry_states(decay, writes.movedim(1, 0), S0)  # (nc + 1, B, G, N, hg, P)
        entering = states[:-1].movedim(0, 1).reshape(-1, N, hg * P)
        carried = Cg @ entering  # (B nc G, L, hg P)
        y = x.new_empty(x.shape)  # not a view made here: a caller may modify it in place
        y_tokens = y.view(Bsz, nc, L, G, hg, P)
        torch.mul(_by_token(out[:, N:], Bsz, nc, G, hg, P), _per_head(within_scale, G, hg), out=y_tokens)
        y_tokens.addcmul_(_by_token(carried, Bsz, nc, G, hg, P), _per_head(carried_scale, G, hg))
        if D is not None:
            y.addcmul_(x, D[:, None] if D.dim() == 1 else D)
        ctx.save_for_backward(x, D, input_scale, within_scale, carried_scale, to_end, chunk_decay, u, Bg, Cg, left,
                              out, states, carried)  # fmt: skip
        return y, states[-1].clone()

    @staticmethod
    @once_differentiable
    @full_precision
    def backward(ctx, dy: torch.Tensor, d_final: torch.Tensor | None):
        (x, D, input_scale, within_scale, carried_scale, to_end, chunk_decay, u, Bg, Cg, left, out, states,
         carried) = ctx.saved_tensors  # fmt: skip
        Bsz, nc, L, H = input_scale.shape
        N, P, G = Bg.shape[-1], x.shape[-1], ctx.groups
        hg = H // G
        dy = dy.contiguous()
        dy_tokens = dy.view(Bsz, nc, L, G, hg, P)

        # y = within_scale * within + carried_scale * carried (+ D x): the scales' gradients, and
        # the stacked matmul's output gradient written in place: [d writes; d within]
        d_within_scale = torch.linalg.vecdot(dy_tokens, _by_token(out[:, N:], Bsz, nc, G, hg, P)).view_as(input_scale)
        d_carried_scale = torch.linalg.vecdot(dy_tokens, _by_token(carried, Bsz, nc, G, hg, P)).view_as(input_scale)
        d_out = torch.empty_like(out)
        torch.mul(dy_tokens, _per_head(within_scale, G, hg), out=_by_token(d_out[:, N:], Bsz, nc, G, hg, P))
        d_carried = torch.empty_like(carried)
        torch.mul(dy_tokens, _per_head(carried_scale, G, hg), out=_by_token(d_carried, Bsz, nc, G, hg, P))

        # carried = C S_c, then the recurrence across chunks and its writes = to_end * B^T u
        entering = states[:-1].movedim(0, 1).reshape(-1, N, hg * P)
        d_entering = (Cg.transpose(1, 2) @ d_carried).view(Bsz, nc, G, N, hg, P).movedim(1, 0)
        dC = d_carried @ entering.transpose(1, 2)  # (B nc G, L, N)
        decay = chunk_decay.view(Bsz, nc, G, 1, hg, 1).movedim(1, 0)
        d_decay, d_writes, d_S0 = carry_gradients(decay, states, d_entering, d_final)
        d_writes = d_writes.movedim(0, 1)  # (B, nc, G, N, hg, P)
        d_to_end = torch.linalg.vecdot(d_writes, out[:, :N].view_as(d_writes)).sum(3).view(Bsz, nc, H)
        torch.mul(d_writes, to_end.view(Bsz, nc, G, 1, hg, 1), out=d_out[:, :N].view_as(d_writes))

        # out = [B^T; tril(C B^T)] u
        d_left = d_out @ u.transpose(1, 2)  # (B nc G, N + L, L)
        du = _by_token(left.transpose(1, 2) @ d_out, Bsz, nc, G, hg, P)
        d_CB = d_left[:, N:].tril_()
        dC.baddbmm_(d_CB, Bg)
        dB = torch.baddbmm(d_left[:, :N].transpose(1, 2), d_CB.transpose(1, 2), Cg)

        # u = input_scale * x, and the skip
        d_input_scale = torch.linalg.vecdot(du, x.reshape(Bsz, nc, L, G, hg, P)).view_as(input_scale)
        dx = x.new_empty(Bsz, nc, L, G, hg, P)
        torch.mul(du, _per_head(input_scale, G, hg), out=dx)
        dx, dD = dx.view_as(x), None
        if D is not None:
            dx.addcmul_(dy, D[:, None] if D.dim() == 1 else D)
            dD = torch.linalg.vecdot(dy, x).sum((0, 1)) if D.dim() == 1 else (dy * x).sum((0, 1))
        dB, dC = (t.view(Bsz, nc, G, L, N).transpose(2, 3).reshape(Bsz, nc * L, G, N) for t in (dB, dC))
        d_chunk_decay = d_decay.movedim(0, 1).reshape(Bsz, nc, H)
        return (dx, dB, dC, dD, d_S0 if ctx.has_initial_state else None, d_input_scale, d_within_scale,
                d_carried_scale, d_to_end, d_chunk_decay)  # fmt: skip


def _by_token(t: torch.Tensor, Bsz: int, nc: int, G: int, hg: int, P: int) -> torch.Tensor:
    """``(B nc G, L, hg P)`` chunk-major matmul operand -> its ``(B, nc, L, G, hg, P)`` token-major view."""
    return t.view(Bsz, nc, G, t.shape[-2], hg, P).transpose(2, 3)


def _per_head(scale: torch.Tensor, G: int, hg: int) -> torch.Tensor:
    """A per-token, per-head factor ``(B, nc, L, H)`` -> ``(B, nc, L, G, hg, 1)``."""
    return scale.unflatten(-1, (G, hg))[..., None]


def mamba_chunk_kernel():
    """mamba_ssm's Triton SSD kernel, or None when mamba_ssm is not installed."""
    return optional_kernel("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined")


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The SSD scan: ``mamba_ssm``'s Triton kernel on CUDA (not float64) when installed, else :func:`ssd_chunked`."""
    kernel = mamba_chunk_kernel() if fused_kernel_takes(x) else None
    if kernel is None:
        return ssd_chunked(x, dt, A, B, C, D, initial_state, output_final_state, chunk_size)
    y, final = kernel(x, dt, A, B, C, chunk_size, D=D, initial_states=initial_state, return_final_states=True)
    return y, final if output_final_state else None
