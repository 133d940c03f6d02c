"""Recursive bodies: shared loop, adaptive computation time (ACT), latent thoughts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import memlab
from memlab.analysis.info import describe
from memlab.config import build_config
from memlab.errors import MemlabError
from memlab.mixers.thoughts import LatentThoughts


def build(variant: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return memlab.build_model(variant, size="tiny", **overrides).eval()


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 512, (batch, length), generator=torch.Generator().manual_seed(seed))


def prefill_then_decode(model, x: torch.Tensor, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``x`` from a prefill of ``prefix`` tokens then single-token steps, and from one parallel call."""
    with torch.no_grad():
        full = model(x)
        state = model.init_state(batch_size=x.shape[0])
        steps = [model(x[:, :prefix], state)] + [model(x[:, t : t + 1], state) for t in range(prefix, x.shape[1])]
    return torch.cat(steps, dim=1), full


# ------------------------------------------------------------------ shared loop


def test_shared_loop_with_one_iteration_equals_the_baseline():
    base = build("baseline")
    loop = build("shared_loop", seed=5, **{"recursion.n_unroll": 1})
    loop.load_state_dict(base.state_dict())
    x = tokens(2, 30)
    with torch.no_grad():
        torch.testing.assert_close(loop(x), base(x), atol=0, rtol=0)


def test_shared_loop_reuses_parameters_and_reports_its_effective_depth():
    loop, base = build("shared_loop"), build("baseline")
    assert loop.num_params() == base.num_params()
    n_blocks, n_unroll = loop.config.n_layers, loop.config.recursion.n_unroll
    assert loop.diagnostics()["effective_depth"] == n_blocks * n_unroll == loop.body.max_depth
    info = describe("shared_loop", "nano")
    assert info["effective_depth"] == 24 and info["layer_pattern"] == "AAAAAA"
    assert len(loop.init_state(1).layers) == n_blocks * n_unroll  # one state per block application


def test_shared_loop_iterations_compose_the_blocks():
    """Two iterations = the baseline's blocks applied to their own output (same weights)."""
    base = build("baseline")
    loop = build("shared_loop", **{"recursion.n_unroll": 2})
    loop.load_state_dict(base.state_dict())
    x = tokens(1, 20)
    with torch.no_grad():
        h = base.embed(x)
        for _ in range(2):
            h = base.body(h)
        torch.testing.assert_close(loop(x), base.head(base.norm(h)), atol=1e-6, rtol=1e-6)


def test_shared_loop_reinjects_the_input_before_every_iteration_after_the_first():
    """Two iterations with re-injection = blocks(blocks(x) + x), the baseline's blocks composed by hand."""
    base = build("baseline")
    loop = build("shared_loop", **{"recursion.n_unroll": 2, "recursion.reinject": True})
    loop.load_state_dict(base.state_dict())
    x = tokens(1, 20)
    with torch.no_grad():
        inputs = base.embed(x)
        h = base.body(base.body(inputs) + inputs)
        torch.testing.assert_close(loop(x), base.head(base.norm(h)), atol=1e-6, rtol=1e-6)


def test_shared_loop_reinjection_is_causal_and_recurrent():
    plain, reinject = build("shared_loop"), build("shared_loop", **{"recursion.reinject": True})
    x = tokens(2, 40)
    with torch.no_grad():
        assert not torch.allclose(plain(x), reinject(x))
    torch.testing.assert_close(*prefill_then_decode(reinject, x, 33), atol=1e-4, rtol=1e-4)


# -------------------------------------------------------------------------- ACT


def spread_halting(model, scale: float = 4.0) -> None:
    """Make the halting unit position-dependent so tokens halt after different numbers of steps."""
    with torch.no_grad():
        model.body.halt.weight.normal_(0, scale / model.config.d_model**0.5)
        model.body.halt.bias.fill_(-0.5)


