"""`memlab train` on the command line: the source experiments' flags, YAML defaults, one-line errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import tyro
import yaml
from conftest import TINY_MODEL, cli_args, tiny_config

from memlab.cli import main
from memlab.data.text import prepare_shards
from memlab.data.tokenizer import build_tokenizer, load_tokenizer
from memlab.train import train
from memlab.train.config import TrainArgs

SOURCE_FLAGS = [  # flag, value, field, parsed value
    ("model_size", "nano", "model_size", "nano"),
    ("variant", "gdn", "variant", "gdn"),
    ("alg_tokens", "1000", "alg_tokens", 1000),
    ("total_tokens", "2000", "total_tokens", 2000),
    ("alg_tasks", "parity", "alg_tasks", ["parity"]),
    ("output_dir", "runs/x", "output_dir", "runs/x"),
    ("curriculum_cooldown", "7", "curriculum_cooldown", 7),
    ("curriculum_min_task_evals", "2", "curriculum_min_task_evals", 2),
    ("curriculum_jitter", "0.3", "curriculum_jitter", 0.3),
    ("task_curriculum_strategy", "dag", "task_curriculum_strategy", "dag"),
    ("eval_samples", "5", "eval_samples", 5),
    ("eval_max_new_tokens", "9", "eval_max_new_tokens", 9),
    ("tokenizer", "byte", "tokenizer", "byte"),
    ("seq_len", "128", "seq_len", 128),
    ("grad_accum", "4", "grad_accum", 4),
    ("warmup", "3", "warmup", 3),
    ("keep_last", "5", "keep_last", 5),
    ("retrieval_ratio", "0.25", "retrieval_ratio", 0.25),
]


def parse(argv: list[str]) -> TrainArgs:
    return tyro.cli(TrainArgs, args=argv, default=TrainArgs.defaults_from(argv))


@pytest.mark.parametrize("flag, value, name, expected", SOURCE_FLAGS)
def test_source_flags_work_with_underscores_and_hyphens(flag, value, name, expected):
    for spelling in (flag, flag.replace("_", "-")):
        assert getattr(parse([f"--{spelling}", value]).to_config(), name) == expected


def test_boolean_flags_and_model_overrides():
    cfg = parse(["--use_task_curriculum", "--compile", "--gdn.chunk_size", "32", "--d-model", "96",
                 "--attention.window", "16", "--tie_embeddings", "False"]).to_config()
    assert cfg.use_task_curriculum and cfg.compile
    assert cfg.model == {"d_model": 96, "tie_embeddings": False, "attention.window": 16, "gdn.chunk_size": 32}


def test_yaml_sets_defaults_and_the_command_line_wins(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("lr: 0.005\nseq_len: 64\nalg_tasks: [copy]\nmodel:\n  gdn.chunk_size: 16\n  d_model: 64\n")
    cfg = parse(["--config", str(yaml_file), "--seq-len", "32", "--d_model", "96"]).to_config()
    assert (cfg.lr, cfg.seq_len, cfg.alg_tasks) == (0.005, 32, ["copy"])
    assert cfg.model == {"gdn.chunk_size": 16, "d_model": 96}


def test_a_nested_model_mapping_and_a_flag_record_one_form_that_reads_back(tmp_path):
    """`model: {gdn: {chunk_size: 16}}` with `--gdn.chunk-size 8` had been recorded as both forms, and
    that config.yaml, given back as --config, died in the command-line parser (a traceback)."""
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("model:\n  gdn: {chunk_size: 16, beta_floor: 0.1}\n  attention__window: 8\n")
    cfg = parse(["--config", str(yaml_file), "--gdn.chunk-size", "8"]).to_config()
    assert cfg.model == {"gdn.chunk_size": 8, "gdn.beta_floor": 0.1, "attention.window": 8}
    recorded = tmp_path / "recorded.yaml"  # what an older memlab wrote
    recorded.write_text("model:\n  gdn: {chunk_size: 16}\n  gdn.chunk_size: 8\n")
    assert parse(["--config", str(recorded)]).to_config().model == {"gdn.chunk_size": 8}


def test_yaml_reads_an_exponent_without_a_dot_as_a_number(tmp_path):
    """PyYAML reads `3e-4` as a string (YAML 1.1), which `lr` had refused though `--lr 3e-4` works."""
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("lr: 3e-4\nweight_decay: 1E-2\nwarmup: 10\nmodel:\n  gdn.beta_floor: 5e-2\n")
    cfg = parse(["--config", str(yaml_file)]).to_config()
    assert (cfg.lr, cfg.weight_decay, cfg.warmup, cfg.model) == (3e-4, 1e-2, 10, {"gdn.beta_floor": 0.05})
    assert yaml.safe_load("lr: 3e-4") == {"lr": "3e-4"}  # PyYAML's own loader is left as it is


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("memlab: error: ")
    return err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--variant", "nope"], "unknown variant 'nope'; valid choices: "),
        (["--model-size", "huge"], "unknown size 'huge'"),
        (["--d_model", "100", "--n_heads", "3"], "not divisible"),
        (["--corpus", "none"], "--corpus none trains on tasks only"),
        (["--corpus", "none", "--alg_tokens", "64", "--total_tokens", "64", "--alg_tasks", "nope"], "unknown task"),
        (["--config", "/nonexistent/run.yaml"], "no such config file"),
        (["--config="], "--config needs a YAML file"),
        (["--config", "."], "--config . is a directory; give its YAML file (a run's is config.yaml)"),
        (["--resume", "--overwrite"], "exclude each other"),
        # each had been accepted (and trained) or had failed after the data was prepared, or in torch
        (["--beta1", "1.5"], "--beta1 must be in [0, 1), got 1.5"),
        (["--beta2", "-1"], "--beta2 must be in [0, 1), got -1.0"),
        (["--val_fraction", "1.5"], "--val_fraction must be in [0, 1), got 1.5"),
        (["--replay_fraction", "-1"], "--replay_fraction must be in [0, 1], got -1.0"),
        (["--retrieval_tasks", "niah", "--retrieval_ratio", "1.5"], "--retrieval_ratio must be in [0, 1], got 1.5"),
        (["--replay_fraction", "0.6", "--retrieval_tasks", "niah", "--retrieval_ratio", "0.6"], "at most 1, got 0.6 + 0.6"),
        # no language phase to share out: its tasks had counted as trained (in the best model's task loss)
        (["--corpus", "none", "--alg_tokens", "64", "--total_tokens", "64", "--retrieval_tasks", "mqar",
          "--retrieval_ratio", "0.5"], "no retrieval batch would be drawn; lower --alg_tokens"),
        (["--curriculum_jitter", "2"], "--curriculum_jitter must be in [0, 1], got 2.0"),
        (["--curriculum_threshold", "2"], "--curriculum_threshold must be in [0, 1], got 2.0"),
        (["--curriculum_cooldown", "-1"], "--curriculum_cooldown must be >= 0, got -1"),
        (["--eval_max_new_tokens", "0"], "--eval_max_new_tokens must be >= 1, got 0"),
        (["--corpus_max_docs", "0"], "--corpus_max_docs must be >= 1, got 0"),
        (["--device", "tpu"], "unknown device 'tpu'; valid: auto, cpu, cuda, cuda:N"),
        (["--corpus", "none", "--seed", "-1"], "--seed must be in [0, 2147483647], got -1"),  # had been numpy's
        (["--corpus", "none", "--seed", str(2**64)], "--seed must be in [0, 2147483647]"),  # traceback, each
        # a floor above the peak had made the schedule rise, a negative one a negative learning rate (the
        # same config, valid, fails later on --corpus none: the range check has to come first)
        (["--corpus", "none", "--min_lr_ratio", "1.5"], "need lr > 0 and 0 <= min_lr_ratio <= 1, got 0.001 and 1.5"),
        (["--corpus", "none", "--min_lr_ratio", "-0.1"], "need lr > 0 and 0 <= min_lr_ratio <= 1, got 0.001 and -0.1"),
        # non-finite values had trained (every step skipped, or NaN weights) or failed in torch
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--weight_decay", "inf"], "--weight_decay must be a finite number, got inf"),
        (["--grad_clip", "nan"], "--grad_clip must be a finite number, got nan"),
        (["--ssm.dt_max", "nan"], "ssm.dt_max must be a finite number, got nan"),
        (["--cdm.alpha_init", "inf"], "cdm.alpha_init must be a finite number, got inf"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, fragment, capsys, tmp_path):
    assert fragment in _error([*argv, "--output_dir", str(tmp_path / "run")], capsys)


@pytest.mark.parametrize(
    "argv, fragment",
    [(["--bogus", "1"], "Unrecognized options: --bogus"), (["--lr", "fast", "--gdn.chunk_size", "big"], "Error parsing"),
     # a choice error's list of choices had been cut where the terminal wrapped it
     (["--precision", "foo"], "Expected one of ('auto', 'fp32', 'bf16', 'fp16')")],
)
def test_parse_errors_are_one_line_and_exit_2(argv, fragment):
    p = subprocess.run([sys.executable, "-m", "memlab", "train", *argv], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and fragment in p.stderr


def test_two_config_files_are_refused(tmp_path, capsys):
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("lr: 0.005\n")
    a, b = str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")
    assert f"--config is given 2 times ({a}, {b}); give one file" in _error(["--config", a, f"--config={b}"], capsys)


def test_yaml_with_unknown_keys_is_refused(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("learning_rate: 1\n")
    err = _error(["--config", str(tmp_path / "run.yaml")], capsys)
    assert f"{tmp_path / 'run.yaml'}: unknown TrainConfig fields ['learning_rate']" in err  # which file holds it
    for text, fragment in [("model:\n  d_modle: 64\n", "unknown model field 'd_modle'; valid: vocab_size, d_model"),
                           ("model:\n  gdn: {chunk: 8}\n", "unknown model field 'gdn.chunk'; valid: "),
                           ("model:\n  variant: ssm\n", "unknown model field 'variant' (an option of its own"),
                           ("model:\n  size: nano\n", "unknown model field 'size' (an option of its own")]:
        (tmp_path / "run.yaml").write_text(text)  # (variant and size had been tracebacks in build_config)
        assert f"{tmp_path / 'run.yaml'}: {fragment}" in _error(["--config", str(tmp_path / "run.yaml")], capsys)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("lr: fast\n", "lr must be of type float, got 'fast'"),
        ("alg_tasks: copy\n", "alg_tasks must be of type list[str], got 'copy'"),  # had trained on tasks c, o, p, y
        ("model: 3\n", "model must be of type dict[str, Any], got 3"),
        ("model:\n  d_model: big\n", "model.d_model must be of type int, got 'big'"),
        ("model:\n  gdn: {chunk_size: [32]}\n", "model.gdn.chunk_size must be of type int, got [32]"),
        ("format: memlab-train-v1\n", "holds no `train:` mapping"),
        ("batch_size: true\n", "batch_size must be of type int, got True"),  # had been a batch of 1
        ("model:\n  n_layers: false\n", "model.n_layers must be of type int, got False"),
    ],
)
def test_yaml_values_of_the_wrong_type_are_refused(tmp_path, capsys, text, fragment):
    (tmp_path / "run.yaml").write_text(text)
    assert fragment in _error(["--config", str(tmp_path / "run.yaml")], capsys)


def test_a_yaml_file_that_is_not_text_is_refused(tmp_path, capsys):
    (tmp_path / "run.yaml").write_bytes(b"\xff\xfe\x00binary")
    assert "is not a text (UTF-8) YAML file" in _error(["--config", str(tmp_path / "run.yaml")], capsys)


def test_a_run_whose_every_checkpoint_is_broken_is_kept_not_restarted(tmp_path, capsys):
    """It had started afresh (after warnings) and pruned the broken checkpoints once it saved its own."""
    run = tmp_path / "run"
    cfg = tiny_config(run, steps=2, eval_samples=2, save_interval=1, keep_last=0)
    train(cfg)
    steps = sorted(p.name for p in (run / "checkpoints").iterdir())
    for step in steps:
        weights = run / "checkpoints" / step / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    for extra in ([], ["--resume"]):
        err = _error([*cli_args(cfg), *extra], capsys).splitlines()[-1]
        assert "no checkpoint in" in err and "is whole" in err and "--overwrite" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == steps


def test_a_directory_of_another_run_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, steps=2, eval_samples=2))
    other = cli_args(tiny_config(run, steps=2, eval_samples=2, lr=0.1))
    err = _error(other, capsys)
    assert "holds a different run (lr: 0.003 -> 0.1)" in err and "--resume" in err and "--overwrite" in err
    main(["train", *other, "--overwrite"])
    assert parse(["--config", str(run / "config.yaml")]).to_config() == tiny_config(run, steps=2, eval_samples=2, lr=0.1)

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert "holds no memlab run" in _error([*other[:-2], "--output_dir", str(tmp_path / "notes"), "--overwrite"], capsys)
    assert (tmp_path / "notes" / "todo.txt").exists()
    assert "no run in" in _error([*other[:-2], "--output_dir", str(tmp_path / "fresh"), "--resume"], capsys)


def test_a_checkpoint_is_not_an_output_dir(tmp_path, capsys):
    """A run had been started inside checkpoints/step_N (or best_model), rewriting its config.yaml."""
    run = tmp_path / "run"
    cfg = tiny_config(run, steps=2, eval_samples=2, save_interval=1)
    train(cfg)
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    for extra in ([], ["--overwrite"]):
        args = cli_args(tiny_config(checkpoint, steps=2, eval_samples=2))
        assert "is a checkpoint or model directory" in _error([*args, *extra], capsys)
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before


def test_overwrite_deletes_the_old_run_only_once_the_new_one_is_set_up(tmp_path, capsys):
    """--overwrite had emptied the directory before the new run's data and model were checked."""
    run = tmp_path / "run"
    train(tiny_config(run, steps=2, eval_samples=2))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for bad in (["--alg_tasks", "nope"], ["--seq_len", "4096"]):
        _error([*cli_args(tiny_config(run, steps=2, eval_samples=2)), *bad, "--overwrite"], capsys)
        assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_overwrite_through_a_symbolic_link_replaces_the_run_it_names(tmp_path, capsys):
    """--overwrite of an --output-dir that is a link had ended in "Cannot call rmtree on a symbolic link"."""
    (tmp_path / "runs" / "a").mkdir(parents=True)
    link = tmp_path / "current"
    link.symlink_to(tmp_path / "runs" / "a")
    train(tiny_config(link, steps=2, eval_samples=2))
    main(["train", *cli_args(tiny_config(link, steps=2, eval_samples=2, lr=0.1)), "--overwrite"])
    assert link.is_symlink()
    assert parse(["--config", str(tmp_path / "runs" / "a" / "config.yaml")]).to_config().lr == 0.1


def test_overwrite_of_a_run_in_a_mount_point_empties_it_in_place(tmp_path, capsys, monkeypatch):
    """A container's volume cannot be removed: --overwrite had deleted the old run's files, then failed
    on the directory itself ("Device or resource busy") and trained nothing."""
    import errno
    import os

    run = tmp_path / "volume"
    train(tiny_config(run, steps=2, eval_samples=2))
    remove_directory = os.rmdir

    def rmdir(path, *args, **kwargs):
        if str(path) == str(run.resolve()):
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        return remove_directory(path, *args, **kwargs)

    monkeypatch.setattr(os, "rmdir", rmdir)
    main(["train", *cli_args(tiny_config(run, steps=2, eval_samples=2, lr=0.1)), "--overwrite"])
    assert parse(["--config", str(run / "config.yaml")]).to_config().lr == 0.1
    assert (run / "summary.json").is_file()


def test_resume_keeps_the_model_and_the_tokens_already_trained(tmp_path, capsys):
    """A resume with another variant had trained the old weights on as the new one; one with fewer
    total tokens than trained had rewritten config.yaml and trained nothing."""
    run = tmp_path / "run"
    cfg = tiny_config(run, steps=4, eval_samples=2, save_interval=2)
    train(cfg)
    config = (run / "config.yaml").read_text()
    err = _error([*cli_args(dataclasses.replace(cfg, variant="shared_loop")), "--resume"], capsys)
    assert "--resume continues the model of" in err and "variant: 'baseline' -> 'shared_loop'" in err
    fewer = dataclasses.replace(cfg, total_tokens=cfg.total_tokens // 4, alg_tokens=cfg.total_tokens // 4)
    assert "more than --total_tokens" in _error([*cli_args(fewer), "--resume"], capsys)
    assert (run / "config.yaml").read_text() == config


def test_tokenizer_mismatch_with_existing_shards(tmp_path, text_corpus, capsys):
    data = tmp_path / "data"
    prepare_shards(text_corpus, "byte", data, val_fraction=0.2)
    err = _error(["--data_dir", str(data), "--tokenizer", "bpe", "--output_dir", str(tmp_path / "run")], capsys)
    assert "tokenizer mismatch" in err and str(data) in err
    err = _error(["--data_dir", str(data), "--corpus", "stdlib-docs", "--output_dir", str(tmp_path / "run")], capsys)
    assert "holds shards of files:" in err


def test_damaged_training_shards_are_one_line(tmp_path, text_corpus, capsys):
    data = tmp_path / "data"
    prepare_shards(text_corpus, "byte", data, val_fraction=0.2)
    for shard in data.glob("*.bin"):
        shard.write_bytes(b"\xff" * shard.stat().st_size)
    err = _error(["--data_dir", str(data), "--output_dir", str(tmp_path / "run"), "--total_tokens", "256",
                  "--seq_len", "32", "--batch_size", "2", "--eval_interval", "0", "--no-progress"], capsys)
    assert "fails its sha256 checksum (corrupt or modified); prepare the data again" in err  # at start-up


@pytest.mark.parametrize(
    "flags, fragment",
    [(["--fsdp"], "launch with torchrun"), (["--alg_tasks", "nope"], "unknown task 'nope'"),
     (["--retrieval_tasks", "niah:depth=abc"], "depth must be of type"), (["--seq_len", "4096"], "max_seq_len=2048")],
)
def test_what_can_be_refused_is_refused_before_the_data_is_prepared(tmp_path, capsys, monkeypatch, flags, fragment):
    """These had been reported after a corpus was tokenised (minutes on a real one)."""
    import memlab.train.data

    monkeypatch.setattr(memlab.train.data, "prepare_shards", lambda *a, **k: pytest.fail("the data was prepared"))
    assert fragment in _error(["--corpus", "stdlib-docs", "--output_dir", str(tmp_path / "run"), *flags], capsys)
    assert not (tmp_path / "run").exists()


def test_an_output_dir_inside_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    err = _error(["--corpus", "none", "--alg_tokens", "64", "--total_tokens", "64", "--output_dir",
                  str(tmp_path / "afile" / "run")], capsys)
    assert "is inside" in err and "which is a file" in err  # had been a NotADirectoryError traceback


def test_tokenizer_of_a_saved_run(tmp_path):
    """--tokenizer DIR takes the tokenizer a run saved (here a BPE), not a Hugging Face one of that name."""
    saved = tmp_path / "other_run"
    bpe = build_tokenizer("bpe", texts=["def f(x): return x * 2\n"] * 20, vocab_size=280)
    bpe.save(saved)
    run = train(tiny_config(tmp_path / "run", steps=1, tokenizer=str(saved), model=dict(TINY_MODEL, vocab_size=280)))
    assert load_tokenizer(run).hash == bpe.hash


@pytest.mark.parametrize("flag, value, used", [("val_fraction", "0.5", "0.2"), ("corpus_max_docs", "5", "None")])
def test_prepared_data_dir_refuses_other_split_options(tmp_path, text_corpus, capsys, flag, value, used):
    data = tmp_path / "data"
    prepare_shards(text_corpus, "byte", data, val_fraction=0.2)
    err = _error(["--data_dir", str(data), f"--{flag}", value, "--output_dir", str(tmp_path / "run")], capsys)
    assert f"the shards in {data} were prepared with {flag}={used}, not --{flag} {value}" in err
    assert "new --data-dir" in err
