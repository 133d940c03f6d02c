"""Properties every registered variant must have (DESIGN.md, 'The mixer contract').

A new variant joins these tests by being registered; nothing here names a variant.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch

import memlab
from memlab.errors import MemlabError
from memlab.models.lm import LanguageModel, ModelState

VARIANTS = memlab.list_variants()
T_LONG = 80  # crosses a 64-token chunk boundary


def build(variant: str, seed: int = 0, **overrides) -> LanguageModel:
    torch.manual_seed(seed)
    return memlab.build_model(variant, size="tiny", **overrides).eval()


def tokens(model: LanguageModel, batch: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=g)


def prefill_then_decode(
    model: LanguageModel, x: torch.Tensor, prefix: int, chunks: tuple[int, ...] = ()
) -> tuple[torch.Tensor, ModelState]:
    """Logits of ``x`` from a prefill of ``prefix`` tokens (in ``chunks`` of those lengths, then the rest
    of the prefix in one call) then single-token steps, and the state left."""
    state = model.init_state(batch_size=x.shape[0])
    bounds = [0, *itertools.accumulate(chunks), prefix]
    steps = [model(x[:, a:b], state) for a, b in itertools.pairwise(bounds)]
    steps += [model(x[:, t : t + 1], state) for t in range(prefix, x.shape[1])]
    return torch.cat(steps, dim=1), state


def parameters_without_gradient(model: LanguageModel) -> list[str]:
    """Names of the trainable parameters that the last backward left without a non-zero gradient."""
    return [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality(variant):
    model = build(variant)
    x = tokens(model, 2, T_LONG)
    t = 41
    y = x.clone()
    y[:, t + 1 :] = tokens(model, 2, T_LONG - t - 1, seed=7)
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


@pytest.mark.parametrize("variant, overrides", [(v, {}) for v in VARIANTS] + [("gdn_hybrid", {"gdn.local_drop_prob": 0.5})])
def test_causality_in_training_mode(variant, overrides):
    """Training's stochastic parts (the hybrid's local drop, drawn per sequence) draw the same whatever
    the later tokens: with one seed per forward, changing them changes no earlier logit."""
    model = build(variant, **overrides).train()
    x = tokens(model, 2, T_LONG)
    t = 41
    y = x.clone()
    y[:, t + 1 :] = tokens(model, 2, T_LONG - t - 1, seed=7)
    with torch.no_grad():
        torch.manual_seed(3)
        a = model(x)
        torch.manual_seed(3)
        b = model(y)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


@pytest.mark.parametrize("variant", VARIANTS)
def test_aux_losses_leave_out_padding(variant):
    """Packed task batches end in padding; the losses over the real positions are those of the unpadded rows."""
    model = build(variant)
    x = tokens(model, 2, 40)
    padded = torch.cat([x, torch.zeros(2, 24, dtype=x.dtype)], dim=1)  # causal: the padding changes no real position
    valid = torch.arange(64) < 40
    with torch.no_grad():
        model(x)
        plain = model.aux_losses()
        model(padded)
        masked, unmasked = model.aux_losses(valid.expand(2, -1)), model.aux_losses()
    assert masked.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(masked[name], plain[name], atol=1e-6, rtol=1e-5)
        assert not torch.allclose(unmasked[name], plain[name], atol=1e-6, rtol=1e-5)  # padding would have counted


@pytest.mark.parametrize("variant", VARIANTS)
def test_diagnostics_leave_out_padding(variant):
    """The logged statistics (slot shares, betas, step sizes, gates, ACT's steps) of real positions only;
    a final state's norm is the one number that the padding does change."""
    model = build(variant)
    x = tokens(model, 2, 40)
    padded = torch.cat([x, torch.zeros(2, 24, dtype=x.dtype)], dim=1)
    with torch.no_grad():
        model(x)
        plain = model.diagnostics()
        model(padded)
        masked = model.diagnostics((torch.arange(64) < 40).expand(2, -1))
    assert masked.keys() == plain.keys()
    for name in (n for n in plain if not n.endswith("state_norm")):
        assert masked[name] == pytest.approx(plain[name], rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.float64, 1e-10)])  # float64: no float32 inside
