"""Gated DeltaNet / DeltaNet mixers and the hybrid's state-reading window layer."""

from __future__ import annotations

import copy

import pytest
import torch

import memlab
from memlab.errors import MemlabError
from memlab.mixers.gated_delta import DeltaNet, GatedDeltaNet
from memlab.mixers.state_read_window import StateReadWindowAttention

OPTIONS = {
    "published": {},
    "source": {"beta_floor": 1.0, "g_bias": 2.0, "shifted_pairing": True},
    "wide": {"expand_v": 2.0, "allow_neg_eigval": True, "beta_floor": 0.3, "n_heads": 2},
}


def model(pattern: str, seed: int = 0, n_layers: int | None = None, **gdn):
    torch.manual_seed(seed)
    overrides = {"gdn": {"chunk_size": 16, **gdn}, "attention": {"window": 8}, "d_model": 64, "n_heads": 2}
    return memlab.build_model("gdn", "tiny", layer_pattern=pattern, n_layers=n_layers or len(pattern), **overrides).eval()


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("pattern", ["G", "D", "GW", "DGW"])
def test_decode_in_uneven_pieces_equals_parallel(pattern, options):
    m = model(pattern, **OPTIONS[options])
    x = torch.randint(0, 512, (2, 45))
    with torch.no_grad():
        full = m(x)
        state = m.init_state(2)
        parts = [m(x[:, a:b], state) for a, b in [(0, 1), (1, 20), (20, 21), (21, 22), (22, 45)]]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert state.nbytes == m.state_nbytes(45, batch_size=2)


def test_gate_and_beta_initialisation():
    layer = model("G").body.blocks[0].mixer
    A, dt = layer.A_log.exp(), torch.nn.functional.softplus(layer.dt_bias)
    assert ((A > 0) & (A <= 16)).all() and ((dt >= 1e-4) & (dt <= 0.1 + 1e-6)).all()
    torch.manual_seed(0)
    many = memlab.build_model("gdn", "tiny", n_heads=64, n_layers=8).body.blocks
    A = torch.cat([b.mixer.A_log.detach().exp() for b in many])  # fla's U(0, 16); U(1, 16) is Mamba-2's
    assert 0.03 < float((A < 1).float().mean()) < 0.12 and float(A.mean()) == pytest.approx(8, abs=1)
    assert layer.A_log._no_weight_decay and layer.dt_bias._no_weight_decay
    with torch.no_grad():
        layer(torch.randn(2, 30, 64))
    assert 0.4 < layer.diagnostics()["beta_mean"] < 0.6  # sigmoid of a small projection

    source = model("G", beta_floor=1.0, g_bias=2.0).body.blocks[0].mixer
    assert source.b_proj is None
    with torch.no_grad():
        source(torch.randn(2, 30, 64))
    stats = source.diagnostics()
    assert stats["beta_mean"] == 1.0
    assert abs(stats["gate_mean"] - torch.sigmoid(torch.tensor(2.0)).item()) < 0.02  # initial retention


def test_diagnostics_describe_the_last_call():
    layer = model("G").body.blocks[0].mixer
    assert layer.diagnostics() == {}
    state = layer.init_state(2)
    with torch.no_grad():
        layer(torch.randn(2, 30, 64), state)
        first = layer.diagnostics()
        layer(torch.randn(2, 1, 64), state)  # a decoding step
    stats = layer.diagnostics()
    expected = state.memory.norm(dim=(-2, -1)).mean().item()  # mean per-head norm of the state it left
    assert stats["state_norm"] == pytest.approx(expected, rel=1e-6)
    assert stats["beta_mean"] != first["beta_mean"] and 0 < stats["gate_mean"] < 1


