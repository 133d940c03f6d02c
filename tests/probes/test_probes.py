"""The probes end to end on tiny random CDM models and small texts written here."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

import memlab
from memlab.cli import main
from memlab.data.text import is_validation
from memlab.data.tokenizer import build_tokenizer
from memlab.errors import MemlabError
from memlab.probes import ProbeOptions, run_probe
from memlab.probes.activity import LayerActivity
from memlab.probes.corpus import ProbeText, read_probe_text
from memlab.probes.routing import routing_results

CODE = '''class Stack:
    def __init__(self, items):
        self.items = list(items)

    def push(self, item):
        if item is not None:
            for _ in range(2):
                self.items.append((item, [len(self.items)]))
        return self
'''
PROSE = "The little cat sat on the mat. It was warm, and the sun was out. She slept for an hour.\n"


def save_model(path, variant="cdm_hybrid", seed=0, **overrides):
    torch.manual_seed(seed)
    model = memlab.build_model(variant, "tiny", n_layers=2, **overrides)
    model.save(path)
    build_tokenizer("byte").save(path)
    return path


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    for name, text in (("code", CODE), ("prose", PROSE)):
        (root / name).mkdir()
        for i in range(3):
            (root / name / f"doc{i}.{'py' if name == 'code' else 'txt'}").write_text(text * (i + 1))
    return {name: f"files:{root / name}/*" for name in ("code", "prose")}


def options(corpora, **kw):
    return ProbeOptions(**{"corpus": corpora["code"], "documents": "all", "max_tokens": 700, "seq_len": 64,
                           "permutations": 10, **kw})


def results(path):
    doc = json.loads(path.read_text())
    assert doc["suite"].startswith("probe_") and doc["metadata"]["tokenizer_hash"]
    return doc["results"]


def test_routing_probe(tmp_path, corpora):
    model_dir = save_model(tmp_path / "m", cdm={"version": "v3", "hard_routing": True})
    out = run_probe(model_dir, "routing", tmp_path / "out", options(corpora))
    assert out.name == "routing_probe_step0.json" and out.with_suffix(".png").is_file()
    r = results(out)
    assert r["figures"] == ["routing_probe_step0.png"]
    assert r["tokens"] == 700 and len(r["layers"]) == 2
    layer = r["layers"][0]
    assert sum(layer["slot_share_argmax"]) == pytest.approx(1.0)
    indent = layer["indent"]
    assert indent["tokens"] == 700 and sum(indent["tokens_per_depth"]) == 700
    assert indent["tokens_per_depth"][3] > 0  # the 'for' body is 3 levels deep
    for kind in ("argmax", "soft"):
        mi = indent["mi"][kind]
        assert 0 <= mi["bits"] <= indent["mi"]["label_entropy_bits"] + 1e-9 and 0 < mi["p_value"] <= 1


def test_routing_on_prose_names_no_figure_and_writes_none(tmp_path, corpora, capsys):
    """Without Python code no token has a depth to draw: the CLI reports only the file written, and
    the figure of an earlier probe on code goes (it had stayed beside the new results)."""
    model_dir = save_model(tmp_path / "m")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "routing_probe_step0.png").write_bytes(b"an earlier run's figure")
    (tmp_path / "out" / "gates_probe_step0.png").write_bytes(b"another probe's")
    main(["probe", "--checkpoint", str(model_dir), "--corpus", corpora["prose"], "--documents", "all",
          "--max-tokens", "200", "--permutations", "0", "--out-dir", str(tmp_path / "out")])  # fmt: skip
    captured = capsys.readouterr()
    assert [f.name for f in (tmp_path / "out").glob("*.png")] == ["gates_probe_step0.png"]
    assert ".png" not in captured.out  # (the log says the earlier figure went)
    assert results(tmp_path / "out" / "routing_probe_step0.json")["figures"] == []


def test_results_hold_no_negative_zero():
    from memlab.probes.routing import slot_usage
    from memlab.probes.runner import without_negative_zero

    tidy = without_negative_zero({"a": -0.0, "b": [1.5, -0.0, (0.0, -2.0)], "c": {"d": -0.0}, "e": False, "f": 0})
    assert json.dumps(tidy) == '{"a": 0.0, "b": [1.5, 0.0, [0.0, -2.0]], "c": {"d": 0.0}, "e": false, "f": 0}'
    one_slot = np.eye(4, dtype=np.float32)[np.zeros(50, dtype=int)]  # every token in slot 0: -sum(1 log 1)
    assert json.dumps(without_negative_zero(slot_usage(one_slot))["usage_entropy_bits"]) == "0.0"


def test_routing_results_recover_a_planted_depth_code():
    depth = np.repeat([0, 1, 2, 3, 5], 200).astype(np.int16)
    text = ProbeText(windows=[np.zeros(len(depth), dtype=np.int64)], indent=[depth], bracket=[depth * 0],
                     role=[depth * 0], documents=1)  # fmt: skip
    routing = np.eye(6, dtype=np.float32)[np.minimum(depth, 4) + 1] * 0.9 + 0.1 / 6  # depth d -> slot d + 1
    activity = [LayerActivity(0, routing, routing * 0.1, np.full(6, 0.5))]
    r = routing_results(activity, text, ProbeOptions(max_depth=4, permutations=20))
    indent = r["layers"][0]["indent"]
    assert indent["mi"]["argmax"]["ratio_corrected"] > 0.95 and indent["mi"]["argmax"]["p_value"] < 0.1
    assert [indent["dominant_slots"][d][0]["slot"] for d in ("0", "1", "2", "3", "4+")] == [1, 2, 3, 4, 5]
    assert r["layers"][0]["bracket"]["mi"]["argmax"]["ratio"] is None  # one bracket depth: MI undefined


def test_dominant_slots_are_only_slots_that_a_depth_uses():
    from memlab.probes.routing import depth_report

    depth = np.repeat([0, 1], [500, 26]).astype(np.int16)
    slots = np.concatenate([np.arange(500) % 4, [5] * 12 + [6] * 12 + [7] * 2])  # depth 1: slots 5 and 6 qualify
    routing = np.eye(8, dtype=np.float32)[slots]
    report = depth_report(depth, routing, ProbeOptions(max_depth=2, permutations=0))
    assert [d["slot"] for d in report["dominant_slots"]["1"]] == [5, 6]  # not padded with slots it never used
    assert all(d["share"] > 0 for d in report["dominant_slots"]["0"])


def test_activity_is_recorded_over_real_tokens_only_whatever_the_batch(tmp_path, corpora):
    """Windows of unequal length padded into one batch: the padding adds nothing to the mean decay."""
    from memlab.eval.hub import load_checkpoint
    from memlab.probes.activity import record_activity
    from memlab.probes.runner import ProbeContext

    model, tokenizer, *_ = load_checkpoint(save_model(tmp_path / "m", variant="cdm"), "cpu")
    text = ProbeContext(model, tokenizer, options(corpora), 0, tmp_path).text()
    assert len({len(w) for w in text.windows}) > 1  # some windows are shorter: their batch is padded
    alone, together = record_activity(model, text, batch_size=1), record_activity(model, text, batch_size=8)
    for a, b in zip(alone, together):
        assert a.routing.shape == b.routing.shape == (text.tokens, a.routing.shape[1])
        np.testing.assert_allclose(a.alpha_mean, b.alpha_mean, rtol=1e-5)
        np.testing.assert_allclose(a.routing, b.routing, rtol=1e-4, atol=1e-6)


def test_dominant_slots_are_ranked_by_lift_not_share():
    """At depth 0 slot 0 takes 60% of the tokens (50% overall) and slot 1 40% (10% overall): slot 1,
    four times its usual share, is the one depth 0 favours."""
    from memlab.probes.routing import depth_report

    depth = np.repeat([0, 1], [100, 300]).astype(np.int16)
    slots = np.concatenate([[0] * 60 + [1] * 40, [0] * 140 + [2] * 160])
    report = depth_report(depth, np.eye(3, dtype=np.float32)[slots], ProbeOptions(max_depth=2, permutations=0))
    top = report["dominant_slots"]["0"]
    assert [d["slot"] for d in top] == [1, 0]
    assert [d["share"] for d in top] == pytest.approx([0.4, 0.6]) and [d["lift"] for d in top] == pytest.approx([4, 1.2])


def test_usage_entropy_is_that_of_the_mean_routing():
    """Near-uniform routing whose largest weight is always slot 0: every slot is used (log2 K bits),
    although slot 0 wins every argmax."""
    from memlab.probes.routing import slot_usage

    routing = np.full((50, 8), 1 / 8) + np.eye(8)[0] * 1e-3
    usage = slot_usage(routing / routing.sum(1, keepdims=True))
    assert usage["max_slot_share"] == 1.0 and usage["usage_entropy_bits"] == pytest.approx(3.0, abs=1e-4)


def test_the_best_layer_is_the_one_whose_routing_follows_depth():
    depth = np.repeat([0, 1, 2, 3, 5], 200).astype(np.int16)
    text = ProbeText(windows=[np.zeros(len(depth), dtype=np.int64)], indent=[depth], bracket=[depth * 0],
                     role=[depth * 0], documents=1)  # fmt: skip
    planted = np.eye(6, dtype=np.float32)[np.minimum(depth, 4) + 1] * 0.9 + 0.1 / 6
    noise = np.random.default_rng(0).dirichlet(np.ones(6), len(depth)).astype(np.float32)
    activity = [LayerActivity(i, r, r * 0.1, np.full(6, 0.5)) for i, r in enumerate([noise, planted, noise])]
    summary = routing_results(activity, text, ProbeOptions(max_depth=4, permutations=20))["summary"]
    assert summary["indent_argmax_best_layer"] == summary["indent_soft_best_layer"] == 1


def test_a_slot_nothing_writes_to_favours_no_role_and_has_no_timescale_to_rank(tmp_path, corpora, monkeypatch):
    from memlab.eval.hub import load_checkpoint
    from memlab.probes.alphas import alphas_probe
    from memlab.probes.gates import gates_probe
    from memlab.probes.runner import ProbeContext

    model, tokenizer, *_ = load_checkpoint(save_model(tmp_path / "m", variant="cdm"), "cpu")
    ctx = ProbeContext(model, tokenizer, options(corpora), 0, tmp_path)
    n = ctx.text().tokens
    gates = np.zeros((n, 4), dtype=np.float32)
    gates[:, 0] = 0.5
    gates[:: 7, 1] = 0.5  # slot 1: a few tokens write; slots 2 and 3: none (collapsed)
    activity = [LayerActivity(0, np.full((n, 4), 0.25, dtype=np.float32), gates, np.array([0.9, 0.1, 0.5, 0.3]))]
    monkeypatch.setattr(ProbeContext, "activity", lambda self, text: activity)
    slots = gates_probe(ctx)["layers"][0]["slots"]
    assert slots[0]["favoured_role"] is not None and slots[1]["triggers"]
    assert all(t["mean_gate"] > 0 for slot in slots for t in slot["triggers"])  # no trigger that never writes
    assert [t["mean_gate"] for t in slots[0]["triggers"]] == pytest.approx([0.5] * len(slots[0]["triggers"]))  # means
    for unused in slots[2:]:
        assert unused["favoured_role"] is unused["favoured_role_mean_gate"] is None and unused["triggers"] == []
    layer = alphas_probe(ctx)["layers"][0]
    # by timescale (gate 0.5 at every token, at every 7th, never), not by alpha (0.9, 0.1, 0.5, 0.3); the lists
    # never share a slot; each write of 0.5 halves the content, so it fades by e in 1 / ln 2 writes (not 1 / 0.5)
    assert layer["fastest_slots"] == [0] and layer["slowest_slots"] == [1]  # a slot never written is not ranked
    assert layer["unused_slots"] == [2, 3]
    assert layer["timescale_tokens"][:2] == pytest.approx([1 / math.log(2), 7 / math.log(2)], rel=0.05)
    assert layer["timescale_tokens"][2:] == [math.inf, math.inf]


def test_a_slot_favours_only_a_role_seen_at_least_min_token_count_times(tmp_path, corpora, monkeypatch):
    from memlab.eval.hub import load_checkpoint
    from memlab.probes.gates import gates_probe
    from memlab.probes.labels import ROLE_INDEX
    from memlab.probes.runner import ProbeContext

    model, tokenizer, *_ = load_checkpoint(save_model(tmp_path / "m", variant="cdm"), "cpu")
    ctx = ProbeContext(model, tokenizer, options(corpora, min_token_count=5), 0, tmp_path)
    roles = ctx.text().flat("role")
    assert 0 < (roles == ROLE_INDEX["number"]).sum() < 5 <= (roles == ROLE_INDEX["colon"]).sum() < 300
    gates = np.full((len(roles), 2), 0.1, dtype=np.float32)
    gates[roles == ROLE_INDEX["number"], 0] = 0.9  # the largest mean gate, of a role seen on 3 tokens
    gates[roles == ROLE_INDEX["colon"], 0] = 0.2
    gates[roles == ROLE_INDEX["for/while"], 1] = 0.9
    activity = [LayerActivity(0, np.full(gates.shape, 0.5, dtype=np.float32), gates, np.full(2, 0.5))]
    monkeypatch.setattr(ProbeContext, "activity", lambda self, text: activity)
    slots = gates_probe(ctx)["layers"][0]["slots"]
    assert [s["favoured_role"] for s in slots] == ["colon", "for/while"]
    assert slots[0]["favoured_role_mean_gate"] == pytest.approx(0.2)
    assert slots[0]["favoured_role_lift"] == pytest.approx(0.2 / gates[:, 0].mean(), rel=1e-5)
    ctx.options.min_token_count = 300  # more than any role has: no slot favours one
    slots = gates_probe(ctx)["layers"][0]["slots"]
    assert all(s["favoured_role"] is s["favoured_role_mean_gate"] is s["favoured_role_lift"] is None for s in slots)


def test_gates_alphas_and_domains_probes(tmp_path, corpora):
    model_dir = save_model(tmp_path / "m", variant="cdm")
    opts = options(corpora, domains=[f"code={corpora['code']}", f"prose={corpora['prose']}", "lists=lists"])
    gates = results(run_probe(model_dir, "gates", tmp_path, opts))
    assert {"def/class", "self", "paren", "colon", "dot", "identifier"} <= set(gates["roles"])
    slot = gates["layers"][1]["slots"][0]
    assert slot["favoured_role"] in gates["roles"] and len(slot["triggers"]) == opts.top_tokens
    alphas = results(run_probe(model_dir, "alphas", tmp_path, opts))
    layer = alphas["layers"][0]
    assert len(layer["alpha"]) == 16 and all(0 < a < 1 for a in layer["alpha"])  # V2: mean sigmoid(eta)
    assert layer["alpha_spread"] > 0 and set(layer["fastest_slots"]).isdisjoint(layer["slowest_slots"])
    domains = results(run_probe(model_dir, "domains", tmp_path, opts))
    sim = np.array(domains["similarity"])
    profiles = np.stack([np.ravel(domains["profiles"][n]) for n in ("code", "prose", "lists")])  # (3, layers * K)
    unit = profiles / np.linalg.norm(profiles, axis=1, keepdims=True)
    np.testing.assert_allclose(sim, unit @ unit.T, rtol=1e-6)  # the cosines of the concatenated profiles
    assert sim.shape == (3, 3) and sim[0, 1] < 1
    assert set(domains["pairs"]) == {"code~prose", "code~lists", "prose~lists"}
    hard = np.stack([np.ravel(domains["argmax"]["profiles"][n]) for n in ("code", "prose", "lists")])
    assert hard.sum(1) == pytest.approx([2.0] * 3)  # per layer, the shares of the tokens each slot wins
    assert np.array(domains["argmax"]["similarity"]).shape == (3, 3) and len(domains["argmax"]["layers"]) == 2
    assert all((tmp_path / f"{p}_probe_step0.png").is_file() for p in ("gates", "alphas", "domains"))


def test_argmax_profiles_separate_domains_that_near_uniform_soft_profiles_do_not(tmp_path, corpora, monkeypatch):
    from memlab.eval.hub import load_checkpoint
    from memlab.probes.activity import slot_layers
    from memlab.probes.domains import domains_probe
    from memlab.probes.runner import ProbeContext

    model, tokenizer, *_ = load_checkpoint(save_model(tmp_path / "m", variant="cdm"), "cpu")
    opts = options(corpora, domains=[f"code={corpora['code']}", f"prose={corpora['prose']}"])
    ctx = ProbeContext(model, tokenizer, opts, 0, tmp_path)
    code = ctx.text(corpora["code"])
    rows = {True: [0.26, 0.25, 0.25, 0.24], False: [0.24, 0.25, 0.25, 0.26]}  # code tokens: slot 0 wins; prose: 3

    def activity(self, text):
        routing = np.tile(np.array(rows[text is code], dtype=np.float32), (text.tokens, 1))  # (N, K)
        return [LayerActivity(m.layer_idx, routing, routing * 0.1, np.full(4, 0.5)) for m in slot_layers(model)]

    monkeypatch.setattr(ProbeContext, "activity", activity)
    r = domains_probe(ctx)
    assert r["pairs"]["code~prose"] > 0.99 and r["mean_cross_domain_similarity"] > 0.99  # soft: indistinct
    assert r["argmax"]["pairs"]["code~prose"] == pytest.approx(0.0)  # argmax: no slot in common
    assert r["argmax"]["profiles"]["code"][0] == [1.0, 0.0, 0.0, 0.0]
    assert all(layer["mean_cross_domain_similarity"] == pytest.approx(0.0) for layer in r["argmax"]["layers"])


def test_trajectory_skips_a_checkpoint_whose_tokenizer_does_not_belong_to_it(tmp_path, corpora, caplog):
    """It loaded the weights alone and read the text with the first checkpoint's tokenizer: ids beyond
    a model's vocabulary ended in an IndexError."""
    run = tmp_path / "run"
    save_model(run / "checkpoints" / "step_20", vocab_size=100)  # the byte tokenizer has 259 ids
    save_model(run / "checkpoints" / "step_100")
    r = results(run_probe(run, "trajectory", options=options(corpora, permutations=0)))
    assert r["steps"] == [100]
    assert "skipping" in caplog.text and "step_20" in caplog.text and "ids but the model only 100" in caplog.text


