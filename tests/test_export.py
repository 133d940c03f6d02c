"""`memlab export`: a self-contained model directory that memlab.load reads back, with a model card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import memlab
from memlab.cli import main
from memlab.data.tokenizer import build_tokenizer, load_tokenizer
from memlab.errors import MemlabError
from memlab.eval import schema
from memlab.export import export


def results_doc(model_dir, suite: str, results: dict) -> dict:
    metadata = {field: None for field in schema.METADATA_FIELDS} | {"model_dir": str(model_dir)}
    return schema.document(suite, metadata, results)


@pytest.fixture
def run_dir(tmp_path):
    """A training run as the trainer lays it out: config, best_model/, a checkpoint, summary, eval results."""
    run = tmp_path / "run"
    torch.manual_seed(0)
    tok = build_tokenizer("byte")
    model = memlab.build_model("baseline", "tiny", vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2)
    for sub in ("best_model", "checkpoints/step_4"):
        model.save(run / sub)
        tok.save(run / sub)
    (run / "config.yaml").write_text("format: memlab-train-v1\n")
    summary = {"status": "completed", "steps": 4, "tokens_seen": 4096, "final": {"val_loss": 3.25}, "metadata": {}}
    (run / "summary.json").write_text(json.dumps(summary))
    lm = {"corpus": "stdlib-docs", "context_len": 64, "tokens": 512, "windows": 8, "loss": 3.5,
          "perplexity": 33.1, "loss_ci95": [3.4, 3.6], "perplexity_ci95": [30.0, 36.6], "tokens_per_s": 1e4}
    schema.write_results(run / "eval" / "results_lm.json", results_doc(run / "best_model", "lm", lm))
    other = {"checks": {"loads": {"passed": True}}, "passed": True}  # evaluated on another checkpoint
    schema.write_results(run / "eval" / "results_selftest.json",
                         results_doc(run / "checkpoints" / "step_4", "selftest", other))
    return run


def test_export_round_trips_the_model_and_tokenizer(run_dir, tmp_path):
    out = export(run_dir, tmp_path / "export")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.memlab.json", "README.md", "summary.json"} <= names
    original, exported = memlab.load(run_dir), memlab.load(out)
    ids = torch.randint(0, 261, (2, 17))
    assert torch.equal(original(ids), exported(ids))
    assert load_tokenizer(out).hash == build_tokenizer("byte").hash
    generated = exported.generate(ids[:1, :5], max_new_tokens=4)
    assert torch.equal(generated, original.generate(ids[:1, :5], max_new_tokens=4))
    (tmp_path / "made_alike").mkdir()  # the export had been owner-only (0700), as a temporary directory is
    assert out.stat().st_mode & 0o777 == (tmp_path / "made_alike").stat().st_mode & 0o777


def test_model_card_has_architecture_training_and_this_models_results(run_dir, tmp_path):
    out = export(run_dir, tmp_path / "export")
    card = (out / "README.md").read_text()
    model = memlab.load(out)
    assert "# memlab baseline (tiny)" in card and f"{model.num_params():,}" in card
    assert "memlab.load(PATH)" in card and "| final.val_loss | 3.25 |" in card
    assert "| `results_lm.json` | lm | perplexity | 33.1 | [30, 36.6] | 8 |" in card
    assert "selftest" not in card  # those results belong to checkpoints/step_4, not best_model/
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["results_lm.json"]


def test_each_row_of_the_model_card_names_the_results_file_it_came_from(run_dir, tmp_path):
    """lm alone and lm inside `eval --suite all`: two measurements, which the card had listed as two
    unlabelled rows of one metric."""
    lm = {**json.loads((run_dir / "eval" / "results_lm.json").read_text())["results"], "perplexity": 34.0}
    schema.write_results(run_dir / "eval" / "results_all.json", results_doc(run_dir / "best_model", "all", {"lm": lm}))
    card = (export(run_dir, tmp_path / "export") / "README.md").read_text()
    assert "| file | suite | metric | value | 95% CI | n |" in card
    assert "| `results_all.json` | lm | perplexity | 34 | [30, 36.6] | 8 |" in card
    assert "| `results_lm.json` | lm | perplexity | 33.1 | [30, 36.6] | 8 |" in card


def test_results_of_weights_saved_over_since_are_left_out(run_dir, tmp_path):
    """A best_model replaced by more training had been exported with the old weights' perplexity (audit)."""
    from memlab.paths import weights_sha256

    doc = json.loads((run_dir / "eval" / "results_lm.json").read_text())
    doc["metadata"]["weights_sha256"] = weights_sha256(run_dir / "best_model")  # as memlab eval records it
    schema.write_results(run_dir / "eval" / "results_lm.json", doc)
    assert (export(run_dir, tmp_path / "same") / "eval" / "results_lm.json").is_file()
    torch.manual_seed(1)
    memlab.build_model("baseline", "tiny", vocab_size=261, d_model=32, n_layers=2, n_heads=2).save(run_dir / "best_model")
    out = export(run_dir, tmp_path / "later")
    assert not (out / "eval").exists() and "33.1" not in (out / "README.md").read_text()


