"""The episode container shared by samplers, meta-learners and distillers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

import torch

__all__ = ["Task", "TaskBatch"]


@dataclass(frozen=True)
class Task:
    """One N-way episode: a support set to adapt on and a query set to score on.

    Attributes:
        support_x: ``[N*K, C, H, W]`` support images.
        support_y: ``[N*K]`` int64 episode labels in ``0..N-1``.
        query_x: ``[N*Q, C, H, W]`` query images.
        query_y: ``[N*Q]`` int64 episode labels.
        classes: ``[N]`` global class index of each episode label, or ``None``.
        extras: per-task tensors carried with the episode (see :class:`TaskBatch`).
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor | None = None
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskBatch:
    """A meta-batch of ``T`` episodes of the same shape, stacked along a leading task dimension.

    Labels are remapped per episode: label ``n`` of task ``t`` is the global class
    ``classes[t, n]`` of the data set. Within each set the items are grouped by label
    (``support_y[t] == [0]*K + [1]*K + ... + [N-1]*K``).

    Attributes:
        support_x: ``[T, N*K, C, H, W]`` float support images.
        support_y: ``[T, N*K]`` int64 labels.
        query_x: ``[T, N*Q, C, H, W]`` float query images.
        query_y: ``[T, N*Q]`` int64 labels.
        classes: ``[T, N]`` int64 global class indices, or ``None`` when unknown.
        extras: named per-task tensors, each with ``T`` along dim 0, that travel with the
            episodes to the meta-learner's objectives (for example a teacher's query logits
            ``[T, N*Q, N]``); sliced, moved and split with the batch. Add them with
            :meth:`with_extras`.

    Example:
        >>> import torch
        >>> b = TaskBatch(torch.zeros(2, 5, 1, 28, 28), torch.arange(5).repeat(2, 1),
        ...               torch.zeros(2, 75, 1, 28, 28), torch.arange(5).repeat_interleave(15).repeat(2, 1))
        >>> len(b), b.ways, b.shots, b.queries
        (2, 5, 1, 15)
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor | None = None
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = self.support_x.shape[0]
        named = [("support_y", self.support_y), ("query_x", self.query_x),
                 ("query_y", self.query_y), ("classes", self.classes)]
        named += [(f"extras[{k!r}]", v) for k, v in self.extras.items()]
        for name, v in named:
            if v is not None and (v.dim() == 0 or v.shape[0] != t):
                got = "a 0-d tensor" if v.dim() == 0 else f"{v.shape[0]} tasks along dim 0"
                raise ValueError(f"TaskBatch.{name} has {got}, support_x has {t} tasks")
        if self.support_y.shape[:2] != self.support_x.shape[:2]:
            raise ValueError(
                f"support_y {tuple(self.support_y.shape)} does not match support_x "
                f"{tuple(self.support_x.shape)} in its first two dimensions"
            )
        if self.query_y.shape[:2] != self.query_x.shape[:2]:
            raise ValueError(
                f"query_y {tuple(self.query_y.shape)} does not match query_x "
                f"{tuple(self.query_x.shape)} in its first two dimensions"
            )

    def __len__(self) -> int:
        return int(self.support_x.shape[0])

    def __getitem__(self, i: int) -> Task:
        return Task(
            self.support_x[i],
            self.support_y[i],
            self.query_x[i],
            self.query_y[i],
            None if self.classes is None else self.classes[i],
            {k: v[i] for k, v in self.extras.items()},
        )

    def __iter__(self) -> Iterator[Task]:
        for i in range(len(self)):
            yield self[i]

    def with_extras(self, **extras: torch.Tensor) -> TaskBatch:
        """A copy with ``extras`` added (replacing those of the same names).

        Example:
            >>> import torch
            >>> b = TaskBatch(torch.zeros(2, 5, 3), torch.arange(5).repeat(2, 1),
            ...               torch.zeros(2, 5, 3), torch.arange(5).repeat(2, 1))
            >>> b.with_extras(teacher_logits=torch.zeros(2, 5, 5)).extras["teacher_logits"].shape
            torch.Size([2, 5, 5])
        """
        return replace(self, extras={**self.extras, **extras})

    @property
    def ways(self) -> int:
        """Classes per episode (``N``)."""
        return int(self.support_y[0].max().item()) + 1 if self.support_y.numel() else 0

    @property
    def shots(self) -> int:
        """Support images per class (``K``)."""
        return self.support_y.shape[1] // max(self.ways, 1)

    @property
    def queries(self) -> int:
        """Query images per class (``Q``)."""
        return self.query_y.shape[1] // max(self.ways, 1)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None,
           non_blocking: bool = False) -> TaskBatch:
        """Move the batch; ``dtype`` applies to the images only."""

        def mv(x: torch.Tensor | None, images: bool) -> torch.Tensor | None:
            if x is None:
                return None
            if images and dtype is not None:
                return x.to(device=device, dtype=dtype, non_blocking=non_blocking)
            return x.to(device=device, non_blocking=non_blocking)

        return TaskBatch(
            mv(self.support_x, True),  # type: ignore[arg-type]
            mv(self.support_y, False),  # type: ignore[arg-type]
            mv(self.query_x, True),  # type: ignore[arg-type]
            mv(self.query_y, False),  # type: ignore[arg-type]
            mv(self.classes, False),
            {k: v.to(device=device, non_blocking=non_blocking) for k, v in self.extras.items()},
        )

    def pin_memory(self) -> TaskBatch:
        """The batch in pinned (page-locked) host memory, for non-blocking copies to a GPU."""

        def pin(x: torch.Tensor | None) -> torch.Tensor | None:
            return x.pin_memory() if x is not None and x.device.type == "cpu" else x

        return TaskBatch(pin(self.support_x), pin(self.support_y),  # type: ignore[arg-type]
                         pin(self.query_x), pin(self.query_y),  # type: ignore[arg-type]
                         pin(self.classes),
                         {k: v.pin_memory() if v.device.type == "cpu" else v
                          for k, v in self.extras.items()})

    def split(self, chunks: int) -> list[TaskBatch]:
        """Split along the task dimension into at most ``chunks`` nearly equal batches."""
        size = -(-len(self) // chunks)
        return self.slice_tasks_by(size)

    def slice_tasks_by(self, size: int) -> list[TaskBatch]:
        """Consecutive sub-batches of ``size`` tasks (the last may be smaller)."""
        out = []
        for s in range(0, len(self), size):
            sl = slice(s, s + size)
            out.append(
                replace(
                    self,
                    support_x=self.support_x[sl],
                    support_y=self.support_y[sl],
                    query_x=self.query_x[sl],
                    query_y=self.query_y[sl],
                    classes=None if self.classes is None else self.classes[sl],
                    extras={k: v[sl] for k, v in self.extras.items()},
                )
            )
        return out
