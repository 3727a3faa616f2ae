"""Learning-rate schedules that know about a time budget."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

__all__ = ["BudgetCosine"]


class BudgetCosine:
    """Cosine decay of every parameter group's learning rate over a step *or* time budget.

    Progress is ``max(step / steps, elapsed / max_seconds)``, so a run limited by wall-clock
    time (``fit(..., max_seconds=...)``) still ends its schedule at ``final_factor`` times the
    initial rate, whatever the machine's speed. The learning rate is
    ``lr0 * (final + (1 - final) * (1 + cos(pi * progress)) / 2)``.

    The elapsed time is part of :meth:`state_dict`, so a resumed run continues the schedule
    where it stopped (time spent between the interruption and the restart does not count).
    Because it depends on the wall clock, a time-limited run is not bit-for-bit reproducible;
    with ``max_seconds=None`` it is an ordinary step schedule.

    Args:
        optimizer: the optimiser whose ``lr`` is set.
        steps: the meta-iterations of the run.
        max_seconds: the run's time budget, or ``None``.
        final_factor: the rate at the end, as a fraction of the initial one.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = BudgetCosine(opt, steps=4)
        >>> lrs = []
        >>> for _ in range(4):
        ...     opt.step(); sched.step(); lrs.append(round(sched.get_last_lr()[0], 3))
        >>> lrs
        [0.854, 0.5, 0.146, 0.0]
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        steps: int,
        max_seconds: float | None = None,
        final_factor: float = 0.0,
    ) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
        if not 0.0 <= final_factor <= 1.0:
            raise ValueError(f"final_factor must be in [0, 1], got {final_factor}")
        self.optimizer = optimizer
        self.steps = steps
        self.max_seconds = max_seconds
        self.final_factor = final_factor
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.step_count = 0
        self.elapsed = 0.0
        self._t0 = time.perf_counter()

    def progress(self) -> float:
        """Fraction of the budget used, in ``[0, 1]``."""
        p = self.step_count / self.steps
        if self.max_seconds is not None:
            p = max(p, (self.elapsed + time.perf_counter() - self._t0) / self.max_seconds)
        return min(1.0, p)

    def factor(self) -> float:
        return self.final_factor + (1.0 - self.final_factor) * 0.5 * (
            1.0 + math.cos(math.pi * self.progress())
        )

    def step(self) -> None:
        """Advance one meta-iteration and set the new learning rates."""
        self.step_count += 1
        f = self.factor()
        for group, lr0 in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr0 * f

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "elapsed": self.elapsed + time.perf_counter() - self._t0,
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.elapsed = float(state["elapsed"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self._t0 = time.perf_counter()