def test_the_results_exported_are_those_of_the_weights_loaded(run_dir, tmp_path, monkeypatch):
    """best_model saved again between the load and the choice of results: the new weights' results had
    been exported beside the old weights."""
    import memlab.export as export_module
    from memlab.eval.hub import Loaded

    doc = json.loads((run_dir / "eval" / "results_lm.json").read_text())
    doc["metadata"]["weights_sha256"] = "f" * 64  # the weights loaded, since saved over
    schema.write_results(run_dir / "eval" / "results_lm.json", doc)
    load = export_module.load_checkpoint

    def loaded_then_saved_over(path, device):
        return Loaded(*load(path, device)[:3], "f" * 64)

    monkeypatch.setattr(export_module, "load_checkpoint", loaded_then_saved_over)
    assert (export(run_dir, tmp_path / "out") / "eval" / "results_lm.json").is_file()


def test_an_export_evaluated_again_still_compares_with_the_results_it_carries(run_dir, tmp_path, caplog):
    """The carried results name the run's best_model, the new ones the export: compare had dropped the
    carried ones as "another model of the run", though both record the same weights."""
    from memlab.analysis.compare import load_payloads
    from memlab.paths import weights_sha256

    weights = weights_sha256(run_dir / "best_model")
    doc = json.loads((run_dir / "eval" / "results_lm.json").read_text())
    doc["metadata"] |= {"weights_sha256": weights, "timestamp": "2026-01-01T00:00:00"}
    schema.write_results(run_dir / "eval" / "results_lm.json", doc)
    out = export(run_dir, tmp_path / "export")
    again = results_doc(out, "selftest", {"checks": {"loads": {"passed": True}}, "passed": True})
    again["metadata"] |= {"weights_sha256": weights, "timestamp": "2026-01-02T00:00:00"}
    schema.write_results(out / "eval" / "results_selftest.json", again)
    payloads, *_ = load_payloads(out)
    assert set(payloads) == {"lm", "selftest"} and payloads["lm"]["perplexity"] == 33.1
    assert "left out of the comparison" not in caplog.text


def test_exporting_a_checkpoint_then_the_export_keeps_its_summary_and_results(run_dir, tmp_path):
    first = export(run_dir / "checkpoints" / "step_4", tmp_path / "a")
    second = export(first, tmp_path / "b")
    for out in (first, second):
        assert sorted(p.name for p in (out / "eval").iterdir()) == ["results_selftest.json"]
        card = (out / "README.md").read_text()
        assert "| selftest | passed | True | - | - |" in card and "| steps | 4 |" in card
    ids = torch.randint(0, 261, (1, 9))
    assert torch.equal(memlab.load(first)(ids), memlab.load(second)(ids))
    assert "| weights of training step | 4 |" in (first / "README.md").read_text()  # the card had not said
    assert "other weights" not in (first / "README.md").read_text()  # the run ended at step 4: its own numbers
    (run_dir / "checkpoints" / "step_2").mkdir()
    for f in (run_dir / "checkpoints" / "step_4").iterdir():
        (run_dir / "checkpoints" / "step_2" / f.name).write_bytes(f.read_bytes())
    earlier = (export(run_dir / "checkpoints" / "step_2", tmp_path / "c") / "README.md").read_text()
    assert "The summary of the whole run: its `final.*` fields (step 4) are of other weights than these (step 2)." \
        in earlier