def test_act_positions_halt_after_different_step_counts_and_stay_exact():
    model = build("act")
    spread_halting(model)
    x = tokens(2, 50)
    with torch.no_grad():
        model(x)
    steps = model.body._steps
    rc = model.config.recursion
    assert steps.min() >= rc.act_min_steps and steps.max() <= rc.act_max_steps
    assert len(steps.unique()) >= 2, "the test needs positions that halt at different steps"
    torch.testing.assert_close(*prefill_then_decode(model, x, 29), atol=1e-4, rtol=1e-4)
    y = x.clone()
    y[:, 30:] = tokens(2, 20, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(model(y)[:, :30], model(x)[:, :30], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"recursion.reinject": True}, {"layer_pattern": "AS", "attention.window": 7}])
def test_act_at_running_rows_equals_the_frozen_reference_in_values_and_gradients(overrides):
    """The packed form (running positions alone) against every position with halted inputs frozen."""
    model = build("act", **overrides).train()
    spread_halting(model)
    x = tokens(3, 45)
    results = []
    for pack in (True, False):
        model.body.pack_rows = pack
        model.zero_grad()
        logits = model(x)
        (logits.square().mean() + model.aux_losses()["ponder"]).backward()
        results.append((logits, model.body._steps, {k: p.grad.clone() for k, p in model.named_parameters()}))
    (packed, steps, grads), (reference, ref_steps, ref_grads) = results
    running_per_entry = (steps > model.config.recursion.act_min_steps).sum(1)
    assert len(running_per_entry.unique()) == 3, "the test needs ragged halting (free packed slots)"
    assert torch.equal(steps, ref_steps)
    torch.testing.assert_close(packed, reference, atol=1e-5, rtol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("overrides", [{}, {"layer_pattern": "AS", "attention.window": 7, "n_kv_heads": 2}])
def test_act_prefill_and_decode_at_running_rows_equal_the_frozen_reference(overrides):
    """The recurrent form at rows (halted tokens' keys carried into later steps' caches, also
    through a sliding window's ring buffer that a 23-token prefill overruns) against the reference."""
    model = build("act", **overrides)
    spread_halting(model)
    x = tokens(2, 40)
    with torch.no_grad():
        model(x)
    assert len(model.body._steps[:, 23:].unique()) >= 2, "the test needs tokens that halt at different steps"
    packed, parallel = prefill_then_decode(model, x, 23)
    model.body.pack_rows = False
    reference, _ = prefill_then_decode(model, x, 23)
    torch.testing.assert_close(packed, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed, parallel, atol=1e-4, rtol=1e-4)


def test_act_decoding_computes_only_until_the_token_halts():
    model = build("act")
    with torch.no_grad():
        model.body.halt.weight.zero_()
        model.body.halt.bias.fill_(20.0)  # every token halts at the minimum
    seen = []
    model.body.blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))
    state = model.init_state(batch_size=1)
    with torch.no_grad():
        model(tokens(1, 5), state)
        seen.clear()
        model(tokens(1, 1), state)
    rc = model.config.recursion
    assert seen == [1] * rc.act_min_steps + [0] * (rc.act_max_steps - rc.act_min_steps)


def test_act_core_without_row_mixers_runs_every_position():
    """A core whose mixers work per sequence (W: a local drop per sequence, statistics per position)
    takes the reference form, and trains and reports its diagnostics there."""
    model = build("act", layer_pattern="W", **{"gdn.state_read": False, "gdn.local_drop_prob": 0.5}).train()
    assert not model.body.pack_rows
    spread_halting(model)
    model(tokens(2, 12)).sum().backward()
    assert "act.mean_steps" in model.diagnostics()


def test_act_computes_only_the_running_positions():
    model = build("act")
    spread_halting(model)
    seen = []
    model.body.blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))
    x = tokens(2, 50)
    with torch.no_grad():
        model(x)
    steps = model.body._steps
    running = [int((steps > n).sum()) for n in range(int(steps.max()))]
    assert seen == running and running[-1] < running[0] == 100


def test_act_halting_head_gets_gradients_from_the_ponder_cost():
    model = build("act").train()
    spread_halting(model, scale=1.0)
    model(tokens(2, 24))
    ponder = model.aux_losses()["ponder"]
    ponder.backward()
    assert model.body.halt.weight.grad.abs().sum() > 0 and model.body.halt.bias.grad.abs() > 0


