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

from memlab.ops.chunk_recurrence import chunk_recurrence
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
    H = x.shape[1]
    Bh = B.repeat_interleave(H // B.shape[1], dim=1) if B.shape[1] != H else B  # (B, H, N)
    Ch = C.repeat_interleave(H // C.shape[1], dim=1) if C.shape[1] != H else C
    decay = torch.exp(dt * A)[..., None, None]  # (B, H, 1, 1)
    state = torch.addcmul(state * decay, (dt[..., None] * x)[..., None], Bh[:, :, None, :])
    y = torch.einsum("bhpn,bhn->bhp", state, Ch)  # (B, H, P)
    return state.to(state_dtype), _skip(y, x, D).to(out_dtype)


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
    u = x_padded.view(Bsz, nc, L, H, P) * (dt.view(Bsz, nc, L, H) * torch.exp(-from_mid))[..., None]
    u = u.view(Bsz, nc, L, G, hg * P).transpose(2, 3)  # (B, nc, G, L, hg * P)
    Bg = B.view(Bsz, nc, L, G, N).transpose(2, 3)  # (B, nc, G, L, N)
    Cg = C.view(Bsz, nc, L, G, N).transpose(2, 3)

    # states entering each chunk: S_{c+1} = exp(c_last) S_c + exp(c_last - m) B_c^T u_c
    to_end = torch.exp(cum[:, :, -1:] - mid).view(Bsz, nc, G, 1, hg, 1)  # in [exp(-_HALF_SPAN), 1]
    writes = (Bg.transpose(-1, -2) @ u).view(Bsz, nc, G, N, hg, P) * to_end
    if initial_state is None:
        S0 = x.new_zeros(Bsz, G, N, hg, P)
    else:
        S0 = initial_state.view(Bsz, G, hg, P, N).permute(0, 1, 4, 2, 3)  # (B, G, N, hg, P)
    chunk_decay = torch.exp(cum[:, :, -1]).view(Bsz, nc, G, 1, hg, 1).movedim(1, 0)
    entering, final = chunk_recurrence(chunk_decay, writes.movedim(1, 0), S0)  # (nc, B, G, N, hg, P)
    final = final.permute(0, 1, 3, 4, 2).reshape(Bsz, H, P, N)
    entering = entering.movedim(0, 1).reshape(Bsz * nc * G, N, hg * P)

    # y_i = exp(c_i - m) sum_{j <= i} (C_i . B_j) u_j + exp(c_i) C_i S_c, then the D skip.  (The two
    # terms keep their own factors: exp(c_i) alone may be tiny where exp(c_i - m) is not.)
    CB = (Cg @ Bg.transpose(-1, -2)).tril_().reshape(-1, L, L)  # (B * nc * G, L, L)
    within = (CB @ u.reshape(-1, L, hg * P)).view(Bsz, nc, G, L, hg * P).transpose(2, 3)
    carried = (Cg.reshape(-1, L, N) @ entering).view(Bsz, nc, G, L, hg * P).transpose(2, 3)
    y = within.reshape(Bsz, nc * L, H, P) * torch.exp(from_mid).view(Bsz, nc * L, H, 1)
    y = torch.addcmul(y, carried.reshape(Bsz, nc * L, H, P), torch.exp(cum).view(Bsz, nc * L, H, 1))
    if pad:  # (a full-length slice would still cost a zero-filled gradient)
        y = y[:, :T]
    return _skip(y, x, D).to(out_dtype), final.to(state_dtype) if output_final_state else None


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
