"""`memlab eval` and `memlab compare` on the command line: results, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import memlab
from memlab.cli import main
from memlab.eval import schema


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, trained_baseline, byte_tok):
    path = tmp_path_factory.mktemp("cli_model")
    trained_baseline.save(path)
    byte_tok.save(path)
    return path


@pytest.fixture(scope="module")
def learned_dir(tmp_path_factory, byte_tok):
    """A model with learned absolute positions: it has none beyond max_seq_len (1024)."""
    path = tmp_path_factory.mktemp("learned_model")
    memlab.build_model("baseline", "tiny", vocab_size=byte_tok.vocab_size, d_model=32, n_layers=1, n_heads=1, d_ff=64,
                       max_seq_len=1024, pos_encoding="learned").save(path)
    byte_tok.save(path)
    return path


def fail(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("memlab: error: "), err
    return err


def test_eval_writes_results_and_prints_a_summary(model_dir, tmp_path, capsys):
    main(["eval", "--checkpoint", str(model_dir), "--suite", "algorithmic", "--tasks", "copy", "successor",
          "--samples", "2", "--grid", "iid", "--out_dir", str(tmp_path)])
    out = capsys.readouterr().out
    doc = schema.read_results(tmp_path / "results_algorithmic.json")
    assert set(doc["results"]["tasks"]) == {"copy", "successor"} and doc["metadata"]["checkpoint"] == str(model_dir)
    assert out.startswith("algorithmic: IID ") and "(n=6)" in out and "successor" in out


def test_eval_defaults_to_eval_dir_of_the_model(model_dir, capsys):
    main(["eval", "--checkpoint", str(model_dir), "--suite", "selftest"])
    assert "selftest: passed" in capsys.readouterr().out
    assert schema.read_results(model_dir / "eval" / "results_selftest.json")["results"]["passed"]


def test_a_checkpoint_other_than_the_runs_model_is_evaluated_into_its_own_dir(model_dir, tmp_path, capsys):
    """Every checkpoint of a run had written the run's eval/ files: they overwrote each other, and
    compare mixed their suites in one row."""
    import shutil

    run = tmp_path / "run"
    for step in ("step_4", "step_8"):
        shutil.copytree(model_dir, run / "checkpoints" / step, ignore=shutil.ignore_patterns("eval"))
    (run / "config.yaml").write_text("data: {}\n")
    main(["eval", "--checkpoint", str(run / "checkpoints" / "step_4"), "--suite", "selftest"])
    main(["eval", "--checkpoint", str(run), "--suite", "selftest"])  # the run's model: its newest checkpoint
    capsys.readouterr()
    step_4 = schema.read_results(run / "eval" / "step_4" / "results_selftest.json")
    own = schema.read_results(run / "eval" / "results_selftest.json")
    assert step_4["metadata"]["model_dir"].endswith("step_4") and own["metadata"]["model_dir"].endswith("step_8")


def test_eval_bad_input(model_dir, learned_dir, tmp_path, capsys):
    assert "no such checkpoint or model directory" in fail(capsys, "eval", "--checkpoint", str(tmp_path / "nope"))
    (tmp_path / "empty_run").mkdir()
    assert "holds no model" in fail(capsys, "eval", "--checkpoint", str(tmp_path / "empty_run"))
    partial = tmp_path / "run" / "checkpoints" / "step_10"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text((model_dir / "config.json").read_text())
    weights = (model_dir / "model.safetensors").read_bytes()
    (partial / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # cut off mid-write
    assert "cannot load weights" in fail(capsys, "eval", "--checkpoint", str(tmp_path / "run"))
    newer = tmp_path / "newer"
    newer.mkdir()
    config = json.loads((model_dir / "config.json").read_text())
    config["model"]["memory_kind"] = "from a newer memlab"
    config["memlab_version"] = "9.0.0"
    (newer / "config.json").write_text(json.dumps(config))
    (newer / "model.safetensors").write_bytes(weights)
    err = fail(capsys, "eval", "--checkpoint", str(newer))
    assert "unknown ModelConfig fields ['memory_kind']" in err and "written by memlab 9.0.0, newer than" in err
    err = fail(capsys, "eval", "--checkpoint", str(model_dir), "--suite", "vibes")
    assert "unknown suite 'vibes'; valid choices: ablation, algorithmic, all" in err
    err = fail(capsys, "eval", "--checkpoint", str(model_dir), "--suite", "algorithmic", "--tasks", "sorting")
    assert "unknown algorithmic task 'sorting'" in err
    err = fail(capsys, "eval", "--checkpoint", str(learned_dir), "--suite", "longctx", "--context-lengths", "4096")
    assert "learned positions end at max_seq_len=1024" in err  # (a RoPE model evaluates any length)
    assert "unknown device 'gpu'" in fail(capsys, "eval", "--checkpoint", str(model_dir), "--device", "gpu")


@pytest.mark.parametrize("flag, value", [("--ablation-samples", "0"), ("--needle-samples", "0"),
                                         ("--needle-samples", "-1"), ("--lm-context", "0"), ("--lm-tokens", "0"),
                                         ("--horizon-samples", "-2"), ("--horizons", "0"), ("--batch-tokens", "0"),
                                         ("--act-steps", "0")])  # (it had named the model field act_fixed_steps)
def test_eval_refuses_counts_below_one_before_any_work(model_dir, tmp_path, capsys, flag, value):
    err = fail(capsys, "eval", "--checkpoint", str(model_dir), "--suite", "selftest", "--out_dir", str(tmp_path),
               flag, value)
    assert f"{flag} must be >= 1, got {value}" in err
    assert not any(tmp_path.iterdir())  # no results file


def test_eval_refuses_an_out_dir_that_is_a_file_before_any_work(model_dir, tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    err = fail(capsys, "eval", "--checkpoint", str(model_dir), "--suite", "selftest", "--out_dir", str(tmp_path / "taken"))
    assert f"--out-dir {tmp_path / 'taken'} is a file, not a directory" in err  # had been a FileExistsError
    assert (tmp_path / "taken").read_text() == "mine"


def test_an_empty_list_flag_is_refused(model_dir, tmp_path, capsys):
    err = fail(capsys, "eval", "--checkpoint", str(model_dir), "--suite", "longctx", "--needle-tasks",
               "--out_dir", str(tmp_path))
    assert "--needle-tasks is empty" in err  # had meant every needle task


def test_eval_refuses_an_out_dir_that_cannot_be_made_before_any_work(model_dir, capsys):
    err = fail(capsys, "eval", "--checkpoint", str(model_dir), "--suite", "selftest", "--out_dir", "/proc/memlab/out")
    assert "--out-dir /proc/memlab/out cannot be made" in err  # had been a traceback once the suites were done


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--context-lengths", "100000"], "the needle context (--context-lengths)"),
        (["--needle-tasks", "sniah1", "--context-lengths", "64"], "sniah1"),  # the needle and question do not fit
        (["--context-lengths", "512", "--ablation-context", "100000"], "the ablation context (--ablation-context)"),
        (["--context-lengths", "512", "--lm-context", "100000"], "the lm window (--lm-context)"),
        # one whole window had been evaluated, more tokens than asked for
        (["--context-lengths", "512", "--lm-context", "128", "--lm-tokens", "64"], "less than one window of 128"),
    ],
)
def test_suite_all_refuses_what_a_later_suite_cannot_run_before_the_first_runs(
    learned_dir, tmp_path, capsys, monkeypatch, flags, fragment
):
    """--suite all had run the algorithmic suite (and others) in full, then stopped at the later suite."""
    from memlab.eval import hub

    hub.suite_names()  # registers the suites
    monkeypatch.setitem(hub.SUITES, "algorithmic", lambda ctx: pytest.fail("the first suite ran"))
    err = fail(capsys, "eval", "--checkpoint", str(learned_dir), "--suite", "all", "--corpus", "stdlib-docs",
               "--out_dir", str(tmp_path / "out"), *flags)
    assert fragment in err and not (tmp_path / "out" / "results_all.json").exists()


@pytest.mark.parametrize("config", ["train: [unclosed\n", "- a list\n"])
def test_eval_lm_names_a_garbled_config_of_the_run(model_dir, tmp_path, capsys, config):
    """The lm suite reads the run's config.yaml for its data: a garbled one had been a YAML traceback."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "best_model").mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.memlab.json"):
        (run / "best_model" / name).write_bytes((model_dir / name).read_bytes())
    (run / "config.yaml").write_text(config)
    err = fail(capsys, "eval", "--checkpoint", str(run), "--suite", "lm", "--lm-tokens", "64")
    assert str(run / "config.yaml") in err and ("is not valid YAML" in err or "must hold a mapping" in err)