def test_trajectory_over_the_checkpoints_of_a_run(tmp_path, corpora):
    run = tmp_path / "run"
    for step in (100, 20):
        save_model(run / "checkpoints" / f"step_{step}", seed=step)
    out = run_probe(run, "trajectory", options=options(corpora))
    assert out == run / "probes" / "trajectory_probe_step100.json" and out.with_suffix(".png").is_file()
    r = results(out)
    assert r["figures"] == ["trajectory_probe_step100.png"]
    assert r["steps"] == [20, 100] and len(r["series"]["max slot share"]["mean"]) == 2
    assert "MI(slot; indent) / H(indent), soft, corrected" in r["series"]
    for metric, curves in r["series"].items():  # "mean": over the layers at each step
        layers = np.array([v for k, v in curves.items() if k != "mean"], dtype=float)
        assert curves["mean"] == pytest.approx(np.nanmean(layers, axis=0).tolist(), nan_ok=True), metric
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 'Mean of empty slice' for a curve that was not measured
        r = results(run_probe(run, "trajectory", tmp_path / "unpermuted", options=options(corpora, permutations=0)))
    assert "MI(slot; indent) / H(indent), soft, corrected" not in r["series"]
    assert len(r["series"]["MI(slot; indent) / H(indent), argmax, corrected"]["mean"]) == 2  # Miller-Madow


