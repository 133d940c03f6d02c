"""The command line: real commands, one-line errors with exit code 2."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys

import pytest
import torch
from local_tokenizers import metaspace_tokenizer

from memlab.cli import COMMANDS, main
from memlab.provenance import provenance


def run_cli(*args: str, cwd: str | os.PathLike | None = None) -> tuple[int, str, str]:
    """``memlab *args`` in a subprocess, in ``cwd`` (a relative --out had gone into the checkout)."""
    p = subprocess.run([sys.executable, "-m", "memlab", *args], capture_output=True, text=True, timeout=120,
                       cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def test_info_reports_measured_counts(capsys):
    main(["info", "--variant", "baseline", "--model_size", "tiny", "--context-len", "100"])
    out = capsys.readouterr().out
    import memlab

    assert f"params: {memlab.build_model('baseline', 'tiny').num_params()}" in out
    assert "layer_pattern: AAAA" in out and "state_bytes_per_sequence: " in out


def test_info_counts_with_another_vocabulary(capsys):
    """--vocab-size gives the counts of the source cards' GPT-2 vocabulary (cdm_v3: 37.1M there)."""
    import memlab

    main(["info", "--variant", "cdm_v3", "--vocab-size", "50257"])
    out = capsys.readouterr().out
    assert f"params: {memlab.build_model('cdm_v3', 'tiny', vocab_size=50257).num_params()}" in out
    assert "vocab_size: 50257" in out


