"""The chunked slot scan against the literal per-token recurrence: values and gradients."""

from __future__ import annotations

import pytest
import torch

from memlab.ops.slot_scan import score_read, slot_scan, slot_states_naive, slot_step, weighted_read


def inputs(B=2, T=63, K=5, D=12, H=3, seed=0, dtype=torch.float64, max_gate=0.95):
    g = torch.Generator().manual_seed(seed)
    gate = torch.rand(B, T, K, generator=g, dtype=dtype) * max_gate
    return dict(
        log_a=torch.log1p(-gate),
        b=torch.rand(B, T, K, generator=g, dtype=dtype),  # writes need not equal 1 - decay
        w=torch.randn(B, T, D, generator=g, dtype=dtype),
        initial=torch.randn(B, K, D, generator=g, dtype=dtype),
        r=torch.rand(B, T, 2, H, K, generator=g, dtype=dtype),  # two reads of every head
        q=torch.randn(B, T, H, D // H, generator=g, dtype=dtype),
    )


def reads_naive(x):
    states = slot_states_naive(x["log_a"], x["b"], x["w"], x["initial"])
    return weighted_read(states, x["r"]), score_read(states, x["q"]), states[:, -1]


def reads_chunked(x, chunk_size):
    scan = slot_scan(x["log_a"], x["b"], x["w"], x["initial"], chunk_size, heads=x["q"].shape[2])
    return scan.weighted_read(x["r"]), scan.score_read(x["q"]), scan.final_state


def test_reads_must_have_the_scans_head_count():
    x = inputs(T=10, H=3)
    scan = slot_scan(x["log_a"], x["b"], x["w"], x["initial"], 4, heads=3)
    with pytest.raises(ValueError, match="3"):
        scan.weighted_read(x["r"][:, :, :, :1])
    with pytest.raises(ValueError, match="3"):
        scan.score_read(x["q"].reshape(2, 10, 1, 12))


@pytest.mark.parametrize("T,chunk_size", [(1, 64), (7, 4), (63, 16), (64, 64), (200, 64), (500, 32)])
def test_chunked_equals_naive_values_and_gradients(T, chunk_size):
    x = {k: v.requires_grad_() for k, v in inputs(T=T).items()}
    outs_naive = reads_naive(x)
    outs_chunk = reads_chunked(x, chunk_size)
    for a, b in zip(outs_chunk, outs_naive):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
    cotangents = [torch.randn_like(o) for o in outs_naive]
    grads_naive = torch.autograd.grad(outs_naive, list(x.values()), cotangents)
    grads_chunk = torch.autograd.grad(outs_chunk, list(x.values()), cotangents)
    for name, a, b in zip(x, grads_chunk, grads_naive):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8, msg=f"gradient of {name}")


def test_float32_matches_float64_reference():
    x = inputs(T=130, K=16, D=64, H=4)
    ref = reads_naive(x)
    out = reads_chunked({k: v.float() for k, v in x.items()}, 64)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4)


def test_state_carried_across_calls_equals_one_scan():
    x = inputs(T=90)
    whole = reads_chunked(x, 16)
    parts, state = [], x["initial"]
    for a, b in [(0, 37), (37, 38), (38, 90)]:  # uneven pieces, one of a single token
        piece = {k: (v[:, a:b] if v.dim() > 3 or k in ("log_a", "b", "w") else v) for k, v in x.items()}
        piece["initial"] = state
        *reads, state = reads_chunked(piece, 16)
        parts.append(reads)
    for i in range(2):
        torch.testing.assert_close(torch.cat([p[i] for p in parts], dim=1), whole[i], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(state, whole[2], atol=1e-10, rtol=1e-10)


def test_single_step_is_the_literal_update():
    x = inputs(T=1)
    state = slot_step(x["initial"], x["log_a"][:, 0], x["b"][:, 0], x["w"][:, 0])
    a = x["log_a"][:, 0].exp()[..., None]
    expected = a * x["initial"] + x["b"][:, 0, :, None] * x["w"][:, 0, None, :]
    torch.testing.assert_close(state, expected, atol=0, rtol=0)


def test_position_reads_its_own_write():
    x = inputs(T=5)
    x["initial"] = torch.zeros_like(x["initial"])
    x["b"] = torch.zeros_like(x["b"])
    x["b"][:, 3] = 1.0  # only token 3 writes
    reads, _, _ = reads_chunked(x, 64)
    assert reads[:, :3].abs().max() == 0  # nothing before the write sees it
    assert reads[:, 3].abs().min() > 0  # the writer itself reads it


def test_strong_decay_over_long_chunks_stays_finite():
    x = inputs(T=256, max_gate=1 - 1e-6)
    x["log_a"] = torch.full_like(x["log_a"], -14.0)  # total log-decay ~ -3600 within a chunk
    x = {k: v.float().requires_grad_() for k, v in x.items()}
    outs = reads_chunked(x, 256)
    grads = torch.autograd.grad([o.sum() for o in outs], list(x.values()))
    assert all(torch.isfinite(t).all() for t in (*outs, *grads))
    # with decay ~ 0 every state is just the latest write
    torch.testing.assert_close(outs[2], x["b"][:, -1, :, None] * x["w"][:, -1, None, :], atol=1e-5, rtol=1e-5)