def test_model_without_slots_is_refused(tmp_path, corpora, capsys):
    model_dir = save_model(tmp_path / "m", variant="baseline")
    with pytest.raises(MemlabError, match="no memory slots.*variants with slots: cdm"):
        run_probe(model_dir, "routing", tmp_path, options(corpora))
    with pytest.raises(SystemExit) as e:
        main(["probe", "--checkpoint", str(model_dir), "--probe", "gates"])
    assert e.value.code == 2 and "no memory slots" in capsys.readouterr().err
    with pytest.raises(MemlabError, match="valid choices: alphas, domains, gates, routing, trajectory"):
        run_probe(model_dir, "depth", tmp_path)


@pytest.mark.parametrize("recursion", [{"kind": "shared_loop", "n_unroll": 2}, {"kind": "act", "act_max_steps": 3}])
def test_a_model_applying_its_slot_layers_repeatedly_is_refused(tmp_path, corpora, capsys, recursion):
    """A layer keeps the activity of its last application only: one loop iteration is not the forward."""
    model_dir = save_model(tmp_path / "m", variant="cdm", recursion=recursion)
    with pytest.raises(MemlabError, match=f"applies its slot layers up to [23] times.*'{recursion['kind']}'"):
        run_probe(model_dir, "routing", tmp_path / "out", options(corpora))
    with pytest.raises(SystemExit) as e:
        main(["probe", "--checkpoint", str(model_dir), "--probe", "gates", "--out-dir", str(tmp_path / "out")])
    assert e.value.code == 2 and "only the last application" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_shared_loop_of_one_iteration_is_probed(tmp_path, corpora):
    model_dir = save_model(tmp_path / "m", variant="cdm", recursion={"kind": "shared_loop", "n_unroll": 1})
    assert results(run_probe(model_dir, "routing", tmp_path, options(corpora)))["tokens"] == 700


