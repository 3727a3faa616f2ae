"""Step-end callbacks whose state is checkpointed with the run, and that may supply batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["Callback", "FitState"]


@dataclass(frozen=True)
class FitState:
    """What a callback can see of a run when it starts (:meth:`Callback.on_fit_start`).

    Attributes:
        learner: the model being trained.
        optimizer: its optimiser.
        scheduler: the learning-rate scheduler, or ``None``.
        start_step: steps already completed (non-zero after a resume).
        steps: the run's total steps.
        out_dir: the run folder, or ``None``.
        device: where batches go, or ``None``.
        rank: this process's rank (0 without ``torch.distributed``).
        world_size: the number of ranks (1 without ``torch.distributed``).
        max_seconds: the run's time budget, or ``None``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> state = FitState(model, opt, None, start_step=40, steps=100, out_dir=None,
        ...                  device=None, rank=0, world_size=1, max_seconds=None)
        >>> state.steps - state.start_step
        60
    """

    learner: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    start_step: int
    steps: int
    out_dir: Path | None
    device: torch.device | str | None
    rank: int
    world_size: int
    max_seconds: float | None


class Callback:
    """Base class of the hooks :func:`metakd.engine.fit` calls; override what you need.

    Order within a run: after a resume has restored the model, the optimiser and every
    callback's state (:meth:`load_state_dict`), :meth:`on_fit_start` is called once. Before
    each step, :meth:`next_batch` is asked for a batch: the first callback (in the order given
    to ``fit``) that returns one supplies the step's batch, and the batch stream is drawn from
    only when none does. After the optimiser (and scheduler) step, :meth:`on_step_end` is
    called. ``last.pt`` holds ``[cb.state_dict() for cb in callbacks]``, so a callback that
    keeps its whole state there continues a resumed run exactly, bit for bit on CPU.

    Hard-task re-sampling (Meta-Transfer Learning) is such a callback: ``on_step_end`` reads
    the per-class query accuracy in ``metrics``, builds hard episodes from the worst classes
    and appends them to its own queue; ``next_batch`` pops the queue; ``state_dict`` holds the
    queue. A state dict must load with ``torch.load(weights_only=True)``: tensors, numbers,
    strings, and lists, tuples and dicts of them (store a queued ``TaskBatch`` as its tensors).

    Under ``torch.distributed`` every rank runs its callbacks on its own slice of the batch and
    its own metrics; a callback that supplies batches must give every rank the same one (for
    example by all-reducing what it decides from), since each rank then takes its slice of it.

    Example:
        >>> import itertools, torch
        >>> from torch import nn
        >>> from metakd.engine import Callback, fit
        >>> class CountSteps(Callback):
        ...     def __init__(self):
        ...         self.count = 0
        ...     def on_step_end(self, step, batch, loss, metrics, learner):
        ...         self.count += 1
        ...     def state_dict(self):
        ...         return {"count": self.count}
        ...     def load_state_dict(self, state):
        ...         self.count = state["count"]
        >>> model = nn.Linear(2, 2)
        >>> data = itertools.repeat((torch.randn(8, 2), torch.randint(0, 2, (8,))))
        >>> counter = CountSteps()
        >>> _ = fit(model, data, torch.optim.SGD(model.parameters(), lr=0.1), 5,
        ...         callbacks=[counter], progress=False)
        >>> counter.count
        5
    """

    def on_fit_start(self, fit_state: FitState) -> None:
        """Called once when training starts (after a resume has restored every state)."""

    def next_batch(self) -> Any | None:
        """A batch to train on instead of the stream's next one, or ``None`` (the default)."""
        return None

    def on_step_end(self, step: int, batch: Any, loss: torch.Tensor, metrics: dict[str, Any],
                    learner: nn.Module) -> None:
        """Called after every optimiser step.

        Args:
            step: the steps completed, this one included (1 after the first step).
            batch: the batch just trained on (this rank's slice, on the run's device).
            loss: the step's loss, detached (a 0-d tensor).
            metrics: the objective's metrics, tensors included (``task_accuracy`` ...).
            learner: the model being trained.
        """

    def state_dict(self) -> dict[str, Any]:
        """The callback's state for ``last.pt`` (empty by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (nothing to do by default)."""
