"""`compare` on hand-made results: the verdicts follow the source study's criteria."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest

import memlab
from memlab.analysis.compare import Criteria, Metric, Row, compare, criteria_markdown, difference_interval, verdict
from memlab.analysis.report import _pct, ablation_markdown, write_report
from memlab.analysis.study import Preset
from memlab.errors import MemlabError
from memlab.eval import schema
from memlab.eval.stats import accuracy_record, outcomes_string, tango_paired_interval, wilson_interval


def acc(fraction: float, n: int = 1000) -> dict:
    correct = round(fraction * n)
    return accuracy_record([True] * correct + [False] * (n - correct))


def make_run(root, name, variant="gdn", alg=0.5, ood=0.2, needle=0.8, ppl=20.0, seconds=100.0, delta=0.3,
             suites=("algorithmic", "longctx", "lm", "ablation"), size="tiny"):
    """A run directory with summary.json and a hand-written results_all.json."""
    run = root / name
    (run / "eval").mkdir(parents=True)
    summary = {"status": "completed", "wall_time_s": 3 * seconds, "train_time_s": seconds}  # evaluation: the rest
    (run / "summary.json").write_text(json.dumps(summary))
    payloads = {
        "algorithmic": {"grids": {}, "summary": {"iid": acc(alg), "ood": acc(ood)}, "tasks": {"copy": {
            "iid": acc(alg), "ood": acc(ood), "by_difficulty": [{"split": "iid", "difficulty": 4, **acc(alg)},
                                                                {"split": "ood", "difficulty": 32, **acc(ood)}]}}},
        "longctx": {"context_lengths": [256], "depths": [0.5], "overall": acc(needle), "tasks": {"niah": {
            "cells": [{"context_len": 256, "depth": 0.5, **acc(needle)}], "overall": acc(needle), "heatmap": None}}},
        "lm": {"corpus": "x", "context_len": 64, "tokens": 4096, "loss": 3.0, "perplexity": ppl,
               "loss_ci95": [2.9, 3.1], "tokens_per_s": 1000.0},
        "ablation": {"task": "niah", "context_len": 256, "memory_layers": [0], "normal": acc(0.5),
                     "zeroed": acc(0.2), "delta": {"delta": delta, "ci95": [delta - 0.05, delta + 0.05], "n": 200},
                     "per_layer": [], "horizon": []},
    }
    meta = {field: None for field in schema.METADATA_FIELDS}
    meta.update(timestamp="2026-01-01T00:00:00+00:00", model={
        "variant": variant, "size": size, "params": 1000, "non_embedding_params": 900, "layer_pattern": "G",
        "state_bytes": {"256": 10, "2048": 80}})
    doc = schema.document("all", meta, {k: v for k, v in payloads.items() if k in suites})
    schema.write_results(run / "eval" / "results_all.json", doc)
    return run


@pytest.fixture
def base(tmp_path):
    return make_run(tmp_path, "base", variant="baseline", alg=0.50, ood=0.20, ppl=20.0, seconds=100.0, delta=0.0)


@pytest.mark.parametrize(
    "change, outcome, failed, undecided",
    [
        (dict(alg=0.62, ood=0.30, ppl=22.0, seconds=150.0), "wins", [], []),  # intervals clear the thresholds
        (dict(alg=0.62, ood=0.30, ppl=30.0, seconds=200.0), "wins", [], []),  # the ratios at their limits
        (dict(alg=0.56, ood=0.25), "within noise", [], ["algorithmic"]),  # +6 points, but the interval reaches +1.6
        (dict(alg=0.62, ood=0.20), "within noise", [], ["ood"]),  # equal OOD is not shown better
        (dict(alg=0.50, ood=0.30), "does not win", ["algorithmic"], []),  # the whole interval under +5 points
        (dict(alg=0.62, ood=0.14), "does not win", ["ood"], []),  # the whole interval below 0
        (dict(alg=0.62, ood=0.30, seconds=201.0), "does not win", ["train_time"], []),
        (dict(alg=0.62, ood=0.30, ppl=31.0), "does not win", ["perplexity"], []),  # collapse
        (dict(alg=0.40, ood=0.10, ppl=90.0, seconds=500.0), "does not win",
         ["algorithmic", "ood", "train_time", "perplexity"], []),
    ],
)
def test_verdicts_follow_the_criteria(tmp_path, base, change, outcome, failed, undecided):
    run = make_run(tmp_path, "candidate", **change)
    result = compare([base, run], out_dir=None)
    v = result.verdicts["candidate"]
    assert v["verdict"] == outcome
    assert [name for name, c in v["criteria"].items() if c["passed"] is False] == failed
    assert [name for name, c in v["criteria"].items() if c["passed"] is None] == undecided
    assert result.verdicts["base"]["verdict"] == "baseline" and result.baseline == "base"


@pytest.mark.parametrize("a, b, expected",
                         [((56, 70), (48, 80), (0.0524, 0.3339)), ((9, 10), (3, 10), (0.1705, 0.8090))])
def test_the_difference_interval_is_newcombes(a, b, expected):
    """Newcombe (1998), Statistics in Medicine 17:873, Table II, method 10 (the hybrid score interval)."""
    ra, rb = (accuracy_record([True] * k + [False] * (n - k)) for k, n in (a, b))
    lo, hi = difference_interval(Metric.of_accuracy(ra), Metric.of_accuracy(rb))
    assert (lo, hi) == pytest.approx(expected, abs=1e-4)


def with_outcomes(run, correct, sha="examples-a"):
    """Give the run's IID summary per-example outcomes (as the algorithmic suite keeps them)."""
    record = {**accuracy_record(correct), "outcomes": outcomes_string(correct), "examples_sha256": sha}
    path = run / "eval" / "results_all.json"
    doc = json.loads(path.read_text())
    doc["results"]["algorithmic"]["summary"]["iid"] = record
    path.write_text(json.dumps(doc))
    return run


