"""Every suite on a model trained in the test: the documented results, plots, and clear errors."""

from __future__ import annotations

import json
import math
import platform
import re

import numpy as np
import pytest
import torch

from memlab.data.tokenizer import build_tokenizer
from memlab.errors import MemlabError
from memlab.eval import schema
from memlab.eval.hub import SUITE_ORDER, EvalContext, EvalOptions, evaluate_model, summary_lines


def accuracy_records(obj):
    if isinstance(obj, dict):
        if "accuracy" in obj and "ci95" in obj:
            yield obj
        for value in obj.values():
            yield from accuracy_records(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from accuracy_records(value)


def test_all_writes_one_valid_document_with_every_suite(evaluated):
    doc, out = evaluated
    on_disk = schema.read_results(out / "results_all.json")
    assert on_disk == json.loads(json.dumps(doc))
    assert doc["schema_version"] == schema.SCHEMA_VERSION and doc["suite"] == "all"
    assert list(doc["results"]) == list(SUITE_ORDER)
    meta = doc["metadata"]
    assert set(schema.METADATA_FIELDS) | set(schema.OPTIONAL_METADATA_FIELDS) <= set(meta)
    assert meta["python_version"] == platform.python_version() and meta["git_dirty"] in (True, False, None)
    assert re.fullmatch("[0-9a-f]{64}", meta["weights_sha256"])  # which weights were measured
    assert meta["model"]["variant"] == "baseline" and meta["model"]["params"] > 0
    assert meta["options"]["samples"] == 3 and meta["decoding"]["temperature"] == 0.0
    assert meta["grid_version"].startswith("memlab-alg-grid")


def test_a_refused_evaluation_leaves_no_directory_behind(evaluated, tmp_path):
    from memlab.eval.hub import evaluate

    model_dir = evaluated[1].parent
    with pytest.raises(MemlabError, match="the lm suite needs a corpus"):  # refused before any suite runs
        evaluate(model_dir, "lm", tmp_path / "eval" / "step_3", EvalOptions())
    assert not (tmp_path / "eval").exists()  # an empty eval/ had stayed (and been exported)


def test_every_accuracy_carries_n_and_a_wilson_interval(evaluated):
    records = list(accuracy_records(evaluated[0]["results"]))
    assert len(records) > 30
    for r in records:
        lo, hi = r["ci95"]
        assert r["n"] > 0 and r["accuracy"] == r["correct"] / r["n"]
        assert 0 <= lo <= r["accuracy"] <= hi <= 1 and hi - lo > 0


def test_suite_payloads(evaluated):
    doc, out = evaluated
    r = doc["results"]
    alg = r["algorithmic"]
    assert set(alg["tasks"]) == {"copy", "parity", "addition"}
    assert alg["summary"]["iid"]["n"] == 3 * sum(len(alg["grids"]["iid"][t]) for t in alg["tasks"])
    assert [c["difficulty"] for c in alg["tasks"]["parity"]["by_difficulty"]] == [2, 4, 8, 16, 32, 64]
    longctx = r["longctx"]
    assert set(longctx["tasks"]) == {"niah", "sniah1", "sniah2", "sniah3"}
    for task, record in longctx["tasks"].items():
        assert len(record["cells"]) == 4 and (out / record["heatmap"]).stat().st_size > 1000, task
        assert record["heatmap"] == f"all_longctx_{task}.png"  # results_all.json's own, not results_longctx's
        for cell in record["cells"]:  # where the needles really are, next to the cell's depth
            spread = cell["needle_depth"]
            assert 0 <= spread["min"] <= spread["mean"] <= spread["max"] <= 1, (task, cell)
    assert longctx["overall"]["n"] == 4 * 4 * 2
    assert longctx["tasks"]["niah"]["chance"] == 1 / 8 and 0 < longctx["tasks"]["sniah1"]["chance"] < 1e-6
    assert r["ablation"]["chance"] == 1 / 8  # the default ablation task is niah
    lm = r["lm"]
    assert lm["tokens"] == lm["windows"] * 64 and 1 < lm["perplexity"] < math.inf and lm["tokens_per_s"] > 0
    assert math.isclose(lm["perplexity"], math.exp(lm["loss"]))
    assert lm["documents"] >= 5 and lm["ci95_note"] is None  # 1024 tokens spread over the split (its prefix: 2)
    assert lm["loss_ci95"][0] < lm["loss"] < lm["loss_ci95"][1]
    assert r["ablation"]["memory_layers"] == [] and r["ablation"]["delta"]["delta"] is None
    assert [h["horizon"] for h in r["ablation"]["horizon"]] == [8, 96]
    assert r["selftest"]["passed"], r["selftest"]


def test_the_same_examples_every_time(trained_baseline, byte_tok):
    ctx = EvalContext(trained_baseline, byte_tok, EvalOptions(tasks=["reverse"], samples=2, grid="iid"))
    a, b = evaluate_model(ctx, "algorithmic"), evaluate_model(ctx, "algorithmic")
    assert a["results"]["tasks"] == b["results"]["tasks"]
    assert list(a["results"]["grids"]) == ["iid"]


def test_each_split_keeps_its_outcomes_in_cell_order_and_the_hash_of_its_examples(trained_baseline, byte_tok):
    """Outcomes let compare pair two models' answers; the hash tells whether they saw the same examples."""
    options = dict(tasks=["copy", "parity"], samples=4)

    def summary(model, seed=0):
        ctx = EvalContext(model, byte_tok, EvalOptions(**options, seed=seed))
        return evaluate_model(ctx, "algorithmic")["results"]

    results = summary(trained_baseline)
    for split in ("iid", "ood"):
        record = results["summary"][split]
        cells = [c for t in ("copy", "parity") for c in results["tasks"][t]["by_difficulty"] if c["split"] == split]
        assert len(record["outcomes"]) == record["n"] == sum(c["n"] for c in cells)
        bounds = np.cumsum([0] + [c["n"] for c in cells])
        assert [record["outcomes"][a:b].count("1") for a, b in zip(bounds, bounds[1:])] == [c["correct"] for c in cells]
    other = summary(small_model(byte_tok))["summary"]  # another model, the same examples
    assert other["iid"]["examples_sha256"] == results["summary"]["iid"]["examples_sha256"]
    assert other["iid"]["examples_sha256"] != other["ood"]["examples_sha256"]
    assert summary(trained_baseline, seed=1)["summary"]["iid"]["examples_sha256"] != other["iid"]["examples_sha256"]


def test_needle_tasks_take_parameters(trained_baseline, byte_tok, tmp_path):
    """niah:distractors=sky, the source experiments' task, beside the default niah."""
    options = EvalOptions(needle_tasks=["niah:distractors=sky", "niah"], context_lengths=[128], depths=[0.5],
                          needle_samples=3)
    doc = evaluate_model(EvalContext(trained_baseline, byte_tok, options, out_dir=tmp_path), "longctx")
    r = doc["results"]
    assert list(r["tasks"]) == ["niah:distractors=sky", "niah"] and r["overall"]["n"] == 6
    column = len("  niah:distractors=sky ")  # where the accuracies start, in one column
    assert [(line[column - 1], line[column].isdigit()) for line in summary_lines(doc)[1:]] == [(" ", True)] * 2
    sky = r["tasks"]["niah:distractors=sky"]
    assert sky["heatmap"] == "longctx_niah_distractors_sky.png" and (tmp_path / sky["heatmap"]).is_file()
    assert sky["chance"] == 1 / 8 and sky["cells"][0]["needle_depth"]["mean"] == 0.5


def test_a_failed_evaluation_leaves_the_last_heatmaps_and_each_results_file_has_its_own(
    trained_baseline, byte_tok, tmp_path, monkeypatch
):
    """results_longctx.json and results_all.json had named one longctx_<task>.png, which the later of the
    two drew; and an evaluation that failed after plotting had replaced the heatmap of the results kept."""
    from memlab.eval import hub
    from memlab.eval.hub import evaluate

    model_dir = tmp_path / "model"
    trained_baseline.save(model_dir)
    byte_tok.save(model_dir)
    out = tmp_path / "eval"
    options = EvalOptions(needle_tasks=["niah"], context_lengths=[128], depths=[0.5], needle_samples=2)
    evaluate(model_dir, "longctx", out, options)
    drawn = (out / "longctx_niah.png").read_bytes()

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(hub.schema, "write_results", fail)
    with pytest.raises(OSError, match="disk full"):
        evaluate(model_dir, "longctx", out, EvalOptions(**{**vars(options), "depths": [0.0, 1.0]}))
    assert (out / "longctx_niah.png").read_bytes() == drawn  # the heatmap of the results still there
    assert sorted(p.name for p in out.iterdir()) == ["longctx_niah.png", "results_longctx.json"]  # no staging left


@pytest.mark.parametrize("depth", [math.nan, 1.5, -0.1])
def test_needle_depths_outside_zero_to_one_are_refused_as_fractions(trained_baseline, byte_tok, depth):
    """NaN had passed the check and reached the task, which spoke of a percentage."""
    options = EvalOptions(needle_tasks=["niah"], context_lengths=[128], depths=[0.5, depth], needle_samples=2)
    with pytest.raises(MemlabError, match=r"needle depths are fractions in \[0, 1\]"):
        evaluate_model(EvalContext(trained_baseline, byte_tok, options), "longctx")


def test_an_evaluation_removes_the_heatmaps_that_no_results_file_names(trained_baseline, byte_tok, tmp_path):
    """Heatmaps of needle tasks evaluated no more had stayed beside the new results; one that an
    older results_all.json still names stays with it."""
    from memlab.eval.hub import evaluate

    model_dir = tmp_path / "model"
    trained_baseline.save(model_dir)
    byte_tok.save(model_dir)
    out = tmp_path / "eval"
    out.mkdir()
    older_all = {"results": {"longctx": {"tasks": {"sniah3": {"heatmap": "longctx_sniah3.png"}}}}}
    (out / "results_all.json").write_text(json.dumps(older_all))
    for name in ("longctx_sniah2.png", "longctx_sniah3.png", "ablation.png"):
        (out / name).write_bytes(b"an earlier evaluation's")
    options = EvalOptions(needle_tasks=["niah"], context_lengths=[128], depths=[0.5], needle_samples=2)
    evaluate(model_dir, "longctx", out, options)
    assert sorted(f.name for f in out.glob("*.png")) == ["ablation.png", "longctx_niah.png", "longctx_sniah3.png"]


def test_a_cell_holds_distinct_examples_only(trained_baseline, byte_tok):
    """Drawn with replacement, two-bit parity's 4 examples had counted as 20 independent ones (audit)."""
    ctx = EvalContext(trained_baseline, byte_tok, EvalOptions(tasks=["parity"], samples=20, grid="iid"))
    cells = evaluate_model(ctx, "algorithmic")["results"]["tasks"]["parity"]["by_difficulty"]
    assert [(c["difficulty"], c["n"]) for c in cells] == [(2, 4), (4, 16), (8, 20)]


def small_model(byte_tok, **overrides):
    import memlab

    torch.manual_seed(0)
    return memlab.build_model("baseline", "tiny", vocab_size=byte_tok.vocab_size, d_model=32, n_layers=1, n_heads=1,
                              d_ff=64, max_seq_len=128, **overrides).eval()


def test_a_split_shorter_than_the_lm_window_is_refused_before_any_suite_runs(byte_tok, tmp_path, monkeypatch):
    """The shards' own error had come after the other suites had run, and named seq_len."""
    from memlab.data.text import prepare_shards
    from memlab.eval import hub

    text = tmp_path / "text"
    text.mkdir()
    for i in range(4):
        (text / f"doc{i}.txt").write_text(f"short document {i}")
    prepare_shards(f"files:{text}/*.txt", byte_tok, tmp_path / "shards", val_fraction=0.5)
    hub.suite_names()  # registers the suites
    monkeypatch.setitem(hub.SUITES, "algorithmic", lambda ctx: pytest.fail("the first suite ran"))
    options = EvalOptions(corpus=str(tmp_path / "shards"), lm_context=64, lm_tokens=64, needle_tasks=["niah"],
                          context_lengths=[96])
    with pytest.raises(MemlabError, match=r"fewer than one lm window of 64 \+ 1; shorten the window \(--lm-context\)"):
        evaluate_model(EvalContext(small_model(byte_tok), byte_tok, options), "all")
    prepare_shards(f"files:{text}/*.txt", byte_tok, tmp_path / "none_held_out", val_fraction=0)
    options.corpus = str(tmp_path / "none_held_out")  # no window would help: a larger corpus or held-out share
    with pytest.raises(MemlabError, match="holds no document: use a larger corpus .*a larger --val-fraction$"):
        evaluate_model(EvalContext(small_model(byte_tok), byte_tok, options), "all")


def test_a_diverged_model_has_infinite_perplexity(byte_tok, shards):
    model = small_model(byte_tok)
    with torch.no_grad():
        model.head.weight.mul_(3000.0)  # a blown-up output layer, as after a divergence
    ctx = EvalContext(model, byte_tok, EvalOptions(corpus=str(shards), lm_tokens=128, lm_context=64))
    doc = evaluate_model(ctx, "lm")
    r = doc["results"]
    assert r["loss"] > 710 and r["perplexity"] is None  # exp(loss) overflows: inf, written as null
    assert r["perplexity_ci95"][1] is None
    assert summary_lines(doc)[0].startswith("lm: perplexity non-finite (loss ")


def test_one_lm_window_has_no_interval(byte_tok, shards):
    ctx = EvalContext(small_model(byte_tok), byte_tok, EvalOptions(corpus=str(shards), lm_tokens=64, lm_context=64))
    r = evaluate_model(ctx, "lm")["results"]
    assert r["windows"] == 1 and math.isfinite(r["loss"])
    assert r["corpus_request"] == json.loads((shards / "shards.json").read_text())["request"]  # what compare checks
    assert r["documents"] == 1 and r["tokens_from"] == "spread"  # a document of the fixture is ~800 tokens
    assert r["loss_ci95"] == [None, None] and r["perplexity_ci95"] == [None, None] and r["ci95_note"].startswith("1 document(s): too few")


def test_the_lm_interval_is_over_the_documents_of_the_evaluated_tokens(byte_tok, shards):
    from memlab.data.shards import TokenShards

    val = TokenShards(shards, "val")
    flat = val.tokens(0, val.num_tokens)
    for windows in (6, 64):  # fewer windows than the split holds: spread over it (its prefix is one document)
        options = EvalOptions(corpus=str(shards), lm_tokens=64 * windows, lm_context=64)
        r = evaluate_model(EvalContext(small_model(byte_tok), byte_tok, options), "lm")["results"]
        assert windows * 64 == r["tokens"] < val.num_tokens - 64
        targets = [p for start in val.evaluation_starts(64, windows) for p in range(start + 1, start + 65)]
        met = {int((flat[:p] == byte_tok.eos_id).sum()) for p in targets}  # an EOS belongs to the document it ends
        assert r["documents"] == len(met) >= 5 and r["ci95_note"] is None
        assert r["loss_ci95"][0] < r["loss"] < r["loss_ci95"][1]


def test_the_lm_loss_and_its_documents_follow_from_the_windows_alone(byte_tok, shards):
    """Recomputed outside the suite: each document counts the targets that fall in it (an EOS in the
    document it ends; every window of the split, so the targets just after an EOS are met), the loss
    is the token-weighted cross-entropy over the windows, and a budget that is not a whole number of
    windows is rounded down."""
    import torch.nn.functional as F

    from memlab.data.shards import TokenShards
    from memlab.eval.lm import document_losses

    model, val = small_model(byte_tok), TokenShards(shards, "val")
    eos = np.flatnonzero(val.tokens(0, val.num_tokens) == byte_tok.eos_id) + val.lo  # (global places)
    n = val.num_sequential_windows(64)
    targets = (val.evaluation_starts(64)[:, None] + np.arange(1, 65)).ravel()  # each target's place
    expected = np.bincount(np.searchsorted(eos, targets, side="left"))
    _, counts = document_losses(model, val, 8, 64, n)
    assert list(counts) == list(expected[expected > 0]) and counts.sum() == 64 * n

    nll = 0.0
    with torch.no_grad():
        for _, windows in val.evaluation_windows(4, 64, max_windows=10):
            logits = model(windows[:, :-1])
            nll += F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten(), reduction="sum").item()
    options = EvalOptions(corpus=str(shards), lm_tokens=640 + 63, lm_context=64)  # ten windows and a bit
    r = evaluate_model(EvalContext(model, byte_tok, options), "lm")["results"]
    assert r["tokens"] == 640 and r["loss"] == pytest.approx(nll / 640, rel=1e-5)


