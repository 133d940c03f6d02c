"""Data parallelism with PyTorch's own DDP and FSDP2, initialised from the ``torchrun`` environment.

``torchrun --nproc_per_node N -m memlab train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`setup` then joins the process group (gloo on CPU, nccl on CUDA).  Without those variables
everything is a single process and the helpers are no-ops.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from memlab.devices import resolve_device
from memlab.errors import MemlabError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather_object(self, value: object) -> list:
        """Every process's ``value``, in rank order (a picklable object)."""
        if not self.enabled:
            return [value]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed elementwise over the processes, in float64, on this process's device
        (NCCL reduces CUDA tensors only)."""
        values = values.to(self.device, torch.float64)
        if self.enabled:
            dist.all_reduce(values)
        return values


def setup(device: str = "auto") -> Dist:
    """Join the torchrun process group if there is one and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    if cuda:
        if world > 1 and dev.index is not None:
            raise MemlabError(f"--device {dev} would put every process on one GPU; under torchrun give --device cuda "
                              "(each process takes the GPU of its LOCAL_RANK)")
        dev = dev if dev.index is not None else torch.device(f"cuda:{local}")  # torchrun: one GPU per process
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=dev if cuda else None)
    return Dist(rank, world, local, dev)


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, d: Dist, fsdp: bool) -> nn.Module:
    """The module to train: ``model`` itself, DDP around it, or ``model`` sharded in place with FSDP2."""
    if fsdp:  # (launched without torchrun it was refused before any work: trainer._check_before_any_work)
        from torch.distributed.fsdp import fully_shard

        for group in shard_groups(list(model.body.blocks)):
            fully_shard(group if len(group) > 1 else group[0])
        fully_shard(model)
        return model
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[d.device] if d.device.type == "cuda" else None)
    return model


def shard_groups(blocks: list[nn.Module]) -> list[list[nn.Module]]:
    """The blocks in FSDP units: one each, except that a block whose mixer uses another block's
    weights (a ``W`` layer reads its source GDN layer's key projection) joins that block's unit,
    so the weights are gathered for both forwards."""
    owner = {id(block.mixer): i for i, block in enumerate(blocks)}
    unit = list(range(len(blocks)))
    for i, block in enumerate(blocks):
        for other in block.mixer.borrowed():
            unit[i] = unit[owner[id(other)]]  # (a borrowed layer comes earlier: its unit is settled)
    groups: dict[int, list[nn.Module]] = {}
    for i, block in enumerate(blocks):
        groups.setdefault(unit[i], []).append(block)
    return list(groups.values())


@contextlib.contextmanager
def no_sync(module: nn.Module, sync: bool) -> Iterator[None]:
    """Around the forward and backward of a micro-batch: skip the gradient all-reduce unless ``sync``."""
    if sync:
        yield
    elif hasattr(module, "no_sync"):  # DDP
        with module.no_sync():
            yield
    elif hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield
