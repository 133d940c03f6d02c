"""Data parallelism: 2 CPU processes (torchrun, gloo) train exactly like 1 process with the same global batch."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import cli_args, records, subprocess_env, tiny_config
from safetensors.torch import load_file

import memlab
from memlab.train.checkpoint import read_trainer_state
from memlab.train.distributed import shard_groups

STEPS = 4


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("single") / "run", steps=STEPS, batch_size=4, eval_interval=2, save_interval=2)
    _run([sys.executable, "-m", "memlab", "train", *cli_args(cfg)])
    return cfg


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _run(command: list[str]) -> None:
    p = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]


def assert_same_curves(parallel_run, single_run) -> None:
    """The same steps, losses, gradient norms and accuracies as the single process."""
    parallel, alone = records(parallel_run), records(single_run)
    assert [r["step"] for r in parallel] == [r["step"] for r in alone] == list(range(1, STEPS + 1))
    for a, b in zip(parallel, alone):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a.get("acc") == b.get("acc")


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path, single, sharding):
    cfg = tiny_config(tmp_path / "run", steps=STEPS, batch_size=4, eval_interval=2, save_interval=2,
                      fsdp=sharding == "fsdp")
    cfg.batch_size = 2  # per process: the same global batch and token budget as the single process
    _run([*TORCHRUN, "-m", "memlab", "train", *cli_args(cfg)])
    assert_same_curves(cfg.run_dir, single.run_dir)
    # rank 0 alone wrote the run: one log line per step, whole checkpoints
    assert (cfg.run_dir / "checkpoints" / f"step_{STEPS}" / "model.safetensors").is_file()
    # each process draws its own random stream (a local drop per row), and a resume gets each back
    by_rank = read_trainer_state(cfg.run_dir / "checkpoints" / f"step_{STEPS}")["rng_by_rank"]
    assert len(by_rank) == 2 and by_rank[0]["torch"] != by_rank[1]["torch"]
    assert sorted(p.name for p in cfg.run_dir.iterdir() if p.name.startswith(".")) == []


def test_two_processes_accumulating_gradients_match_one_process(tmp_path, single):
    """2 processes x 2 micro-batches of 1 row: the single process's batch of 4.  Each process had taken
    overlapping rows (its slice ignored grad_accum), and DDP had synchronised the gradients of the first
    micro-batch instead of the last (the processes' weights parted)."""
    cfg = tiny_config(tmp_path / "run", steps=STEPS, batch_size=2, grad_accum=2, eval_interval=2, save_interval=2)
    cfg.batch_size = 1  # per process and micro-batch: a global batch of 1 x 2 x 2 = 4 rows
    assert cfg.total_tokens == single.total_tokens
    _run([*TORCHRUN, "-m", "memlab", "train", *cli_args(cfg)])
    assert_same_curves(cfg.run_dir, single.run_dir)
    weights = [load_file(run / "checkpoints" / f"step_{STEPS}" / "model.safetensors")
               for run in (cfg.run_dir, single.run_dir)]  # fmt: skip
    assert len(weights[0]) > 10
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-6)  # (names the tensor that differs)


ACT_UNDER_FSDP = """
import datetime, torch, torch.distributed as dist, memlab
from memlab.train.distributed import Dist, wrap
torch.set_num_threads(1)
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
rank = dist.get_rank()
torch.manual_seed(0)
model = memlab.build_model("act", "tiny", d_model=32, n_layers=2)
with torch.no_grad():  # a halting unit whose step counts vary with the input
    model.body.halt.weight.normal_(0, 4.0 / 32**0.5)
    model.body.halt.bias.fill_(-0.5)
reference = memlab.build_model("act", "tiny", d_model=32, n_layers=2)
reference.load_state_dict(model.state_dict())
by_steps = {}
for seed in range(200):
    x = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference(x)
    by_steps.setdefault(int(reference.body._steps.max()), x)
x = by_steps[min(by_steps)] if rank == 0 else by_steps[max(by_steps)]  # the ranks need different step counts
expected = reference(x)
sharded = wrap(model, Dist(rank, 2, rank, torch.device("cpu")), fsdp=True)
out = sharded(x)
(out.logsumexp(-1).mean() + model.aux_losses()["ponder"]).backward()
torch.testing.assert_close(out, expected)
print(f"rank {rank} ok, steps {min(by_steps)}..{max(by_steps)}", flush=True)
dist.barrier()  # both done before either tears the group down (a rank leaving early can abort the other)
dist.destroy_process_group()
"""