@pytest.mark.parametrize("flag, value, fragment", [
    ("--seq-len", "0", "--seq-len must be >= 1, got 0"),  # had been a ValueError from range()
    ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
    ("--max-depth", "0", "--max-depth must be >= 1, got 0"),  # these had run and written results
    ("--permutations", "-1", "--permutations must be >= 0, got -1"),
    ("--seed", str(2**32), "--seed must be in [0, 2147483647], got 4294967296"),
    ("--top-tokens", "0", "--top-tokens must be >= 1, got 0"),
    ("--min-token-count", "-1", "--min-token-count must be >= 1, got -1"),
    ("--val-fraction", "2", "--val-fraction must be in [0, 1), got 2.0"),
    ("--max-tokens", "0", "--max-tokens must be >= 1, got 0"),  # these had loaded the model and made the out dir
    ("--domains", "onlyone=lists", "the domains probe compares at least two corpora"),
    ("--domains", "a=lists a=stdlib-docs", "--domains names 'a' twice"),  # the second had replaced the first
    ("--domains", "=lists b=lists", "bad domain '=lists'"),
])
def test_probe_options_out_of_range_are_refused_before_any_work(tmp_path, capsys, flag, value, fragment):
    model_dir = save_model(tmp_path / "m")
    with pytest.raises(SystemExit) as e:
        main(["probe", "--checkpoint", str(model_dir), "--out-dir", str(tmp_path / "out"), flag, *value.split()])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and fragment in err
    assert not (tmp_path / "out").exists()


