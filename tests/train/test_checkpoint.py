"""Crash-safe checkpoint files: atomic directories, manifests, corrupt-checkpoint fallback, RNG states."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import memlab
from memlab.errors import MemlabError
from memlab.eval.hub import load_checkpoint
from memlab.jsonfile import write_json
from memlab.paths import latest_whole_checkpoint, manifest_problem, resolve_model_dir
from memlab.train import checkpoint as ckpt


def _write(directory, name="a.txt", text="hello"):
    with ckpt.atomic_directory(directory) as tmp:
        (tmp / name).write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"\x00" * 100)


def test_atomic_directory_is_all_or_nothing(tmp_path):
    final = tmp_path / "checkpoints" / "step_1"
    with pytest.raises(RuntimeError):
        with ckpt.atomic_directory(final) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert not final.exists() and list(final.parent.iterdir()) == []

    _write(final)
    assert (final / "a.txt").read_text() == "hello" and manifest_problem(final) is None
    _write(final, text="replaced")  # re-saving a directory replaces it whole
    assert (final / "a.txt").read_text() == "replaced"
    assert [p.name for p in final.parent.iterdir()] == ["step_1"]


def test_leftovers_of_a_killed_process_are_cleaned_up(tmp_path):
    (tmp_path / "checkpoints" / f"{ckpt.TMP_PREFIX}step_5-123").mkdir(parents=True)
    (tmp_path / f"{ckpt.TMP_PREFIX}best_model-9").mkdir()
    _write(tmp_path / f"{ckpt.OLD_PREFIX}best_model")  # killed between the two renames of a re-save
    _write(tmp_path / "checkpoints" / "step_4")
    _write(tmp_path / "checkpoints" / f"{ckpt.OLD_PREFIX}step_4", text="older")
    ckpt.remove_partial(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model", "checkpoints"]
    assert manifest_problem(tmp_path / "best_model") is None
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_4"]
    assert (tmp_path / "checkpoints" / "step_4" / "a.txt").read_text() == "hello"


def test_pruning_renames_before_deleting(tmp_path, monkeypatch):
    """A kill while an old checkpoint was being deleted had left a half-deleted step_N for good."""
    for step in (1, 2, 3):
        _write(tmp_path / "checkpoints" / f"step_{step}")

    def killed(path):
        (path / "a.txt").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune(tmp_path, 2, tmp_path / "checkpoints" / "step_3")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"{ckpt.TMP_PREFIX}step_1", "step_2", "step_3"]
    ckpt.remove_partial(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2", "step_3"]


def test_an_interrupted_re_save_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    """A re-save (best_model/, or a step re-run after a resume) must move the old directory aside, not delete
    it, before renaming the new one into place: deleted first, a kill between the two left no model at all."""
    old, new = (memlab.build_model("baseline", "tiny", n_layers=1) for _ in range(2))
    ckpt.save_checkpoint(tmp_path / "best_model", old.save, None, {"step": 2})
    real_replace = ckpt.os.replace

    def killed(src, dst):
        if Path(src).name.startswith(ckpt.TMP_PREFIX):  # the new directory, about to be renamed into place
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path / "best_model", new.save, None, {"step": 4})
    monkeypatch.undo()
    ckpt.remove_partial(tmp_path)  # what the next start does
    assert [p.name for p in tmp_path.iterdir()] == ["best_model"]
    assert manifest_problem(tmp_path / "best_model") is None
    assert ckpt.read_trainer_state(tmp_path / "best_model")["step"] == 2
    assert resolve_model_dir(tmp_path) == tmp_path / "best_model"
    x = torch.randint(0, 512, (1, 9))
    torch.testing.assert_close(memlab.load(tmp_path)(x), old(x), rtol=0, atol=0)


def test_a_checkpoint_is_on_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """Every file and directory of a new checkpoint is fsynced before the rename that publishes it, and the
    parent directory after it: unflushed, a power cut after the rename could leave step_N/ with empty files
    (or the rename itself lost) while the old checkpoint was already deleted."""
    events = []
    real_fsync, real_replace = ckpt.os.fsync, ckpt.os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", (st.st_dev, st.st_ino)))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(src), Path(dst)))
        real_replace(src, dst)

    def identity(path):
        st = path.stat()
        return st.st_dev, st.st_ino

    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    monkeypatch.setattr(ckpt.os, "replace", replace)
    model = memlab.build_model("baseline", "tiny", n_layers=1)
    final = tmp_path / "checkpoints" / "step_1"
    for state in ({"step": 1}, {"step": 1, "again": True}):  # a first save, then a re-save over it
        events.clear()
        ckpt.save_checkpoint(final, model.save, {"state": {}, "param_groups": []}, state)
        published = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == final]
        assert len(published) == 1 and events[published[0]][1].name.startswith(ckpt.TMP_PREFIX)
        before = {e[1] for e in events[: published[0]] if e[0] == "fsync"}
        after = {e[1] for e in events[published[0] :] if e[0] == "fsync"}
        tree = [*final.rglob("*"), final]  # the temporary directory's files and directories, renamed
        assert {"manifest.json", "model.safetensors", ckpt.OPTIMIZER_FILE, ckpt.TRAINER_STATE_FILE} <= {
            p.name for p in tree
        }
        assert [p for p in tree if identity(p) not in before] == []
        assert identity(final.parent) in after
    assert ckpt.read_trainer_state(final)["again"] is True


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_manifest_detects_damage(tmp_path, damage):
    d = tmp_path / "ckpt"
    _write(d)
    target = d / "sub" / "b.bin"
    if damage == "truncate":
        target.write_bytes(b"\x00" * 50)
    elif damage == "flip":
        target.write_bytes(b"\x01" + b"\x00" * 99)
    elif damage == "delete":
        target.unlink()
    else:
        (d / "manifest.json").write_text("{not json")
    problem = manifest_problem(d)
    assert problem is not None
    if damage == "flip":  # same size: only the checksum sees it
        assert manifest_problem(d, checksums=False) is None and "sha256" in problem


@pytest.mark.parametrize(
    "manifest", ['[1, 2]', '{"files": [1]}', '{"files": {"a.txt": 3}}', '{"files": {"a.txt": {"bytes": "x"}}}', "\udcff"]
)
def test_a_manifest_of_the_wrong_shape_is_corrupt(tmp_path, manifest):
    """A hand-edited manifest is a broken checkpoint, not a TypeError."""
    d = tmp_path / "ckpt"
    _write(d)
    (d / "manifest.json").write_bytes(manifest.encode("utf-8", "surrogateescape"))
    assert manifest_problem(d) == "manifest.json is corrupt"


def test_newest_whole_checkpoint_skips_broken_ones_with_a_warning(tmp_path, caplog):
    for step in (2, 4, 6):
        _write(tmp_path / "checkpoints" / f"step_{step}", text=str(step))
    (tmp_path / "checkpoints" / "step_6" / "a.txt").write_text("6!")  # altered after writing
    (tmp_path / "checkpoints" / "step_8").mkdir()  # no manifest, no weights: not a checkpoint
    with caplog.at_level(logging.WARNING):
        assert latest_whole_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_4"
    assert "step_6" in caplog.text and "step_8" in caplog.text

    # pruning counts whole checkpoints only, and never the one just written: it had kept the two
    # newest by name (the broken 6 and 8) and deleted 2 and 4, the only ones a resume can use
    ckpt.prune(tmp_path, keep_last=1, written=tmp_path / "checkpoints" / "step_4")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_4", "step_6", "step_8"]
    _write(tmp_path / "checkpoints" / "step_6", text="6")  # the run reaches step 6 again: a whole one
    ckpt.prune(tmp_path, keep_last=1, written=tmp_path / "checkpoints" / "step_6")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_6", "step_8"]


def _best_model_and_a_checkpoint(run):
    """A model saved as ``run``'s best_model/ and checkpoints/step_3/."""
    model = memlab.build_model("baseline", "tiny", n_layers=1)
    for name in ("best_model", "checkpoints/step_3"):
        with ckpt.atomic_directory(run / name) as tmp:
            model.save(tmp)
    return model


