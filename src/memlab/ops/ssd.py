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

import functools

import torch
import torch.nn.functional as F

from memlab.ops.chunk_recurrence import chunk_recurrence
from memlab.ops.optional_kernels import optional_kernel


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


def _full_precision(fn):
    """Run ``fn`` with autocast off: the scan's matmuls combine decays that need float32."""

    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, *args, **kwargs):
        with torch.autocast(x.device.type, enabled=False):
            return fn(x, *args, **kwargs)

    return wrapper


def _upcast(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The scan runs in at least float32 (decays are exponentials of long sums); outputs are cast back."""
    return [t if t is None else t.to(torch.promote_types(t.dtype, torch.float32)) for t in tensors]


def _skip(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    if D is None:
        return y
    return torch.addcmul(y, x, D[:, None] if D.dim() == 1 else D)  # D: (H,) or (H, P)


@_full_precision
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


@_full_precision
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


@_full_precision
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
    """The chunked SSD scan: matmuls within chunks, a linear recurrence across chunk states.

    T is padded internally to a multiple of the chunk (padding has ``dt = 0``: no decay, no input),
    so any length works and the final state is that after the last real token.
    """
    _check(x, dt, A, B, C)
    out_dtype = x.dtype
    state_dtype = x.dtype if initial_state is None else initial_state.dtype
    x, dt, A, B, C, D, initial_state = _upcast(x, dt, A, B, C, D, initial_state)
    Bsz, T, H, P = x.shape
    G, N = B.shape[2:]
    hg = H // G  # heads per group: they share B and C, so C.B and the B/C matmuls are per group
    L = max(1, min(chunk_size, T))
    pad = (-T) % L
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    nc = (T + pad) // L

    xdt = x * dt[..., None]  # (B, T', H, P)
    cum = (dt * A).view(Bsz, nc, L, H).permute(0, 3, 1, 2).cumsum(dim=-1)  # (B, H, nc, L) log-decay sums
    Bg = B.view(Bsz, nc, L, G, N).permute(0, 3, 1, 2, 4)  # (B, G, nc, L, N)
    Cg = C.view(Bsz, nc, L, G, N).permute(0, 3, 1, 2, 4)

    # 1. within chunks: y_i = sum_{j <= i} (C_i . B_j) exp(cum_i - cum_j) dt_j x_j
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    decay = (cum[..., :, None] - cum[..., None, :]).masked_fill_(~causal, float("-inf")).exp_()  # (B, H, nc, L, L)
    scores = decay.view(Bsz, G, hg, nc, L, L) * (Cg @ Bg.transpose(-1, -2))[:, :, None]
    y_diag = scores.view(Bsz, H, nc, L, L) @ xdt.view(Bsz, nc, L, H, P).permute(0, 3, 1, 2, 4)  # (B, H, nc, L, P)

    # 2. each chunk's own contribution to the state at its end, all heads of a group in one matmul
    to_end = torch.exp(cum[..., -1:] - cum).permute(0, 2, 3, 1)[..., None]  # (B, nc, L, H, 1)
    xw = (xdt.view(Bsz, nc, L, H, P) * to_end).view(Bsz, nc, L, G, hg * P).permute(0, 3, 1, 4, 2)
    chunk_states = (xw @ Bg).view(Bsz, G, nc, hg, P * N).transpose(2, 3).reshape(Bsz, H, nc, P * N)

    # 3. states entering each chunk: S_c = exp(sum of a over chunk c-1) S_{c-1} + chunk_states_{c-1}
    S0 = x.new_zeros(Bsz, H, P * N) if initial_state is None else initial_state.reshape(Bsz, H, P * N)
    chunk_decay = torch.exp(cum[..., -1:]).movedim(2, 0)  # (nc, B, H, 1)
    entering, final = chunk_recurrence(chunk_decay, chunk_states.movedim(2, 0), S0)  # (nc, B, H, P * N)
    final = final.view(Bsz, H, P, N)
    entering = entering.movedim(0, 2).view(Bsz, G, hg, nc, P, N).permute(0, 1, 3, 5, 2, 4)
    entering = entering.reshape(Bsz, G, nc, N, hg * P)

    # 4. the entering state read by every position of its chunk, decayed to that position
    y_off = (Cg @ entering).view(Bsz, G, nc, L, hg, P).permute(0, 2, 3, 1, 4, 5).reshape(Bsz, nc, L, H, P)
    y = torch.addcmul(y_diag.permute(0, 2, 3, 1, 4), y_off, torch.exp(cum).permute(0, 2, 3, 1)[..., None])
    y = y.reshape(Bsz, nc * L, H, P)[:, :T]
    return _skip(y, x[:, :T], D).to(out_dtype), final.to(state_dtype) if output_final_state else None


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
    """The SSD scan: ``mamba_ssm``'s Triton kernel on CUDA when installed, else :func:`ssd_chunked`."""
    kernel = optional_kernel("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined") if x.is_cuda else None
    if kernel is None:
        return ssd_chunked(x, dt, A, B, C, D, initial_state, output_final_state, chunk_size)
    y, final = kernel(x, dt, A, B, C, chunk_size, D=D, initial_states=initial_state, return_final_states=True)
    return y, final if output_final_state else None