def test_probe_out_dir_that_is_a_file_is_refused(tmp_path, corpora):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(MemlabError, match="is a file, not a directory"):  # had been a FileExistsError
        run_probe(save_model(tmp_path / "m"), "routing", tmp_path / "taken", options(corpora))


def test_probe_text_is_the_held_out_documents_alone(tmp_path):
    """documents="val" reads exactly the documents the run's split held out, in order; "all" every one."""
    texts = [f"Document {i} says {'abc' * (i % 5 + 1)}." for i in range(40)]
    for i, text in enumerate(texts):
        (tmp_path / f"d{i:02d}.txt").write_text(text)
    held_out = [t for t in texts if is_validation(t, 0.3, 5)]
    assert 0 < len(held_out) < len(texts)
    byte = build_tokenizer("byte")

    def read(**split):
        probe = read_probe_text(f"files:{tmp_path}/*.txt", byte, 10**6, 64, **split)
        return byte.decode(probe.flat("ids").tolist())

    assert read(documents="val", val_fraction=0.3, split_seed=5) == "".join(held_out)
    assert read(documents="val", val_fraction=0.3, split_seed=6) != "".join(held_out)  # the seed matters
    assert read(documents="all") == "".join(texts)


def test_probes_select_the_held_out_documents_of_the_run(tmp_path, corpora, caplog):
    """A run's split is the one its config records, else its prepared data's; an unknown one is
    refused: another split would probe training text as held out."""
    import yaml

    from memlab.data.text import prepare_shards

    data = prepare_shards(corpora["prose"], "byte", tmp_path / "data", val_fraction=0.25, split_seed=3).directory
    run = tmp_path / "run"
    save_model(run / "checkpoints" / "step_10")
    config = {"train": {"val_fraction": 0.3}, "data": {"data_dir": str(data)}}  # as an older run recorded it
    (run / "config.yaml").write_text(yaml.safe_dump(config))

    def split(checkpoint, **given):
        doc = json.loads(run_probe(checkpoint, "routing", tmp_path / "out", options(corpora, **given)).read_text())
        return doc["metadata"]["options"]["val_fraction"], doc["metadata"]["options"]["split_seed"]

    assert split(run) == split(run / "checkpoints" / "step_10") == (0.25, 3)  # the prepared data's
    assert split(run, val_fraction=0.5) == (0.5, 3)  # what is given wins
    config["data"]["data_dir"] = str(tmp_path / "gone")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(MemlabError, match="the documents .* held out are unknown: its data .*gone is not found"):
        split(run, documents="val")  # the config's val_fraction alone does not say the seed
    assert split(run, documents="val", val_fraction=0.5, split_seed=1) == (0.5, 1)
    assert split(run) == (0.01, 0)  # every document (--documents all): the split does not matter
    config["data"].update(val_fraction=0.2, split_seed=7)  # as memlab train records it now
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert split(run) == (0.2, 7)
    assert split(save_model(tmp_path / "alone")) == (0.01, 0)  # outside a run
    with caplog.at_level("WARNING", logger="memlab.eval.hub"):  # its held-out documents are a guess: said
        assert split(tmp_path / "alone", documents="val", val_fraction=0.99) == (0.99, 0)
    assert [r.getMessage() for r in caplog.records if "carries no record of its training" in r.getMessage()]


