"""torchrun support: process group (gloo on CPU, nccl on GPU), samplers, rank-0 only side effects.

Without torchrun's environment (``WORLD_SIZE`` unset or 1) everything degrades to one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import islice

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


@dataclass(frozen=True)
class DistContext:
    """This process's place: ``rank`` of ``world_size``, its device, whether it logs/saves."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Joins torchrun's process group if there is one (nccl when the device is CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(rank, world, target)


def shutdown(ctx: DistContext) -> None:
    """Leaves the process group (if this process joined one)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Waits for every rank (no-op in one process)."""
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The element-wise sum of ``values`` over ranks (``values`` itself in one process)."""
    if ctx.enabled:
        values = values.to(ctx.device)
        dist.all_reduce(values)
    return values.cpu()


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start mid-epoch (``start`` samples of this rank skipped).

    Shuffling depends only on ``seed`` and the epoch, so a resumed run sees the same order.
    """

    def __init__(
        self, dataset: Dataset, ctx: DistContext, shuffle: bool, seed: int, drop_last: bool
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.start = 0

    def __iter__(self):
        return islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start