def test_info_all_is_a_markdown_table(capsys):
    main(["info", "--all"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| variant |") and any(line.startswith("| baseline | tiny |") for line in out)


def test_info_all_lists_the_variants_a_size_cannot_build_after_the_others(capsys):
    """A hybrid needs two layers for its pattern; at one layer it had failed the whole table without a name."""
    main(["info", "--all", "--model-size", "d32l1"])
    out = capsys.readouterr().out
    assert "| gdn | d32l1 |" in out and "| gdn_hybrid |" not in out
    assert "`gdn_hybrid` is left out at d32l1: n_layers=1 cuts the layer pattern 'GW' to 'G'" in out
    main(["info", "--all", "--context-len", "4096"])  # (nano_baseline's figures at 4096 had been given)
    out = capsys.readouterr().out
    assert "| baseline | tiny |" in out and "| nano_baseline |" not in out
    assert "`nano_baseline` is left out at tiny: nano_baseline's learned positions end at max_seq_len=2048: it " \
           "cannot run --context-len 4096" in out


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["info", "--variant", "nope"], "unknown variant 'nope'"),
        (["info", "--bogus", "1"], "Unrecognized options: --bogus"),
        (["info", "--context-len", "x"], "--context-len"),
        (["info", "--vocab-size", "0"], "--vocab-size must be >= 1, got 0"),
        (["info", "--variant", ""], "--variant is empty"),  # had described baseline
        (["info", "--context-len", "0"], "--context-len must be >= 1, got 0"),
        ([], "give a command: bench, compare, data prepare, eval"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["data"], "give a subcommand: data prepare"),
        (["info", "--all", "--variant", "gdn"], "give it or --variant, not both"),
        (["data", "prepare", "--source", "stdlib-code", "--out", "x", "--streaming"], "streaming is for hf:"),
        (["data", "prepare", "--source", "stdlib-docs", "--out", "x", "--text-field", "body"], "has no fields"),
        (["data", "prepare", "--source", "stdlib-docs", "--out", "x", "--vocab-size", "0"], "vocab_size=0 is too small"),
        (["data", "prepare", "--source", "stdlib-docs", "--out", "x", "--bpe-train-bytes", "0"],
         "bpe_train_bytes must be positive"),
        (["probe"], "Missing from memlab probe: --checkpoint"),
        (["generate", "--init", "--variant", "nano_baseline", "--prompt", "hi", "--max-new-tokens", "5000"],
         "2 prompt tokens and 5000 new ones exceed max_seq_len=2048 of this model's learned positions"),
        # options that had been ignored
        (["generate", "--checkpoint", "x", "--variant", "gdn", "--prompt", "hi"], "a checkpoint has its own"),
        (["data", "prepare", "--source", "stdlib-docs", "--out", "x", "--tokenizer", "byte", "--vocab-size", "300"],
         "--tokenizer byte has its own"),
        # a directory the file system refuses had been an OSError traceback
        (["data", "prepare", "--source", "stdlib-docs", "--out", "/proc/memlab-test/data", "--tokenizer", "byte"],
         "No such file or directory: '/proc/memlab-test'"),
        (["train", "--variant", "gdn", "--bogus"], "Unrecognized options: --bogus"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args, fragment, tmp_path):
    code, out, err = run_cli(*args, cwd=tmp_path)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("memlab: error:") and fragment in err


def test_a_bad_value_wrapped_onto_the_next_line_is_named():
    """In an 80-column box the value falls on the line after "...base 10:"; the flag had stood in for it."""
    p = subprocess.run([sys.executable, "-m", "memlab", "generate", "--init", "--prompt", "a", "--max-new-tokens",
                        "abc"], capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "Error parsing --max-new-tokens: invalid literal for int() with base 10: 'abc'" in p.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "--lr", "fast"], "Error parsing --lr: could not convert string to float: 'fast'"),
    (["train", "--variant", "gdn", "--bogus"], "Unrecognized options: --bogus"),
    (["eval", "--checkpoint", "x", "--grid", "bogus"], "invalid choice 'bogus' for argument '--grid'. Expected one of"),
])
def test_parse_errors_say_what_is_wrong_where_stdout_is_not_utf8(args, message):
    """Without UTF-8, tyro draws no box but a title over a rule; the title ("Value error") had been
    the whole message."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    p = subprocess.run([sys.executable, "-m", "memlab", *args], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and message in p.stderr


def test_an_interrupt_is_one_line(monkeypatch, capsys):
    """Ctrl-C had printed a KeyboardInterrupt traceback (the trainer records it and keeps its checkpoints)."""
    from memlab import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "info", (cli.COMMANDS["info"][0], interrupted))
    with pytest.raises(SystemExit) as exit_:
        main(["info"])
    assert exit_.value.code == 130 and capsys.readouterr().err == "memlab: interrupted\n"


def test_an_interrupt_while_the_command_line_loads_is_one_line(monkeypatch, capsys):
    """Ctrl-C in the seconds torch takes to import had printed a traceback and died of SIGINT."""
    from memlab import launcher

    class Interrupted:  # the import of the command line's modules, cut off
        def find_spec(self, name, path=None, target=None):
            if name == "memlab.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "memlab.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupted(), *sys.meta_path])
    with pytest.raises(SystemExit) as exit_:
        launcher.main()
    assert exit_.value.code == 130 and capsys.readouterr().err == "memlab: interrupted\n"


def stderr_of(bodies: dict[str, str], *argvs: list[str]) -> str:
    """What ``cli.main(argv)`` for each of ``argvs`` writes on stderr in a fresh interpreter (logging not
    yet set up), each command of ``bodies`` running that code instead (with ``log``, a memlab logger)."""
    lines = ["import logging; from memlab import cli", "log = logging.getLogger('memlab.x')"]
    lines += [f"cli.COMMANDS[{name!r}] = (cli.COMMANDS[{name!r}][0], lambda args: ({code}))"
              for name, code in bodies.items()]
    lines += [f"cli.main({argv!r})" for argv in argvs]
    p = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stderr


def test_every_command_prints_its_warnings_with_its_name():
    """export, generate, compare, scale, bench and data prepare had left logging unset: their warnings came
    out bare (Python's last-resort handler)."""
    logged = stderr_of({"export": "log.warning('a warning'), log.info('progress')"},
                       ["export", "--checkpoint", "a", "--out", "b"])
    assert logged == "memlab export: a warning\n"  # (its progress is printed, not logged)


def test_a_later_command_in_the_same_process_logs_with_its_own_name_and_level():
    """The first command's logging had stuck: after `info` (warnings only), `eval`'s progress was silent."""
    logged = stderr_of({"info": "log.info('hidden')", "probe": "log.info('shown')"}, ["info"], ["probe", "--checkpoint", "x"])
    assert logged == "memlab probe: shown\n"


def test_python_dash_m_memlab_goes_through_the_launcher(monkeypatch):
    """``python -m memlab`` (the torchrun form) had no entry: ``-m memlab.cli`` skipped the launcher,
    so Ctrl-C while torch loaded printed a traceback."""
    import runpy

    from memlab import launcher

    calls = []
    monkeypatch.setattr(launcher, "main", lambda: calls.append("launcher"))
    monkeypatch.delitem(sys.modules, "memlab.__main__", raising=False)
    runpy.run_module("memlab", run_name="__main__")
    assert calls == ["launcher"]


def test_sigterm_ends_a_run_as_an_interrupt_does(monkeypatch, capsys):
    """SIGTERM (a scheduler's preemption, torchrun stopping workers) had killed a run with no summary
    and no message; it now reaches the command as an interrupt, and the handler before it comes back."""
    import os
    import signal

    from memlab import cli

    seen = []

    def terminated(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:  # what the trainer catches to record status "interrupted"
            seen.append("interrupt")
            raise

    monkeypatch.setitem(cli.COMMANDS, "info", (cli.COMMANDS["info"][0], terminated))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_:
        main(["info"])
    assert exit_.value.code == 143 and capsys.readouterr().err == "memlab: terminated\n" and seen == ["interrupt"]
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("command", [["eval"], ["probe"], ["data", "prepare"], ["study"]])
def test_only_train_runs_under_torchrun(command, capsys, monkeypatch):
    """Every process had run the whole evaluation, racing for the same results files (audit)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_:
        main(command)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"memlab: error: memlab {' '.join(command)} runs in one process; under " \
                                      "torchrun only memlab train does\n"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_states_each_default_once(command, capsys, monkeypatch):
    """An option whose None stands for a default its help states had read "(default: 8192) (default: None)"."""
    monkeypatch.setenv("COLUMNS", "1000")  # one option per line
    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "--help" in out
    stated_twice = [line for line in out.splitlines() if re.search(r"default[:=]? .*\(default: None\)", line)]
    assert not stated_twice


def test_version_is_the_one_results_files_record(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"memlab {provenance()['memlab_version']}\n"


def test_a_library_that_prints_its_own_log_is_not_printed_twice(monkeypatch, capsys):
    """huggingface_hub's logger has its own handler: every offline retry had come twice, once with memlab's prefix."""
    import io
    import logging

    from memlab.cli import _log_progress

    monkeypatch.setattr(logging.root, "handlers", [])  # as in a fresh process (pytest's own are set aside)
    monkeypatch.setattr(logging.root, "level", logging.root.level)  # (basicConfig sets it)
    own = io.StringIO()
    library = logging.getLogger("a_library_with_a_handler")
    monkeypatch.setattr(library, "handlers", [logging.StreamHandler(own)])
    _log_progress("memlab test")
    library.warning("retrying")
    logging.getLogger("memlab.somewhere").warning("memlab's own")
    assert own.getvalue() == "retrying\n"
    assert capsys.readouterr().err == "memlab test: memlab's own\n"


def test_a_command_group_lists_its_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("usage: memlab data {prepare}") and "Tokenise a corpus" in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        # an empty path had written into the working directory, an empty name had meant the default
        (["eval", "--checkpoint", "run", "--out-dir", ""], "--out-dir is empty"),
        (["data", "prepare", "--source", "stdlib-docs", "--tokenizer", "byte", "--out", ""], "--out is empty"),
        (["train", "--output-dir", ""], "--output-dir is empty"),
        (["train", "--corpus", "", "--output-dir", "run"], "--corpus is empty"),
        (["eval", "--checkpoint", "run", "--corpus", ""], "--corpus is empty"),  # (an option of the suites)
        (["generate", "--init", "--prompt", ""], "--prompt is empty"),
        # these had ended in a traceback
        (["generate", "--init", "--prompt", "\udcff\udcfe"], "--prompt is not UTF-8 text"),  # bytes the shell gave
        (["eval", "--checkpoint", "run", "--seed", "-1"], "--seed must be in [0, 2147483647], got -1"),  # had run
        (["train", "--tokenizer", "notes.txt", "--output-dir", "run"], "tokenizer notes.txt is a file; give a "
         "directory that holds a tokenizer"),  # had been told to download it with `hf download notes.txt`
        (["train", "--config", "twice.yaml"], "twice.yaml is not valid YAML: the key 'lr' is given twice (line 2)"),
    ],
)
def test_values_that_had_been_taken_or_crashed_are_one_line(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a tokenizer")
    (tmp_path / "twice.yaml").write_text("lr: 0.002\nlr: 0.003\n")  # (the last one had won without a word)
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("memlab: error: ") and fragment in err
    written = sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock")  # (a run's lock stays beside it)
    assert written == ["notes.txt", "twice.yaml"]


def test_a_yaml_merge_key_may_be_overridden_in_its_mapping(tmp_path):
    from memlab.train.config import read_yaml

    (tmp_path / "run.yaml").write_text("base: &base {lr: 0.001, seq_len: 64}\nrun:\n  <<: *base\n  lr: 0.002\n")
    assert read_yaml(tmp_path / "run.yaml")["run"] == {"lr": 0.002, "seq_len": 64}


def test_an_option_of_a_mixer_the_model_lacks_is_warned_of_once(caplog):
    """--gdn.beta_floor for baseline had been taken without a word."""
    from memlab.config import build_config

    with caplog.at_level("WARNING", logger="memlab.config"):
        build_config("baseline", "tiny", **{"gdn.beta_floor": 0.5, "attention.window": 64})
        build_config("baseline", "tiny", **{"gdn.beta_floor": 0.5})
        build_config("gdn_hybrid", "tiny", **{"gdn.beta_floor": 0.5, "ssm.d_state": 16})
    assert [r.getMessage() for r in caplog.records] == [
        "gdn.beta_floor has no effect: baseline (layer pattern 'A') has no D/G/W layer",
        "ssm.d_state has no effect: gdn_hybrid (layer pattern 'GGGW') has no M layer",
    ]


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
        (["--max-new-tokens", "-5"], "--max-new-tokens must be >= 1, got -5"),
        (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
        (["--temperature", "nan"], "--temperature must be a finite number >= 0"),
        (["--temperature", "1", "--top-k", "0"], "--top-k must be >= 1, got 0"),
        (["--temperature", "1", "--top-k", "-3"], "--top-k must be >= 1, got -3"),
        (["--temperature", "1", "--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
        (["--temperature", "1", "--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
        (["--seed", "-1"], "--seed must be in [0, 2147483647], got -1"),
        (["--seed", "99999999999999999999999"], "--seed must be in [0, 2147483647]"),  # had been torch's traceback
        (["--top-k", "5"], "--top-k restricts sampling, but --temperature 0 decodes greedily; give --temperature > 0"),
        (["--top-p", "0.9"], "--top-p restricts sampling, but --temperature 0 decodes greedily"),
    ],
)
def test_generate_refuses_bad_sampling_options(flags, fragment, capsys):
    """They had run (a negative count, a negative temperature) or crashed in torch (top-k 0, nan)."""
    with pytest.raises(SystemExit) as e:
        main(["generate", "--init", "--prompt", "hi", *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("memlab: error: ") and fragment in err


@pytest.mark.parametrize(
    "argv, advice",
    [
        (["generate", "--init", "--prompt", "-x = 1"], ": '-x = 1' reads as a flag; write --prompt='-x = 1' (see"),
        (["generate", "--init", "--prompt", "--"], ": '--' reads as a flag; write --prompt=-- (see"),
        (["generate", "--init", "--prompt"], ". (see"),  # no value at all: nothing to advise
    ],
)
def test_a_value_starting_with_a_dash_is_shown_how_to_be_given(argv, advice, capsys):
    """argparse reads it as a flag and reported only a missing value, with no way out."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("memlab: error: Missing value for argument '--prompt'. Expected 1 values") and advice in err


def test_generate_samples_with_a_tiny_temperature_and_a_nucleus(capsys):
    """A temperature of 1e-39 had overflowed the logits to a crash in torch.multinomial."""

    def generate(*flags: str) -> str:
        main(["generate", "--init", "--prompt", "hello", "--max-new-tokens", "6", *flags])
        return capsys.readouterr().out

    greedy = generate()
    assert generate("--temperature", "1e-39") == greedy  # the limit of sampling is greedy decoding
    assert generate("--temperature", "1e-46") == greedy  # below float32's smallest number too
    assert generate("--temperature", "1", "--top-p", "1e-9") == greedy  # a nucleus of one token


def test_generate_with_top_k_1_is_greedy(capsys):
    def generate(*flags: str) -> str:
        main(["generate", "--init", "--prompt", "hello", "--max-new-tokens", "6", *flags])
        return capsys.readouterr().out

    greedy = generate()
    assert generate("--temperature", "1", "--top-k", "1") == greedy
    assert generate("--temperature", "1") != greedy  # (so that --top-k 1 is what makes it greedy)


def test_generate_prints_the_text_without_its_end_of_text_token(monkeypatch, capsys):
    from memlab.data.tokenizer import build_tokenizer
    from memlab.models.lm import LanguageModel

    tok = build_tokenizer("byte")
    ending = torch.tensor([[*tok.encode("!"), tok.eos_id]])
    monkeypatch.setattr(LanguageModel, "generate", lambda self, ids, *args: torch.cat([ids, ending], dim=1))
    main(["generate", "--init", "--prompt", "hello", "--max-new-tokens", "6"])
    assert capsys.readouterr().out == "hello!\n"


def test_data_prepare_passes_max_docs_and_the_split_seed(tmp_path, capsys):
    import json

    headers = []
    for seed in (1, 2):
        out = tmp_path / f"seed{seed}"
        main(["data", "prepare", "--source", "stdlib-docs", "--out", str(out), "--tokenizer", "byte",
              "--max-docs", "3", "--val-fraction", "0.5", "--split-seed", str(seed)])
        headers.append(json.loads((out / "shards.json").read_text()))
    for seed, header in zip((1, 2), headers):
        assert sum(split["documents"] for split in header["splits"].values()) == 3
        assert (header["request"]["max_docs"], header["request"]["split_seed"]) == (3, seed)
    assert headers[0]["splits"]["val"]["shards"] != headers[1]["splits"]["val"]["shards"]  # other documents


def test_compare_passes_its_criteria_and_aggregate_seeds(monkeypatch, capsys, tmp_path):
    from types import SimpleNamespace

    from memlab.analysis import compare as compare_module

    calls = []

    def spy(runs, out_dir, baseline, aggregate_seeds, criteria):
        calls.append((runs, out_dir, baseline, aggregate_seeds, criteria))
        return SimpleNamespace(terminal="table", files=[])

    monkeypatch.setattr(compare_module, "compare", spy)
    main(["compare", "a", "b", "--out-dir", str(tmp_path), "--baseline", "a", "--aggregate-seeds",
          "--min-alg-gain", "0.1", "--max-time-ratio", "3", "--max-ppl-ratio", "1.2"])
    assert calls == [(["a", "b"], str(tmp_path), "a", True, compare_module.Criteria(0.1, 3.0, 1.2))]
    main(["compare", "a"])
    assert calls[1][3] is False and calls[1][4] == compare_module.Criteria(0.05, 2.0, 1.5)


def test_a_tokenizer_other_than_the_trained_one_is_refused_though_it_fits(tmp_path, capsys):
    """An export's tokenizer swapped for another one no larger had generated garbage without a word."""
    import json

    import memlab
    from memlab.data.tokenizer import build_tokenizer

    memlab.build_model("baseline", "tiny").save(tmp_path)  # 512 ids
    byte = build_tokenizer("byte")  # 261 ids
    byte.save(tmp_path)
    summary = tmp_path / "summary.json"
    for recorded, fails in ((byte.hash, False), ("0123456789abcdef", True)):
        summary.write_text(json.dumps({"metadata": {"tokenizer_hash": recorded}}))
        with pytest.raises(SystemExit) if fails else contextlib.nullcontext() as e:
            main(["generate", "--checkpoint", str(tmp_path), "--prompt", "hi", "--max-new-tokens", "2"])
        err = capsys.readouterr().err
        assert not fails or (e.value.code == 2 and "is not the one the model was trained with (0123456789ab)" in err)


def test_generate_prints_the_space_a_sentencepiece_tokenizer_decodes_before_a_word(tmp_path, capsys, monkeypatch):
    """A continuation decoded alone loses its leading meta-space: "hello" + "world" had been printed for
    the ids of "hello world"."""
    import memlab
    from memlab.models.lm import LanguageModel

    tokenizer = metaspace_tokenizer("hello world hello world")
    memlab.build_model("baseline", "tiny", vocab_size=tokenizer.vocab_size).save(tmp_path)
    tokenizer.save(tmp_path)
    world = tokenizer.encode("hello world")[len(tokenizer.encode("hello")) :]
    assert tokenizer.decode(world) == "world"  # alone: no space

    def say_world(self, ids, max_new_tokens, *args, **kwargs):
        return torch.cat([ids, torch.tensor([world])], dim=1)

    monkeypatch.setattr(LanguageModel, "generate", say_world)
    main(["generate", "--checkpoint", str(tmp_path), "--prompt", "hello", "--max-new-tokens", str(len(world))])
    assert capsys.readouterr().out == "hello world\n"


def test_generate_refuses_a_tokenizer_of_another_model(tmp_path, capsys):
    """A prompt id beyond the model's vocabulary had been an IndexError in the embedding."""
    import memlab
    from memlab.data.tokenizer import build_tokenizer

    memlab.build_model("baseline", "tiny", vocab_size=100).save(tmp_path)
    build_tokenizer("byte").save(tmp_path)  # 261 ids
    with pytest.raises(SystemExit) as e:
        main(["generate", "--checkpoint", str(tmp_path), "--prompt", "zzz", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "has 261 ids but the model only 100" in err


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (b"\xff\xfe garbage", "corrupt"),  # not UTF-8
        ({"layer_pattern": 3}, "layer_pattern must be of type str, got 3"),
        ({"d_model": "32"}, "d_model must be of type int, got '32'"),
        ({"attention": None}, "attention must be of type AttentionConfig, got None"),  # these three had been tracebacks
    ],
)
def test_a_damaged_model_config_is_one_line(tmp_path, capsys, damage, fragment):
    import json

    import memlab
    from memlab.data.tokenizer import build_tokenizer

    memlab.build_model("baseline", "tiny", d_model=32, n_layers=1, n_heads=2, d_ff=64).save(tmp_path)
    build_tokenizer("byte").save(tmp_path)
    config = tmp_path / "config.json"
    if isinstance(damage, bytes):
        config.write_bytes(damage)
    else:
        meta = json.loads(config.read_text())
        meta["model"].update(damage)
        config.write_text(json.dumps(meta))
    with pytest.raises(SystemExit) as e:
        main(["generate", "--checkpoint", str(tmp_path), "--prompt", "hi"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and fragment in err and "config.json" in err
