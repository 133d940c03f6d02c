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

from memlab.ops.optional_kernels import optional_kernel

Backend = Literal["auto", "torch", "fla"]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """At least float32 (float64 stays float64, for exact tests)."""
    return torch.promote_types(x.dtype, torch.float32)


def gated_delta_rule_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    state: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q, k (B, H, K); v (B, H, V); g, beta (B, H); state (B, H, K, V).

    Returns the output (B, H, V) in v's dtype and the new state (a new tensor).
    """
    dt, out_dtype = _compute_dtype(state), v.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v, beta = (t.to(dt) for t in (q, k, v, beta))
    S = state.to(dt)
    if g is not None:
        S = S * g.to(dt).exp()[..., None, None]
    error = v - torch.einsum("bhk,bhkv->bhv", k, S)  # what the memory gets wrong about v
    S = S + k[..., :, None] * (beta[..., None] * error)[..., None, :]
    o = torch.einsum("bhk,bhkv->bhv", q * scale, S)
    return o.to(out_dtype), S


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
    """The reference: the recurrence applied token by token.  Same contract as :func:`gated_delta_rule`."""
    B, T, H, K = k.shape
    S = initial_state if initial_state is not None else k.new_zeros(B, H, K, v.shape[-1], dtype=_compute_dtype(k))
    outputs = []
    for t in range(T):
        o, S = gated_delta_rule_step(
            q[:, t], k[:, t], v[:, t], None if g is None else g[:, t], beta[:, t], S, scale
        )
        outputs.append(o)
    return torch.stack(outputs, dim=1).to(v.dtype), S if output_final_state else None


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
    dt = _compute_dtype(v)
    scale = K**-0.5 if scale is None else scale
    C = min(chunk_size, T)
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
    chunk_decay = G[..., -1].exp()[..., None, None]  # (B, H, N, 1, 1)
    S = initial_state.to(dt) if initial_state is not None else q.new_zeros(B, H, K, V)
    states, new_values = [], []
    for U0_n, W_n, k_n, decay_n in zip(U0.unbind(2), W.unbind(2), k_to_end.unbind(2), chunk_decay.unbind(2)):
        states.append(S)
        U = U0_n - W_n @ S  # (B, H, C, V)
        new_values.append(U)
        S = decay_n * S + k_n.transpose(-1, -2) @ U
    S_in = torch.stack(states, dim=2)  # (B, H, N, K, V): the state entering each chunk
    U = torch.stack(new_values, dim=2)  # (B, H, N, C, V)

    o = (q * G.exp()[..., None]) @ S_in + ((q @ k.transpose(-1, -2)) * decay) @ U  # (B, H, N, C, V)
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o.to(out_dtype), S if output_final_state else None


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


def _fla_chunk():
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
    ``backend="auto"`` uses fla's kernel for CUDA tensors when fla is installed, else the
    pure-PyTorch chunked form; ``"torch"`` / ``"fla"`` force one.
    """
    use_fla = backend == "fla" or (backend == "auto" and q.is_cuda and _fla_chunk() is not None)
    if not use_fla:
        return chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size)
    fla_chunk = _fla_chunk()
    if fla_chunk is None:
        raise RuntimeError("backend='fla' needs flash-linear-attention (pip install fla-core)")
    if g is None:
        g = torch.zeros_like(beta)
    return fla_chunk(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state
    )
