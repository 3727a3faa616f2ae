"""The hard-task (HT) meta-batch of Meta-Transfer Learning, as a step-end callback.

Sun, Liu, Chua, Schiele, "Meta-Transfer Learning for Few-Shot Learning", CVPR 2019, §4.3 and
its figure of online re-sampling: after a meta-batch, each task's *failure class* (the class
with the lowest query accuracy after adaptation) is kept, and new tasks are re-sampled around
those classes, with fresh images, for the next meta-update. No public implementation exists
(spec ``meta-learning-spec.md`` §2.6); the open parameters are options here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metakd.data.batch import TaskBatch
from metakd.data.tasks import FewShotSampler
from metakd.engine.callbacks import Callback, FitState

__all__ = ["HardTaskSampler"]

_OTHERS = ("random", "failures")
_MODES = ("alternate", "every")


class HardTaskSampler(Callback):
    """Re-samples hard tasks around each task's failure class (MTL's HT meta-batch).

    After a training step on a meta-batch of ``T`` tasks, :meth:`on_step_end` reads
    ``metrics["class_accuracy"]`` ``[T, N]`` (what :meth:`MAMLWrapper.meta_loss` returns) and
    ``batch.classes`` ``[T, N]``, and keeps each task's failure class: the data-set class of
    its lowest query accuracy (ties go to the lowest episode label; a class without queries,
    accuracy NaN, is never chosen unless all are). The next :meth:`next_batch` then returns
    ``hard_tasks`` new episodes of the sampler's shape (N-way K-shot Q-query), episode ``j``
    containing failure class ``j mod T`` (in order of the tasks) at a random label position,
    plus ``N - 1`` other distinct classes:

    - ``others="random"``: drawn uniformly from all the other classes of the data set;
    - ``others="failures"``: the other failure classes of the meta-batch first (a random
      subset of them if there are more than ``N - 1``), then uniform random classes to fill.

    All images, those of the failure class included, are drawn afresh, with the sampler's
    image pipeline (:meth:`FewShotSampler.sample` with given classes: the same scaling to
    ``[0, 1]``, augmentation, normalisation, dtype and device), from this callback's own
    generator: the sampler's stream is neither advanced nor disturbed.

    Modes (which batches are mined, and so how many steps are hard):

    - ``"alternate"`` (default): only normal batches (those from the stream) are mined, so a
      run alternates normal, hard, normal, hard, ...; the stream advances every other step.
      This is the paper's figure (one round of online re-sampling per meta-batch), with the
      normal and hard updates as separate optimiser steps.
    - ``"every"``: every batch, hard ones included, is mined, so after the first (normal)
      step every step is a hard batch built from the failures of the step before; the stream
      is drawn from only once.

    The state (pending failure classes, the generator, the mode's phase) is in
    :meth:`state_dict`, so a run resumed from ``last.pt`` draws the same hard batches bit for
    bit. Single process only: :meth:`on_fit_start` refuses ``world_size > 1`` (each rank
    would mine its own slice and the ranks would train on different batches).

    Args:
        sampler: the :class:`metakd.data.FewShotSampler` whose data set and episode shape the
            hard tasks use (normally the training stream itself).
        hard_tasks: episodes per hard batch ``K'``; default the number of tasks of the batch
            that was mined.
        others: how the other ``N - 1`` classes of a hard task are drawn (see above).
        mode: ``"alternate"`` or ``"every"`` (see above).
        seed: seed of the callback's generator.

    Raises:
        ValueError: an unknown ``others`` or ``mode``, or ``hard_tasks < 1``.

    Example:
        >>> import torch
        >>> from metakd.data import few_shot
        >>> from metakd.data.base import ImageArray
        >>> arr = ImageArray(torch.zeros(40, 1, 4, 4, dtype=torch.uint8),
        ...                  torch.arange(40).view(8, 5), torch.full((8,), 5),
        ...                  torch.zeros(8, dtype=torch.long), [str(c) for c in range(8)])
        >>> tasks = few_shot(arr, ways=3, shots=1, queries=2, meta_batch_size=2)
        >>> ht = HardTaskSampler(tasks)
        >>> batch = next(iter(tasks))
        >>> acc = torch.tensor([[1.0, 0.0, 0.5], [0.5, 1.0, 0.5]])
        >>> ht.on_step_end(1, batch, torch.tensor(0.0), {"class_accuracy": acc}, None)
        >>> failures = [int(batch.classes[0, 1]), int(batch.classes[1, 0])]
        >>> hard = ht.next_batch()
        >>> all(failures[j] in hard.classes[j].tolist() for j in range(2))
        True
        >>> ht.next_batch() is None   # consumed; the next step trains on a normal batch
        True
    """

    def __init__(
        self,
        sampler: FewShotSampler,
        hard_tasks: int | None = None,
        others: str = "random",
        mode: str = "alternate",
        seed: int = 0,
    ) -> None:
        if not isinstance(sampler, FewShotSampler):
            raise ValueError(f"sampler must be a FewShotSampler, got {type(sampler).__name__}")
        if hard_tasks is not None and (isinstance(hard_tasks, bool) or hard_tasks < 1):
            raise ValueError(f"hard_tasks must be a positive int or None, got {hard_tasks!r}")
        if others not in _OTHERS:
            raise ValueError(f"others={others!r} is unknown; use one of {_OTHERS}")
        if mode not in _MODES:
            raise ValueError(f"mode={mode!r} is unknown; use one of {_MODES}")
        self.sampler = sampler
        self.hard_tasks = hard_tasks
        self.others = others
        self.mode = mode
        self.seed = seed
        self._gen = torch.Generator().manual_seed(seed)
        self._pending: Tensor | None = None  # [T] failure classes waiting for next_batch
        self._last_hard = False  # whether the step being trained was supplied by us

    @staticmethod
    def failure_classes(class_accuracy: Tensor, classes: Tensor) -> Tensor:
        """Each task's failure class: ``classes[t, argmin_n class_accuracy[t, n]]``.

        Ties go to the lowest episode label; NaN (a class without queries) counts as above
        every accuracy.

        Args:
            class_accuracy: ``[T, N]`` per-class query accuracy.
            classes: ``[T, N]`` data-set class of each episode label.

        Returns:
            ``[T]`` int64 data-set classes, on the CPU.

        Example:
            >>> acc = torch.tensor([[0.9, 0.2, 0.2], [float("nan"), 0.5, 1.0]])
            >>> HardTaskSampler.failure_classes(acc, torch.tensor([[7, 3, 5], [1, 2, 4]]))
            tensor([3, 2])
        """
        acc = class_accuracy.detach().cpu().to(torch.float64)
        cls = classes.detach().cpu().long()
        if acc.dim() != 2 or acc.shape != cls.shape:
            raise ValueError(f"class_accuracy {tuple(acc.shape)} and classes "
                             f"{tuple(cls.shape)} must both be [T, N]")
        acc = torch.where(torch.isnan(acc), torch.full_like(acc, float("inf")), acc)
        worst = acc.argmin(dim=1)  # the first minimum: the lowest label among ties
        return cls.gather(1, worst[:, None]).squeeze(1)

    def hard_batch(self, failures: Tensor) -> TaskBatch:
        """A :class:`TaskBatch` of hard tasks around ``failures`` ``[T]``, from the generator.

        ``hard_tasks`` (default ``T``) episodes, episode ``j`` containing ``failures[j mod
        T]``; see the class description for the other classes and the images. Draws from
        (and advances) the callback's generator.

        Example:
            >>> import torch
            >>> from metakd.data import few_shot
            >>> from metakd.data.base import ImageArray
            >>> arr = ImageArray(torch.zeros(40, 1, 4, 4, dtype=torch.uint8),
            ...                  torch.arange(40).view(8, 5), torch.full((8,), 5),
            ...                  torch.zeros(8, dtype=torch.long), [str(c) for c in range(8)])
            >>> ht = HardTaskSampler(few_shot(arr, 3, 1, 2), hard_tasks=4)
            >>> hard = ht.hard_batch(torch.tensor([6, 2]))
            >>> hard.classes.shape, [6 in hard.classes[0], 2 in hard.classes[3]]
            (torch.Size([4, 3]), [True, True])
        """
        f = failures.detach().cpu().long().flatten()
        if f.numel() == 0:
            raise ValueError("hard_batch needs at least one failure class")
        num_classes, ways = self.sampler.arrays.num_classes, self.sampler.ways
        if int(f.min()) < 0 or int(f.max()) >= num_classes:
            raise ValueError(f"failure classes {f.tolist()} are not classes of the sampler's "
                             f"data set (0..{num_classes - 1})")
        t = self.hard_tasks or len(f)
        rows = torch.arange(t)
        anchors = f[rows % len(f)]
        # Keys: the anchor highest, then (with others="failures") the other failure classes,
        # then the rest; top-N of iid uniform keys within each tier is a uniform subset.
        keys = torch.rand(t, num_classes, generator=self._gen)
        if self.others == "failures":
            keys[:, f.unique()] += 1.0
        keys[rows, anchors] = 3.0
        chosen = keys.topk(ways, dim=1).indices  # [T', N], anchor first
        order = torch.rand(t, ways, generator=self._gen).argsort(dim=1)  # random label slots
        return self.sampler.sample(classes=chosen.gather(1, order), generator=self._gen)

    # ------------------------------------------------------------------ Callback interface
    def on_fit_start(self, fit_state: FitState) -> None:
        """Refuses a distributed run (see the class description)."""
        if fit_state.world_size > 1:
            raise ValueError("HardTaskSampler runs in a single process only: under "
                             "torch.distributed each rank would mine different failure classes")

    def next_batch(self) -> TaskBatch | None:
        """The pending hard batch (built now, from the generator), or ``None``."""
        if self._pending is None:
            return None
        batch = self.hard_batch(self._pending)
        self._pending = None
        self._last_hard = True
        return batch

    def on_step_end(self, step: int, batch: Any, loss: Tensor, metrics: dict[str, Any],
                    learner: nn.Module | None) -> None:
        """Keeps the failure classes of ``batch`` when the mode mines it."""
        was_hard, self._last_hard = self._last_hard, False
        if was_hard and self.mode == "alternate":
            return
        acc = metrics.get("class_accuracy")
        classes = getattr(batch, "classes", None)
        if acc is None or classes is None:
            raise ValueError("HardTaskSampler needs metrics['class_accuracy'] [T, N] (as "
                             "MAMLWrapper.meta_loss gives) and a TaskBatch with classes [T, N]")
        self._pending = self.failure_classes(acc, classes)

    def state_dict(self) -> dict[str, Any]:
        """Pending failure classes, generator state and phase (loads with weights_only)."""
        return {"generator": self._gen.get_state(), "pending": self._pending,
                "last_hard": self._last_hard, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output."""
        self._gen.set_state(state["generator"])
        pending = state["pending"]
        self._pending = None if pending is None else pending.cpu().long()
        self._last_hard = bool(state["last_hard"])
