"""The linear recurrence across chunks that the chunked scans share: ``S_{n+1} = a_n * S_n + U_n``.

A chunked scan (the CDM slot scan, Mamba-2's SSD) computes within chunks with matmuls and
carries one state from chunk to chunk; that carry is this elementwise recurrence over a
few dozen chunks.  N small steps beat an (N x N) decay-weighted matmul, whose inner size N
is too small to run fast, and a hand-written backward beats autograd through the loop
(one fused op per chunk each way where autograd recorded about five, and no stacks).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def chunk_recurrence(
    decay: torch.Tensor, writes: torch.Tensor, initial: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``S_0 = initial``, ``S_{n+1} = decay[n] * S_n + writes[n]`` over the leading dimension.

    decay (N, ...) broadcasts against a state, writes (N, *S), initial S -> the states entering
    each step (N, *S) and the final state S_N (*S).
    """
    return _ChunkRecurrence.apply(decay, writes, initial)


def carry_states(decay: torch.Tensor, writes: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """The recurrence's states without autograd: ``(N + 1, *S)``, ``[n]`` entering step n, ``[N]`` the final one."""
    N = writes.shape[0]
    states = writes.new_empty(N + 1, *initial.shape)
    states[0] = initial
    for n in range(N):
        torch.addcmul(writes[n], states[n], decay[n], out=states[n + 1])
    return states


def carry_gradients(
    decay: torch.Tensor, states: torch.Tensor, d_entering: torch.Tensor | None, d_final: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of decay, writes and initial state from those of the states of
    :func:`carry_states`: the backward carries ``G_n = a_n G_{n+1} + dS_n`` (the gradient of the
    state entering step n); the writes' gradients are ``G_{n+1}`` and the decays' ``G_{n+1} S_n``,
    summed to the decay's shape after the loop."""
    N = decay.shape[0]
    grads = states.new_empty(states.shape)  # grads[n]: of the state entering step n; grads[N]: of the final
    grads[N] = 0 if d_final is None else d_final
    if d_entering is None:
        d_entering = torch.zeros_like(states[:N])
    for n in reversed(range(N)):
        torch.addcmul(d_entering[n], grads[n + 1], decay[n], out=grads[n])
    d_writes = grads[1:]
    d_decay = (d_writes * states[:N]).sum_to_size(decay.shape)
    return d_decay, d_writes, grads[0]


class _ChunkRecurrence(torch.autograd.Function):
    """:func:`carry_states` forward, :func:`carry_gradients` backward."""

    @staticmethod
    def forward(ctx, decay: torch.Tensor, writes: torch.Tensor, initial: torch.Tensor):
        states = carry_states(decay, writes, initial)
        ctx.save_for_backward(decay, states)
        return states[:-1], states[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_entering: torch.Tensor | None, d_final: torch.Tensor | None):
        decay, states = ctx.saved_tensors
        return carry_gradients(decay, states, d_entering, d_final)
