"""AdamW parameter groups and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import pytest

import memlab
from memlab.train.optim import build_optimizer, lr_at, no_decay_names, set_lr


def test_no_weight_decay_on_norms_biases_embeddings_and_marked_parameters():
    model = memlab.build_model("baseline", "tiny", n_layers=2, tie_embeddings=False)
    marked = model.body.blocks[0].mixer.q_proj.weight
    marked._no_weight_decay = True
    names = no_decay_names(model)
    params = dict(model.named_parameters())
    assert "embed.weight" in names and "head.weight" not in names  # an untied head is a matrix like any other
    assert all(params[n].ndim < 2 or n == "embed.weight" or params[n] is marked for n in names)
    assert {n for n, p in params.items() if p.ndim < 2} <= names  # every norm scale and bias
    assert any(params[n] is marked for n in names)

    opt = build_optimizer(model, names, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(params)
    assert not any(p is marked for p in decayed["params"])


@pytest.mark.parametrize("variant, name", [("cdm", "initial_slots"), ("latent", "init_thoughts"), ("ssm_mem", "memory")])
def test_learned_vectors_are_not_decayed(variant, name):
    """CDM's initial slots were marked; the latent thoughts and the memory tokens, the same kind, had been decayed."""
    names = no_decay_names(memlab.build_model(variant, "tiny"))
    assert any(n.endswith(f".{name}") for n in names), sorted(names)


def test_tied_embedding_is_one_undecayed_parameter():
    model = memlab.build_model("baseline", "tiny", n_layers=1)
    opt = build_optimizer(model, no_decay_names(model), 1e-3, 0.1, (0.9, 0.95))
    everything = [p for g in opt.param_groups for p in g["params"]]
    assert len(everything) == len({id(p) for p in everything}) == len(list(model.parameters()))
    assert any(p is model.embed.weight for p in opt.param_groups[1]["params"])


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    peak, warmup, total, floor = 1e-3, 10, 110, 0.1
    lrs = [lr_at(s, peak, warmup, total, floor) for s in range(1, total + 1)]
    assert lrs[0] == pytest.approx(peak / warmup) and lrs[warmup - 1] == pytest.approx(peak)
    assert all(b > a for a, b in zip(lrs[:warmup], lrs[1:warmup]))
    assert all(b <= a for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))
    assert lrs[-1] == pytest.approx(peak * floor)
    middle = warmup + (total - warmup) // 2
    assert lrs[middle - 1] == pytest.approx(peak * (floor + (1 - floor) * 0.5), rel=1e-9)
    assert lr_at(total + 50, peak, warmup, total, floor) == pytest.approx(peak * floor)
    assert math.isclose(lr_at(1, peak, 0, total, floor), peak, rel_tol=1e-3)


def test_set_lr_sets_every_parameter_group():
    """The undecayed group (norms, biases, embeddings) follows the schedule too, not only the decayed one."""
    model = memlab.build_model("baseline", "tiny", n_layers=1)
    opt = build_optimizer(model, no_decay_names(model), 1e-3, 0.1, (0.9, 0.95))
    set_lr(opt, 2.5e-4)
    assert len(opt.param_groups) == 2 and [g["lr"] for g in opt.param_groups] == [2.5e-4, 2.5e-4]