@pytest.mark.parametrize(
    "suite, options, message",
    [
        ("everything", {}, "unknown suite 'everything'; valid choices: ablation, algorithmic"),
        ("algorithmic", {"tasks": ["copy", "sort"]}, "unknown algorithmic task 'sort'; valid choices: addition"),
        ("longctx", {"needle_tasks": ["haystack"]}, "unknown needle task 'haystack'; valid choices: niah, sniah1"),
        ("longctx", {"needle_tasks": ["niah:colour=red"]}, "task niah has no parameter(s) ['colour']"),
        ("longctx", {"needle_tasks": ["niah:position=start"]}, "'niah:position=start': position is the grid's (--depths)"),
        ("longctx", {"needle_tasks": ["niah", "niah:distractors=people"]},
         "needle tasks 'niah' and 'niah:distractors=people' are the same task"),
        ("longctx", {"context_lengths": [64, 512], "needle_tasks": ["sniah1"]},
         "sniah1 does not fit in a context of 64 tokens: S-NIAH context of 64 tokens is too short for its 1 needle(s) "
         "and question (291 tokens); leave 64 out of --context-lengths"),  # lengths given: none is dropped
        ("ablation", {"ablation_task": "sort"}, "unknown retrieval task 'sort'"),
        ("ablation", {"ablation_task": "sniah2", "ablation_context": 128}, "; give a longer --ablation-context"),
        ("lm", {}, "the lm suite needs a corpus"),
    ],
)
def test_bad_input_is_one_clear_error(trained_baseline, byte_tok, suite, options, message):
    ctx = EvalContext(trained_baseline, byte_tok, EvalOptions(**options))
    with pytest.raises(MemlabError, match=None) as e:
        evaluate_model(ctx, suite)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_default_needle_grid_leaves_out_a_length_too_short_for_a_task(trained_baseline, byte_tok, caplog):
    """In byte tokens S-NIAH's needle and question need 291: `memlab eval` of a byte-tokenizer run had failed."""
    from memlab.eval import longctx

    options = EvalOptions(needle_tasks=["niah", "sniah1"])
    ctx = EvalContext(trained_baseline, byte_tok, options)
    with caplog.at_level("WARNING"):
        longctx.check(ctx)
    assert ctx.options.context_lengths == [512, 1024, 2048] and "the default grid leaves out 256: sniah1" in caplog.text
    assert options.context_lengths == [256, 512, 1024, 2048]  # the caller's options are left as they were


