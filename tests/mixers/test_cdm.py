"""Competitive Docking Memory layers: the written model, recurrent decoding, routing, aux losses."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import memlab
from memlab.config import build_config
from memlab.errors import MemlabError
from memlab.mixers.cdm import CDM, CDMHybrid

OPTIONS = [
    dict(version="v2", readout="both"),
    dict(version="v2", readout="gate"),
    dict(version="v3", readout="xattn", hard_routing=True),
    dict(version="v3", readout="both", hard_routing=False),
]


def layer(letter="C", **cdm):
    torch.manual_seed(0)
    config = build_config("cdm", "tiny", layer_pattern=letter, cdm={"chunk_size": 8, **cdm})
    mixer = (CDM if letter == "C" else CDMHybrid)(config, 0).double()  # float64: tight comparisons
    with torch.no_grad():  # move off the small initial writes so every term matters
        for p in mixer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return mixer


def inputs(B=2, T=37, D=128, seed=1):
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("letter", ["C", "K"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
def test_decode_in_uneven_pieces_equals_parallel(letter, options):
    mixer = layer(letter, **options)
    x = inputs()
    with torch.no_grad():
        full = mixer(x)
        state = mixer.init_state(2)
        parts = [mixer(x[:, a:b], state) for a, b in [(0, 5), (5, 6), (6, 23), (23, 24), (24, 37)]]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-10, rtol=1e-10)


def test_gate_readout_is_the_written_v2_model():
    """Literal V2 per token: gate = softmax(W h) sigmoid(eta(h)); S = (1-g) S + g W_w h; read sum_k g_k S_k(t)."""
    mixer = layer("C", version="v2", readout="gate")
    x = inputs(B=1, T=20)
    with torch.no_grad():
        S = mixer.initial_slots.clone()  # (K, D)
        reads = []
        for h in x[0]:
            g = torch.softmax(mixer.router(h), -1) * torch.sigmoid(mixer.eta(h))  # (K,)
            S = (1 - g)[:, None] * S + g[:, None] * mixer.write_proj(h)[None, :]
            reads.append(g @ S)  # reads the state after its own write
        expected = mixer.out_proj(torch.stack(reads))[None]
        torch.testing.assert_close(mixer(x), expected, atol=1e-10, rtol=1e-10)


def test_hard_routing_writes_one_slot_and_trains_the_router():
    mixer = layer("C", version="v3", hard_routing=True)
    x = inputs()
    y = mixer(x)
    gates = mixer.slot_activity().gates
    assert ((gates > 0).sum(-1) == 1).all()  # winner-take-all writes
    alpha = torch.sigmoid(mixer.log_alpha)
    torch.testing.assert_close(gates.amax(-1), alpha[gates.argmax(-1)], atol=0, rtol=0)
    y.square().mean().backward()
    assert mixer.router.weight.grad.abs().sum() > 0  # straight-through gradient of the soft routing


def test_hard_routing_trains_the_router_through_the_straight_through_estimator_alone():
    """With the cross-attention read-out and no auxiliary losses, the one-hot forward is the router's
    only path to the loss: its gradient is that of the soft routing in the backward."""
    mixer = layer("C", version="v3", hard_routing=True, readout="xattn", load_balance=0.0, entropy_reg=0.0)
    mixer(inputs()).square().mean().backward()
    grad = mixer.router.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_a_write_gate_of_one_keeps_the_scan_finite(version):
    """float32 rounds sigmoid(17) to 1: a winner's gate is then exactly 1, and log(1 - gate) must not be -inf."""
    torch.manual_seed(0)
    config = build_config("cdm", "tiny", layer_pattern="C", cdm={"version": version, "hard_routing": True,
                                                                  "chunk_size": 4})
    mixer = CDM(config, 0)
    with torch.no_grad():
        (mixer.log_alpha if version == "v3" else mixer.eta[-1].bias).fill_(20.0)
    x = torch.randn(2, 11, config.d_model)
    y = mixer(x)
    assert mixer.slot_activity().gates.amax() == 1.0
    y.square().mean().backward()
    assert torch.isfinite(y).all() and all(torch.isfinite(p.grad).all() for p in mixer.parameters() if p.grad is not None)
    with torch.no_grad():
        state = mixer.init_state(2)
        steps = torch.cat([mixer(x[:, t : t + 1], state) for t in range(11)], dim=1)
    torch.testing.assert_close(steps, y.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("log_alpha", [10.0, 15.0, 20.0])
def test_float32_gradients_stay_accurate_near_a_full_write(log_alpha):
    """The write kernel's log-decay gradient had been a difference of sums over all pairs: its
    float32 rounding, times 1 / (1 - gate) through log(1 - gate), had made the router's gradient
    13.6x off at log_alpha 20 (8e-5 relative at 8)."""
    mixer = layer("C", version="v3", hard_routing=True, readout="both")
    with torch.no_grad():
        mixer.log_alpha.fill_(log_alpha)
    x = inputs()
    grads = []
    for m, xx in ((mixer, x), (copy.deepcopy(mixer).float(), x.float())):
        m(xx).square().mean().backward()
        grads.append(m.router.weight.grad.double())
    assert float((grads[1] - grads[0]).norm() / grads[0].norm()) < 1e-4


def test_log_retention_is_exact_near_a_full_write():
    mixer = layer("C", version="v3", hard_routing=True).float()
    with torch.no_grad():
        mixer.log_alpha.copy_(torch.linspace(5, 15, mixer.n_slots))
    x = inputs().float()
    routing, gates, _, log_decay = mixer._route(x, torch.float32)
    winner = gates.argmax(-1, keepdim=True)
    expected = torch.nn.functional.logsigmoid(-mixer.log_alpha.double())[winner]  # log(1 - alpha), exactly
    torch.testing.assert_close(log_decay.gather(-1, winner).double(), expected, atol=0, rtol=1e-6)


def test_aux_losses_at_uniform_routing():
    mixer = layer("C", version="v3", hard_routing=True, load_balance=0.01, entropy_reg=0.02)
    with torch.no_grad():
        mixer.router.weight.zero_()  # p = 1/K everywhere
    mixer(inputs())
    K = mixer.n_slots
    aux = mixer.aux_loss()
    torch.testing.assert_close(aux["cdm_entropy"], torch.tensor(-0.02 * math.log(K), dtype=torch.float64))  # -H(uniform)
    torch.testing.assert_close(aux["cdm_load_balance"], torch.tensor(0.01, dtype=torch.float64))  # K * sum_k f_k / K
    stats = mixer.diagnostics()
    assert stats["usage_entropy"] == pytest.approx(math.log2(K))
    assert stats["max_slot_share"] == 1.0  # argmax ties all go to slot 0
    assert stats["alpha_spread"] > 0  # the perturbed log_alpha differ


def test_collapsed_routing_is_penalised():
    mixer = layer("C", version="v3", load_balance=0.01)
    with torch.no_grad():
        mixer.router.weight.zero_()
    mixer(inputs())
    uniform = mixer.aux_loss()
    with torch.no_grad():
        mixer.router.weight[3] = 1.0  # slot 3 wins everywhere x has a positive sum
    mixer(inputs().abs())
    collapsed = mixer.aux_loss()
    assert collapsed["cdm_entropy"] > uniform["cdm_entropy"]
    assert collapsed["cdm_load_balance"] > uniform["cdm_load_balance"]
    assert mixer.diagnostics()["max_slot_share"] == 1.0


def test_initialisation_symmetric_alphas_and_small_writes():
    v3 = memlab.build_model("cdm", "tiny", cdm={"version": "v3"})
    v2 = memlab.build_model("cdm", "tiny")
    for m in v3.mixers:
        assert torch.equal(m.log_alpha, torch.zeros_like(m.log_alpha))
        assert m.log_alpha._no_weight_decay and m.initial_slots._no_weight_decay
    v2(torch.randint(0, 512, (2, 30)))
    for m in v2.mixers:
        stats = m.diagnostics()
        assert stats["mean_gate"] < 0.15  # sigmoid(eta_bias = -2) ~ 0.12 times a distribution


def test_zero_ablation_removes_the_slot_read_only():
    hybrid = layer("K")
    x = inputs()
    with torch.no_grad(), memlab.ablate(torch.nn.ModuleList([hybrid]), mode="zero"):
        torch.testing.assert_close(hybrid(x), hybrid.attention.mix(x, None), atol=0, rtol=0)
        state = hybrid.init_state(2)
        before = state.slots.slots.clone()
        hybrid(x, state)
        assert not torch.equal(state.slots.slots, before)  # the slots still update
    slots_only = layer("C")
    with torch.no_grad(), memlab.ablate(torch.nn.ModuleList([slots_only]), mode="zero"):
        assert slots_only(x).abs().max() == 0


def test_state_is_constant_size():
    mixer = layer("C")
    state = mixer.init_state(2)
    sizes = []
    with torch.no_grad():
        for T in (1, 10, 100):
            mixer(inputs(T=T), state)
            sizes.append(state.nbytes)
    expected = [mixer.state_nbytes(T, batch_size=2, dtype=torch.float64) for T in (1, 10, 100)]
    assert sizes == expected == [2 * 16 * 128 * 8] * 3  # B x K x D float64, whatever the context


def test_invalid_options_name_the_choices():
    with pytest.raises(MemlabError, match="valid choices: both, gate, xattn"):
        memlab.build_model("cdm", "tiny", cdm={"readout": "sum"})
    with pytest.raises(MemlabError, match="valid choices: v2, v3"):
        memlab.build_model("cdm", "tiny", cdm={"version": "v4"})


def test_source_presets_parameter_counts():
    from memlab.analysis.info import describe

    # with the GPT-2 vocabulary the presets match the source cards: 56.6M and 37.1M
    assert round(describe("cdm_code", "tiny", vocab_size=50257)["params"] / 1e5) == 566
    assert round(describe("cdm_v3", "tiny", vocab_size=50257)["params"] / 1e5) == 371


def test_low_precision_models_run_the_recurrence_in_float32(monkeypatch):
    import memlab.mixers.cdm as cdm

    torch.manual_seed(0)
    model = memlab.build_model("cdm_hybrid", "tiny", n_layers=2, cdm={"version": "v3", "hard_routing": True})
    x = torch.randint(0, 512, (2, 20))
    scanned, scan = [], cdm.slot_scan  # the dtypes the layers' scans are given

    def recording(*args, **kwargs):
        scanned.append({t.dtype for t in args if isinstance(t, torch.Tensor)})
        return scan(*args, **kwargs)

    monkeypatch.setattr(cdm, "slot_scan", recording)
    with torch.no_grad():
        reference = model(x)
        scanned.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)
    assert scanned == [{torch.float32}] * 2  # decays, gates, writes and slots: every layer's scan in float32
    with torch.no_grad():
        model.to(torch.bfloat16)
        state = model.init_state(2, dtype=torch.bfloat16)
        decoded = torch.cat([model(x[:, :12], state), *(model(x[:, t : t + 1], state) for t in range(12, 20))], 1)
    assert state.layers[0].slots.slots.dtype == torch.float32  # the slots accumulate in float32
    assert state.nbytes == model.state_nbytes(20, batch_size=2, dtype=torch.bfloat16)
    for out in (mixed, decoded):
        assert (out.float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_the_router_routes_under_bf16_autocast_as_in_float32():
    """Hard routing takes the argmax of the router's logits, so they are computed in float32 (as MoE
    routers are): under autocast they had been bf16, 6e-4 off the float32 routing at initialisation."""
    torch.manual_seed(0)
    model = memlab.build_model("cdm_v3", "tiny").eval()
    first = next(m for m in model.modules() if isinstance(m, CDM))
    x = torch.randint(0, model.config.vocab_size, (2, 40))
    with torch.no_grad():
        model(x)
        reference = first.slot_activity().routing
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
    torch.testing.assert_close(first.slot_activity().routing, reference, atol=1e-6, rtol=1e-6)
