"""The gated delta rule: chunked form == naive recurrence (values and gradients), decoding,
state chaining, the associative-memory property, and flash-linear-attention's reference."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from memlab.ops import gated_delta_rule
from memlab.ops.gated_delta import (
    ChunkStates,
    UnitLowerInverse,
    chunk_gated_delta_rule,
    gated_delta_rule_step,
    naive_gated_delta_rule,
)

# log-gates per head (largest value, spread below it): strong forgetting in head 0, almost none in head 1
GATES = {"strong": [(-3.0, 6.0)], "weak": [(-1e-3, 1e-3)], "mixed": [(-3.0, 6.0), (-1e-3, 1e-3)], "none": None}


def inputs(B=1, T=63, H=2, K=8, V=6, gate="strong", dtype=torch.float64, seed=0):
    """q, k, v, g, beta, initial_state with unit keys; all requiring grad."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    q, k, v = randn(B, T, H, K), F.normalize(randn(B, T, H, K), dim=-1), randn(B, T, H, V)
    beta = torch.rand(B, T, H, generator=gen, dtype=dtype)
    g = None
    if GATES[gate] is not None:
        top, spread = torch.tensor(GATES[gate], dtype=dtype).repeat(H, 1)[:H].unbind(-1)  # (H,) each
        g = top - spread * torch.rand(B, T, H, generator=gen, dtype=dtype)  # always < 0
    h0 = randn(B, H, K, V)
    return [t.requires_grad_() if t is not None else None for t in (q, k, v, g, beta, h0)]


def outputs_and_grads(fn, tensors, **kwargs):
    """Run ``fn``; return (o, final state, grads of every input) for a loss on both outputs."""
    q, k, v, g, beta, h0 = tensors
    o, s = fn(q, k, v, g, beta, initial_state=h0, output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype) for t in (o, s)]
    loss = (o * weights[0]).sum() + (s * weights[1]).sum()
    leaves = [t for t in tensors if t is not None]
    return o, s, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize(
    "T, gate", [(1, "mixed"), (63, "mixed"), (500, "mixed"), (1000, "mixed"), (1, "none"), (63, "none"), (500, "none")]
)
def test_chunked_equals_naive_values_and_gradients(T, gate):
    tensors = inputs(T=T, gate=gate, B=2 if T < 100 else 1)
    o_ref, s_ref, grads_ref = outputs_and_grads(naive_gated_delta_rule, tensors)
    for chunk_size in (16, 32, 64):
        o, s, grads = outputs_and_grads(chunk_gated_delta_rule, tensors, chunk_size=chunk_size)
        torch.testing.assert_close(o, o_ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(s, s_ref, rtol=1e-9, atol=1e-9)
        names = [n for n, t in zip("q k v g beta h0".split(), tensors) if t is not None]
        for name, a, b in zip(names, grads, grads_ref):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8, msg=f"d{name} (chunk {chunk_size})")


def test_float32_chunked_matches_float64_reference():
    t64 = inputs(T=300, gate="mixed", B=2, K=16, V=16)
    t32 = [t.detach().float().requires_grad_() for t in t64]
    o_ref, s_ref, g_ref = outputs_and_grads(naive_gated_delta_rule, t64)
    o, s, grads = outputs_and_grads(chunk_gated_delta_rule, t32, chunk_size=64)
    assert o.dtype == torch.float32
    torch.testing.assert_close(o, o_ref.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s, s_ref.float(), rtol=1e-4, atol=1e-4)
    for a, b in zip(grads, g_ref):
        torch.testing.assert_close(a, b.float(), rtol=1e-3, atol=1e-3)


def test_extreme_decay_stays_finite():
    q, k, v, g, beta, h0 = inputs(T=130, gate="strong")
    g = torch.full_like(g, -80.0).requires_grad_()  # exp(-80 * 64) underflows inside a chunk
    o, s, grads = outputs_and_grads(chunk_gated_delta_rule, [q, k, v, g, beta, h0])
    o_ref, s_ref, _ = outputs_and_grads(naive_gated_delta_rule, [q, k, v, g, beta, h0])
    assert all(torch.isfinite(t).all() for t in (o, s, *grads))
    torch.testing.assert_close(o, o_ref, rtol=1e-9, atol=1e-9)


def test_split_sequence_continues_from_the_carried_state():
    q, k, v, g, beta, h0 = (t.detach() for t in inputs(T=150, gate="weak"))
    full, s_full = gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True, chunk_size=32)
    parts, state = [], h0
    for a, b in [(0, 37), (37, 38), (38, 150)]:
        o, state = gated_delta_rule(
            q[:, a:b], k[:, a:b], v[:, a:b], g[:, a:b], beta[:, a:b], initial_state=state, output_final_state=True
        )
        parts.append(o)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, s_full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fn", [naive_gated_delta_rule, chunk_gated_delta_rule])
