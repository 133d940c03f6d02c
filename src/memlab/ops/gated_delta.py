"""The gated delta rule (Gated DeltaNet; DeltaNet when the gate is absent).

Per head, with a state S of shape (K, V)::

    S_t = exp(g_t) * (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    o_t = S_t^T (scale * q_t)

(the transpose of the published ``S_t = S_{t-1} a_t (I - b_t k_t k_t^T) + b_t v_t k_t^T``).
``g`` is a log-gate (``g <= 0``), ``beta`` in (0, 1), or (0, 2) with negative eigenvalues;
q and k are expected L2-normalised.  Layout and argument order are those of
flash-linear-attention's ``chunk_gated_delta_rule``: q, k (B, T, H, K); v (B, T, H, V);
g, beta (B, T, H); states (B, H, K, V); ``scale`` defaults to K ** -0.5.

Three forms: :func:`gated_delta_rule_step` (one token, for decoding),
:func:`naive_gated_delta_rule` (the literal per-token recurrence, the reference) and
:func:`chunk_gated_delta_rule` (the WY/UT chunked form: a triangular solve inside each
chunk, matmuls across chunks).  :func:`gated_delta_rule` is the entry point; it runs
fla's Triton kernel when the tensors are on CUDA and ``fla`` is installed.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from memlab.ops.optional_kernels import fused_kernel_takes, optional_kernel
from memlab.ops.precision import at_least_float32, full_precision

Backend = Literal["auto", "torch", "fla"]


@full_precision
def gated_delta_rule_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    state: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token, for decoding: q, k (B, H, K); v (B, H, V); g, beta (B, H); state (B, H, K, V).

    Returns the output (B, H, V) in v's dtype and the new state (a new tensor).  The old state
    is read once, for q and k together, and the new one written in one more pass (two with a
    gate), using ``o = scale S_t^T q = scale (a S^T q + (q . k) w)`` with ``a = exp(g)``,
    ``w = beta (v - a S^T k)`` and ``S_t = a S + k w^T``.
    """
    dt, out_dtype = at_least_float32(state.dtype), v.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v, beta = (t.to(dt) for t in (q, k, v, beta))
    S = state.to(dt)
    B, H, K, V = S.shape
    read_q, read_k = (torch.stack([q, k], dim=2) @ S).unbind(2)  # S^T q, S^T k: (B, H, V) each
    if g is not None:
        decay = g.to(dt).exp()[..., None]  # (B, H, 1)
        read_q, read_k = decay * read_q, decay * read_k
    write = beta[..., None] * (v - read_k)  # (B, H, V): beta times what the memory gets wrong about v
    o = scale * (read_q + (q * k).sum(-1, keepdim=True) * write)
    rank_one = (k.reshape(B * H, K, 1), write.reshape(B * H, 1, V))
    if g is None:
        S = torch.baddbmm(S.reshape(B * H, K, V), *rank_one)
    else:  # decay into a new tensor, then add the write in place: two passes
        S = (S * decay[..., None]).reshape(B * H, K, V).baddbmm_(*rank_one)
    return o.to(out_dtype), S.view(B, H, K, V)