def test_runs_scored_on_the_same_examples_are_compared_example_by_example(tmp_path, base):
    """0.58 vs 0.50 on 1000 examples: unpaired, the interval reaches +3.6 pts (within noise of +5);
    when the candidate answers every example the baseline answers and 80 more, pairing shows the gain."""
    baseline_correct = np.arange(1000) < 500
    with_outcomes(base, baseline_correct)
    nested = with_outcomes(make_run(tmp_path, "nested", ood=0.3), np.arange(1000) < 580)
    criterion = compare([base, nested], plots=False).verdicts["nested"]["criteria"]["algorithmic"]
    assert criterion["paired"] is True and criterion["passed"] is True and " paired vs >= +5 pts" in criterion["detail"]
    assert criterion["interval"] == pytest.approx(tango_paired_interval(np.arange(1000) < 580, baseline_correct))
    assert criterion["interval"][0] > 0.06
    shuffled = np.random.default_rng(0).permutation(np.arange(1000) < 580)  # same accuracy, other examples right
    crossed = with_outcomes(make_run(tmp_path, "crossed", ood=0.3), shuffled)
    criterion = compare([base, crossed], plots=False).verdicts["crossed"]["criteria"]["algorithmic"]
    assert criterion["paired"] is True and criterion["passed"] is None  # discordant both ways: no narrower
    elsewhere = with_outcomes(make_run(tmp_path, "elsewhere", ood=0.3), np.arange(1000) < 580, sha="examples-b")
    criterion = compare([base, elsewhere], plots=False).verdicts["elsewhere"]["criteria"]["algorithmic"]
    assert criterion["paired"] is False and criterion["passed"] is None  # other examples: Newcombe's interval
    assert criterion["interval"] == pytest.approx(difference_interval(Metric.of_accuracy(acc(0.58)),
                                                                      Metric.of_accuracy(acc(0.50))))


def test_seeds_scored_on_the_same_examples_keep_the_examples_noise_and_pair_by_example(tmp_path):
    """Seeds at 500/501/502 and 580/581/582 of 1000 shared examples: a t interval over the seeds had
    been +-0.3 pts and the gain decisive whichever examples the candidate got right."""
    def seeds(variant, correct, first):
        return [with_outcomes(make_run(tmp_path, f"{variant}-{first}{s}", variant=variant, ood=0.3),
                              np.isin(np.arange(1000), correct[:580 + s] if variant == "gdn" else correct[:500 + s]))
                for s in range(3)]

    order = np.arange(1000)
    shuffled = np.random.default_rng(0).permutation(1000)
    base = seeds("baseline", order, "a")
    for candidate, passed in ((seeds("gdn", order, "n"), True), (seeds("gdn", shuffled, "x"), None)):
        result = compare([*base, *candidate], aggregate_seeds=True, plots=False)
        gdn = result.rows[1]
        lo, hi = gdn.algorithmic.ci95
        assert gdn.algorithmic.value == pytest.approx(0.581) and hi - lo > 0.05  # one run's noise
        criterion = result.verdicts["gdn"]["criteria"]["algorithmic"]
        assert criterion["paired"] is True and " paired over seeds vs" in criterion["detail"]
        assert criterion["passed"] is passed  # nested: the gain shows; other examples right: within noise


def test_no_examples_on_either_side_is_a_missing_number_not_a_pairing(tmp_path, base):
    with_outcomes(base, np.zeros(0, dtype=bool))
    run = with_outcomes(make_run(tmp_path, "empty"), np.zeros(0, dtype=bool))
    criterion = compare([base, run], plots=False).verdicts["empty"]["criteria"]["algorithmic"]
    assert criterion == {"passed": None, "detail": "missing"}


@pytest.mark.parametrize("outcomes", ["01x", "0" * 999 + "1"])
def test_outcomes_that_do_not_add_up_are_a_schema_error(tmp_path, base, outcomes):
    run = with_outcomes(make_run(tmp_path, "broken"), np.arange(1000) < 500)
    path = run / "eval" / "results_all.json"
    doc = json.loads(path.read_text())
    doc["results"]["algorithmic"]["summary"]["iid"]["outcomes"] = outcomes
    path.write_text(json.dumps(doc))
    with pytest.raises(MemlabError, match="do not follow the schema"):
        compare([base, run], plots=False)


def row(name: str, alg: Metric, **metrics: Metric) -> Row:
    full = dict(ood=Metric(0.5, [0.45, 0.55], 500), train_time_s=Metric(100.0, None, 1),
                perplexity=Metric(20.0, None, 1))
    return Row(name, "v", "tiny", algorithmic=alg, **{**full, **metrics})


