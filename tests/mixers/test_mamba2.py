"""The Mamba-2 mixer (letter M) and the memory-token reader (letter R)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memlab.config import build_config
from memlab.errors import MemlabError
from memlab.mixers import Ablation
from memlab.mixers.mamba2 import Mamba2
from memlab.mixers.memory_tokens import MemoryTokenReader
from memlab.ops.gated_rms_norm import gated_rms_norm_reference
from memlab.ops.ssd import ssd_naive


def mamba(**overrides) -> Mamba2:
    torch.manual_seed(0)
    cfg = build_config("ssm", "tiny", **{"ssm.chunk_size": 16, "ssm.d_state": 16, **overrides})
    return Mamba2(cfg, 0)


def test_prefill_in_ragged_pieces_then_decode_equals_parallel():
    m = mamba()
    x = torch.randn(2, 60, m.config.d_model)
    with torch.no_grad():
        full = m(x)
        state = m.init_state(2)
        pieces, start = [], 0
        for n in (5, 17, 1, 16, 1, 20):  # crosses chunk boundaries at ragged offsets
            pieces.append(m(x[:, start : start + n], state))
            start += n
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert state.nbytes == m.state_nbytes(60, batch_size=2) == m.state_nbytes(10_000, batch_size=2)


def test_groups_and_other_chunk_sizes_agree():
    a, b = mamba(**{"ssm.n_groups": 2}), mamba(**{"ssm.n_groups": 2, "ssm.chunk_size": 64})
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 50, a.config.d_model)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


def test_the_norm_has_a_weight_per_channel_and_normalises_each_group_alone():
    """As mamba_ssm's RMSNormGated(d_inner, group_size=d_inner // n_groups): weights interchange."""
    m = mamba(**{"ssm.n_groups": 2})
    assert m.norm.weight.shape == (m.d_inner,)
    torch.nn.init.normal_(m.norm.weight)
    x, z = torch.randn(2, 5, m.d_inner, dtype=torch.float64), torch.randn(2, 5, m.d_inner, dtype=torch.float64)
    w = m.norm.weight.detach().double()
    half = m.d_inner // 2
    expected = torch.cat([gated_rms_norm_reference(x[..., p], z[..., p], w[p], m.norm.eps, gate_first=True)
                          for p in (slice(0, half), slice(half, None))], dim=-1)  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(m.norm.double()(x, z), expected)