def test_act_halting_head_gets_gradients_from_the_language_loss():
    model = build("act").train()
    x = tokens(2, 24)
    logits = model(x)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
    assert model.body.halt.weight.grad.abs().sum() > 0


def test_act_halting_probability_is_float32_under_bf16_autocast():
    """Computed in bf16 it was up to 0.009 off, enough to move positions across the 0.99 threshold."""
    model = build("act")
    spread_halting(model, scale=1.0)
    h = torch.randn(2, 64, model.config.d_model, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        exact = model.body.halting_probability(h)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = model.body.halting_probability(h)
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, exact)
    bf16 = model.to(torch.bfloat16)  # a bf16 model keeps its dtype through the float32 halting sums
    assert bf16(tokens(2, 16)).dtype == torch.bfloat16 and bf16.train()(tokens(2, 16)).dtype == torch.bfloat16


def test_act_ponder_cost_scales_with_lambda():
    x = tokens(2, 24)
    costs = []
    for lam in (0.01, 0.1):
        model = build("act", **{"recursion.lambda_ponder": lam})
        with torch.no_grad():
            model(x)
        costs.append(model.aux_losses()["ponder"].item())
        mean_ponder = model.diagnostics()["act.ponder"]
        assert costs[-1] == pytest.approx(lam * mean_ponder)
    assert costs[1] == pytest.approx(10 * costs[0])


def test_act_steps_follow_the_halting_probability():
    rc = build("act").config.recursion
    for bias, expected in ((20.0, rc.act_min_steps), (-20.0, rc.act_max_steps)):
        model = build("act")
        with torch.no_grad():
            model.body.halt.weight.zero_()
            model.body.halt.bias.fill_(bias)
            model(tokens(1, 16))
        d = model.diagnostics()
        assert d["act.mean_steps"] == expected
        assert d[f"act.steps_{expected}_frac"] == 1.0
        assert d["effective_depth"] == expected * model.config.n_layers


def fixed_step_outputs(model, x: torch.Tensor, steps: range) -> dict[int, torch.Tensor]:
    """The ACT body's output (B, T, D) after exactly k steps of its core, for each k."""
    out = {}
    with torch.no_grad():
        for k in steps:
            model.config.recursion.act_fixed_steps = k
            out[k] = model.body(model.embed(x))
    model.config.recursion.act_fixed_steps = None
    return out