def test_the_model_card_says_which_summary_fields_are_of_other_weights(run_dir, tmp_path):
    """A best model older than the run's end: the card had called best.* (of these very weights) another
    model's, and said nothing of it on the last checkpoint's card."""
    acc = {"copy": {"acc": 0.5, "step": 2}, "parity": {"acc": 0.7, "step": 4}}
    summary = json.loads((run_dir / "summary.json").read_text()) | {"best": {"step": 2, "val_loss": 3.0, "acc": acc}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "checkpoints" / "step_2").mkdir()
    for f in (run_dir / "checkpoints" / "step_4").iterdir():
        (run_dir / "checkpoints" / "step_2" / f.name).write_bytes(f.read_bytes())
    cards = {step: (export(run_dir / "checkpoints" / f"step_{step}", tmp_path / str(step)) / "README.md").read_text()
             for step in (2, 4)}
    assert "its `final.*` fields (step 4) and `best.acc.{parity}.*` fields (step 4) are of other weights than these " \
           "(step 2)." in cards[2]
    assert "its `best.*` fields (step 2) and `best.acc.{copy}.*` fields (step 2) are of other weights than these " \
           "(step 4)." in cards[4]


def test_exporting_a_checkpoint_takes_the_results_in_its_own_eval_dir(run_dir, tmp_path):
    """Where `memlab eval` now writes a checkpoint's results (the fixture's selftest is where an older memlab did)."""
    lm = json.loads((run_dir / "eval" / "results_lm.json").read_text())["results"]
    own = results_doc(run_dir / "checkpoints" / "step_4", "lm", dict(lm, perplexity=40.0))
    schema.write_results(run_dir / "eval" / "step_4" / "results_lm.json", own)
    out = export(run_dir / "checkpoints" / "step_4", tmp_path / "a")
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["results_lm.json", "results_selftest.json"]
    assert schema.read_results(out / "eval" / "results_lm.json")["results"]["perplexity"] == 40.0


def test_export_refuses_to_clobber_unless_asked(run_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MemlabError, match="not empty"):
        export(run_dir, out)
    assert (out / "keep.txt").read_text() == "mine"
    export(run_dir, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    with pytest.raises(MemlabError, match="no such checkpoint"):
        export(tmp_path / "missing", tmp_path / "x")


def test_overwrite_never_deletes_a_run_or_its_checkpoints(run_dir, tmp_path):
    """`--out RUN --overwrite` had replaced the whole run (checkpoints, eval results) with the export."""
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    with pytest.raises(MemlabError, match="holds the checkpoint"):
        export(run_dir, run_dir, overwrite=True)
    other = tmp_path / "other"
    for sub in ("best_model", "checkpoints/step_4"):
        (other / sub).mkdir(parents=True)
        (other / sub / "manifest.json").write_text("{}")
    (other / "config.yaml").write_text("format: memlab-train-v1\n")
    for out in (other, other / "checkpoints", other / "checkpoints" / "step_4"):
        with pytest.raises(MemlabError, match="holds a training run or checkpoints"):
            export(run_dir, out, overwrite=True)
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before
    assert (other / "checkpoints" / "step_4" / "manifest.json").is_file()
    project = tmp_path / "project"  # runs deeper down (two levels had been looked at)
    (project / "runs" / "started").mkdir(parents=True)  # killed before its first checkpoint
    (project / "runs" / "started" / "config.yaml").write_text("format: memlab-train-v1\n")
    (project / "runs" / "started" / "metrics.jsonl").write_text("")
    (project / "a" / "b" / "checkpoints" / "step_4").mkdir(parents=True)
    with pytest.raises(MemlabError, match="holds a training run or checkpoints"):
        export(run_dir, project, overwrite=True)
    (project / "runs" / "started" / "metrics.jsonl").unlink()
    (project / "a" / "b" / "checkpoints" / "step_4" / "manifest.json").write_text("{}")
    with pytest.raises(MemlabError, match="holds a training run or checkpoints"):
        export(run_dir, project, overwrite=True)
    assert (project / "runs" / "started" / "config.yaml").is_file()
    export(run_dir, tmp_path / "e")
    export(run_dir, tmp_path / "e", overwrite=True)  # an earlier export is still replaced


def test_an_out_through_a_symbolic_link_is_written_where_the_link_points(run_dir, tmp_path):
    """Through a link, export had made the link a directory and then failed deleting the old export."""
    (tmp_path / "exports" / "v1").mkdir(parents=True)
    link = tmp_path / "latest"
    link.symlink_to(tmp_path / "exports" / "v1")
    for overwrite in (False, True):
        export(run_dir, link, overwrite=overwrite)
        assert link.is_symlink() and (tmp_path / "exports" / "v1" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports", "latest", "run"]  # nothing left aside


def test_export_refuses_an_out_that_training_would_delete_or_that_is_a_file(run_dir, tmp_path):
    """An export inside best_model/ or a checkpoint was deleted, without a word, by the next resume."""
    for out in (run_dir / "best_model" / "exported", run_dir / "checkpoints" / "step_4" / "exported",
                run_dir / "checkpoints" / "exported"):
        with pytest.raises(MemlabError, match=f"--out {out} is inside .*, which training replaces or prunes"):
            export(run_dir / "checkpoints" / "step_4", out)
    (tmp_path / "plain").write_text("mine")
    for out in (tmp_path / "plain", tmp_path / "plain" / "sub"):
        with pytest.raises(MemlabError, match="not a directory"):  # --overwrite had replaced the file
            export(run_dir, out, overwrite=True)
    assert (tmp_path / "plain").read_text() == "mine"
    export(run_dir, run_dir / "export")  # beside the checkpoints: nothing of training's


def test_a_killed_exports_staging_directory_is_removed_by_the_next(run_dir, tmp_path):
    """A SIGKILLed export left its staging directory (a whole model's size) for good: each export
    removed only its own process's."""
    from memlab.staging import host

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / f".e.{host()}.{int(gone.stdout)}.tmp"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"partial")
    export(run_dir, tmp_path / "e")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "run"]


