"""The :class:`Distiller`: a student, a frozen teacher and a :class:`DistillLoss`.

The shape is mdistiller's: ``forward_train(x, y, step) -> (student_logits, {name: loss})``
while training, the student's logits otherwise. The teacher is held by a
:class:`~metakd.distill.FrozenTeacher`, which makes it what a teacher must be:

- **frozen**: eval mode at every use (``distiller.train()`` does not reach it), run
  without a graph (``torch.no_grad``), ``requires_grad=False``;
- **not registered** as a submodule: ``distiller.parameters()`` (what the optimiser
  receives) and ``distiller.state_dict()`` (what :func:`metakd.engine.fit` checkpoints) hold
  the student alone (and the loss's learnable tensors, if any). ``distiller.to(device)``
  still moves it, and it follows the student's device;
- given as a module, or as a function that returns it, called at the first use.

Episodes use the same losses through :class:`DistillObjective`, the query objective of a
meta-learner (PMAML, Meta-Baseline): it reads the teacher's logits of each task from
:attr:`metakd.data.TaskBatch.extras`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd._frozen import FrozenTeacher, device_of, freeze
from metakd.distill.terms import DistillLoss, preset
from metakd.engine.objective import Metrics, minibatch_xy
from metakd.meta.objectives import Objective, total

__all__ = ["DistillObjective", "Distiller", "epoch_clock", "freeze"]


def _warmups(loss: nn.Module) -> list[float]:
    found = (getattr(m, "warmup", None) for m in loss.modules())
    return [float(w) for w in found if isinstance(w, (int, float)) and w > 0]


def epoch_clock(step: int | Tensor, steps_per_epoch: int | None) -> int | Tensor:
    """The 1-based epoch of a 0-based training step (mdistiller counts epochs from 1).

    ``None`` steps per epoch: every step is epoch 1 (no schedule runs). A 0-d tensor step (the
    meta-iteration under ``vmap``) gives a tensor.

    Example:
        >>> epoch_clock(0, 100), epoch_clock(99, 100), epoch_clock(100, 100)
        (1, 1, 2)
    """
    if steps_per_epoch is None:
        return 1
    return step // steps_per_epoch + 1


class Distiller(nn.Module):
    """A student trained to match a frozen teacher, for whole minibatches.

    Args:
        student: the model being trained, ``student(x) -> logits [B, C]``.
        teacher: the frozen model, ``teacher(x) -> logits [B, C]`` (same classes): a module,
            a function of no argument returning it (called at the first use) or a
            :class:`~metakd.distill.FrozenTeacher` (shared with other models). It is held
            frozen and unregistered (see the module docstring). ``None`` only with a loss
            that needs no teacher (the ``"ce"`` preset).
        loss: a :class:`DistillLoss` or the name of a preset (:func:`metakd.distill.preset`).
        steps_per_epoch: batches per epoch, for the epoch clock of schedules (DKD's warm-up);
            required when the loss has a warm-up.

    Raises:
        ValueError: a loss with a warm-up and no ``steps_per_epoch``; a distillation loss
            without a teacher.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
        >>> d = Distiller(student, teacher, "mdistiller_kd")
        >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        >>> logits, terms = d.forward_train(x, y, step=0)
        >>> logits.shape, sorted(terms)
        (torch.Size([8, 3]), ['ce', 'kd'])
        >>> [n for n, _ in d.named_parameters()]          # the student's alone
        ['student.weight', 'student.bias']
        >>> d.train().teacher.training
        False
    """

    def __init__(self, student: nn.Module,
                 teacher: nn.Module | Callable[[], nn.Module] | FrozenTeacher | None,
                 loss: DistillLoss | str = "mdistiller_kd", *,
                 steps_per_epoch: int | None = None) -> None:
        super().__init__()
        self.student = student
        self.loss = preset(loss) if isinstance(loss, str) else loss
        needs_teacher = getattr(self.loss, "needs_teacher", True)
        if teacher is None and needs_teacher:
            raise ValueError("this loss distils from a teacher: pass teacher=..., or use the "
                             "'ce' preset to train without one")
        if teacher is not None and teacher is student:
            raise ValueError("the teacher and the student are the same module")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        if _warmups(self.loss) and steps_per_epoch is None:
            raise ValueError("the loss has a warm-up counted in epochs (DKD): pass "
                             "steps_per_epoch=<batches per epoch>")
        self.steps_per_epoch = steps_per_epoch
        # A plain attribute (FrozenTeacher is not a module): not in parameters() or state_dict().
        self.frozen_teacher: FrozenTeacher | None = (
            teacher if isinstance(teacher, FrozenTeacher) or teacher is None
            else FrozenTeacher(teacher))

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher (not a registered submodule), loaded if need be."""
        if self.frozen_teacher is None:
            return None
        return self.frozen_teacher.get(device_of(self.student))

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Distiller:
        super()._apply(fn, recurse)  # .to(), .cuda(), .double(), ... move the teacher too
        if self.frozen_teacher is not None:
            self.frozen_teacher.apply_tensors(fn)
        return self

    def get_learnable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimiser should receive (the student's and the loss's).

        Example:
            >>> d = Distiller(nn.Linear(2, 2), nn.Linear(2, 2))
            >>> len(d.get_learnable_parameters())
            2
        """
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, x: Tensor) -> Tensor:
        """The student's logits (training and evaluation alike)."""
        return self.student(x)

    def teacher_logits(self, x: Tensor) -> Tensor:
        """The teacher's logits of ``x``: eval mode, no graph.

        Example:
            >>> d = Distiller(nn.Linear(2, 3), nn.Linear(2, 3))
            >>> d.teacher_logits(torch.randn(4, 2)).requires_grad
            False
        """
        if self.frozen_teacher is None:
            raise ValueError("this Distiller has no teacher")
        return self.frozen_teacher(x, device=device_of(self.student))

    def epoch(self, step: int | Tensor) -> int | Tensor:
        """The 1-based epoch of training step ``step`` (see :func:`epoch_clock`)."""
        return epoch_clock(step, self.steps_per_epoch)

    def forward_train(self, x: Tensor, y: Tensor, step: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """The student's logits and the named, weighted parts of its loss on ``(x, y)``.

        Args:
            x: inputs ``[B, ...]``.
            y: labels ``[B]``.
            step: the 0-based training step (for the epoch clock of schedules).
        """
        logits = self.student(x)
        needs_teacher = getattr(self.loss, "needs_teacher", True)
        teacher = self.teacher_logits(x) if needs_teacher else None
        return logits, self.loss(logits, teacher, y, self.epoch(step))

    def training_loss(self, batch: Any, step: int = 0) -> tuple[Tensor, Metrics]:
        """The objective of :func:`metakd.engine.fit`: ``(loss, metrics)`` of a minibatch.

        :func:`metakd.engine.fit` uses it by itself. In training mode the loss is the
        sum of :meth:`forward_train`'s parts; in eval mode (validation) it is the student's
        plain cross-entropy and the teacher is not run.

        Returns:
            ``(loss, {"accuracy": top-1, "terms": {name: float}})``.

        Example:
            >>> d = Distiller(nn.Linear(4, 3), nn.Linear(4, 3), "gda_kd")
            >>> loss, m = Distiller.training_loss(d, (torch.randn(6, 4), torch.arange(6) % 3))
            >>> sorted(m["terms"])
            ['ce', 'fisher_rao', 'kd', 'sinkhorn']
        """
        x, y = minibatch_xy(batch)
        if self.training:
            logits, terms = self.forward_train(x, y, step)
        else:
            logits = self.student(x)
            terms = {"ce": F.cross_entropy(logits, y)}
        loss = total(terms)
        with torch.no_grad():
            acc = (logits.argmax(-1) == y).double().mean()
        return loss, {"accuracy": float(acc),
                      "terms": {k: float(v.detach()) for k, v in terms.items()}}

    def extra_repr(self) -> str:
        return (f"teacher={self.frozen_teacher!r} (unregistered), "
                f"steps_per_epoch={self.steps_per_epoch}")


class DistillObjective(Objective):
    """A :class:`DistillLoss` as the query objective of a meta-learner (episodes).

    Called per task by every execution path of :mod:`metakd.meta` with the adapted student's
    query logits ``[N*Q, N]``, the query labels, this task's extras and the meta-iteration. The
    teacher's logits of the same query set come from ``extras[key]`` (``[N*Q, N]`` per task,
    put on the batch with :meth:`metakd.data.TaskBatch.with_extras`); the loss is the one a
    :class:`Distiller` uses on minibatches, so nothing is computed twice over.

    Args:
        loss: a :class:`DistillLoss` or a preset's name.
        key: the extras key of the teacher's logits.
        steps_per_epoch: meta-iterations per epoch, for warm-ups (``None``: every step is
            epoch 1).

    Example:
        >>> import torch
        >>> obj = DistillObjective("pmaml")
        >>> s, y = torch.randn(10, 5), torch.arange(10) % 5
        >>> terms = obj(s, y, {"teacher_logits": torch.randn(10, 5)}, torch.tensor(0))
        >>> sorted(terms)
        ['ce', 'kd']
    """

    def __init__(self, loss: DistillLoss | str = "mdistiller_kd", *,
                 key: str = "teacher_logits", steps_per_epoch: int | None = None) -> None:
        super().__init__()
        self.loss = preset(loss) if isinstance(loss, str) else loss
        if _warmups(self.loss) and steps_per_epoch is None:
            raise ValueError("the loss has a warm-up counted in epochs (DKD): pass "
                             "steps_per_epoch=<meta-iterations per epoch>")
        self.key = key
        self.steps_per_epoch = steps_per_epoch

    def forward(self, logits: Tensor, labels: Tensor, extras: Mapping[str, Tensor],
                step: int | Tensor) -> dict[str, Tensor]:
        teacher = extras.get(self.key)
        if teacher is None and getattr(self.loss, "needs_teacher", True):
            raise KeyError(f"the distillation objective reads the teacher's logits from the "
                           f"batch's extras[{self.key!r}]; this batch has "
                           f"{sorted(extras) or 'no extras'} (add them with "
                           "batch.with_extras(...))")
        return self.loss(logits, teacher, labels, epoch_clock(step, self.steps_per_epoch))

    def extra_repr(self) -> str:
        return f"key={self.key!r}, steps_per_epoch={self.steps_per_epoch}"