def test_load_falls_back_from_a_corrupt_best_model(tmp_path, caplog):
    model = _best_model_and_a_checkpoint(tmp_path)
    weights = tmp_path / "best_model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        assert resolve_model_dir(tmp_path) == tmp_path / "checkpoints" / "step_3"
    assert "best_model" in caplog.text
    with pytest.raises(MemlabError, match="corrupt"):
        resolve_model_dir(tmp_path / "best_model")
    x = torch.randint(0, 512, (1, 9))
    torch.testing.assert_close(memlab.load(tmp_path)(x), model(x), rtol=0, atol=0)


def test_loading_refuses_weights_altered_in_place(tmp_path, caplog):
    """Same size, other bytes: only the sha256 tells (eval, generate and export had loaded them)."""
    _best_model_and_a_checkpoint(tmp_path)
    weights = tmp_path / "best_model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])  # the last float of the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(MemlabError, match="best_model is corrupt: model.safetensors fails its sha256"):
        memlab.load(tmp_path / "best_model")
    with pytest.raises(MemlabError, match="fails its sha256"):  # what eval, generate, probe and export load with
        load_checkpoint(tmp_path / "best_model", "cpu")
    with caplog.at_level(logging.WARNING):
        assert resolve_model_dir(tmp_path) == tmp_path / "checkpoints" / "step_3"
    assert resolve_model_dir(tmp_path, checksums=False) == tmp_path / "best_model"  # naming it only: sizes