def test_act_output_weighs_each_step_by_its_halting_probability_and_the_last_by_the_remainder():
    """With p = 0.3 at every step (min 2, threshold 0.99): the steps 2, 3, 4 weigh 0.3 each and the
    halting step 5 the remainder 1 - 0.9 = 0.1 (Graves 2016), so the weights sum to 1."""
    model = build("act")
    rc = model.config.recursion
    assert (rc.act_min_steps, rc.act_threshold) == (2, 0.99) and rc.act_max_steps >= 5
    with torch.no_grad():
        model.body.halt.weight.zero_()
        model.body.halt.bias.fill_(torch.logit(torch.tensor(0.3)).item())
    x = tokens(2, 24)
    h = fixed_step_outputs(model, x, range(2, 6))
    with torch.no_grad():
        out = model.body(model.embed(x))
    torch.testing.assert_close(out, 0.3 * (h[2] + h[3] + h[4]) + 0.1 * h[5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.body._last.ponder, torch.full((2, 24), 5 + 0.1), atol=1e-6, rtol=0)


def test_act_halts_every_position_at_the_step_limit():
    """A halting probability that never reaches the threshold: the last allowed step takes the whole
    remainder, so the output is the core's after max_steps (not a sum of near-zero weights)."""
    model = build("act")
    rc = model.config.recursion
    with torch.no_grad():
        model.body.halt.weight.zero_()
        model.body.halt.bias.fill_(-20.0)
    x = tokens(2, 24)
    last = fixed_step_outputs(model, x, range(rc.act_max_steps, rc.act_max_steps + 1))[rc.act_max_steps]
    with torch.no_grad():
        torch.testing.assert_close(model.body(model.embed(x)), last, atol=1e-5, rtol=1e-5)
    assert (model.body._steps == rc.act_max_steps).all()


def test_act_diagnostics_describe_the_step_distribution():
    model = build("act")
    spread_halting(model)
    with torch.no_grad():
        model(tokens(2, 40))
    d = model.diagnostics()
    rc = model.config.recursion
    fracs = [d[f"act.steps_{k}_frac"] for k in range(rc.act_min_steps, rc.act_max_steps + 1)]
    assert sum(fracs) == pytest.approx(1.0)
    assert d["act.mean_steps"] == pytest.approx(sum(k * f for k, f in zip(range(rc.act_min_steps, 99), fracs)))


def test_act_diagnostics_count_real_positions_only():
    """As the ponder loss does: steps taken on padding had dominated the logged steps per token."""
    model = build("act")
    spread_halting(model)
    real = tokens(1, 40)
    padded = torch.cat([real, torch.zeros(1, 60, dtype=torch.long)], dim=1)
    with torch.no_grad():
        model(real)
        alone = model.diagnostics()
        model(padded)
    valid = torch.arange(100)[None] < 40
    assert model.diagnostics(valid) == pytest.approx(alone)  # causal: padding after the text changes nothing
    assert model.diagnostics()["act.mean_steps"] != pytest.approx(alone["act.mean_steps"])


def test_act_with_fixed_steps_equals_the_shared_loop():
    act = build("act", **{"recursion.act_fixed_steps": 3})
    loop = build("shared_loop", **{"recursion.n_unroll": 3})
    missing, unexpected = loop.load_state_dict(act.state_dict(), strict=False)
    assert not missing and all(k.startswith("body.halt") for k in unexpected)
    x = tokens(2, 20)
    with torch.no_grad():
        torch.testing.assert_close(act(x), loop(x), atol=0, rtol=0)
    assert act.aux_losses() == {} and act.diagnostics()["act.mean_steps"] == 3


def test_act_steps_can_be_fixed_on_a_built_model_for_evaluation():
    model, fixed = build("act"), build("act", **{"recursion.act_fixed_steps": 5})
    x = tokens(1, 20)
    model.config.recursion.act_fixed_steps = 5
    with torch.no_grad():
        torch.testing.assert_close(model(x), fixed(x), atol=0, rtol=0)
    assert model.body.max_depth == 5 * model.config.n_layers
    torch.testing.assert_close(*prefill_then_decode(model, x, 15), atol=1e-4, rtol=1e-4)


def test_act_rejects_inconsistent_step_bounds():
    with pytest.raises(MemlabError, match="act_min_steps"):
        build("act", **{"recursion.act_min_steps": 5, "recursion.act_max_steps": 3})


# ---------------------------------------------------------------------- latent


def thoughts_mixer(segment_len: int = 8) -> LatentThoughts:
    torch.manual_seed(0)
    cfg = build_config("latent", "tiny", **{"recursion.segment_len": segment_len})
    return LatentThoughts(cfg, cfg.n_layers).eval()


def test_thoughts_carry_earlier_segments_and_never_the_current_one():
    m = thoughts_mixer(8)
    x = torch.randn(1, 32, m.config.d_model)
    with torch.no_grad():
        base = m(x)
        for changed in (2, 9, 20):  # a position in segments 0, 1, 2
            y = x.clone()
            y[:, changed] += 1.0
            out = m(y)
            segment_end = (changed // 8 + 1) * 8
            # other positions up to the end of the changed position's segment read the same thoughts ...
            same = [t for t in range(segment_end) if t != changed]
            torch.testing.assert_close(out[:, same], base[:, same], atol=1e-6, rtol=1e-6)
            # ... and every later segment reads thoughts refined on it
            assert not torch.allclose(out[:, segment_end:], base[:, segment_end:], atol=1e-6)


def test_thoughts_state_refines_at_the_same_segment_boundaries():
    m = thoughts_mixer(8)
    x = torch.randn(2, 37, m.config.d_model)
    with torch.no_grad():
        full = m(x)
        state = m.init_state(2)
        pieces, start = [], 0
        for n in (3, 1, 12, 1, 1, 19):
            pieces.append(m(x[:, start : start + n], state))
            start += n
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert state.filled == 37 % 8 and state.nbytes == m.state_nbytes(37, batch_size=2)


def test_thoughts_are_refined_only_where_something_reads_or_keeps_them():
    m = thoughts_mixer(8)
    calls = []
    m.core.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 24, m.config.d_model)
    with torch.no_grad():
        m(x)  # segments 0 and 1 feed the readers of 1 and 2; segment 2's refinement has no reader
        assert len(calls) == 2 * m.n_iters
        calls.clear()
        m(x, m.init_state(1))  # a state keeps the thoughts after the last segment for what comes next
        assert len(calls) == 3 * m.n_iters


def test_latent_model_decodes_across_segment_boundaries():
    model = build("latent")
    L = model.config.recursion.segment_len
    x = tokens(2, 3 * L + 5)
    decoded, parallel = prefill_then_decode(model, x, L + 3)  # decoding crosses two boundaries
    torch.testing.assert_close(decoded, parallel, atol=1e-4, rtol=1e-4)


def test_latent_zero_ablation_removes_the_thought_read_out():
    model = build("latent")
    x = tokens(1, 40)
    with torch.no_grad(), memlab.ablate(model, mode="zero", layers=[model.config.n_layers]) as layers:
        model(x)
        assert layers == [model.config.n_layers]
        h = model.body.thought_norm(torch.randn(1, 40, model.config.d_model))
        assert model.body.thoughts(h).abs().max() == 0


# --------------------------------------------------------------------- presets


def test_presets_match_the_source_study_at_nano():
    loop, lat, act = (build_config(v, "nano").recursion for v in ("shared_loop", "latent", "act"))
    assert build_config("shared_loop", "nano").n_layers * loop.n_unroll == 24
    assert (lat.n_thoughts, lat.thought_iters, lat.segment_len) == (16, 4, 64)
    assert (act.act_min_steps, act.act_max_steps, act.act_threshold, act.lambda_ponder) == (2, 8, 0.99, 0.01)
    ssm, ssm_mem = build_config("ssm", "nano"), build_config("ssm_mem", "nano")
    assert 64 <= ssm.ssm.d_state <= 128 and ssm.pattern == "M" * 12 and ssm.ffn_dim == 0
    assert ssm_mem.recursion.n_memory_tokens == 64 and ssm_mem.pattern.count("M") == 12
    assert set(ssm_mem.pattern) == {"M", "R"}


@pytest.mark.parametrize("shape, pattern", [("d64l1", "MMR"), ("d64l2", "MMMRM"), ("d64l3", "MMMRMMMR")])
def test_ssm_mem_has_a_memory_reader_at_every_depth(shape, pattern):
    """One reader after every 3 Mamba-2 layers, and one at least (2 layers had had none: plain ssm)."""
    config = build_config("ssm_mem", shape)
    assert config.pattern == pattern and config.pattern.count("M") == build_config("ssm", shape).n_layers


@pytest.mark.parametrize("n_layers", [2, 3])
def test_ssm_mem_refuses_a_layer_count_that_leaves_no_reader(n_layers):
    """An n_layers override tiles MMMR to fewer than 4 layers: the model would be plain ssm (audit)."""
    with pytest.raises(MemlabError, match=f"n_layers={n_layers} cuts the layer pattern 'MMMR' to .* no R layer"):
        build_config("ssm_mem", "tiny", n_layers=n_layers)
    assert build_config("ssm_mem", "tiny", n_layers=4).pattern == "MMMR"
    with pytest.raises(MemlabError, match="n_memory_tokens=64 needs a memory reader 'R'"):
        build_config("ssm_mem", "tiny", layer_pattern="MA")


@pytest.mark.parametrize("size", ["tiny", "nano", "125M", "1B"])
def test_every_variant_builds_at_every_size(size):
    for variant in ("shared_loop", "latent", "act", "ssm", "ssm_mem"):
        info = describe(variant, size)
        assert info["params"] > 0 and info["state_bytes_per_sequence"] > 0


def test_ssm_mem_accepts_attention_layers_in_its_pattern():
    model = build("ssm_mem", layer_pattern="MMRA")
    assert model.config.pattern == "MMRAMMRAMM"
    torch.testing.assert_close(*prefill_then_decode(model, tokens(1, 30), 20), atol=1e-4, rtol=1e-4)
