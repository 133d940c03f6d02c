"""Crash safety: a run killed with SIGKILL and resumed logs exactly what an uninterrupted run logs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from conftest import cli_args, curve, subprocess_env, tiny_config


def _command(cfg) -> list[str]:
    return [sys.executable, "-m", "memlab.cli", "train", *cli_args(cfg)]


def test_sigkill_then_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    def config(name):  # a task curriculum, so that evaluation feeds back into the data stream
        return tiny_config(
            tmp_path / name, steps=20, eval_interval=5, save_interval=4, keep_last=3, log_interval=3,
            use_task_curriculum=True, curriculum_min_task_evals=1, curriculum_cooldown=1, curriculum_threshold=0.0,
        )

    whole, crashed = config("whole"), config("crashed")
    env = subprocess_env()
    uninterrupted = subprocess.Popen(_command(whole), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim = subprocess.Popen(_command(crashed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = crashed.run_dir / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints / "step_8").is_dir() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert uninterrupted.wait() == 0, uninterrupted.stderr.read().decode()

    # the newest checkpoint is damaged as well: the resume must fall back to the one before it
    *_, previous, newest = sorted(checkpoints.iterdir(), key=lambda p: int(p.name.split("_")[1]))
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    resumed = subprocess.run(_command(crashed), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipping checkpoint {newest}" in resumed.stderr and f"resumed {crashed.run_dir} from {previous}" in resumed.stderr

    assert len(curve(whole.run_dir)) == 9  # every 3rd step and every evaluation (every 5th)
    assert curve(crashed.run_dir) == curve(whole.run_dir)
    assert (crashed.run_dir / "best_model" / "model.safetensors").read_bytes() == (
        whole.run_dir / "best_model" / "model.safetensors"
    ).read_bytes()