def test_log_gates_keep_float64_and_at_least_float32():
    layer = model("G").body.blocks[0].mixer.double()
    x = torch.randn(2, 5, 64, dtype=torch.float64)
    expected = -layer.A_log.exp() * torch.nn.functional.softplus(layer.a_proj(x) + layer.dt_bias)
    torch.testing.assert_close(layer._gate(x), expected, rtol=1e-13, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model("G").body.blocks[0].mixer._gate(x.float()).dtype == torch.float32


def test_beta_floor_and_negative_eigenvalues_bound_beta():
    layer = model("G", beta_floor=0.4, allow_neg_eigval=True).body.blocks[0].mixer
    beta = layer._beta(torch.randn(2, 50, 64) * 30)
    assert beta.min() >= 0.8 - 1e-6 and beta.max() <= 2.0 and beta.max() > 1.5


def test_deltanet_has_no_gate():
    layer = model("D").body.blocks[0].mixer
    assert isinstance(layer, DeltaNet) and not hasattr(layer, "A_log")
    with torch.no_grad():
        layer(torch.randn(1, 10, 64))
    assert set(layer.diagnostics()) == {"beta_mean", "state_norm"}


def test_shifted_pairing_writes_the_previous_key():
    plain, shifted = model("G"), model("G", shifted_pairing=True)
    shifted.load_state_dict(plain.state_dict())
    x = torch.randn(2, 12, 64)
    _, k, v, _, _ = plain.body.blocks[0].mixer.project(x)
    _, k_shift, v_shift, _, _ = shifted.body.blocks[0].mixer.project(x)
    torch.testing.assert_close(k_shift[:, 1:], k[:, :-1])
    assert (k_shift[:, 0] == 0).all()  # the first token has no previous key: it writes nothing
    torch.testing.assert_close(v_shift, v)


def test_zero_ablation_silences_the_output_but_the_state_still_advances():
    m = model("G")
    layer = m.body.blocks[0].mixer
    x = torch.randn(2, 20, 64)
    with torch.no_grad():
        normal_state = layer.init_state(2)
        layer(x, normal_state)
        with memlab.ablate(m, mode="zero"):
            ablated_state = layer.init_state(2)
            y = layer(x, ablated_state)
    assert (y == 0).all()
    torch.testing.assert_close(ablated_state.memory, normal_state.memory)


def test_window_reads_the_source_state_after_each_token():
    """The W layer's output = its window branch + read_out(sigmoid(gate(x_t)) * read_t), with
    read_t = S_t^T (scale * k_shared(x_t)) and S_t the source's recurrent state after token t."""
    m = model("GW")
    source, reader = m.body.blocks[0].mixer, m.body.blocks[1].mixer
    assert isinstance(reader, StateReadWindowAttention) and reader.source is source
    x_source, x_reader = torch.randn(1, 10, 64), torch.randn(1, 10, 64)
    with torch.no_grad():
        source(x_source)
        out = reader(x_reader)
        local = super(StateReadWindowAttention, reader).mix(x_reader, None)  # the window branch alone
        keys, _ = source.shared_key(x_reader, None)  # (1, T, H, K): the reader's input, the source's projection
        state = source.init_state(1)
        reads = []
        for t in range(10):
            source(x_source[:, t : t + 1], state)
            reads.append(torch.einsum("hk,hkv->hv", keys[0, t] * source.dims.key**-0.5, state.memory[0]))
        gate = torch.sigmoid(reader.gate_proj(x_reader))[0]  # (T, H)
        expected = reader.read_out_proj((gate[..., None] * torch.stack(reads)).flatten(1))
        torch.testing.assert_close(out[0] - local[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("state_read, expected", [(True, 99168.0), (False, 5472.0)])
def test_window_layer_flops_count_the_borrowed_key_path(state_read, expected):
    """D = 64, 2 heads of 32, window 8, chunk 16, short conv 4, T = 32; per token, forward + backward:
    window attention 12 * 2 * 32 * (8 * 9 / 2 + 24 * 8) / 32 = 5472; the source's kernel over the read's
    queries 6 * 2 * (2 * 16 * 32 + 16 * 64 + 3 * 32 * 32 + 16 * 32) = 67584; the source's k_proj and k
    short conv on this layer's input 6 * (64 * 64 + 64 * 4) = 26112 (the block's own weights count elsewhere)."""
    m = memlab.build_model("gdn", "tiny", layer_pattern="GW", n_layers=2, d_model=64, n_heads=2,
                           gdn={"chunk_size": 16, "conv_size": 4, "expand_v": 1.0, "state_read": state_read},
                           attention={"window": 8})
    assert m.body.blocks[1].mixer.extra_flops_per_token(32) == expected


def test_local_branch_scale_and_drop():
    m = model("GW", local_scale=0.0)
    reader = m.body.blocks[1].mixer
    x = torch.randint(0, 512, (2, 30))
    with torch.no_grad():
        before = m(x)
        reader.v_proj.weight.mul_(3.0)  # the window branch is scaled to zero at evaluation
        torch.testing.assert_close(m(x), before)
    reader.options.local_drop_prob = 0.7
    reader.train()
    torch.manual_seed(0)
    keep = torch.stack([reader._local_multiplier(torch.zeros(1000, 1, 1)) for _ in range(4)])
    assert set(keep.unique().tolist()) == {0.0, 1.0} and abs(keep.mean().item() - 0.3) < 0.03
    assert reader.eval()._local_multiplier(None) == 0.0  # a scale that is set wins


def test_evaluation_scales_the_window_by_its_training_mean_unless_told_otherwise():
    m = model("GW", local_drop_prob=0.7)
    assert m.config.gdn.local_scale is None
    reader = m.body.blocks[1].mixer
    x = torch.randint(0, 512, (2, 30))
    with torch.no_grad():
        full = m(x)
        reader.v_proj.weight.mul_(0.3)  # the window branch, by 0.3 = 1 - 0.7 at evaluation: the same output
        reader.options.local_drop_prob = 0.0
        torch.testing.assert_close(m(x), full)


def test_without_state_read_the_window_layer_is_sliding_window_attention():
    reader_model = model("GW", state_read=False)
    plain = model("GS")
    plain.load_state_dict(reader_model.state_dict())
    reader = reader_model.body.blocks[1].mixer
    assert not reader.carries_memory and not hasattr(reader, "gate_proj")
    x = torch.randint(0, 512, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(reader_model(x), plain(x))


def test_window_layer_needs_a_preceding_delta_layer():
    with pytest.raises(MemlabError, match="reads the memory of a preceding"):
        model("WG")


def test_hybrid_horizon_ablation_with_shifted_pairing_equals_truncated_context():
    m = model("GW", shifted_pairing=True)
    h = 6
    x = torch.randint(0, 512, (1, 40))
    with torch.no_grad(), memlab.ablate(m, mode="horizon", horizon=h):
        full = m(x)
        reach = 2 * (h - 1) + 1
        for t in (reach - 1, 25, 39):
            torch.testing.assert_close(m(x[:, t - reach + 1 : t + 1])[:, -1], full[:, t], atol=1e-5, rtol=1e-5)


def test_horizon_on_the_source_alone_is_refused():
    m = model("GW")
    with torch.no_grad(), memlab.ablate(m, mode="horizon", horizon=4, layers=[0]):
        with pytest.raises(MemlabError, match="must include its reader"):
            m(torch.randint(0, 512, (1, 10)))


def test_diagnostics_of_the_hybrid_and_deepcopy_after_a_forward():
    m = model("GW").train()
    m(torch.randint(0, 512, (2, 20))).sum().backward()
    stats = m.diagnostics()
    assert {"layer0.beta_mean", "layer0.gate_mean", "layer0.state_norm"} <= set(stats)
    assert {"layer1.gate_mean", "layer1.local_norm", "layer1.retrieval_norm"} <= set(stats)
    clone = copy.deepcopy(m)
    assert clone.body.blocks[1].mixer.source is clone.body.blocks[0].mixer
    with torch.no_grad():
        torch.testing.assert_close(clone.eval()(torch.ones(1, 5, dtype=torch.long)), m.eval()(torch.ones(1, 5, dtype=torch.long)))


def test_low_precision_model_keeps_a_float32_memory():
    layer = model("G").body.blocks[0].mixer
    state = layer.init_state(2, dtype=torch.bfloat16)
    assert state.memory.dtype == torch.float32 and state.conv.dtype == torch.bfloat16
    assert state.nbytes == layer.state_nbytes(100, batch_size=2, dtype=torch.bfloat16)
    assert isinstance(layer, GatedDeltaNet)