def test_an_accuracy_gain_at_least_the_threshold_passes_and_its_interval_is_reported():
    base = row("base", Metric(0.5, [0.5, 0.5], 1000), ood=Metric(0.4, [0.35, 0.45], 500))
    at_limit = verdict(row("at", Metric(0.6, [0.55, 0.65], 1000)), base, Criteria(min_alg_gain=0.05))
    alg = at_limit["criteria"]["algorithmic"]
    assert alg["interval"] == pytest.approx([0.05, 0.15]) and alg["passed"] is True  # ">= +5 points": at it holds
    assert alg["detail"] == "+10.0 pts [+5.0, +15.0] vs >= +5 pts: passes"
    just_under = verdict(row("under", Metric(0.6, [0.5496, 0.65], 1000)), base, Criteria())["criteria"]
    assert just_under["algorithmic"]["passed"] is None and "[+4.96, +15.0]" in just_under["algorithmic"]["detail"]
    # the interval's top exactly at the threshold: the gain may still reach it, so it has not failed
    at_top = verdict(row("top", Metric(0.53, [0.50, 0.55], 1000)), base, Criteria(min_alg_gain=0.05))["criteria"]
    assert at_top["algorithmic"]["interval"] == pytest.approx([0.0, 0.05]) and at_top["algorithmic"]["passed"] is None


def test_details_show_which_side_of_a_ratio_limit_a_value_lies(tmp_path, base):
    over = compare([base, make_run(tmp_path, "over", alg=0.62, ood=0.3, ppl=30.08)]).verdicts["over"]
    assert over["criteria"]["perplexity"] == {"passed": False, "detail": "1.504x vs <= 1.5x: fails"}
    at = compare([base, make_run(tmp_path, "at", alg=0.62, ood=0.3, ppl=30.0)]).verdicts["at"]
    assert at["criteria"]["perplexity"] == {"passed": True, "detail": "1.50x vs <= 1.5x: passes"}


def test_missing_numbers_make_the_verdict_incomplete(tmp_path, base):
    run = make_run(tmp_path, "no_lm", alg=0.9, ood=0.9, suites=("algorithmic", "longctx"))
    v = compare([base, run]).verdicts["no_lm"]
    assert v["verdict"] == "incomplete" and v["criteria"]["perplexity"]["passed"] is None
    worse = make_run(tmp_path, "worse_no_lm", alg=0.1, suites=("algorithmic",))
    assert compare([base, worse]).verdicts["worse_no_lm"]["verdict"] == "does not win"  # a failure is final


def test_criteria_are_configurable_and_the_baseline_selectable(tmp_path, base):
    run = make_run(tmp_path, "candidate", alg=0.58, ood=0.3)  # +8 points, interval about [+3.6, +12.3]
    assert compare([base, run], criteria=Criteria(min_alg_gain=0.15)).verdicts["candidate"]["verdict"] == "does not win"
    assert compare([base, run], criteria=Criteria(min_alg_gain=0.03)).verdicts["candidate"]["verdict"] == "wins"
    flipped = compare([base, run], baseline="candidate")
    assert flipped.baseline == "candidate" and flipped.verdicts["base"]["verdict"] == "does not win"