def test_an_interrupted_overwrite_leaves_the_old_export_whole(run_dir, tmp_path, monkeypatch):
    """The old export had been deleted before the new one was moved in: an interruption left neither."""
    out = export(run_dir, tmp_path / "e")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    import memlab.train.checkpoint as checkpoint

    real_replace = checkpoint.os.replace

    def interrupted(src, dst):
        if str(src).endswith("e") and ".old-" in str(dst):  # the old export moved aside, then Ctrl-C
            real_replace(src, dst)
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(run_dir, out, overwrite=True)
    aside = tmp_path / ".old-e"
    assert {p.name: p.read_bytes() for p in aside.iterdir() if p.is_file()} == before  # whole, under its aside name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".e.")]  # no staging left behind
    monkeypatch.undo()
    export(run_dir, out, overwrite=True)
    assert memlab.load(out) is not None and not aside.exists()


def test_export_refuses_a_tokenizer_of_another_model(tmp_path):
    """It had exported the mismatched pair (a later generate crashed on ids beyond the vocabulary)."""
    memlab.build_model("baseline", "tiny", vocab_size=100).save(tmp_path / "m")
    build_tokenizer("byte").save(tmp_path / "m")
    with pytest.raises(MemlabError, match="has 261 ids but the model only 100"):
        export(tmp_path / "m", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_export_whose_summary_is_damaged_loads_with_a_warning(run_dir, tmp_path, caplog):
    """Its tokenizer cannot be checked against the model's then, which had gone unnoticed."""
    from memlab.eval.hub import load_checkpoint

    export(run_dir, tmp_path / "out")
    assert load_checkpoint(tmp_path / "out").model is not None and not caplog.records
    (tmp_path / "out" / "summary.json").write_text("{bad")
    with caplog.at_level("WARNING", logger="memlab.eval.hub"):
        load_checkpoint(tmp_path / "out")
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'out' / 'summary.json'} is unreadable (JSONDecodeError): the tokenizer is not checked "
        "against the one the model was trained with"]


