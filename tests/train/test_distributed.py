"""Data parallelism: 2 CPU processes (torchrun, gloo) train exactly like 1 process with the same global batch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import cli_args, records, subprocess_env, tiny_config

STEPS = 4


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("single") / "run", steps=STEPS, batch_size=4, eval_interval=2, save_interval=2)
    _run([sys.executable, "-m", "memlab.cli", "train", *cli_args(cfg)])
    return records(cfg.run_dir)


def _run(command: list[str]) -> None:
    p = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path, single, sharding):
    cfg = tiny_config(tmp_path / "run", steps=STEPS, batch_size=4, eval_interval=2, save_interval=2,
                      fsdp=sharding == "fsdp")
    cfg.batch_size = 2  # per process: the same global batch and token budget as the single process
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _run([*torchrun, "-m", "memlab.cli", "train", *cli_args(cfg)])
    parallel = records(cfg.run_dir)
    assert [r["step"] for r in parallel] == [r["step"] for r in single] == list(range(1, STEPS + 1))
    for a, b in zip(parallel, single):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a.get("acc") == b.get("acc")
    # rank 0 alone wrote the run: one log line per step, whole checkpoints
    assert (cfg.run_dir / "checkpoints" / f"step_{STEPS}" / "model.safetensors").is_file()
    assert sorted(p.name for p in cfg.run_dir.iterdir() if p.name.startswith(".")) == []
