"""`memlab study` end to end on a toy budget: trains, evaluates, compares, reports, resumes."""

from __future__ import annotations

import json

import pytest

import memlab.analysis.study as study
import memlab.eval.hub
import memlab.train
from memlab.analysis.study import Preset, StudyConfig, run_study
from memlab.errors import MemlabError
from memlab.eval.schema import SCHEMA_VERSION

VARIANTS = ["baseline", "gdn"]


@pytest.fixture
def toy_preset(tmp_path_factory, monkeypatch):
    """A budget of two optimizer steps on a one-layer model, and evaluations of a handful of examples."""
    text = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        (text / f"doc{i}.txt").write_text(f"Note {i}: the stored value is {i * 31}. " * 20)
    preset = Preset(
        description="toy",
        size="tiny",
        train=dict(tokenizer="byte", corpus=f"files:{text}/*.txt", val_fraction=0.4, seq_len=64, batch_size=2, total_tokens=256,
                   alg_tokens=128, alg_tasks=["copy"], warmup=1, eval_interval=0, eval_samples=1, eval_tokens=128,
                   save_interval=0, keep_last=1, model={"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64}),
        eval=dict(samples=1, tasks=["copy", "parity"], needle_tasks=["niah"], context_lengths=[96], depths=[0.5],
                  needle_samples=2, lm_tokens=128, lm_context=32, ablation_context=64, ablation_samples=4,
                  horizons=[8, 64], horizon_samples=2),
    )
    monkeypatch.setitem(study.PRESETS, "toy", preset)
    return "toy"


def count_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def test_study_trains_evaluates_reports_and_resumes(toy_preset, tmp_path, monkeypatch):
    out = tmp_path / "study"
    cfg = StudyConfig(preset=toy_preset, out_dir=str(out), variants=VARIANTS, progress=False)
    result = run_study(cfg)

    report = result.report.read_text()
    assert result.report == out / "report.md"
    for name in ("baseline-s0", "gdn-s0"):
        assert (out / "runs" / name / "eval" / "results_all.json").is_file()
        assert f"| {name} | " in report
    assert "## Comparison" in report and "## Memory ablation" in report and "![compare](compare/compare.png)" in report
    assert "| gdn-s0 | [0, 1] |" in report  # the gdn layers carry memory; the baseline's do not
    assert "| baseline-s0 | none |" in report
    # what the table holds: the steps' time (not the wall time), Delta n/a for a model without memory (not 0)
    assert "training time is the seconds of the training steps" in report and "wall time" not in report
    assert "Delta does not apply (n/a) to a model without memory-carrying layers" in report
    assert result.comparison.verdicts["baseline-s0"]["verdict"] == "baseline"
    # every number is there: not "incomplete"
    assert result.comparison.verdicts["gdn-s0"]["verdict"] in ("wins", "does not win", "within noise")
    assert (out / "compare" / "compare.csv").is_file()
    plan = json.loads((out / "study.json").read_text())
    assert plan["variants"] == VARIANTS and set(plan["runs"]) == {"baseline-s0", "gdn-s0"}

    # run again: nothing is retrained or re-evaluated; each run names the code that trained it
    gdn_summary = out / "runs" / "gdn-s0" / "summary.json"
    doc = json.loads(gdn_summary.read_text())
    doc["metadata"].update(git_commit="0123456789abcdef", git_dirty=True)  # (trained in an earlier session)
    gdn_summary.write_text(json.dumps(doc))
    trained = count_calls(monkeypatch, memlab.train, "train")
    evaluated = count_calls(monkeypatch, memlab.eval.hub, "evaluate")
    report = run_study(cfg).report.read_text()
    assert trained == [] and evaluated == []
    runs_table = report[report.index("## Runs"):]
    assert "| 0123456789 (uncommitted changes), cpu, float32 | `runs/gdn-s0` |" in runs_table
    assert "0123456789" not in runs_table[runs_table.index("| baseline-s0 |"):].splitlines()[0]

    # results an older memlab wrote (perplexity measured elsewhere in the split) are evaluated again
    results = out / "runs" / "baseline-s0" / "eval" / "results_all.json"
    results.write_text(json.dumps({**json.loads(results.read_text()), "schema_version": 2}))
    run_study(cfg)
    assert trained == [] and len(evaluated) == 1 and json.loads(results.read_text())["schema_version"] == SCHEMA_VERSION

    # a run cut off before it finished is resumed (and then evaluated again); the other is left alone
    summary = out / "runs" / "gdn-s0" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "interrupted"}))
    run_study(cfg)
    assert len(trained) == 1 and len(evaluated) == 2
    assert json.loads(summary.read_text())["status"] == "completed"

    # a second seed: one more run, and the variant's rows aggregate over seeds
    result = run_study(StudyConfig(preset=toy_preset, out_dir=str(out), variants=["baseline"], seeds=2,
                                   progress=False))
    assert len(trained) == 2 and {p.name for p in result.runs} == {"baseline-s0", "baseline-s1"}
    (row,) = result.comparison.rows
    assert row.name == "baseline" and row.runs == 2 and row.algorithmic.n == 2
    report = result.report.read_text()
    assert "| baseline (x2) | baseline |" in report
    runs_table = report[report.index("## Runs"):]
    assert "| baseline-s1 | " in runs_table and "gdn-s0" not in runs_table  # only the runs this study compares

    # other evaluation options (the training budget unchanged): every run is evaluated again, none retrained
    preset = study.PRESETS[toy_preset]
    monkeypatch.setitem(study.PRESETS, toy_preset, Preset(preset.description, preset.size, preset.train,
                                                          {**preset.eval, "samples": 2}))
    result = run_study(StudyConfig(preset=toy_preset, out_dir=str(out), variants=["baseline"], seeds=2,
                                   progress=False))
    assert len(trained) == 2 and len(evaluated) == 5
    for run in result.runs:
        assert json.loads((run / "eval" / "results_all.json").read_text())["metadata"]["options"]["samples"] == 2


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(preset="huge"), "unknown study preset 'huge'; valid choices: nano, quick"),
        (dict(variants=["baseline", "transformer++"]), "unknown variant 'transformer++'"),
        (dict(seeds=0), "--seeds must be >= 1"),
        (dict(seed=-1), "--seed must be in [0, "),  # had been a numpy traceback after making the run directory
        (dict(seed=2**31 - 1, seeds=2), "--seed 2147483647 and --seeds 2 reach seeds above 2147483647"),
        (dict(variants=[]), "--variants is empty"),  # had started every variant
        (dict(variants=["gdn"]), "the baseline 'baseline' is not among the variants"),
        (dict(variants=["baseline", "baseline"]), "--variants lists a variant twice"),  # had failed after training
    ],
)
def test_bad_input(tmp_path, changes, message):
    with pytest.raises(MemlabError) as e:
        run_study(StudyConfig(**{"out_dir": str(tmp_path), **changes}))
    assert message in str(e.value)