@pytest.mark.parametrize("suite, options", [
    ("longctx", dict(needle_tasks=["niah"], context_lengths=[64, 256], depths=[0.5], needle_samples=2)),
    ("ablation", dict(ablation_context=256, ablation_samples=2, horizons=[256], horizon_samples=1)),
    ("lm", dict(lm_context=256, lm_tokens=256)),
])
def test_only_learned_positions_limit_the_context(byte_tok, shards, suite, options):
    """Lengths beyond max_seq_len (128) had been refused for RoPE models too: a length-generalisation test."""
    options = EvalOptions(corpus=str(shards), **options)
    learned = EvalContext(small_model(byte_tok, pos_encoding="learned"), byte_tok, options)
    with pytest.raises(MemlabError, match=r"needs 256 tokens but the model's learned positions end at max_seq_len=128"):
        evaluate_model(learned, suite)
    rope = EvalContext(small_model(byte_tok), byte_tok, options)  # (pos_encoding="rope")
    result = evaluate_model(rope, suite)["results"]
    assert result["context_len"] == 256 if suite != "longctx" else result["context_lengths"] == [64, 256]


@pytest.mark.parametrize(
    "suite, options, message",
    [
        ("longctx", {"context_lengths": [512, 2048]}, "learned positions end at max_seq_len=128"),
        ("ablation", {"ablation_context": 4096}, "learned positions end at max_seq_len=128"),
    ],
)
def test_a_context_beyond_learned_positions_is_one_clear_error(byte_tok, suite, options, message):
    ctx = EvalContext(small_model(byte_tok, pos_encoding="learned"), byte_tok, EvalOptions(**options))
    with pytest.raises(MemlabError) as e:
        evaluate_model(ctx, suite)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_corpus_source_is_split_as_the_run_split_its_data(byte_tok, tmp_path):
    """It had been split at memlab's defaults (0.01, seed 0): documents a run prepared with another
    split and trained on were measured as held out."""
    import yaml

    text = tmp_path / "text"
    text.mkdir()
    for i in range(40):
        (text / f"doc{i}.txt").write_text(f"Document {i}. " * 30)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"data_dir": str(tmp_path / "gone"), "val_fraction": 0.3,
                                                             "split_seed": 7}}))
    options = EvalOptions(corpus=f"files:{text}/*.txt", lm_tokens=64, lm_context=32)
    ctx = EvalContext(small_model(byte_tok), byte_tok, options, out_dir=tmp_path / "out", run_dir=run)
    request = evaluate_model(ctx, "lm")["results"]["corpus_request"]
    assert (request["val_fraction"], request["split_seed"]) == (0.3, 7)