@full_precision
def naive_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference: the recurrence written out, token by token.  Same contract as :func:`gated_delta_rule`."""
    B, T, H, K = k.shape
    dt = at_least_float32((k if initial_state is None else initial_state).dtype)
    scale = K**-0.5 if scale is None else scale
    S = k.new_zeros(B, H, K, v.shape[-1], dtype=dt) if initial_state is None else initial_state.to(dt)
    outputs = []
    for t in range(T):
        q_t, k_t, v_t, beta_t = (x[:, t].to(dt) for x in (q, k, v, beta))
        if g is not None:
            S = S * g[:, t].to(dt).exp()[..., None, None]
        error = v_t - torch.einsum("bhk,bhkv->bhv", k_t, S)  # what the memory gets wrong about v
        S = S + torch.einsum("bhk,bhv->bhkv", k_t, beta_t[..., None] * error)
        outputs.append(torch.einsum("bhk,bhkv->bhv", q_t * scale, S))
    o = torch.stack(outputs, dim=1) if outputs else v.new_zeros(B, 0, H, v.shape[-1])  # (an empty sequence)
    return o.to(v.dtype), S if output_final_state else None


@full_precision
def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chunked (WY / UT-transform) form in pure PyTorch; exact up to rounding.

    Inside a chunk of C tokens, with G_r = g_1 + ... + g_r (cumulative log-decay from the
    chunk start) and S_0 the state entering the chunk, the written "new values"
    U = (v_r - S_{r-1}'s prediction) * beta_r satisfy a unit lower-triangular system

        (I + A) U = beta V - diag(beta exp(G)) K S_0,   A_rj = beta_r exp(G_r - G_j) k_r.k_j  (j < r)

    so U = U0 - W S_0 with U0, W from one triangular solve per chunk (all chunks at once).
    The chunk loop then only does  U_n = U0_n - W_n S;  S <- exp(G_C) S + K_n~^T U_n, and the
    outputs O = exp(G) Q S_n + (Q K^T * decay mask) U come out of batched matmuls.
    Ragged T is padded internally with g = 0, beta = 0 (identity steps).
    """
    B, T, H, K = k.shape
    V, out_dtype = v.shape[-1], v.dtype
    dt = at_least_float32(v.dtype)
    scale = K**-0.5 if scale is None else scale
    C = max(1, min(chunk_size, T))  # (an empty sequence: no chunk)
    pad = (-T) % C
    N = (T + pad) // C

    def chunks(x: torch.Tensor) -> torch.Tensor:  # (B, T, H, ...) -> (B, H, N, C, ...), contiguous: one copy
        x = F.pad(x.to(dt), (0, 0) * (x.dim() - 2) + (0, pad)) if pad else x.to(dt)
        return x.view(B, N, C, H, *x.shape[3:]).transpose(2, 3).transpose(1, 2).contiguous()

    q, k, v, beta = chunks(q) * scale, chunks(k), chunks(v), chunks(beta)  # (B, H, N, C, K|V), (B, H, N, C)
    G = chunks(g).cumsum(-1) if g is not None else q.new_zeros(B, H, N, C)  # (B, H, N, C)

    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = torch.where(causal, G[..., :, None] - G[..., None, :], float("-inf")).exp()  # exp(G_r - G_j), j <= r
    A = ((k @ k.transpose(-1, -2)) * decay * beta[..., :, None]).tril(-1)  # (B, H, N, C, C)
    T_inv = UnitLowerInverse.apply(A)  # (I + A)^-1: the UT transform
    U0 = T_inv @ (v * beta[..., None])  # (B, H, N, C, V)
    W = T_inv @ (k * (beta * G.exp())[..., None])  # (B, H, N, C, K)

    k_to_end = k * (G[..., -1:] - G).exp()[..., None]  # keys decayed to the chunk end
    S = initial_state.to(dt) if initial_state is not None else q.new_zeros(B, H, K, V)
    S_in, U, S = ChunkStates.apply(U0, W, k_to_end, G[..., -1].exp(), S)  # (B, H, N, K|C, V), (B, H, K, V)

    o = (q * G.exp()[..., None]) @ S_in + ((q @ k.transpose(-1, -2)) * decay) @ U  # (B, H, N, C, V)
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o.to(out_dtype), S if output_final_state else None