def test_probe_windows_are_the_seq_len_the_run_trained_with(tmp_path, corpora):
    """Not the model's max_seq_len (2048 at tiny, longer than any window the run saw)."""
    import yaml

    run = tmp_path / "run"
    save_model(run / "checkpoints" / "step_10")
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"seq_len": 48}}))

    def windows(checkpoint, **given):
        doc = json.loads(run_probe(checkpoint, "routing", tmp_path / "out", options(corpora, **given)).read_text())
        return doc["metadata"]["options"]["seq_len"]

    assert windows(run, seq_len=None) == windows(run / "checkpoints" / "step_10", seq_len=None) == 48
    assert windows(run, seq_len=20) == 20  # what is given wins
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {}}))
    assert windows(run, seq_len=None) == windows(save_model(tmp_path / "alone"), seq_len=None) == 256


def test_an_export_probes_as_its_run_does(tmp_path, corpora):
    """An export had lost its run's held-out split (0.01 and seed 0 instead: training documents probed
    as held out), its training windows (256 instead of the run's seq_len) and its step (0)."""
    import yaml

    from memlab.export import export

    run = tmp_path / "run"
    save_model(run / "checkpoints" / "step_10")
    config = {"train": {"seq_len": 48}, "data": {"data_dir": str(tmp_path / "elsewhere"), "val_fraction": 0.2,
                                                 "split_seed": 7}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    exported = export(run / "checkpoints" / "step_10", tmp_path / "export")
    doc = json.loads(run_probe(exported, "routing", tmp_path / "out", options(corpora, seq_len=None)).read_text())
    chosen = doc["metadata"]["options"]
    assert (chosen["val_fraction"], chosen["split_seed"], chosen["seq_len"]) == (0.2, 7, 48)
    assert (tmp_path / "out" / "routing_probe_step10.json").is_file()


def test_windows_pass_max_seq_len_where_the_positions_allow(tmp_path, corpora):
    """Windows had been cut to max_seq_len silently, RoPE models' too (they read any length).
    Learned positions stop there: a longer --seq-len is refused and the default window cut."""
    from memlab.eval.hub import load_checkpoint
    from memlab.probes.runner import ProbeContext, with_readable_windows

    rope = save_model(tmp_path / "rope", max_seq_len=32)
    model, tokenizer, *_ = load_checkpoint(rope, "cpu")
    given = options(corpora, seq_len=64)
    text = ProbeContext(model, tokenizer, with_readable_windows(given, 64, model), 0, tmp_path).text()
    assert max(len(window) for window in text.windows) == 64
    assert run_probe(rope, "routing", tmp_path / "out", given).is_file()  # the model reads them

    learned = save_model(tmp_path / "learned", max_seq_len=32, pos_encoding="learned")
    written = run_probe(learned, "routing", tmp_path / "out", options(corpora, seq_len=None))
    assert json.loads(written.read_text())["metadata"]["options"]["seq_len"] == 32  # 256 outside a run, cut
    refusal = ("a window of --seq-len needs 64 tokens but the model's learned positions end at max_seq_len=32; "
               "choose shorter")
    with pytest.raises(MemlabError, match=refusal):
        run_probe(learned, "routing", tmp_path / "out", given)
    trajectory_run = tmp_path / "run"
    save_model(trajectory_run / "checkpoints" / "step_1", max_seq_len=32, pos_encoding="learned")
    with pytest.raises(MemlabError, match=refusal):
        run_probe(trajectory_run, "trajectory", tmp_path / "out", given)


def test_text_field_selects_the_field_of_jsonl_rows(tmp_path, capsys):
    from memlab.eval.hub import load_checkpoint
    from memlab.probes.runner import ProbeContext

    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"id": i, "content": CODE}) + "\n" for i in range(3)))
    opts = ProbeOptions(corpus=f"files:{tmp_path}/rows.jsonl", documents="all", text_field="content", seq_len=64)
    model, tokenizer, *_ = load_checkpoint(save_model(tmp_path / "m"), "cpu")
    text = ProbeContext(model, tokenizer, opts, 0, tmp_path).text()
    assert text.documents == 3 and tokenizer.decode(text.flat("ids").tolist()) == CODE * 3
    assert (text.flat("indent") == 3).any()  # read as the Python it is
    capsys.readouterr()
    assert main(["probe", "--checkpoint", str(tmp_path / "m"), "--corpus", opts.corpus, "--documents", "all",
                 "--text-field", "content", "--max-tokens", "300", "--out-dir", str(tmp_path / "out")]) in (None, 0)
    out = tmp_path / "out"  # both files named on stdout (the figure had been logged to stderr)
    assert capsys.readouterr().out == f"wrote {out}/routing_probe_step0.json, {out}/routing_probe_step0.png\n"
    assert (out / "routing_probe_step0.json").is_file() and (out / "routing_probe_step0.png").is_file()


def test_checkpoint_step_reads_trainer_state_best_json_or_the_name(tmp_path):
    from memlab.paths import checkpoint_step

    (tmp_path / "best_model").mkdir()
    (tmp_path / "best_model" / "best.json").write_text('{"loss": 1.5, "step": 700, "acc": {}}')
    (tmp_path / "step_40").mkdir()
    (tmp_path / "other").mkdir()
    assert checkpoint_step(tmp_path / "best_model") == 700
    assert checkpoint_step(tmp_path / "step_40") == 40
    assert checkpoint_step(tmp_path / "other") == 0