def test_a_corpus_in_a_deep_directory_is_prepared_under_a_name_the_file_system_takes(byte_tok, tmp_path):
    """Its spec made one directory name of over 255 bytes: "File name too long" from mkdir."""
    from memlab.eval.hub import FILE_NAME_CHARS, file_safe

    text = tmp_path / ("d" * 120) / ("e" * 120)
    text.mkdir(parents=True)
    for i in range(40):
        (text / f"doc{i}.txt").write_text(f"Document {i}. " * 30)
    spec = f"files:{text}/*.txt"
    options = EvalOptions(corpus=spec, lm_tokens=64, lm_context=32)
    ctx = EvalContext(small_model(byte_tok), byte_tok, options, out_dir=tmp_path / "out", run_dir=None)
    assert evaluate_model(ctx, "lm")["results"]["windows"] == 2
    (prepared,) = (p for p in (tmp_path / "out" / "lm_data").iterdir() if p.is_dir())  # (beside its lock file)
    assert prepared.name == file_safe(spec) and len(prepared.name) == FILE_NAME_CHARS
    assert file_safe(spec.replace(".txt", ".md")) != prepared.name  # cut alike, told apart by the hash
    assert file_safe("niah:distractors=sky") == "niah_distractors_sky"


def test_the_lm_suite_scores_a_block_of_positions_at_a_time(byte_tok, tmp_path, monkeypatch):
    """It had held every window's (b, T, V) logits and a log-softmax copy: 4 GB at b=8, T=2048, V=32000."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import memlab.ops.linear_cross_entropy as head

    class LargestOutput(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.numel = max(self.numel, out.numel() if isinstance(out, torch.Tensor) else 0)
            return out

    text = tmp_path / "text"
    text.mkdir()
    for i in range(40):
        (text / f"doc{i}.txt").write_text(f"Document {i}. " * 30)
    options = EvalOptions(corpus=f"files:{text}/*.txt", lm_tokens=256, lm_context=32)
    ctx = EvalContext(small_model(byte_tok), byte_tok, options, out_dir=tmp_path / "out", run_dir=None)
    whole = evaluate_model(ctx, "lm")["results"]
    monkeypatch.setattr(head, "BLOCK_BYTES", 4 * byte_tok.vocab_size * 16)  # 16 positions' logits a block
    with LargestOutput() as largest:
        blocked = evaluate_model(ctx, "lm")["results"]
    assert blocked["windows"] == 8 and blocked["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert largest.numel < 8 * 32 * byte_tok.vocab_size  # never every position's logits


def test_a_model_without_a_record_of_its_training_is_split_at_the_defaults_with_a_warning(byte_tok, tmp_path, caplog):
    """A bare model directory's held-out documents had been memlab train's default split without a word."""
    text = tmp_path / "text"
    text.mkdir()
    for i in range(40):
        (text / f"doc{i}.txt").write_text(f"Document {i}. " * 30)
    options = EvalOptions(corpus=f"files:{text}/*.txt", lm_tokens=64, lm_context=32)
    for run_dir, warned in ((None, True), (tmp_path / "run", False)):
        if run_dir is not None:
            run_dir.mkdir()
            (run_dir / "config.yaml").write_text("data: {val_fraction: 0.3, split_seed: 7}\n")
        ctx = EvalContext(small_model(byte_tok), byte_tok, options, out_dir=tmp_path / f"out{warned}", run_dir=run_dir)
        caplog.clear()
        with caplog.at_level("WARNING", logger="memlab.eval.hub"):
            request = evaluate_model(ctx, "lm")["results"]["corpus_request"]
        assert (request["val_fraction"], request["split_seed"]) == ((0.01, 0) if warned else (0.3, 7))
        assert any("carries no record of its training" in r.getMessage() for r in caplog.records) == warned


def test_the_runs_own_data_prepared_again_with_other_text_is_refused(byte_tok, tmp_path):
    """The lm suite reads the run's data directory; re-prepared since, it holds other documents than the run held out."""
    import yaml

    from memlab.data.shards import TokenShards, data_checksum
    from memlab.data.text import prepare_shards

    text = tmp_path / "text"
    text.mkdir()
    for i in range(20):
        (text / f"doc{i}.txt").write_text(f"Document {i}. " * 30)
    data = tmp_path / "data"
    prepare_shards(f"files:{text}/*.txt", byte_tok, data, val_fraction=0.5)
    run = tmp_path / "run"
    run.mkdir()
    recorded = data_checksum(TokenShards(data, "val").header)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"data_dir": str(data), "shards_sha256": recorded}}))
    options = EvalOptions(lm_tokens=64, lm_context=32)
    ctx = EvalContext(small_model(byte_tok), byte_tok, options, out_dir=tmp_path / "out", run_dir=run)
    assert evaluate_model(ctx, "lm")["results"]["corpus"] == str(data)  # the run's own data, as recorded
    (text / "doc0.txt").write_text("Other text. " * 40)
    prepare_shards(f"files:{text}/*.txt", byte_tok, data, val_fraction=0.5)
    with pytest.raises(MemlabError, match="no longer holds the data the run recorded"):
        evaluate_model(ctx, "lm")


