"""Data-parallel training with torch.distributed: every batch is split over the ranks.

Every rank draws the same batch (same sampler seed), keeps its own slice of the tasks (of a
meta-batch) or of the examples (of a minibatch), computes the gradient of its slice, and the
gradients are averaged with one all-reduce. With equal slices this equals the gradient of one
process on the whole batch.

Launch with ``torchrun --nproc-per-node=N script.py``; call :func:`init_distributed` first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

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

    Example:
        >>> init_distributed()  # a plain process, not launched by torchrun
        (0, 1)
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

    Example:
        >>> shutdown_distributed()  # no process group: nothing to do
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default group, ``(0, 1)`` without one.

    Example:
        >>> world()
        (0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_slice(batch: Any, rank: int, world_size: int) -> Any:
    """This rank's share of a batch: of the tasks of a meta-batch, or the examples of a minibatch.

    A :class:`TaskBatch` of ``T`` tasks is cut along the task dimension; a minibatch tuple or
    list ``(x [B, ...], y [B], ...)`` is cut along the batch dimension of every tensor whose
    first dimension is ``B`` (other items are kept whole). ``T`` or ``B`` must be divisible by
    ``world_size``, so that the averaged gradients of the slices equal the gradient of the
    whole batch. Any other batch is returned unchanged.

    Example:
        >>> import torch
        >>> x, y = torch.arange(8.0).reshape(4, 2), torch.tensor([0, 1, 0, 1])
        >>> rank_slice((x, y), rank=1, world_size=2)[1]
        tensor([0, 1])
    """
    if world_size == 1:
        return batch
    if isinstance(batch, TaskBatch):
        if len(batch) % world_size:
            raise ValueError(
                f"a meta-batch of {len(batch)} tasks cannot be split evenly over {world_size} "
                "ranks; make meta_batch_size a multiple of the world size"
            )
        return batch.slice_tasks_by(len(batch) // world_size)[rank]
    if isinstance(batch, (tuple, list)) and batch and torch.is_tensor(batch[0]):
        n = int(batch[0].shape[0])
        if n % world_size:
            raise ValueError(
                f"a minibatch of {n} examples cannot be split evenly over {world_size} ranks; "
                "make the batch size a multiple of the world size"
            )
        k = n // world_size
        items = [v[rank * k : (rank + 1) * k]
                 if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n else v
                 for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)
    return batch


def all_reduce_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over all ranks in one flat all-reduce (missing grads count as zero).

    Example:
        >>> import torch
        >>> p = torch.nn.Parameter(torch.zeros(2))
        >>> p.grad = torch.ones(2)
        >>> all_reduce_gradients([p])  # one process: the gradients stay as they are
        >>> p.grad
        tensor([1., 1.])
    """
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