def test_an_empty_sequence_keeps_the_state(fn):
    q, k, v, g, beta, h0 = inputs(T=0)
    o, s = fn(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    assert o.shape == (1, 0, 2, 6)
    torch.testing.assert_close(s, h0)
    s.sum().backward()
    torch.testing.assert_close(h0.grad, torch.ones_like(h0))


def test_single_step_is_one_token_of_the_recurrence():
    q, k, v, g, beta, h0 = (t.detach() for t in inputs(T=1, gate="strong"))
    o, s = gated_delta_rule_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], h0)
    # the published update, written out: S = a (I - b k k^T) S0 + b k v^T
    a, b, kk = g[0, 0, 0].exp(), beta[0, 0, 0], k[0, 0, 0]
    expected = a * (torch.eye(8, dtype=kk.dtype) - b * torch.outer(kk, kk)) @ h0[0, 0] + b * torch.outer(kk, v[0, 0, 0])
    torch.testing.assert_close(s[0, 0], expected)
    torch.testing.assert_close(o[0, 0], expected.T @ (q[0, 0, 0] * 8**-0.5))


def stepped(q, k, v, g, beta, initial_state, output_final_state=True):
    """The decoding step applied token by token (the contract of :func:`naive_gated_delta_rule`)."""
    outputs, state = [], initial_state
    for t in range(q.shape[1]):
        o, state = gated_delta_rule_step(q[:, t], k[:, t], v[:, t], None if g is None else g[:, t], beta[:, t], state)
        outputs.append(o)
    return torch.stack(outputs, dim=1), state


@pytest.mark.parametrize("gate", ["mixed", "none"])
def test_decoding_steps_equal_the_reference_values_and_gradients(gate):
    tensors = inputs(B=3, T=40, gate=gate)
    o_ref, s_ref, grads_ref = outputs_and_grads(naive_gated_delta_rule, tensors)
    o, s, grads = outputs_and_grads(stepped, tensors)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)
    names = [n for n, t in zip("q k v g beta h0".split(), tensors) if t is not None]
    for name, a, b in zip(names, grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"d{name}")


@pytest.mark.parametrize("gate", ["strong", "none"])
@pytest.mark.parametrize("state_dtype", [torch.float64, torch.float32])
def test_single_step_leaves_the_input_state_intact(gate, state_dtype):
    q, k, v, g, beta, h0 = (None if t is None else t.detach() for t in inputs(T=1, gate=gate))
    h0 = h0.to(state_dtype)
    before = h0.clone()
    _, s = gated_delta_rule_step(q[:, 0], k[:, 0], v[:, 0], None if g is None else g[:, 0], beta[:, 0], h0)
    torch.testing.assert_close(h0, before, rtol=0, atol=0)
    assert not torch.equal(s.to(state_dtype), before)