def test_rng_state_is_json_and_restores_every_generator():
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    state = json.loads(json.dumps(ckpt.rng_state()))
    first = (torch.rand(3), random.random(), np.random.rand(2))
    ckpt.set_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(first[0], again[0]) and first[1] == again[1] and np.array_equal(first[2], again[2])


def test_rng_state_from_more_gpus_restores_the_devices_this_machine_has(monkeypatch):
    state = {**json.loads(json.dumps(ckpt.rng_state())), "cuda": [[1, 2], [3, 4]]}  # saved on two GPUs
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((device, s.tolist())))
    ckpt.set_rng_state(state)
    assert restored == [(0, [1, 2])]


def test_optimizer_state_needs_no_pickled_code(tmp_path):
    model = memlab.build_model("baseline", "tiny", n_layers=1)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, 512, (2, 8))).sum().backward()
    opt.step()
    ckpt.save_checkpoint(tmp_path / "step_1", model.save, opt.state_dict(), {"step": 1})
    loaded = ckpt.read_optimizer_state(tmp_path / "step_1", torch.device("cpu"))  # weights_only=True
    assert torch.equal(loaded["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert ckpt.read_trainer_state(tmp_path / "step_1")["step"] == 1
    (tmp_path / "step_1" / ckpt.OPTIMIZER_FILE).write_bytes(b"garbage")
    with pytest.raises(MemlabError, match="cannot load"):
        ckpt.read_optimizer_state(tmp_path / "step_1", torch.device("cpu"))


def test_memlab_load_gives_a_model_in_eval_mode(tmp_path):
    """As evaluation's loader gives it (it had been in training mode, nn.Module's default)."""
    memlab.build_model("baseline", "tiny", d_model=32, n_layers=1).save(tmp_path / "m")
    assert not memlab.load(tmp_path / "m").training


def test_a_full_disk_while_saving_is_an_os_error_naming_the_file(tmp_path, monkeypatch):
    """safetensors' and torch.save's own errors on a full disk had been tracebacks (exit code 1), and a
    plain write's OSError named no file."""
    import errno
    from collections import namedtuple

    from safetensors import SafetensorError

    import memlab.models.lm as lm
    from memlab import errors

    model = memlab.build_model("baseline", "tiny", d_model=32, n_layers=1, n_heads=2, vocab_size=64)

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(lm, "save_model", full)
    with pytest.raises(OSError) as raised:
        model.save(tmp_path / "m")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "m" / "model.safetensors")
    monkeypatch.undo()

    def torn(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3553536 vs 3553428")

    monkeypatch.setattr(ckpt.torch, "save", torn)
    with pytest.raises(OSError, match=r"the write failed \(\[enforce fail.*optimizer\.pt") as raised:
        ckpt.save_checkpoint(tmp_path / "step_1", model.save, {"state": {}}, {"step": 1})
    assert raised.value.errno == errno.EIO and not (tmp_path / "step_1").exists()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(errors.shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 4096))
    with pytest.raises(OSError, match=r"No space left on device: '.*optimizer\.pt'"):  # what torch's error hides
        ckpt.save_checkpoint(tmp_path / "step_1", model.save, {"state": {}}, {"step": 1})

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write reports it: no file named

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(OSError, match="No space left on device: '.*summary.json'"):
        write_json(tmp_path / "summary.json", {})
    with pytest.raises(OSError, match=r"No space left on device: '.*m2/config\.json'"):
        model.save(tmp_path / "m2")
    with pytest.raises(OSError, match=r"No space left on device: '.*\.tmp-step_2-\d+'"):  # a file it does not name
        with ckpt.atomic_directory(tmp_path / "step_2") as staging:
            (staging / "trainer_state.json").write_text("{}")
