"""The memory ablation: Delta is exactly 0 without memory, large when the answer lives in the state."""

from __future__ import annotations

import re

import pytest
from eval_planted import niah_answer

from memlab.eval.ablation import default_horizons
from memlab.eval.hub import EvalContext, EvalOptions, evaluate_model

CONTEXT = 160


def ablation(model, tok, **options):
    defaults = dict(ablation_task="niah", ablation_context=CONTEXT, ablation_samples=24, horizon_samples=12)
    opts = EvalOptions(**{**defaults, **options})
    return evaluate_model(EvalContext(model, tok, opts), "ablation")["results"]


def test_a_model_without_memory_layers_has_no_delta(trained_baseline, byte_tok):
    """Nothing to zero: Delta does not apply (it had been reported as 0 with an interval)."""
    result = ablation(trained_baseline, byte_tok, horizons=[4, CONTEXT])
    assert result["memory_layers"] == [] and result["per_layer"] == [] and result["zeroed"] is None
    assert result["delta"] == {"delta": None, "ci95": [None, None], "n": 24}
    assert "nothing to zero" in result["delta_note"]
    depth = trained_baseline.body.max_depth  # stacked mixers of horizon 4 reach depth * 3 + 1 tokens back
    assert [(r["horizon"], r["reach"]) for r in result["horizon"]] == [(4, min(CONTEXT, depth * 3 + 1)),
                                                                       (CONTEXT, CONTEXT)]


def test_a_model_whose_answer_is_in_its_state_has_a_large_delta(planted_model, byte_tok):
    result = ablation(planted_model(niah_answer), byte_tok, horizons=[1, 8, CONTEXT])
    assert result["memory_layers"] == [0]
    assert result["normal"]["accuracy"] == 1.0 and result["zeroed"]["accuracy"] == 0.0
    delta = result["delta"]
    z2 = 1.959963984540054**2  # Tango's lower bound when every pair differs: (n - z^2) / (n + z^2)
    assert delta["delta"] == 1.0 and delta["n"] == 24 and delta["ci95"] == pytest.approx([(24 - z2) / (24 + z2), 1.0])
    assert result["delta_note"] is None
    (layer,) = result["per_layer"]
    assert layer["layer"] == 0 and layer["mixer"] == "OracleMemory" and layer["delta"]["delta"] == 1.0
    sweep = {r["horizon"]: r["accuracy"] for r in result["horizon"]}
    # the fact and the question are ~40 tokens apart at best: a short horizon cannot see both
    assert sweep == {1: 0.0, 8: 0.0, CONTEXT: 1.0}
    assert all(r["n"] == 12 for r in result["horizon"])  # --horizon-samples examples at every horizon


def test_each_layer_s_delta_zeroes_that_layer_alone(planted_model, byte_tok):
    """Two memory layers, the answer in the first: zeroing the second alone changes nothing."""
    result = ablation(planted_model(niah_answer, n_layers=2), byte_tok, horizons=[CONTEXT])
    assert result["memory_layers"] == [0, 1] and result["delta"]["delta"] == 1.0
    by_layer = {r["layer"]: r for r in result["per_layer"]}
    assert by_layer[0]["delta"]["delta"] == 1.0 and by_layer[0]["zeroed"]["accuracy"] == 0.0
    assert by_layer[1]["delta"]["delta"] == 0.0 and by_layer[1]["zeroed"]["accuracy"] == 1.0


def test_default_horizons_are_powers_of_four_below_the_context_then_the_context():
    assert default_horizons(96) == [1, 4, 16, 64, 96]
    assert default_horizons(64) == [1, 4, 16, 64] and default_horizons(1) == [1]


def test_delta_interval_is_a_paired_interval_about_delta(planted_model, byte_tok):
    """Half the answers need the state (fact in view), half are wrong either way: Delta ~ +50 pts."""
    flaky = planted_model(lambda text: niah_answer(text) if re.search(r"What color is [A-M]", text) else "?")
    result = ablation(flaky, byte_tok, horizons=[CONTEXT])
    delta, normal = result["delta"], result["normal"]
    assert 0 < normal["accuracy"] < 1 and delta["delta"] == normal["accuracy"]  # zeroed is 0
    lo, hi = delta["ci95"]
    assert 0 < lo < delta["delta"] < hi < 1


def test_the_ablation_scores_the_task_it_is_given(planted_model, byte_tok):
    """An oracle that answers only when the fact opens the context: always at position=start, not
    always at a random position; a fact-NIAH oracle cannot answer sniah1's magic numbers."""
    def answer_if_first(text: str) -> str | None:
        asked = re.search(r"What color is (.+)'s", text)
        return niah_answer(text) if asked and re.match(rf"(<\|bos\|>)?{asked.group(1)} has a ", text) else None

    fact_first = planted_model(answer_if_first)
    at_start = ablation(fact_first, byte_tok, ablation_task="niah:position=start", horizons=[CONTEXT])
    anywhere = ablation(fact_first, byte_tok, ablation_task="niah", horizons=[CONTEXT])
    assert at_start["normal"]["accuracy"] == 1.0 and anywhere["normal"]["accuracy"] < 0.5
    other = ablation(planted_model(niah_answer), byte_tok, ablation_task="sniah1", ablation_context=320, horizons=[320])
    assert other["task"] == "sniah1" and other["normal"]["n"] == 24 and other["normal"]["accuracy"] == 0.0


def test_any_retrieval_task_spec_works(trained_baseline, byte_tok):
    for spec in ("mqar", "niah:position=start", "sniah1"):
        result = ablation(trained_baseline, byte_tok, ablation_task=spec, ablation_context=320, horizons=[320])
        assert result["task"] == spec and result["normal"]["n"] == 24 and result["delta"]["delta"] is None
