"""Data-parallel meta-training with torch.distributed: the meta-batch is split over ranks.

Every rank draws the same meta-batch (same sampler seed), keeps its own slice of the tasks,
computes the meta-gradient of its slice, and the gradients are averaged with one all-reduce.
With equal slices this equals the meta-gradient of one process on the whole meta-batch.

Launch with ``torchrun --nproc-per-node=N script.py``; call :func:`init_distributed` first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist

from metakd.data.batch import TaskBatch

__all__ = [
    "all_reduce_gradients",
    "init_distributed",
    "rank_slice",
    "shutdown_distributed",
    "world",
]


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Initialise the default process group from torchrun's environment variables.

    Returns ``(rank, world_size)``; ``(0, 1)`` when not launched by torchrun.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


def shutdown_distributed() -> None:
    """Leave the default process group cleanly: a barrier, then ``destroy_process_group``.

    Without the barrier a rank that finishes first can tear its gloo transport down while a
    peer still talks to it, and a gloo worker thread then aborts the process (``terminate
    called without an active exception``, SIGABRT). A no-op without a process group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_slice(batch: TaskBatch, rank: int, world_size: int) -> TaskBatch:
    """This rank's share of a meta-batch (``T`` must be divisible by ``world_size``)."""
    if world_size == 1:
        return batch
    if len(batch) % world_size:
        raise ValueError(
            f"a meta-batch of {len(batch)} tasks cannot be split evenly over {world_size} "
            "ranks; make meta_batch_size a multiple of the world size"
        )
    return batch.slice_tasks_by(len(batch) // world_size)[rank]


def all_reduce_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over all ranks in one flat all-reduce (missing grads count as zero)."""
    _, n = world()
    if n == 1:
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= n
    offset = 0
    for p in params:
        k = p.numel()
        p.grad = flat[offset : offset + k].view_as(p).clone()
        offset += k