def test_cli_export(run_dir, tmp_path, capsys):
    main(["export", "--checkpoint", str(run_dir), "--out", str(tmp_path / "cli")])
    assert "model.safetensors" in capsys.readouterr().out
    p = subprocess.run([sys.executable, "-m", "memlab", "export", "--checkpoint", str(tmp_path / "nope"),
                        "--out", str(tmp_path / "y")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no such checkpoint" in p.stderr


def test_the_model_card_prints_each_interval_low_then_high():
    from memlab.export import _metric_rows

    record = {"accuracy": 0.5, "ci95": [0.4, 0.6], "n": 10}
    assert _metric_rows({"iid": record}) == [["iid", "0.5", "[0.4, 0.6]", "10"]]
    lm = {"loss": 2.5, "loss_ci95": [2.25, 2.75], "documents": 7}
    assert _metric_rows(lm) == [["loss", "2.5", "[2.25, 2.75]", "7"]]


def test_an_export_keeps_how_its_model_was_trained(run_dir, tmp_path):
    """Perplexity of an export on its run's corpus had been measured on a 0.01 split of seed 0, not on
    the documents the run held out; and the export's step had read 0."""
    import yaml

    from memlab.eval.hub import evaluate
    from memlab.eval.options import EvalOptions
    from memlab.paths import checkpoint_step

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"{i}.txt").write_text(f"document {i} " * 30)
    data = {"data_dir": str(tmp_path / "gone"), "val_fraction": 0.5, "split_seed": 7}
    (run_dir / "checkpoints" / "step_4" / "config.yaml").write_text(yaml.safe_dump({"train": {}, "data": data}))
    out = export(run_dir / "checkpoints" / "step_4", tmp_path / "export")
    assert checkpoint_step(out) == 4 and yaml.safe_load((out / "training.yaml").read_text())["data"] == data
    evaluate(out, "lm", tmp_path / "eval", EvalOptions(corpus=f"files:{corpus}/*.txt", lm_context=32, lm_tokens=64))
    request = json.loads(next((tmp_path / "eval" / "lm_data").glob("*/shards.json")).read_text())["request"]
    assert (request["val_fraction"], request["split_seed"]) == (0.5, 7)


def test_an_export_inside_another_run_is_its_own(run_dir, tmp_path):
    """Written into a run's directory, an export had been taken for that run's checkpoint: its tokenizer
    was checked against the run's and eval wrote its results into the run's eval/."""
    from memlab.eval.hub import default_out_dir, run_dir_of

    host = tmp_path / "host"
    (host / "checkpoints").mkdir(parents=True)
    (host / "config.yaml").write_text("format: memlab-train-v1\n")
    out = export(run_dir, host / "exported")
    assert run_dir_of(out) is None and default_out_dir(out, run_dir_of(out), None) == out / "eval"
    assert run_dir_of(run_dir / "checkpoints" / "step_4") == run_dir  # a run's own checkpoint still is its


def test_an_out_that_cannot_be_renamed_is_filled_in_place(run_dir, tmp_path, monkeypatch):
    """A container's volume (a mount point) cannot be renamed: export into it had failed with "Device or
    resource busy".  In place, config.json comes last, so an interrupted export does not load."""
    import errno
    import os

    out = tmp_path / "volume"
    out.mkdir()
    rename, moved = os.replace, []

    def replace(source, target):
        if Path(source) == out.resolve():
            raise OSError(errno.EBUSY, "Device or resource busy")
        moved.append(Path(target).name)
        rename(source, target)

    monkeypatch.setattr(os, "replace", replace)
    export(run_dir, out)
    (out / "stale.txt").write_text("of the export before")
    export(run_dir / "checkpoints" / "step_4", out, overwrite=True)
    assert moved[-1] == "config.json" and not (out / "stale.txt").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging left
    origin = json.loads((out / "export.json").read_text())
    assert origin == {"step": 4, "source": str((run_dir / "checkpoints" / "step_4").resolve())}
    ids = torch.randint(0, 261, (1, 9))
    assert torch.equal(memlab.load(out)(ids), memlab.load(run_dir / "checkpoints" / "step_4")(ids))


def test_an_out_that_is_a_mount_point_is_filled_in_place_at_once(run_dir, tmp_path, monkeypatch):
    """Staged beside it first, the whole export had landed on the parent's disk (a container's small
    root file system) before the fallback, and failed there when it did not fit."""
    import os

    import memlab.export as export_module

    out = tmp_path / "volume"
    out.mkdir()
    is_mount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == out.resolve() or is_mount(path))

    def staged_beside(*args):
        raise AssertionError("staged beside a mount point, on its parent's disk")

    monkeypatch.setattr(export_module, "replace_directory", staged_beside)
    export(run_dir, out)
    assert (out / "config.json").is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