class ChunkStates(torch.autograd.Function):
    """The sequential part of the chunked form, chunk by chunk:

        S_in[n] = S;   U[n] = U0[n] - W[n] S;   S <- d[n] S + k_end[n]^T U[n]

    (B, H, N, C, V) U0, (B, H, N, C, K) W and k_end, (B, H, N) chunk decays d, (B, H, K, V)
    initial S -> the states entering each chunk (B, H, N, K, V), the new values U (B, H, N, C, V)
    and the final state (B, H, K, V).  Each loop is three in-place ops per chunk (two fused
    matmul-adds) writing into chunk-major buffers; the backward loop carries only the state
    gradient, and the gradients of W, k_end and d come after it, one batched op each.
    Autograd through the loop recorded ~15 small ops per chunk.
    """

    @staticmethod
    def forward(ctx, U0, W, k_end, decay, S0):
        B, H, N, C, V = U0.shape
        W_, k_ = _chunk_major(W), _chunk_major(k_end)  # (N, B H, C, K)
        d = _chunk_major(decay[..., None, None])  # (N, B H, 1, 1)
        U = _chunk_major(U0)  # (N, B H, C, V), becomes U0 - W S chunk by chunk
        states = U.new_empty(N + 1, B * H, *S0.shape[2:])  # states[n]: the state entering chunk n
        states[0] = S0.reshape(B * H, *S0.shape[2:])
        for n in range(N):
            U[n].baddbmm_(W_[n], states[n], alpha=-1)
            torch.mul(states[n], d[n], out=states[n + 1]).baddbmm_(k_[n].transpose(1, 2), U[n])
        ctx.save_for_backward(W_, k_, d, states, U)
        ctx.shape = (B, H)
        return _batch_major(states[:N], B), _batch_major(U, B), states[N].clone().view_as(S0)

    @staticmethod
    @once_differentiable
    def backward(ctx, dS_in, dU, dS_final):
        W_, k_, d, states, U = ctx.saved_tensors
        (B, H), N = ctx.shape, U.shape[0]
        # grads[n]: of the state entering chunk n (grads[N]: of the final state), filled backwards
        grads = states.new_empty(states.shape)
        grads[N] = 0 if dS_final is None else dS_final.reshape(grads.shape[1:])
        dU_total = torch.zeros_like(U) if dU is None else _chunk_major(dU)  # dU + k_end (dS after)
        dS_in = torch.zeros_like(states[:N]) if dS_in is None else _chunk_major(dS_in)
        for n in reversed(range(N)):
            dU_total[n].baddbmm_(k_[n], grads[n + 1])
            torch.addcmul(dS_in[n], d[n], grads[n + 1], out=grads[n]).baddbmm_(
                W_[n].transpose(1, 2), dU_total[n], alpha=-1
            )
        dS_after = grads[1:]
        dW = -(dU_total @ states[:N].transpose(-1, -2))  # (N, B H, C, K)
        dk = U @ dS_after.transpose(-1, -2)
        dd = (dS_after * states[:N]).sum((-1, -2)).view(N, B, H).permute(1, 2, 0)  # (B, H, N)
        dS0 = grads[0].view(B, H, *grads.shape[2:])
        return _batch_major(dU_total, B), _batch_major(dW, B), _batch_major(dk, B), dd, dS0


def _chunk_major(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, ...) -> (N, B H, ...): a new contiguous tensor (written in place by the loops)."""
    B, H, N = x.shape[:3]
    out = x.new_empty(N, B * H, *x.shape[3:])
    out.view(N, B, H, *x.shape[3:]).copy_(x.permute(2, 0, 1, *range(3, x.dim())))
    return out


def _batch_major(x: torch.Tensor, B: int) -> torch.Tensor:
    """(N, B H, ...) -> (B, H, N, ...), a view."""
    N, BH = x.shape[:2]
    return x.view(N, B, BH // B, *x.shape[2:]).permute(1, 2, 0, *range(3, x.dim() + 1))


class UnitLowerInverse(torch.autograd.Function):
    """(I + A)^-1 for strictly lower-triangular A (..., C, C), by one batched triangular solve.

    The backward is the closed form dA = -tril(X^T dX X^T, -1) with X = (I + A)^-1, two
    matmuls instead of the second solve that autograd through ``solve_triangular`` costs.
    """

    @staticmethod
    def forward(ctx, A: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(A)
        X = torch.linalg.solve_triangular(A + eye, eye, upper=False, unitriangular=True)
        ctx.save_for_backward(X)
        return X

    @staticmethod
    def backward(ctx, dX: torch.Tensor) -> torch.Tensor:
        (X,) = ctx.saved_tensors
        Xt = X.transpose(-1, -2)
        return -(Xt @ dX @ Xt).tril(-1)


def fla_chunk_kernel():
    """fla's Triton chunk kernel, or None when fla is not installed."""
    return optional_kernel("fla.ops.gated_delta_rule", "chunk_gated_delta_rule")


def gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gated delta rule over a sequence; ``g=None`` is DeltaNet (no decay).

    q, k: (B, T, H, K); v: (B, T, H, V); g, beta: (B, T, H); initial_state: (B, H, K, V).
    Returns o: (B, T, H, V) and, if ``output_final_state``, the final state (B, H, K, V),
    kept in float32 (or float64) whatever the inputs' dtype.
    ``backend="auto"`` uses fla's kernel for CUDA tensors (not float64) when fla is installed,
    else the pure-PyTorch chunked form; ``"torch"`` / ``"fla"`` force one.
    """
    use_fla = backend == "fla" or (backend == "auto" and fused_kernel_takes(q) and fla_chunk_kernel() is not None)
    if not use_fla:
        return chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size)
    fla_chunk = fla_chunk_kernel()
    if fla_chunk is None:
        raise RuntimeError("backend='fla' needs flash-linear-attention (pip install fla-core)")
    if g is None:
        g = torch.zeros_like(beta)
    return fla_chunk(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state
    )