@pytest.mark.parametrize("variant", VARIANTS)
def test_parallel_equals_prefill_then_decode(variant, dtype, tolerance):
    """Ragged prefill chunks (one token, then lengths that are no chunk size), a sliding window of 16
    that wraps in the prefill and while decoding, three rows."""
    model = build(variant, **{"attention.window": 16}).to(dtype)
    x = tokens(model, 3, T_LONG)
    with torch.no_grad():
        full = model(x)
        decoded, state = prefill_then_decode(model, x, prefix=67, chunks=(1, 17))
    assert state.position == T_LONG and full.dtype == dtype
    torch.testing.assert_close(decoded, full, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_row_is_scored_alike_alone_and_in_a_batch(variant):
    """No row's logits depend on the other rows of its batch (ACT packs the rows still running, Mamba-2
    picks one chunk length for the batch, CDM routes per token)."""
    model = build(variant)
    x = tokens(model, 3, T_LONG)
    with torch.no_grad():
        together = model(x)
        for row in range(3):
            torch.testing.assert_close(model(x[row : row + 1])[0], together[row], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["baseline", "gdn", "act"])
def test_logits_to_keep_returns_the_last_positions(variant):
    """A prefill for the next token (generate, the decode benchmark) keeps 1 row of logits, not T."""
    model = build(variant)
    x = tokens(model, 2, 9)
    with torch.no_grad():
        full = model(x)
        torch.testing.assert_close(model(x, logits_to_keep=3), full[:, -3:])
        state = model.init_state(batch_size=2)
        torch.testing.assert_close(model(x, state, logits_to_keep=1), full[:, -1:])
    assert state.position == 9
    with pytest.raises(MemlabError, match="logits_to_keep must be >= 0"):
        model(x, logits_to_keep=-1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_parameter_gets_a_gradient(variant):
    model = build(variant).train()
    x = tokens(model, 2, 40)
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    loss = loss + sum(model.aux_losses().values(), torch.zeros(()))
    loss.backward()
    assert not (missing := parameters_without_gradient(model)), f"no gradient for {missing}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradient_matches_finite_differences(variant):
    """Every backward (custom autograd Functions included) against a central difference of the loss
    along a random direction in all parameters at once, in float64.  Straight-through routing is a
    deliberate gradient of another function, so it is switched off here."""
    torch.manual_seed(0)
    model = memlab.build_model(variant, size="tiny", cdm={"hard_routing": False}).double()
    x = tokens(model, 2, T_LONG)
    params = {name: p.detach() for name, p in model.named_parameters()}
    g = torch.Generator().manual_seed(2)
    direction = {name: torch.randn(p.shape, generator=g, dtype=p.dtype) for name, p in params.items()}

    def log_likelihood(values: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = torch.func.functional_call(model.eval(), values, (x,))
        return logits[:, :-1].log_softmax(-1).gather(-1, x[:, 1:, None]).sum()

    leaves = {name: p.clone().requires_grad_() for name, p in params.items()}
    grads = torch.autograd.grad(log_likelihood(leaves), list(leaves.values()), allow_unused=True)
    analytic = sum((grad * direction[name]).sum() for name, grad in zip(leaves, grads) if grad is not None)
    eps = 1e-7  # the difference's truncation error (~eps^2) and rounding error (~1e-16 / eps) both ~1e-8
    with torch.no_grad():
        shifted = [log_likelihood({n: p + sign * eps * direction[n] for n, p in params.items()}) for sign in (1, -1)]
    numeric = (shifted[0] - shifted[1]) / (2 * eps)
    assert abs(analytic - numeric) <= 1e-5 * abs(numeric), f"directional derivative {analytic} vs {numeric}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_autocast_trains_and_decodes_on_cpu(variant):
    """Mixed precision (``memlab train --precision bf16``, the default on a GPU with bf16) runs the same code
    paths: a training step gives a finite loss and every gradient; decoding continues the prefill, and the
    state keeps its dtypes (its bytes stay those ``state_nbytes`` promises)."""
    model = build(variant).train()
    x = tokens(model, 2, T_LONG)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten())
    loss.backward()
    assert torch.isfinite(loss)
    assert not (missing := parameters_without_gradient(model)), f"no gradient for {missing}"
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(x).float()
        decoded, state = prefill_then_decode(model, x, prefix=67)
    torch.testing.assert_close(decoded.float(), full, atol=0.04, rtol=0)
    assert state.nbytes == model.state_nbytes(T_LONG, batch_size=2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_backward_inside_an_autocast_region(variant):
    """PyTorch advises a backward outside autocast (memlab's trainer does so); a loop that runs it
    inside still gets a finite gradient for every parameter: the hand-written backwards run with
    autocast off, so their operands' dtypes agree (one had crashed).  The built-in ops recorded in
    the forward follow autocast in their backward, so such gradients are bf16-accurate, not float32."""
    model = build(variant).train()
    x = tokens(model, 2, T_LONG)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x[:, :-1], labels=x[:, 1:]).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert not (missing := parameters_without_gradient(model)), f"no gradient for {missing}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_deterministic_and_save_load_round_trip(variant, tmp_path):
    a, b = build(variant, seed=3), build(variant, seed=3)
    x = tokens(a, 2, 24)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
        a.save(tmp_path / "m")
        loaded = memlab.load(tmp_path / "m").eval()
        torch.testing.assert_close(loaded(x), a(x), atol=0, rtol=0)
    assert loaded.config == a.config


@pytest.mark.parametrize("variant", VARIANTS)
def test_horizon_ablation_equals_truncated_context(variant):
    model = build(variant)
    if model.config.pos_encoding == "learned":
        pytest.skip("absolute positions are not shift-invariant; attention's horizon is tested via rope variants")
    h = 3
    reach = model.body.max_depth * (h - 1) + 1  # receptive field of a stack of horizon-h mixers
    x = tokens(model, 1, reach + 12)
    with torch.no_grad(), memlab.ablate(model, mode="horizon", horizon=h):
        full = model(x)
        for t in (reach - 1, reach + 5, x.shape[1] - 1):
            window = model(x[:, t - reach + 1 : t + 1])
            torch.testing.assert_close(window[:, -1], full[:, t], atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        assert not torch.allclose(model(x)[:, -1], full[:, -1], atol=1e-4), "the horizon had no effect"


@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_ablation_changes_only_memory_models(variant):
    model = build(variant)
    x = tokens(model, 2, 40)
    with torch.no_grad():
        normal = model(x)
        with memlab.ablate(model, mode="zero") as layers:
            ablated = model(x)
        restored = model(x)
    torch.testing.assert_close(restored, normal, atol=0, rtol=0)
    carriers = [m.layer_idx for m in model.mixers if m.carries_memory]
    assert layers == sorted(set(carriers))
    if layers:
        assert not torch.allclose(ablated, normal, atol=1e-4)
    else:
        torch.testing.assert_close(ablated, normal, atol=0, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_empty_sequence_is_one_clear_error(variant):
    model = build(variant)
    empty = tokens(model, 2, 0)
    with pytest.raises(MemlabError, match="no positions"):
        model(empty)
    state = model.init_state(batch_size=2)
    with pytest.raises(MemlabError, match="no positions"):
        model(empty, state)
    assert state.position == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_inputs_and_states_that_do_not_fit_are_one_clear_error(variant):
    """Each had been a deep torch error, or (labels of another shape, a state of another model that
    happened to fit) a silently wrong answer."""
    model = build(variant)
    x = tokens(model, 2, 6)
    other = build("ssm" if variant != "ssm" else "baseline")  # layer states of other kinds
    cases = [
        (lambda: model(x[0]), "must be a \\(B, T\\) tensor of int64 or int32 ids"),
        (lambda: model(x.float()), "int32 ids \\(.long\\(\\) converts\\), got torch.float32"),
        (lambda: model(x.to(torch.int16)), "got torch.int16"),  # (an embedding's deep RuntimeError)
        (lambda: model.generate(x.to(torch.uint8), 2), "got torch.uint8"),
        (lambda: model.generate(x, 2.5), "max_new_tokens must be an integer, got 2.5"),  # (range's TypeError)
        (lambda: model.generate(x, 2, temperature=1.0, top_k=2.5), "top_k must be an integer, got 2.5"),
        (lambda: model.generate(x, 2, temperature=True), "temperature must be a number, got True"),
        (lambda: model.generate(x, 2, eos_id=model.config.vocab_size), "eos_id must be a token id in \\[0, 512\\)"),
        (lambda: model(x.clamp_max(0) - 1), "token id -1 is outside the model's vocabulary"),
        (lambda: model(x + model.config.vocab_size), "outside the model's vocabulary of 512"),
        (lambda: model(x, labels=x[:, :4]), "labels of shape \\(2, 4\\) do not match"),
        (lambda: model(x, model.init_state(batch_size=1)), "this state holds 1 sequence"),
        (lambda: model(x, other.init_state(batch_size=2)), "make it with this model's init_state"),
    ]
    for call, message in cases:
        with pytest.raises(MemlabError, match=message):
            call()
    assert torch.equal(model.generate(x.int(), np.int64(2)), model.generate(x, 2))  # what fits still runs


def test_states_made_after_an_act_model_changes_its_steps_fit():
    """A first cut of the state check kept the layout of the first state it saw: after fixing an ACT
    model's steps for evaluation, its own new states were refused."""
    from memlab.models.recursion import fix_act_steps

    model = build("act")
    x = tokens(model, 1, 4)
    model(x, model.init_state(1))
    fix_act_steps(model, 2)
    assert len(model.init_state(1).layers) != len(build("act").init_state(1).layers)
    model(x, model.init_state(1))


def test_a_state_from_a_copy_of_the_model_fits():
    model = build("gdn")
    x = tokens(model, 2, 6)
    torch.testing.assert_close(copy.deepcopy(model)(x, model.init_state(2)), model(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", ["baseline", "gdn_swa"])
def test_ablating_layers_that_do_not_exist_is_one_clear_error(variant):
    """They had ablated nothing, without a word."""
    model = build(variant)
    memory = sorted({m.layer_idx for m in model.mixers if m.carries_memory})
    for layers, message in (([99], "layers \\[99\\] name no layer"), (3, "must be a list of layer indices")):
        with pytest.raises(MemlabError, match=message), memlab.ablate(model, "zero", layers=layers):
            pass
    with memlab.ablate(model, "horizon", horizon=2, layers=[0]) as ablated:
        assert ablated == [0]
    for bad in (2.5, True):
        with pytest.raises(MemlabError, match="whole number of tokens"), memlab.ablate(model, "horizon", horizon=bad):
            pass
    with pytest.raises(MemlabError, match="takes no horizon"), memlab.ablate(model, "zero", horizon=4):
        pass
    assert memory == ([0, 2] if variant == "gdn_swa" else [])


def test_a_stateful_forward_under_a_horizon_without_a_recurrent_form_is_one_clear_error():
    model = build("gdn")  # the delta rule has no native horizon
    with pytest.raises(MemlabError, match="no recurrent form"), memlab.ablate(model, "horizon", horizon=2):
        model(tokens(model, 1, 4), model.init_state(1))  # (a RuntimeError had said so)


def test_saved_weights_are_as_readable_as_the_config(tmp_path):
    """safetensors had written model.safetensors 0600, so a shared checkpoint or export was unreadable to others."""
    build("baseline").save(tmp_path / "m")
    mode = (tmp_path / "m" / "config.json").stat().st_mode
    assert mode & 0o044 and (tmp_path / "m" / "model.safetensors").stat().st_mode == mode


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_and_decodes_with_bf16_weights(variant):
    """ACT's float32 halting sums had turned a bf16 model's hidden state float32 (the head then failed)."""
    model = build(variant).to(torch.bfloat16)
    x = tokens(model, 2, 24)
    logits = model.train()(x)
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    assert all(p.grad is None or p.grad.dtype == torch.bfloat16 for p in model.parameters())
    out = model.eval().generate(x[:, :8], max_new_tokens=3)
    assert out.shape == (2, 11)


def test_a_bf16_model_loads_as_bf16(tmp_path):
    """It had come back float32, with other logits and twice the memory."""
    model = build("gdn").to(torch.bfloat16)
    model.save(tmp_path / "m")
    loaded = memlab.load(tmp_path / "m").eval()
    x = tokens(model, 1, 8)
    assert loaded.embed.weight.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_nbytes_is_exact(variant):
    model = build(variant)
    length = 70
    state = model.init_state(batch_size=2)
    with torch.no_grad():
        model(tokens(model, 2, length), state)
    assert state.nbytes == model.state_nbytes(length, batch_size=2) > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_greedy_matches_argmax_of_parallel_forward(variant):
    model = build(variant)
    prompt = tokens(model, 2, 9)
    out = model.generate(prompt, max_new_tokens=6, temperature=0.0)
    assert out.shape == (2, 15)
    with torch.no_grad():
        logits = model(out[:, :-1])
    torch.testing.assert_close(out[:, 9:], logits[:, 8:].argmax(-1), atol=0, rtol=0)


def test_sampling_keeps_the_nucleus_and_the_top_k():
    from memlab.models.lm import sample_next

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(4000, -1)
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_next(logits, 1.0, None, 0.75, g), minlength=4)  # 0.5 + 0.3 reach 0.75
    assert counts[2:].sum() == 0 and abs(counts[0] / 4000 - 0.5 / 0.8) < 0.03
    counts = torch.bincount(sample_next(logits, 1.0, 3, None, g), minlength=4)
    assert counts[3] == 0 and counts[2] > 0
    assert (sample_next(logits, 1.0, None, 0.0, g) == 0).all()  # the top token stays (it had masked every one)


def test_sampling_divides_the_logits_by_the_temperature_once():
    from memlab.models.lm import sample_next

    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_next(p.log()[None].expand(4000, -1), 2.0, None, None, g), minlength=4)
    expected = torch.softmax(p.log().double() / 2, -1)  # [0.379, 0.294, 0.207, 0.120]
    assert (counts / 4000 - expected).abs().max() < 0.03  # divided twice: token 0 had 0.314


def test_the_nucleus_stops_at_the_token_that_reaches_top_p():
    """Four equal tokens and top_p = 0.5: the first two already hold 0.5, so the nucleus is two tokens."""
    from memlab.models.lm import sample_next

    g = torch.Generator().manual_seed(0)
    drawn = sample_next(torch.zeros(4000, 4), 1.0, None, 0.5, g)
    counts = torch.bincount(drawn, minlength=4)
    assert (counts > 0).sum() == 2 and abs(counts.max() / 4000 - 0.5) < 0.03


def test_generate_stops_at_eos_and_pads_the_rows_that_emitted_it():
    torch.manual_seed(0)
    model = memlab.build_model("baseline", "tiny", init_std=0.2).eval()  # (at 0.02 a row repeats one token)
    prompt = tokens(model, 2, 9)
    free = model.generate(prompt, max_new_tokens=6)
    first = int(free[0, 9])
    assert model.generate(prompt[:1], max_new_tokens=6, eos_id=first).tolist() == [free[0, :10].tolist()]
    eos = int(free[0, 10])  # row 0's second new token; row 1 never emits it
    assert eos not in free[1, 9:].tolist() and free[0, 11:].ne(eos).any()
    out = model.generate(prompt, max_new_tokens=6, eos_id=eos)
    assert out.shape == (2, 15)
    assert out[0].tolist() == free[0, :11].tolist() + [eos] * 4  # padded with eos from there on
    assert out[1].tolist() == free[1].tolist()  # the other row goes on


def test_generate_fills_learned_positions_to_the_last_one():
    """The last new token is not run through the model: a prompt of T and N new tokens need T + N - 1 positions."""
    model = build("nano_baseline")
    limit = model.config.max_seq_len
    prompt = tokens(model, 1, limit - 5)
    assert model.generate(prompt, max_new_tokens=6).shape == (1, limit + 1)
    with pytest.raises(MemlabError, match="exceed max_seq_len"):
        model.generate(prompt, max_new_tokens=7)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_model_copies_after_a_training_forward(variant):
    """An EMA or best-model snapshot deep-copies the model mid-training: CDM's slot activity and ACT's
    ponder cost, kept attached to the graph, had made that raise."""
    model = build(variant).train()
    x = tokens(model, 2, 20)
    model(x, labels=x).backward()
    clone = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(clone.eval()(x), model.eval()(x))


def test_residual_output_projections_start_smaller_by_the_depth():
    """N(0, init_std) for every matrix; the projections that write into the residual stream
    (attention's out_proj, the MLP's down_proj) N(0, init_std / sqrt(2 * n_layers))."""
    torch.manual_seed(0)
    model = memlab.build_model("baseline", "d256l8")
    std = model.config.init_std
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            residual = name.endswith(("out_proj", "down_proj"))
            expected = std / math.sqrt(2 * 8) if residual else std
            assert module.weight.std().item() == pytest.approx(expected, rel=0.03), name


def test_the_latent_thought_cores_mlp_output_starts_scaled_like_the_other_residual_projections():
    """Its output layer is named mlp.2, which the name rule (out_proj, down_proj) had left at N(0, init_std)."""
    torch.manual_seed(0)
    model = memlab.build_model("latent", "d256l8")
    core, expected = model.body.thoughts.core, model.config.init_std / math.sqrt(2 * 8)
    for layer in (core.mlp[-1], core.self_attn.out_proj, core.cross_attn.out_proj):
        assert layer.weight.std().item() == pytest.approx(expected, rel=0.03)