def test_special_parameters_are_initialised_and_excluded_from_weight_decay():
    m = mamba()
    c = m.config.ssm
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert ((dt >= c.dt_min * 0.999) & (dt <= c.dt_max * 1.001)).all()
    A = -torch.exp(m.A_log)
    assert ((A <= -1) & (A >= -16)).all()
    assert torch.equal(m.D, torch.ones_like(m.D))
    no_decay = {n for n, p in m.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert no_decay == {"dt_bias", "A_log", "D"}


def test_zero_ablation_removes_the_state_read_but_keeps_the_local_path():
    """Without the state read-out, position t sees only the last conv_size inputs."""
    m = mamba()
    k = m.config.ssm.conv_size
    x = torch.randn(1, 30, m.config.d_model)
    y = x.clone()
    y[:, 3] += 1.0
    with torch.no_grad():
        normal_x, normal_y = m(x), m(y)
        m.ablation = Ablation("zero")
        ablated_x, ablated_y = m(x), m(y)
    assert not torch.allclose(normal_x[:, 3 + k :], normal_y[:, 3 + k :])  # the state carries it on
    torch.testing.assert_close(ablated_x[:, 3 + k :], ablated_y[:, 3 + k :], atol=0, rtol=0)
    assert not torch.allclose(ablated_x[:, 3:4], ablated_y[:, 3:4])


def test_zero_ablation_still_writes_the_state():
    """As in every mixer, decoding goes on as without the ablation: the prefill (in pieces, one-token
    steps included) writes the same SSM and conv states, and the continuation after it is the same."""
    m = mamba()
    x = torch.randn(2, 40, m.config.d_model)
    with torch.no_grad():
        normal, ablated = m.init_state(2), m.init_state(2)
        for a, b in [(0, 17), (17, 18), (18, 30)]:
            m(x[:, a:b], normal)
            m.ablation = Ablation("zero")
            m(x[:, a:b], ablated)
            m.ablation = None
        torch.testing.assert_close(ablated.ssm, normal.ssm, atol=1e-6, rtol=1e-5)  # (a one-token step: the scan)
        torch.testing.assert_close(ablated.conv, normal.conv, atol=0, rtol=0)
        torch.testing.assert_close(m(x[:, 30:], ablated), m(x[:, 30:], normal), atol=1e-5, rtol=1e-5)


def test_low_precision_runs_the_scan_in_float32(monkeypatch):
    """bf16 inputs, a float32 scan: over 512 tokens of weak decay the layer's scan stays within bf16's
    rounding of the exact (float64) recurrence (a bf16 state drifts ~8% of the largest output)."""
    import memlab.mixers.mamba2 as mamba2

    calls, scan = [], mamba2.ssd_scan  # the layer's own scan

    def scan_and_check(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, chunk_size=64):
        out = scan(x, dt, A, B, C, D, initial_state, output_final_state, chunk_size)
        exact, _ = ssd_naive(*(t.double() for t in (x, dt, A, B, C, D)))
        calls.append(((out[0].double() - exact).abs().max() / exact.abs().max()).item())
        return out

    m = mamba(**{"ssm.dt_min": 0.01, "ssm.dt_max": 0.02})  # weak decay: the state holds hundreds of writes
    with torch.no_grad():
        m.A_log.fill_(-2.0)
    monkeypatch.setattr(mamba2, "ssd_scan", scan_and_check)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        m(torch.randn(1, 512, m.config.d_model))
    assert len(calls) == 1 and calls[0] < 0.01, calls


def test_low_precision_keeps_the_state_in_float32():
    m = mamba()
    x = torch.randn(1, 40, m.config.d_model)
    with torch.no_grad():
        reference = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = m(x)
        m.to(torch.bfloat16)
        state = m.init_state(1)
        half = torch.cat([m(x[:, :39].bfloat16(), state), m(x[:, 39:].bfloat16(), state)], dim=1)
    assert mixed.dtype == half.dtype == torch.bfloat16  # the state accumulates in float32, its inputs stay bf16
    assert (state.ssm.dtype, state.conv.dtype) == (torch.float32, torch.bfloat16)
    assert state.nbytes == m.state_nbytes(40, dtype=torch.bfloat16)
    torch.testing.assert_close(mixed.float(), reference, atol=0.05, rtol=0.05)
    torch.testing.assert_close(half.float(), reference, atol=0.05, rtol=0.05)


def test_diagnostics_report_step_sizes():
    m = mamba()
    x = torch.randn(1, 8, m.config.d_model)
    with torch.no_grad():
        m(x)
        dt = F.softplus(m.in_proj(x)[..., -m.n_heads :] + m.dt_bias)  # (1, T, H): the step sizes' own formula
        retention = torch.exp(dt * -torch.exp(m.A_log))
    d = m.diagnostics()
    assert d["dt_mean"] == pytest.approx(dt.mean().item()) and d["retention_mean"] == pytest.approx(retention.mean().item())


def test_heads_must_divide_the_inner_width():
    with pytest.raises(MemlabError, match="heads"):
        mamba(**{"ssm.head_dim": 48})


# ------------------------------------------------------------- memory-token reader


def reader() -> MemoryTokenReader:
    torch.manual_seed(0)
    return MemoryTokenReader(build_config("ssm_mem", "tiny"), 3)


def test_reader_is_position_wise_and_stateless():
    r = reader()
    x = torch.randn(2, 12, r.config.d_model)
    perm = torch.randperm(12)
    with torch.no_grad():
        torch.testing.assert_close(r(x)[:, perm], r(x[:, perm]), atol=1e-6, rtol=1e-6)
        state = r.init_state(2)
        torch.testing.assert_close(r(x[:, :5], state), r(x)[:, :5])
    assert state.nbytes == r.state_nbytes(12) == 0


def test_reader_learns_its_memory_tokens():
    r = reader()
    r(torch.randn(1, 4, r.config.d_model)).square().sum().backward()
    assert r.memory.grad is not None and r.memory.grad.abs().sum() > 0
    assert r.memory.shape == (64, r.config.d_model)


def test_reader_needs_memory_tokens():
    with pytest.raises(MemlabError, match="n_memory_tokens"):
        MemoryTokenReader(build_config("ssm_mem", "tiny", **{"recursion.n_memory_tokens": 0}), 0)