def test_a_study_directory_keeps_its_budget(toy_preset, tmp_path):
    (tmp_path / "study.json").write_text(json.dumps({"preset": "quick", "budget": {"size": "tiny"}}))
    with pytest.raises(MemlabError, match="holds a study with preset 'quick'"):
        run_study(StudyConfig(preset=toy_preset, out_dir=str(tmp_path), variants=["baseline"]))
    budget = {"size": "tiny", "train": {**study.PRESETS[toy_preset].train, "val_fraction": 0.01}}  # changed since
    (tmp_path / "study.json").write_text(json.dumps({"preset": toy_preset, "budget": budget}))
    with pytest.raises(MemlabError, match=r"trained under another budget \(val_fraction differ: the preset changed"):
        run_study(StudyConfig(preset=toy_preset, out_dir=str(tmp_path), variants=["baseline"]))


def test_a_study_interrupted_in_its_first_run_keeps_its_budget(toy_preset, tmp_path, monkeypatch):
    """The plan had been written after the first run: a second study of another budget had then
    trained on the first one's data, or met the trainer's --resume message."""
    import memlab.train

    def killed(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(memlab.train, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        run_study(StudyConfig(preset=toy_preset, out_dir=str(tmp_path), variants=["baseline"], progress=False))
    assert json.loads((tmp_path / "study.json").read_text())["preset"] == toy_preset
    with pytest.raises(MemlabError, match=f"holds a study with preset '{toy_preset}'"):
        run_study(StudyConfig(preset="quick", out_dir=str(tmp_path), variants=["baseline"]))


@pytest.mark.parametrize("plan", ["{not json", "[1, 2]"])
def test_a_corrupt_study_plan_is_one_clear_error(tmp_path, plan):
    (tmp_path / "study.json").write_text(plan)
    with pytest.raises(MemlabError, match="study.json is corrupt .*choose another --out_dir"):
        run_study(StudyConfig(out_dir=str(tmp_path), variants=["baseline"]))


@pytest.mark.parametrize("runs", [[], {"baseline_s0": 3}])
def test_a_plan_whose_run_records_are_damaged_keeps_the_rest(tmp_path, runs):
    """A plan with ``"runs": []`` had been an AttributeError."""
    cfg = StudyConfig(preset="quick", out_dir=str(tmp_path), variants=["baseline"])
    plan = study.check_plan(cfg, tmp_path)
    (tmp_path / "study.json").write_text(json.dumps({**plan, "runs": runs}))
    assert study.check_plan(cfg, tmp_path)["runs"] == {}


def test_a_second_study_in_the_same_directory_is_refused(toy_preset, tmp_path):
    """Two studies in one --out_dir had each rewritten study.json from its own copy: runs' records lost."""
    from filelock import FileLock

    out = tmp_path / "study"
    with FileLock(tmp_path / ".study.lock"):  # what a running study holds
        with pytest.raises(MemlabError, match="another memlab study is running in .*study.lock"):
            run_study(StudyConfig(preset=toy_preset, out_dir=str(out), variants=["baseline"], progress=False))
    assert not out.exists()


def test_an_out_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(MemlabError, match="is a file, not a directory"):
        run_study(StudyConfig(out_dir=str(tmp_path / "taken"), variants=["baseline"]))


def test_evaluation_contexts_are_capped_by_the_shortest_model():
    preset = Preset("p", "tiny", train={}, eval=dict(context_lengths=[256, 1024], ablation_context=768, lm_context=600))
    options, note = study.eval_options(preset, ["baseline", "cdm_v3"])  # cdm_v3 is built for 512 tokens
    assert options.context_lengths == [256] and options.ablation_context == 512 and options.lm_context == 512
    assert note == "evaluation contexts capped at 512 tokens, the max_seq_len of `cdm_v3`"
    options, note = study.eval_options(preset, ["baseline"])
    assert options.context_lengths == [256, 1024] and note is None


def test_a_language_model_context_beyond_the_shortest_model_is_capped_alone():
    preset = Preset("p", "tiny", train={}, eval=dict(context_lengths=[256], ablation_context=256, lm_context=600))
    options, note = study.eval_options(preset, ["baseline", "cdm_v3"])  # cdm_v3 is built for 512 tokens
    assert options.lm_context == 512 and options.context_lengths == [256] and options.ablation_context == 256
    assert note == "evaluation contexts capped at 512 tokens, the max_seq_len of `cdm_v3`"
    options, note = study.eval_options(preset, ["baseline"])
    assert options.lm_context == 600 and note is None


def test_a_variant_that_diverges_is_left_out_and_named_and_not_trained_again(toy_preset, tmp_path, monkeypatch):
    """One variant's divergence had ended the study with no report, and every rerun trained it again."""
    from memlab.train.trainer import TrainingDiverged

    real_train, trained = memlab.train.train, []

    def gdn_diverges(cfg):
        trained.append(cfg.variant)
        if cfg.variant != "gdn":
            return real_train(cfg)
        (cfg.run_dir).mkdir(parents=True)
        (cfg.run_dir / "summary.json").write_text(json.dumps({"status": "diverged"}))  # as the trainer leaves it
        raise TrainingDiverged("training diverged: 10 consecutive steps with a non-finite loss; lower --lr")

    monkeypatch.setattr(memlab.train, "train", gdn_diverges)
    cfg = StudyConfig(preset=toy_preset, out_dir=str(tmp_path), variants=["baseline", "gdn", "ssm"], progress=False)
    result = run_study(cfg)
    assert [r.name for r in result.comparison.rows] == ["baseline-s0", "ssm-s0"]
    assert "Left out, diverged (too many non-finite steps in a row; the variant has no verdict): `gdn-s0`." in (
        result.report.read_text())
    assert trained == ["baseline", "gdn", "ssm"]
    run_study(cfg)  # nothing left to train: the diverged run is not trained again
    assert trained == ["baseline", "gdn", "ssm"]
    with pytest.raises(MemlabError, match=r"the baseline gdn diverged \(gdn-s0\): there is nothing to compare"):
        run_study(StudyConfig(preset=toy_preset, out_dir=str(tmp_path), variants=["baseline", "gdn"], baseline="gdn",
                              progress=False))
