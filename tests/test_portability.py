"""What differs off Linux, simulated here: Windows' locale encoding and file handles, macOS's
getrusage units, the Unix-only os.sysconf."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from memlab import staging
from memlab.data.tokenizer import build_tokenizer, load_tokenizer


@pytest.fixture
def windows_locale(monkeypatch):
    """Text files read and written without an encoding use cp1252, as on a Windows in its default mode."""
    write_text, read_text = Path.write_text, Path.read_text

    def write(self, data, encoding=None, *args, **kwargs):
        return write_text(self, data, encoding or "cp1252", *args, **kwargs)

    def read(self, encoding=None, *args, **kwargs):
        return read_text(self, encoding or "cp1252", *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write)
    monkeypatch.setattr(Path, "read_text", read)


def test_a_bpe_tokenizer_saves_and_loads_in_utf8_whatever_the_locale(tmp_path, windows_locale):
    """Its byte-level alphabet ('Ġ') had no cp1252 form: saving it failed on Windows."""
    tok = build_tokenizer("bpe", texts=["héllo wörld, the quick brown fox " * 40] * 20, vocab_size=300)
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode("héllo wörld") == tok.encode("héllo wörld")


def test_a_config_file_is_read_as_utf8_whatever_the_locale(tmp_path, windows_locale):
    from memlab.train.config import read_yaml

    path = tmp_path / "run.yaml"
    path.write_bytes("output_dir: runs/café\n".encode())
    assert read_yaml(path) == {"output_dir": "runs/café"}


def test_checkpoint_files_are_flushed_through_handles_windows_can_flush(tmp_path, monkeypatch):
    """Windows opens no directory and flushes no read-only handle: every checkpoint save had failed there."""
    from memlab.train import checkpoint as ckpt

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "weights.bin").write_bytes(b"\0" * 8)
    opened, open_file = [], os.open

    def open_as_windows(path, flags, *args):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", str(path))
        opened.append(flags & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR))
        return open_file(path, flags, *args)

    monkeypatch.setattr(staging, "on_windows", lambda: True)
    monkeypatch.setattr(os, "open", open_as_windows)
    ckpt._fsync_tree(tmp_path)
    assert opened == [os.O_RDWR]


def test_peak_memory_reads_getrusage_in_its_platforms_unit(monkeypatch):
    """macOS gives ru_maxrss in bytes (Linux in KiB): its peaks had been 1024 times too large."""
    import resource

    from memlab.analysis import timing

    class Usage:
        ru_maxrss = 2**30  # 1 GiB in bytes, as macOS counts

    def no_proc(self, *args, **kwargs):
        raise OSError("no /proc")

    monkeypatch.setattr(Path, "read_text", no_proc)
    monkeypatch.setattr(resource, "getrusage", lambda who: Usage())
    monkeypatch.setattr(sys, "platform", "darwin")
    assert timing.peak_rss_mib() == 1024
    monkeypatch.setattr(sys, "platform", "linux")
    assert timing.peak_rss_mib() == 2**20  # KiB


def test_the_ladder_memory_check_passes_where_there_is_no_sysconf(monkeypatch):
    """os.sysconf is Unix-only: memlab scale had ended in an AttributeError's traceback on Windows."""
    from memlab.analysis.ladder import machine_memory_bytes

    monkeypatch.delattr(os, "sysconf")
    assert machine_memory_bytes() == sys.maxsize