def test_eval_fixes_the_act_steps_of_an_act_model(model_dir, tmp_path, byte_tok, shards, capsys):
    import memlab

    torch.manual_seed(0)
    act = memlab.build_model("act", "tiny", vocab_size=byte_tok.vocab_size, d_model=32, n_layers=1, n_heads=2,
                             max_seq_len=256, **{"recursion.act_min_steps": 1, "recursion.act_max_steps": 4})
    act.save(tmp_path)
    byte_tok.save(tmp_path)
    lm = ["--suite", "lm", "--corpus", str(shards), "--lm-tokens", "256", "--lm-context", "64"]
    main(["eval", "--checkpoint", str(tmp_path), *lm])
    adaptive = schema.read_results(tmp_path / "eval" / "results_lm.json")
    main(["eval", "--checkpoint", str(tmp_path), *lm, "--act-steps", "3"])
    fixed = schema.read_results(tmp_path / "eval" / "act_steps_3" / "results_lm.json")  # beside the first, not over it
    assert adaptive["metadata"]["config"]["recursion"]["act_fixed_steps"] is None
    assert fixed["metadata"]["config"]["recursion"]["act_fixed_steps"] == 3
    assert fixed["results"]["loss"] != adaptive["results"]["loss"]  # h^3, not the halting-weighted mixture
    capsys.readouterr()
    assert "ACT steps (--act-steps) needs an act model, not 'baseline'" in fail(
        capsys, "eval", "--checkpoint", str(model_dir), "--act-steps", "3")


def test_compare_refuses_a_newer_results_schema_in_a_real_process(model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    main(["eval", "--checkpoint", str(model_dir), "--suite", "selftest", "--out-dir", str(tmp_path / "own")])
    (run / "eval").mkdir(parents=True)
    doc = schema.read_results(tmp_path / "own" / "results_selftest.json")
    doc["schema_version"] = schema.SCHEMA_VERSION + 1
    (run / "eval" / "results_selftest.json").write_text(json.dumps(doc))
    p = subprocess.run([sys.executable, "-m", "memlab", "compare", str(run)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert f"schema_version {schema.SCHEMA_VERSION + 1} is newer than this memlab supports" in p.stderr
