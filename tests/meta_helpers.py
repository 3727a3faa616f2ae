"""Random few-shot meta-batches for meta-learning tests."""

from __future__ import annotations

import torch

from metakd.data import TaskBatch


def make_batch(
    tasks: int, ways: int, queries: int, channels: int, size: int, dtype: torch.dtype, seed: int = 0
) -> TaskBatch:
    """``tasks`` 1-shot episodes of random ``channels x size x size`` images, ``queries`` per
    class, labels in order; the support images are drawn first, then the queries."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(ways)
    return TaskBatch(
        torch.randn(tasks, ways, channels, size, size, generator=g, dtype=dtype),
        y.repeat(tasks, 1),
        torch.randn(tasks, ways * queries, channels, size, size, generator=g, dtype=dtype),
        y.repeat_interleave(queries).repeat(tasks, 1),
    )