def test_outputs_table_markdown_csv_json_and_plots(tmp_path, base):
    runs = [base, make_run(tmp_path, "gdn", alg=0.6, ood=0.3), make_run(tmp_path, "cdm", variant="cdm", alg=0.4)]
    out = tmp_path / "out"
    result = compare(runs, out_dir=out)
    assert {f.name for f in result.files} == {"compare.md", "compare.csv", "compare.json", "compare.png",
                                              "compare_length.png", "compare_needle.png"}
    assert all(f.stat().st_size > 0 for f in result.files)
    (out / "compare_mine.png").write_bytes(b"a figure of the user's")
    compare(runs, out_dir=out, plots=False)  # the plots of the earlier comparison go, and only they
    assert [f.name for f in out.glob("*.png")] == ["compare_mine.png"] and (out / "compare.json").is_file()
    lines = result.terminal.splitlines()
    assert lines[0].split()[:2] == ["run", "variant"] and len(lines) == 2 + 3
    assert "60.0 [" in result.terminal and "wins" in result.terminal
    md = (out / "compare.md").read_text()
    assert "| gdn | gdn |" in md and "**wins**" in md and "**does not win**" in md
    assert "where a variant has one run, its interval measures the examples' noise, not the spread" in md
    assert "| cdm | no (-10.0 pts [-14.3, -5.6] vs >= +5 pts: fails) | ? (+0.0 pts [-3.5, +3.5] OOD vs > +0 pts: within " \
           "noise) | yes (1.00x vs <= 2x: passes) | yes (1.00x vs <= 1.5x: passes) | **does not win** |" in md
    with (out / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["base", "gdn", "cdm"]
    assert float(rows[1]["algorithmic"]) == 0.6 and rows[1]["algorithmic_n"] == "1000"
    assert float(rows[1]["algorithmic_ci_low"]) < 0.6 < float(rows[1]["algorithmic_ci_high"])
    assert [r["verdict"] for r in rows] == ["baseline", "wins", "does not win"]
    written = json.loads((out / "compare.json").read_text())
    assert written["verdicts"]["gdn"]["verdict"] == "wins"
    assert written["metadata"]["memlab_version"] == memlab.__version__  # which code decided it, and when
    assert {"git_commit", "git_dirty", "torch_version", "timestamp"} <= set(written["metadata"])


def test_seeds_aggregate_to_mean_and_interval(tmp_path):
    runs = [make_run(tmp_path, f"baseline-s{s}", variant="baseline", alg=a) for s, a in enumerate([0.4, 0.5])]
    runs += [make_run(tmp_path, f"gdn-s{s}", alg=a, ood=0.5) for s, a in enumerate([0.55, 0.65])]
    result = compare(runs, aggregate_seeds=True)
    assert [r.name for r in result.rows] == ["baseline", "gdn"]
    gdn = result.rows[1]
    assert gdn.runs == 2 and gdn.algorithmic.n == 2 and gdn.algorithmic.value == pytest.approx(0.6)
    lo, hi = gdn.algorithmic.ci95
    assert lo < 0.55 and hi > 0.65  # a t interval over two seeds is wide
    criterion = result.verdicts["gdn"]["criteria"]["algorithmic"]  # 0.60 vs 0.45, but over two seeds each
    assert criterion["passed"] is None and criterion["interval"][0] < 0.05 < criterion["interval"][1]
    head = criteria_markdown(result.rows, result.verdicts, result.rows[0], Criteria())
    assert "the intervals count the spread of the training seeds" in head and "one run" not in head


def test_seeds_of_several_sizes_aggregate_to_one_row_per_size(tmp_path):
    runs = [make_run(tmp_path, f"baseline-s{s}", variant="baseline") for s in range(2)]
    runs += [make_run(tmp_path, f"gdn-{size}-s{s}", alg=a, size=size)
             for size in ("tiny", "nano") for s, a in enumerate([0.55, 0.65])]
    result = compare(runs, aggregate_seeds=True, plots=False)
    assert [r.name for r in result.rows] == ["baseline", "gdn-tiny", "gdn-nano"]
    assert [r.runs for r in result.rows] == [2, 2, 2] and set(result.verdicts) == {"baseline", "gdn-tiny", "gdn-nano"}
    one_seed = make_run(tmp_path, "gdn-small-s0", alg=0.6, size="d64l2")  # named like the means beside it
    result = compare([*runs, one_seed], aggregate_seeds=True, plots=False)
    assert [r.name for r in result.rows] == ["baseline", "gdn-tiny", "gdn-nano", "gdn-d64l2"]
    assert result.rows[-1].runs == 1 and result.rows[-1].algorithmic.value == pytest.approx(0.6)
    assert [m.name for m in result.rows[-1].members] == ["gdn-small-s0"]  # the run it is, for plots and reports


def test_a_collapsed_seed_fails_the_perplexity_criterion(tmp_path):
    runs = [make_run(tmp_path, f"baseline-s{s}", variant="baseline") for s in range(3)]
    runs += [make_run(tmp_path, f"gdn-s{s}", alg=0.6, ood=0.3, ppl=p)  # NaN loss: perplexity written as null
             for s, p in enumerate([21.0, 22.0, float("nan")])]
    result = compare(runs, aggregate_seeds=True)
    gdn = result.rows[1]
    assert gdn.perplexity.value is None and gdn.perplexity.collapsed == 1 and gdn.perplexity.n == 3
    criterion = result.verdicts["gdn"]["criteria"]["perplexity"]
    assert criterion["passed"] is False and "1 of 3 seeds" in criterion["detail"]
    assert result.verdicts["gdn"]["verdict"] == "does not win" and "collapsed (1/3)" in result.terminal
    single = compare([runs[0], runs[-1]])  # one diverged run
    assert single.verdicts["gdn-s2"]["verdict"] == "does not win"
    assert single.verdicts["gdn-s2"]["criteria"]["perplexity"]["detail"] == "collapsed (non-finite loss)"


def test_a_seed_without_a_metric_is_not_dropped_from_the_mean(tmp_path):
    runs = [make_run(tmp_path, f"baseline-s{s}", variant="baseline") for s in range(2)]
    runs += [make_run(tmp_path, "gdn-s0", alg=0.6, ood=0.3),
             make_run(tmp_path, "gdn-s1", alg=0.6, ood=0.3, suites=("algorithmic", "longctx", "ablation"))]
    result = compare(runs, aggregate_seeds=True)
    assert result.rows[1].perplexity.value is None and result.rows[1].perplexity.collapsed == 0
    assert result.verdicts["gdn"]["verdict"] == "incomplete"


def test_seeds_keep_their_own_ablation_rows_and_intervals_stay_in_range(tmp_path):
    runs = [make_run(tmp_path, f"baseline-s{s}", variant="baseline", delta=0.0) for s in range(2)]
    runs += [make_run(tmp_path, "gdn-s0", alg=0.9, delta=0.75), make_run(tmp_path, "gdn-s1", alg=0.1, delta=0.0)]
    result = compare(runs, aggregate_seeds=True)
    gdn = result.rows[1]
    assert gdn.algorithmic.value == pytest.approx(0.5) and gdn.algorithmic.ci95 == [0.0, 1.0]  # t interval clipped
    assert gdn.delta.value == pytest.approx(0.375) and gdn.delta.ci95 == [-1.0, 1.0]
    table = ablation_markdown(result)  # every seed under its own name, not the first under the variant's
    assert "| gdn-s0 |" in table and "| gdn-s1 |" in table and "| gdn |" not in table
    assert "| +75.0 [+70.0, +80.0] |" in table and "| +0.0 [-5.0, +5.0] |" in table


@pytest.mark.parametrize(
    "criteria, fragment",
    [(Criteria(max_time_ratio=-1), "--max-time-ratio must be a finite number > 0, got -1"),
     (Criteria(max_ppl_ratio=0), "--max-ppl-ratio must be a finite number > 0, got 0"),
     (Criteria(max_ppl_ratio=float("nan")), "--max-ppl-ratio must be a finite number > 0, got nan"),
     (Criteria(max_time_ratio=float("inf")), "--max-time-ratio must be a finite number > 0, got inf"),  # had crashed
     (Criteria(min_alg_gain=float("nan")), "--min-alg-gain must be a finite number, got nan")],
)
def test_criteria_out_of_range_are_refused(tmp_path, base, criteria, fragment):
    """A ratio <= 0 had made every run fail (or, nan, pass) its criterion without a word."""
    with pytest.raises(MemlabError, match=fragment):
        compare([base, make_run(tmp_path, "gdn")], tmp_path / "out", criteria=criteria)


def test_an_out_dir_that_is_a_file_is_refused(tmp_path, base):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(MemlabError, match="is a file, not a directory"):  # had been a FileExistsError
        compare([base], tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "mine"


def test_runs_without_perplexity_plot_without_a_warning(tmp_path, recwarn):
    """The perplexity panel's log scale had warned 'Data has no positive values' on stderr."""
    run = make_run(tmp_path, "alg-only", variant="baseline", suites=("algorithmic",))
    compare([run], tmp_path / "out")
    assert (tmp_path / "out" / "compare.png").is_file()
    assert not [w for w in recwarn if "log-scaled" in str(w.message)]


@pytest.mark.parametrize("case", ["missing", "empty", "newer", "corrupt", "baseline", "payload", "summary"])
def test_bad_input_is_one_clear_error(tmp_path, base, case):
    runs, kwargs = [base], {}
    if case == "missing":
        runs.append(tmp_path / "nope")
        message = "no such run directory"
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        runs.append(tmp_path / "empty")
        message = "holds no results files"
    elif case == "newer":
        run = make_run(tmp_path, "future")
        path = run / "eval" / "results_all.json"
        doc = json.loads(path.read_text())
        doc["schema_version"] = schema.SCHEMA_VERSION + 1
        path.write_text(json.dumps(doc))
        runs.append(run)
        message = "is newer than this memlab supports"
    elif case == "corrupt":
        run = make_run(tmp_path, "broken")
        (run / "eval" / "results_all.json").write_text('{"schema_version": 1, "suite": "al')
        runs.append(run)
        message = "corrupt results file"
    elif case == "payload":  # damaged below the validated top level: had been an AttributeError
        run = make_run(tmp_path, "broken")
        path = run / "eval" / "results_all.json"
        doc = json.loads(path.read_text())
        doc["results"]["algorithmic"]["summary"] = None
        path.write_text(json.dumps(doc))
        runs.append(run)
        message = "do not follow the schema (AttributeError"
    elif case == "summary":  # a summary.json that is not a JSON object, or not text
        run = make_run(tmp_path, "broken")
        (run / "summary.json").write_bytes(b"\xff[]")
        runs.append(run)
        message = "summary.json is corrupt (not JSON"
    else:
        kwargs["baseline"] = "transformer"
        message = "unknown baseline 'transformer'; valid choices (a run or a variant): base, baseline"
    with pytest.raises(MemlabError) as e:
        compare(runs, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)



def test_a_row_holds_the_results_of_one_model_of_the_run(tmp_path, base, caplog):
    """An older memlab wrote a checkpoint's results into the run's eval/ too: its perplexity had
    joined the accuracies of the run's model in one row."""
    run = make_run(tmp_path, "gdn", ppl=20.0)
    _edit(run, metadata=dict(model_dir="gdn/best_model"))
    doc = json.loads((run / "eval" / "results_all.json").read_text())
    doc["suite"], doc["results"] = "lm", dict(doc["results"]["lm"], perplexity=99.0)
    doc["metadata"].update(model_dir="gdn/checkpoints/step_8", timestamp="2026-02-01T00:00:00+00:00")  # newer
    (run / "eval" / "results_lm.json").write_text(json.dumps(doc))
    (run / "best_model").mkdir()
    (run / "best_model" / "model.safetensors").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        rows = {r.name: r for r in compare([base, run]).rows}
    assert rows["gdn"].perplexity.value == 20.0 and "left out of the comparison" in caplog.text


def _edit(run, suite=None, metadata=None, **changes):
    """Change a hand-made run's results file: fields of one suite's payload, or of the metadata."""
    path = run / "eval" / "results_all.json"
    doc = json.loads(path.read_text())
    doc["metadata"].update(metadata or {})
    if suite:
        doc["results"][suite].update(changes)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "suite, change, fragment",
    [
        ("longctx", dict(context_lengths=[512]), "longctx results of base and gdn were measured on different "
                                                  "context_lengths ([256] vs [512]; "),
        ("lm", dict(context_len=128), "different context_len (64 vs 128; "),
        ("lm", dict(tokens=8192), "different tokens"),  # another prefix of the split: other text
        ("lm", dict(corpus_request={"source": "stdlib-docs"}),
         'different corpus_request (source: "stdlib-code" vs "stdlib-docs"; '),  # where within it they differ
        ("ablation", dict(task="mqar"), 'different task ("niah" vs "mqar"; '),
        ("algorithmic", dict(grids={"iid": {"copy": [8]}}), 'different grids (iid: absent vs {"copy": [8]}; '),
        # a file that does not record it was measured with the first retrieval tasks (one fixed distractor)
        ("longctx", dict(retrieval_version="memlab-retrieval-v2"),
         'different retrieval_version ("memlab-retrieval-v1" vs "memlab-retrieval-v2"; '),
        ("ablation", dict(retrieval_version="memlab-retrieval-v2"), "ablation results of base and gdn were measured "
                                                                    "on different retrieval_version"),
        # an older memlab's perplexity windows were the split's prefix (a file without tokens_from)
        ("lm", dict(tokens_from="spread"), 'different tokens_from ("prefix" vs "spread"'),
    ],
)
def test_runs_evaluated_on_different_things_are_refused(tmp_path, base, suite, change, fragment):
    other = make_run(tmp_path, "gdn")
    for run in (base, other):
        _edit(run, "lm", corpus_request={"source": "stdlib-code"})
    compare([base, other])  # alike: compared
    _edit(other, suite, **change)
    with pytest.raises(MemlabError) as e:
        compare([base, other])
    assert fragment in str(e.value) and "\n" not in str(e.value)
    # which two files: compare reads each suite from the newest file that holds it, not necessarily the one expected
    assert f"{base}/eval/results_all.json vs {other}/eval/results_all.json): evaluate" in str(e.value)


def test_each_suite_is_read_from_the_newest_file_holding_it_and_compare_json_names_it(tmp_path, base):
    doc = json.loads((base / "eval" / "results_all.json").read_text())
    lm = {**doc["results"]["lm"], "perplexity": 18.0}
    later = {**doc["metadata"], "timestamp": "2026-02-01T00:00:00+00:00"}
    schema.write_results(base / "eval" / "results_lm.json", schema.document("lm", later, lm))
    compare([base], out_dir=tmp_path / "out")
    row = json.loads((tmp_path / "out" / "compare.json").read_text())["rows"][0]
    assert row["perplexity"]["value"] == 18.0
    assert row["result_files"] == {"lm": str(base / "eval" / "results_lm.json"),
                                   **{s: str(base / "eval" / "results_all.json")
                                      for s in ("algorithmic", "longctx", "ablation")}}


def test_training_time_is_the_steps_and_an_older_summary_gives_its_wall_time(tmp_path, base, caplog):
    """Evaluating every step had made a run with the same training 'not win' on time (25x its wall time)."""
    assert compare([base]).rows[0].train_time_s.value == 100.0  # not the 300 s of its wall time
    (base / "summary.json").write_text(json.dumps({"status": "completed", "wall_time_s": 300.0}))
    with caplog.at_level(logging.WARNING):
        assert compare([base]).rows[0].train_time_s.value == 300.0
    assert "records no train_time_s (an older memlab)" in caplog.text


def test_sample_counts_may_differ_and_a_fact_an_older_file_lacks_is_not_compared(tmp_path, base):
    other = make_run(tmp_path, "gdn", ppl=25.0)
    _edit(other, "lm", corpus_request={"source": "stdlib-code"})  # base records no request
    rows = compare([base, other]).rows
    assert [r.perplexity.value for r in rows] == [20.0, 25.0]


def test_a_perplexity_rests_on_the_documents_its_interval_resamples(tmp_path, base):
    assert compare([base]).rows[0].perplexity.n == 0  # an old file that records neither
    _edit(base, "lm", windows=64, documents=9)
    assert compare([base]).rows[0].perplexity.n == 9


def test_seeds_evaluated_with_different_tokenizers_are_refused(tmp_path):
    """Perplexities, and haystack lengths counted in tokens, mean other things under another tokenizer."""
    runs = [make_run(tmp_path, f"gdn-s{seed}") for seed in range(2)]
    for run, tokenizer in zip(runs, ("byte", "bpe-8192")):
        _edit(run, metadata={"tokenizer_hash": tokenizer})
    with pytest.raises(MemlabError, match="results of gdn-s0 and gdn-s1 were measured on different tokenizer_hash"):
        compare(runs, aggregate_seeds=True)
    for run in runs:
        doc = json.loads((run / "eval" / "results_all.json").read_text())
        del doc["results"]["lm"], doc["results"]["algorithmic"]
        (run / "eval" / "results_all.json").write_text(json.dumps(doc))
    with pytest.raises(MemlabError, match="longctx results of gdn-s0 and gdn-s1 were measured on different tokenizer"):
        compare(runs, aggregate_seeds=True)


def test_many_runs_keep_distinct_colours_and_aggregated_plots_say_whose_curves_they_show(tmp_path):
    """matplotlib's ten colours had repeated past ten runs (baseline and nano_baseline alike among 15)."""
    from memlab.analysis.compare_plots import _colors, _shown

    for n in (3, 15, 25):
        assert len({str(c) for c in _colors(n)}) == n
    runs = [make_run(tmp_path, f"gdn-s{seed}") for seed in range(2)]
    (row,) = compare(runs, aggregate_seeds=True, plots=False).rows
    assert _shown(row) == "gdn (gdn-s0)"
    many = [make_run(tmp_path, f"run{i}", variant=f"v{i}") for i in range(12)]
    files = compare(many, tmp_path / "out", baseline="run0").files
    assert (tmp_path / "out" / "compare_length.png") in files


def test_aggregating_refuses_runs_that_are_not_seeds_of_one_recipe(tmp_path):
    """Any two runs of a variant and size had been averaged as seeds: another width, another lr, one seed twice."""
    import yaml

    runs = [make_run(tmp_path, f"gdn-s{seed}") for seed in range(3)]
    for seed, run in enumerate(runs):
        (run / "config.yaml").write_text(yaml.safe_dump({"train": {"seed": seed, "lr": 3e-3, "output_dir": str(run)}}))
    assert compare(runs, aggregate_seeds=True, plots=False).rows[0].runs == 3  # seeds and output dirs may differ
    overrides = [{"gdn": {"chunk_size": 8}}, {"gdn.chunk_size": 8}]  # as an older memlab recorded them, and now
    for seed, (run, model) in enumerate(zip(runs[:2], overrides)):  # (the model is compared as built)
        (run / "config.yaml").write_text(yaml.safe_dump({"train": {"seed": seed, "lr": 3e-3, "model": model}}))
    assert compare(runs[:2], aggregate_seeds=True, plots=False).rows[0].runs == 2
    (runs[2] / "config.yaml").write_text(yaml.safe_dump({"train": {"seed": 2, "lr": 1e-2}}))
    with pytest.raises(MemlabError, match=r"gdn-s0 and gdn-s2 \(gdn\) differ in more than their seed \(train: lr\)"):
        compare(runs, aggregate_seeds=True, plots=False)
    (runs[2] / "config.yaml").write_text(yaml.safe_dump({"train": {"seed": 1, "lr": 3e-3}}))
    with pytest.raises(MemlabError, match=r"runs of gdn share a seed \(\[0, 1, 1\]\)"):
        compare(runs, aggregate_seeds=True, plots=False)

    def data(run, seed, data_dir, shards):  # seeds of one recipe read the same shards, copied elsewhere or not
        config = {"train": {"seed": seed, "lr": 3e-3, "data_dir": data_dir}, "data": {"shards_sha256": shards}}
        (run / "config.yaml").write_text(yaml.safe_dump(config))

    for seed, run in enumerate(runs):
        data(run, seed, f"/machine{seed}/data", "abc")
    assert compare(runs, aggregate_seeds=True, plots=False).rows[0].runs == 3  # (they had been refused: data_dir)
    data(runs[2], 2, "/machine2/data", "other text")
    with pytest.raises(MemlabError, match=r"gdn-s0 and gdn-s2 \(gdn\) differ in more than their seed \(train: data\)"):
        compare(runs, aggregate_seeds=True, plots=False)


def test_seeds_that_agree_keep_the_uncertainty_of_their_examples(tmp_path):
    """Two seeds at 0% needle accuracy had shown '0.0' with no interval, as if it were exact."""
    runs = [make_run(tmp_path, f"gdn-s{seed}", needle=0.0) for seed in range(2)]
    (row,) = compare(runs, aggregate_seeds=True, plots=False).rows
    assert row.needle.value == 0.0 and row.needle.ci95 == pytest.approx(list(wilson_interval(0, 1000)))  # not 2000
    # a Delta on which they agree keeps their own paired interval (it had been [0.3, 0.3])
    assert row.delta.value == pytest.approx(0.3) and row.delta.ci95 == pytest.approx([0.25, 0.35])


def test_an_accuracy_cell_is_the_percentage_then_its_interval_low_to_high():
    assert _pct({"accuracy": 0.5, "ci95": [0.3, 0.7]}) == "50% [30, 70]"
    assert _pct({"accuracy": 0.125, "ci95": [0.05, 0.25]}) == "12% [5, 25]"
    assert _pct({"accuracy": None, "n": 0, "ci95": None}) == "-" and _pct(None) == "-"


def test_a_comparison_killed_while_writing_leaves_the_last_files_whole(tmp_path, base, monkeypatch):
    """compare.md/.csv/.json had been written in place: a kill mid-write left a truncated file."""
    from pathlib import Path

    out, better = tmp_path / "compare", make_run(tmp_path, "gdn-s1", alg=0.9)
    compare([base, make_run(tmp_path, "gdn-s0")], out, plots=False)
    before = {name: (out / name).read_bytes() for name in ("compare.md", "compare.csv", "compare.json")}
    real_write_text = Path.write_text

    def killed_halfway(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        compare([base, better], out, plots=False)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # and no half-written temporary file


def test_a_disk_full_on_the_last_file_leaves_the_last_whole_set(tmp_path, base, monkeypatch):
    """Each file had been whole, but a full disk at compare.json left new compare.md/.csv beside the old
    compare.json and figures: two comparisons mixed."""
    import errno

    import memlab.analysis.compare as compare_module

    out, better = tmp_path / "compare", make_run(tmp_path, "gdn-s1", alg=0.9)
    compare([base, make_run(tmp_path, "gdn-s0")], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write_text = compare_module.write_text

    def full_at_the_json(path, text):
        if path.name == "compare.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write_text(path, text)

    monkeypatch.setattr(compare_module, "write_text", full_at_the_json)
    with pytest.raises(OSError, match="No space left"):
        compare([base, better], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_comparison_that_fails_while_plotting_leaves_the_last_whole_set(tmp_path, base, monkeypatch):
    """The text files had been replaced before the figures were drawn: a kill while plotting left the
    new tables beside the old figures."""
    import memlab.analysis.compare_plots as compare_plots

    out, better = tmp_path / "compare", make_run(tmp_path, "gdn-s1", alg=0.9)
    compare([base, make_run(tmp_path, "gdn-s0")], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"compare.json", "compare.png", "compare_length.png"} <= set(before)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_plots, "_by_length", killed)  # after compare.png is drawn
    with pytest.raises(KeyboardInterrupt):
        compare([base, better], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing staged is left either
    monkeypatch.undo()
    compare([base, better], out)
    assert "gdn-s1" in (out / "compare.json").read_text() and (out / "compare.png").read_bytes() != before["compare.png"]


def test_the_study_report_shows_what_the_files_hold(tmp_path, base):
    """The ablation row reads normal then zeroed from results_all.json, the runs table the plan's seconds,
    and the setup the plan's note."""
    runs = tmp_path / "runs"
    compared = compare([base, make_run(runs, "gdn-s0")], tmp_path / "compare", plots=False)
    ablation = json.loads((runs / "gdn-s0" / "eval" / "results_all.json").read_text())["results"]["ablation"]
    assert (ablation["normal"]["accuracy"], ablation["zeroed"]["accuracy"]) == (0.5, 0.2)
    plan = {"preset": "toy", "variants": ["baseline", "gdn"], "seeds": [0], "baseline": "base", "session_s": 40.0,
            "runs": {"gdn-s0": {"train_s": 12.4, "eval_s": 345.6}}, "note": "evaluation contexts capped at 512 tokens"}
    preset = Preset("toy budget", "tiny", train={"seq_len": 64}, eval={"samples": 1})
    report = write_report(tmp_path / "report.md", plan, preset, compared, tmp_path).read_text()
    assert "| gdn-s0 | [0] | 50% [47, 53] | 20% [18, 23] | +30.0 [+25.0, +35.0] |" in report
    assert "| gdn-s0 | 12 | 346 | - | `runs/gdn-s0` |" in report and "| base | - | - | - | `runs/base` |" in report
    assert "- evaluation (the same examples for every model): samples=1; evaluation contexts capped at 512 tokens\n" in report


def test_a_refusal_names_where_two_long_values_differ():
    """Two grids cut to their first 60 characters had read alike where one lacked its ood part."""
    from memlab.analysis.compare import _difference

    iid = {"copy": list(range(0, 64, 2)), "parity": list(range(40))}
    assert _difference({"iid": iid, "ood": {"copy": [128]}}, {"iid": iid}) == 'ood: {"copy": [128]} vs absent'
    assert _difference({"iid": {**iid, "copy": [2]}}, {"iid": iid}).startswith("iid.copy: [2] vs [0, 2, 4, 6, 8, ")
    assert _difference(64, 128) == "64 vs 128"


def test_runs_that_share_a_name_are_refused_with_what_to_do(tmp_path):
    """Two studies' gdn-s0 had been refused with no word on how to compare them."""
    first, second = (make_run(tmp_path / study, "gdn-s0") for study in ("a", "b"))
    with pytest.raises(MemlabError, match=r"must be unique, got \['gdn-s0', 'gdn-s0'\]: a run is named by its directory"):
        compare([first, second], plots=False)


def test_training_times_compare_per_token_and_not_across_devices(tmp_path, base):
    """190 s on 100k tokens with 8 GPUs had passed against 100 s on 1M tokens on one CPU (1.90x <= 2x)."""
    def trained(run, seconds, tokens, device="cpu", processes=1, precision="float32"):
        summary = {"status": "completed", "train_time_s": seconds, "tokens_seen": tokens, "device": device,
                   "world_size": processes, "precision": precision}
        (run / "summary.json").write_text(json.dumps(summary))
        return run

    trained(base, 100.0, 1_000_000)
    fewer = trained(make_run(tmp_path, "fewer", ood=0.3), 190.0, 100_000)
    criterion = compare([base, fewer], plots=False).verdicts["fewer"]["criteria"]["train_time"]
    assert criterion["passed"] is False and "19.00x" in criterion["detail"] and "per token" in criterion["detail"]
    gpus = trained(make_run(tmp_path, "gpus", alg=0.7, ood=0.3), 190.0, 1_000_000, "cuda:0", 8, "bfloat16")
    result = compare([base, gpus], plots=False).verdicts["gpus"]
    assert result["criteria"]["train_time"]["passed"] is None and result["verdict"] == "incomplete"
    assert "device cuda vs cpu, processes 8 vs 1, precision bfloat16 vs float32" in result["criteria"]["train_time"][
        "detail"]
    alike = trained(make_run(tmp_path, "alike", ood=0.3), 190.0, 1_000_000)
    assert compare([base, alike], plots=False).verdicts["alike"]["criteria"]["train_time"]["passed"] is True


def test_seeds_on_shared_examples_where_nothing_varies_fall_back_to_one_seeds_interval(tmp_path):
    """Both models' seeds right on the same 600 of 1000 examples: the paired interval over seeds had been
    [0, 0], so OOD (> 0) failed outright where one seed of each gives Tango's interval, within noise."""
    correct = np.arange(1000) < 600
    runs = [with_outcomes(make_run(tmp_path, f"baseline-s{s}", variant="baseline"), correct) for s in range(2)]
    runs += [with_outcomes(make_run(tmp_path, f"gdn-s{s}"), correct) for s in range(2)]
    result = compare(runs, aggregate_seeds=True, plots=False)
    criterion = result.verdicts["gdn"]["criteria"]["algorithmic"]
    assert criterion["interval"] == pytest.approx(list(tango_paired_interval(correct, correct)))
    assert criterion["interval"][0] < 0 < criterion["interval"][1]
    lo, hi = result.rows[1].algorithmic.ci95  # the examples' own noise (a t interval over them), not [0.6, 0.6]
    assert lo == pytest.approx(0.6 - 0.0304, abs=1e-3) and hi == pytest.approx(0.6 + 0.0304, abs=1e-3)


def test_the_seed_interval_needs_two_examples():
    from memlab.eval.stats import seeds_and_examples_interval

    assert seeds_and_examples_interval(np.array([[1.0], [0.0]])) is None  # (var with ddof=1 of one example: NaN)
    assert seeds_and_examples_interval(np.ones((3, 50))) is None  # nothing varies