def test_the_lm_suite_says_what_a_command_line_can_do_about_its_corpus(trained_baseline, byte_tok, shards, tmp_path):
    """Shards of another tokenizer had advised Python (load_tokenizer on its directory); a run whose data is
    gone had not been named."""
    other = build_tokenizer("bpe", texts=["some text 123 and more"] * 20, vocab_size=300)
    ctx = EvalContext(trained_baseline, other, EvalOptions(corpus=str(shards), lm_context=64, lm_tokens=128))
    with pytest.raises(MemlabError, match=r"not the model's \(.*\); prepare them in the model's: memlab data prepare"):
        evaluate_model(ctx, "lm")
    (tmp_path / "config.yaml").write_text(f"data:\n  data_dir: {tmp_path / 'gone'}\n")
    ctx = EvalContext(trained_baseline, byte_tok, EvalOptions(), run_dir=tmp_path)
    with pytest.raises(MemlabError, match=r"needs a corpus: the run's data .*gone is not found; --corpus DIR"):
        evaluate_model(ctx, "lm")


def test_results_name_the_weights_measured_though_a_run_saves_others_meanwhile(tmp_path, trained_baseline, byte_tok,
                                                                                monkeypatch):
    """A run saving its best_model again during an evaluation: the results had named the new weights'
    sha256 beside the old weights' scores (it was read when they were written); one saved again while
    it loads is loaded again."""
    import memlab
    from memlab.eval import hub, selftest  # noqa: F401  (importing a suite registers it)
    from memlab.eval.hub import evaluate, load_checkpoint
    from memlab.paths import weights_sha256

    model_dir = tmp_path / "best_model"
    trained_baseline.save(model_dir)
    byte_tok.save(model_dir)
    measured = weights_sha256(model_dir)
    torch.manual_seed(1)
    other = memlab.build_model("baseline", "tiny", **{k: getattr(trained_baseline.config, k) for k in
                                                      ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff")})
    run_selftest = hub.SUITES["selftest"]

    def saved_meanwhile(ctx):
        other.save(model_dir)
        return run_selftest(ctx)

    monkeypatch.setitem(hub.SUITES, "selftest", saved_meanwhile)
    doc = evaluate(model_dir, "selftest", tmp_path / "eval", EvalOptions())
    assert doc["metadata"]["weights_sha256"] == measured != weights_sha256(model_dir)

    trained_baseline.save(model_dir)
    load, loads = hub._load_model, []

    def saved_while_loading(directory, device):
        loads.append(directory)
        model = load(directory, device)
        if len(loads) == 1:
            other.save(model_dir)
        return model

    monkeypatch.setattr(hub, "_load_model", saved_while_loading)
    loaded = load_checkpoint(model_dir, "cpu")
    ids = torch.randint(0, 256, (1, 12))
    assert len(loads) == 2 and loaded.weights_sha256 == weights_sha256(model_dir) != measured
    assert torch.equal(loaded.model(ids), other.eval()(ids))
