"""Staging names carry the host and the process; what a gone process of this host left is removed."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from memlab import staging
from memlab.staging import host, remove_abandoned, staged_directory, staging_path


@pytest.fixture
def gone_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_what_a_gone_process_of_this_host_left_is_removed_and_nothing_else(tmp_path, gone_pid):
    final = tmp_path / "compare.json"
    here = host()
    gone_file = tmp_path / f".compare.json.{here}.{gone_pid}.tmp"
    gone_dir = tmp_path / f".compare.json.{here}.{gone_pid + 1000000}.tmp"  # (no such pid)
    other_host = tmp_path / f".compare.json.elsewhere-{here}.{gone_pid}.tmp"
    other_container = tmp_path / f".compare.json.{socket.gethostname()}-1.{gone_pid}.tmp"  # another pid namespace
    other_name = tmp_path / f".compare.md.{here}.{gone_pid}.tmp"
    gone_file.write_text("half")
    gone_dir.mkdir()
    (gone_dir / "inside").write_text("x")
    other_host.write_text("another machine's")
    other_container.write_text("another container's")
    other_name.write_text("another file's")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as live:
        running = tmp_path / f".compare.json.{here}.{live.pid}.tmp"
        running.write_text("being written")
        remove_abandoned(final)
        live.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (other_host, other_container, other_name, running))


def test_a_staged_directory_is_this_processes_and_gone_after_the_block(tmp_path):
    final = tmp_path / "export"
    with staged_directory(final) as staging:
        assert staging == staging_path(final) and staging.is_dir() and staging.parent == tmp_path
        (staging / "weights").write_text("w")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt), staged_directory(final) as staging:
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_on_windows_no_process_is_probed_and_nothing_removed(tmp_path, gone_pid, monkeypatch):
    """os.kill(pid, 0) on Windows terminates the process: a live memlab's staging would have cost it its life."""
    import os

    def terminate(pid, signal):
        raise AssertionError(f"os.kill({pid}, {signal}) ends the process on Windows")

    monkeypatch.setattr(staging, "on_windows", lambda: True)
    monkeypatch.setattr(os, "kill", terminate)
    left = tmp_path / f".compare.json.{host()}.{gone_pid}.tmp"
    left.write_text("half")
    remove_abandoned(tmp_path / "compare.json")
    assert left.exists()