@pytest.mark.parametrize("gate", ["strong", "none"])
def test_single_step_takes_a_state_stored_head_major(gate):
    """A (B, H, K, V) state laid out (H, B, K, V) in memory gives what its contiguous copy gives."""
    q, k, v, g, beta, h0 = (None if t is None else t.detach() for t in inputs(B=2, T=1, gate=gate))
    g = None if g is None else g[:, 0]
    head_major = h0.transpose(0, 1).contiguous().transpose(0, 1)
    expected = gated_delta_rule_step(q[:, 0], k[:, 0], v[:, 0], g, beta[:, 0], h0)
    for a, b in zip(gated_delta_rule_step(q[:, 0], k[:, 0], v[:, 0], g, beta[:, 0], head_major), expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_delta_rule_stores_and_recalls_orthogonal_keys():
    """beta = 1 and no decay: writing (k_i, v_i) for orthonormal keys makes S^T k_i = v_i exactly."""
    T, K, V = 16, 16, 5
    keys = torch.linalg.qr(torch.randn(K, K, dtype=torch.float64))[0][:T].view(1, T, 1, K)
    values = torch.randn(1, T, 1, V, dtype=torch.float64)
    ones, zeros = torch.ones(1, T, 1, dtype=torch.float64), torch.zeros(1, T, 1, dtype=torch.float64)
    _, state = gated_delta_rule(keys, keys, values, zeros, ones, output_final_state=True, chunk_size=8)
    torch.testing.assert_close(torch.einsum("tk,kv->tv", keys[0, :, 0], state[0, 0]), values[0, :, 0])
    # a second write to the same key replaces the value instead of adding to it
    new_value = torch.randn(1, 1, 1, V, dtype=torch.float64)
    _, state = gated_delta_rule(keys[:, :1], keys[:, :1], new_value, zeros[:, :1], ones[:, :1],
                                initial_state=state, output_final_state=True)
    torch.testing.assert_close(keys[0, 0, 0] @ state[0, 0], new_value[0, 0, 0])


def test_gate_is_a_log_decay():
    """With beta = 0 nothing is written and the state decays by exp(sum g)."""
    q, k, v, g, beta, h0 = (t.detach() for t in inputs(T=40, gate="strong"))
    g = torch.full_like(g, -0.05)
    _, s = gated_delta_rule(q, k, v, g, torch.zeros_like(beta), initial_state=h0, output_final_state=True)
    torch.testing.assert_close(s, h0 * torch.exp(torch.tensor(-0.05 * 40, dtype=h0.dtype)))


def test_deltanet_is_the_gated_rule_with_unit_gate():
    q, k, v, g, beta, h0 = (t.detach() for t in inputs(T=70, gate="strong"))
    a = gated_delta_rule(q, k, v, None, beta, initial_state=h0, chunk_size=16)[0]
    b = gated_delta_rule(q, k, v, torch.zeros_like(g), beta, initial_state=h0, chunk_size=16)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_low_precision_inputs_keep_a_float32_state():
    q, k, v, g, beta, _ = (t.detach().bfloat16() for t in inputs(T=20, gate="weak", dtype=torch.float32))
    o, s = gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32


def test_unit_lower_inverse_gradient():
    A = (0.3 * torch.randn(3, 8, 8, dtype=torch.float64)).tril(-1).requires_grad_()
    assert torch.autograd.gradcheck(UnitLowerInverse.apply, (A,))


def _chunk_states_loop(U0, W, k_end, decay, S):
    """The chunk loop written plainly, for autograd: (B, H, N, ...) inputs as ChunkStates takes them."""
    states, values = [], []
    for n in range(U0.shape[2]):
        states.append(S)
        values.append(U0[:, :, n] - W[:, :, n] @ S)
        S = decay[:, :, n, None, None] * S + k_end[:, :, n].transpose(-1, -2) @ values[-1]
    return torch.stack(states, 2), torch.stack(values, 2), S


def test_chunk_states_gradients_match_autograd_through_the_loop():
    g = torch.Generator().manual_seed(0)
    B, H, N, C, K, V = 2, 3, 4, 5, 3, 2
    shapes = [(B, H, N, C, V), (B, H, N, C, K), (B, H, N, C, K), (B, H, N), (B, H, K, V)]
    inputs = [torch.randn(*s, generator=g, dtype=torch.float64) * 0.5 for s in shapes]
    inputs[3] = torch.rand(B, H, N, generator=g, dtype=torch.float64)  # decays in (0, 1)
    inputs = [x.requires_grad_() for x in inputs]
    assert torch.autograd.gradcheck(ChunkStates.apply, inputs)
    outs, want = ChunkStates.apply(*inputs), _chunk_states_loop(*inputs)
    for a, b in zip(outs, want):
        torch.testing.assert_close(a, b)
    # outputs left unused give no gradient (None cotangents): only U feeds the loss here
    grads = torch.autograd.grad(ChunkStates.apply(*inputs)[1].sum(), inputs)
    expected = torch.autograd.grad(_chunk_states_loop(*inputs)[1].sum(), inputs)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------- flash-linear-attention


def fla_naive():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from fla.ops.gated_delta_rule import naive
    except Exception as e:  # not installed, or triton missing
        pytest.skip(f"flash-linear-attention is not importable: {e}")
    return naive


@pytest.mark.parametrize("T", [63, 200])
def test_matches_flash_linear_attention_reference(T):
    """Same argument order, scale and gate sign as fla: its recurrent and chunk references agree with ours."""
    naive = fla_naive()
    tensors = [t.detach().float().requires_grad_() for t in inputs(T=T, gate="mixed", B=2, K=16, V=8)]
    q, k, v, g, beta, h0 = tensors
    ours_o, ours_s, ours_g = outputs_and_grads(gated_delta_rule, tensors, chunk_size=32)

    def fla_recurrent(q, k, v, g, beta, initial_state, output_final_state):  # fla's takes beta before g
        return naive.naive_recurrent_gated_delta_rule(q, k, v, beta, g, None, initial_state, output_final_state)

    fla_o, fla_s, fla_g = outputs_and_grads(fla_recurrent, tensors)
    torch.testing.assert_close(ours_o, fla_o, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours_s, fla_s, rtol=1e-4, atol=1e-4)
    for a, b in zip(ours_g, fla_g):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    chunk_o, chunk_s = naive.naive_chunk_gated_delta_rule(
        q, k, v, g, beta, chunk_size=32, initial_state=h0, output_final_state=True
    )
    torch.testing.assert_close(ours_o, chunk_o, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours_s, chunk_s, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_dispatch_to_fla_matches_the_torch_path():
    fla_naive()
    tensors = [t.detach().float().cuda() for t in inputs(T=300, gate="weak", B=2, K=64, V=64)]
    q, k, v, g, beta, h0 = tensors
    o_fla, s_fla = gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True, backend="fla")
    o, s = gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True, backend="torch")
    for fused, ours in ((o_fla, o), (s_fla, s)):  # relative RMS error, as fla's own tests (TF32 matmuls)
        assert (fused - ours).norm() / ours.norm() < 5e-3
    exact = [t.double() for t in tensors]  # float64 stays on the pure path, exact (fla computes in float32)
    o64, s64 = gated_delta_rule(*exact[:5], initial_state=exact[5], output_final_state=True)
    o_ref, s_ref = naive_gated_delta_rule(*exact[:5], initial_state=exact[5], output_final_state=True)
    torch.testing.assert_close((o64, s64), (o_ref, s_ref), atol=1e-10, rtol=1e-10)