def test_act_under_fsdp_takes_the_same_steps_on_every_process(tmp_path):
    """Each ACT step gathers the sharded blocks' weights: a process whose positions all halted
    early had stopped gathering while the other waited (a hang)."""
    script = tmp_path / "act_fsdp.py"
    script.write_text(ACT_UNDER_FSDP)
    p = subprocess.run([*TORCHRUN, str(script)], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    finished = re.findall(r"rank (\d) ok, steps (\d+)\.\.(\d+)", p.stdout)  # (the ranks' lines may interleave)
    assert sorted(rank for rank, _, _ in finished) == ["0", "1"], p.stdout
    _, fewest, most = finished[0]
    assert int(fewest) < int(most)  # rank 0's positions all halted before rank 1's


def test_a_resume_on_more_processes_gives_each_its_own_random_stream(tmp_path, single):
    """Resumed from a 1-process checkpoint, both processes had taken its one stream: the same local drops."""
    cfg = tiny_config(tmp_path / "run", steps=STEPS, batch_size=4, eval_interval=2, save_interval=2)
    shutil.copytree(single.run_dir, cfg.run_dir)
    cfg.batch_size, cfg.resume, cfg.save_interval = 2, True, 1  # the same global batch on 2 processes
    cfg.total_tokens = cfg.alg_tokens = cfg.total_tokens + 2 * cfg.seq_len * 4  # two more steps
    _run([*TORCHRUN, "-m", "memlab", "train", *cli_args(cfg)])
    by_rank = read_trainer_state(cfg.run_dir / "checkpoints" / f"step_{STEPS + 2}")["rng_by_rank"]
    assert len(by_rank) == 2 and by_rank[0]["torch"] != by_rank[1]["torch"]


def test_a_reader_layer_shares_an_fsdp_unit_with_the_layer_it_reads():
    blocks = list(memlab.build_model("gdn_hybrid", "tiny", n_layers=6).body.blocks)  # GGGGGW
    assert [[blocks.index(b) for b in group] for group in shard_groups(blocks)] == [[0], [1], [2], [3], [4, 5]]


VARIANTS_UNDER_FSDP = """
import datetime, torch, torch.distributed as dist, memlab
from memlab.train.distributed import Dist, wrap
torch.set_num_threads(1)
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
rank = dist.get_rank()
for variant in ("gdn_hybrid", "ssm"):
    torch.manual_seed(0)
    model = memlab.build_model(variant, "tiny", d_model=32, n_layers=2)
    reference = memlab.build_model(variant, "tiny", d_model=32, n_layers=2)
    reference.load_state_dict(model.state_dict())
    x = torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(rank))
    expected = reference(x)
    sharded = wrap(model, Dist(rank, 2, rank, torch.device("cpu")), fsdp=True)
    out = sharded(x)
    out.logsumexp(-1).mean().backward()
    torch.testing.assert_close(out, expected)
    assert model.diagnostics(), variant  # read after the forward, when the weights are shards again
    print(f"rank {rank} {variant} ok", flush=True)
dist.barrier()
dist.destroy_process_group()
"""


def test_variants_whose_layers_read_across_blocks_run_under_fsdp(tmp_path):
    """gdn_hybrid's W layer runs its source layer's key projection (a shard of another unit had been
    a DTensor error); ssm's diagnostics read A_log after the forward (a shard, the same error)."""
    script = tmp_path / "variants_fsdp.py"
    script.write_text(VARIANTS_UNDER_FSDP)
    p = subprocess.run([*TORCHRUN, str(script)], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert sorted(re.findall(r"rank \d \w+ ok", p.stdout)) == [
        f"rank {r} {v} ok" for r in "01" for v in ("gdn_hybrid", "ssm")
    ]


def test_a_sum_over_processes_is_reduced_on_the_process_device(monkeypatch):
    """NCCL reduces CUDA tensors only: evaluation's sums were made on the CPU."""
    from memlab.train.distributed import Dist

    seen = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor: seen.append(tensor.device))
    out = Dist(0, 2, 0, torch.device("meta")).all_reduce_sum(torch.tensor([1.0, 2.0]))
    assert seen == [torch.device("meta")] and out.dtype == torch.float64
