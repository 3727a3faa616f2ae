"""PMAML (ECAI 2020): a MAML student whose meta-objective distils a frozen MAML teacher.

For each task of a meta-batch the student takes its inner step(s) on the support set, and its
adapted query logits are scored by a :class:`metakd.distill.DistillLoss` against the
teacher's logits on the same query set. The loss is the faithful ``"pmaml"`` preset by
default (``(1 − λ)·CE + λ·T²·KL_mean_elements``, T = 10, λ = 0.9) and may be any other
(``preset("mdistiller_dkd", ...)``, GDA).

**When** the term applies (:class:`KDSchedule`):

- ``"every"``: at every meta-iteration (the official ``pmaml_every``);
- ``"last"``: at the final meta-iteration only (the official ``pmaml_last``, which is
  therefore MAML plus one distillation step);
- a list of meta-iterations.

On the other meta-iterations the query loss is plain cross-entropy (weight 1), as in the
official code. ``inner_kd="every"`` or ``"last"`` also puts the distillation term into the
support loss of the inner loop, at every inner step or at the last one (against the teacher's
support logits): the paper's wording allows it, no official code does it.

**Which teacher outputs** (``teacher_adapt``):

- ``False`` (the official code): the teacher's meta-initialisation applied to the query set.
  Episode labels are permuted per task, so these logits carry no class identity; the term
  then acts as a confidence regulariser more than as a transfer of class knowledge.
- ``True``: the teacher is first adapted on the task's support set with its own inner
  learning rate and steps, without a graph (``teacher.predict``), then classifies the query.

The teacher is a :class:`metakd.meta.MAMLWrapper` held by a
:class:`~metakd.distill.FrozenTeacher`: frozen (eval, ``requires_grad=False``), run without a
graph, on the student's device, and kept out of the registered submodules: it is not in
``parameters()`` and not in ``state_dict()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd._frozen import FrozenTeacher, device_of
from metakd.data.batch import TaskBatch
from metakd.distill.terms import DistillLoss, preset
from metakd.meta.maml import MAMLWrapper
from metakd.meta.objectives import CrossEntropy, Objective

__all__ = ["PMAML", "KDSchedule", "PMAMLObjective", "SupportDistill"]

TEACHER_QUERY = "teacher_logits"
TEACHER_SUPPORT = "teacher_support_logits"


class KDSchedule:
    """At which meta-iterations (0-based) the distillation term applies.

    Args:
        when: ``"every"``, ``"last"`` (needs ``total_steps``), ``"none"`` (never: the
            student is plain MAML, the control of a distillation run) or an iterable of
            meta-iterations.
        total_steps: the run's length in meta-iterations (``"last"`` is
            ``total_steps - 1``).

    Example:
        >>> s = KDSchedule("last", total_steps=100)
        >>> [s.active(i) for i in (0, 98, 99)]
        [False, False, True]
        >>> KDSchedule([0, 10]).active(10), KDSchedule("every").active(7)
        (True, True)
        >>> KDSchedule("none").active(0)
        False
    """

    def __init__(self, when: str | Iterable[int] = "every", total_steps: int | None = None) -> None:
        if when == "none":  # never: plain MAML (the no-distillation control)
            when = ()
        if isinstance(when, str):
            if when not in ("every", "last"):
                raise ValueError(f"schedule {when!r}: use 'every', 'last', 'none' or a list of "
                                 "meta-iterations")
            if when == "last" and (total_steps is None or total_steps < 1):
                raise ValueError("schedule 'last' needs total_steps (the run's meta-iterations)")
            self.when: str | frozenset[int] = when
        else:
            steps = frozenset(int(s) for s in when)
            if any(s < 0 for s in steps):
                raise ValueError(f"meta-iterations are 0-based and >= 0, got {sorted(steps)}")
            self.when = steps
        self.total_steps = total_steps

    def active(self, step: int) -> bool:
        """Whether meta-iteration ``step`` (0-based) carries the distillation term."""
        if self.when == "every":
            return True
        if self.when == "last":
            assert self.total_steps is not None
            return int(step) == self.total_steps - 1
        assert isinstance(self.when, frozenset)
        return int(step) in self.when

    def __repr__(self) -> str:
        when = self.when if isinstance(self.when, str) else sorted(self.when)
        return f"KDSchedule({when!r}, total_steps={self.total_steps})"


class PMAMLObjective(Objective):
    """PMAML's query objective: the distillation loss where the teacher's logits are given.

    With ``extras[key]`` (the teacher's query logits of this task) it returns the parts of
    ``loss``; without them, the plain cross-entropy ``{"ce": CE}`` (the meta-iterations the
    schedule leaves out, and evaluation).

    Args:
        loss: a :class:`DistillLoss` or a preset's name (default ``"pmaml"``).
        key: the extras key of the teacher's logits.

    Example:
        >>> obj = PMAMLObjective()
        >>> s, y = torch.zeros(10, 5), torch.arange(10) % 5
        >>> sorted(obj(s, y, {"teacher_logits": torch.zeros(10, 5)}, 0)), sorted(obj(s, y, {}, 0))
        (['ce', 'kd'], ['ce'])
    """

    def __init__(self, loss: DistillLoss | str = "pmaml", *, key: str = TEACHER_QUERY) -> None:
        super().__init__()
        self.loss = preset(loss) if isinstance(loss, str) else loss
        self.key = key

    def forward(self, logits: Tensor, labels: Tensor, extras: Mapping[str, Tensor],
                step: int | Tensor) -> dict[str, Tensor]:
        teacher = extras.get(self.key)
        if teacher is None:
            return {"ce": F.cross_entropy(logits, labels)}
        return self.loss(logits, teacher, labels, 1)


class SupportDistill(Objective):
    """A support (inner-loop) objective with the distillation term at some inner steps.

    At inner step ``step`` (0-based) it returns the parts of ``loss`` against
    ``extras[key]`` (the teacher's support logits) when ``when`` is ``"every"``, or
    ``"last"`` and ``step == inner_steps - 1``; otherwise the plain support cross-entropy.

    Args:
        loss: a :class:`DistillLoss` or a preset's name.
        inner_steps: the inner steps of training (for ``"last"``).
        when: ``"every"`` or ``"last"``.
        reduction: the cross-entropy's reduction where no term applies (``"mean"`` or
            ``"sum_over_k"``, see :class:`metakd.meta.CrossEntropy`).
        key: the extras key of the teacher's support logits.

    Example:
        >>> obj = SupportDistill("pmaml", inner_steps=3, when="last")
        >>> s, y, t = torch.zeros(5, 5), torch.arange(5), {"teacher_support_logits": torch.zeros(5, 5)}
        >>> sorted(obj(s, y, t, 0)), sorted(obj(s, y, t, 2))
        (['ce'], ['ce', 'kd'])
    """

    def __init__(self, loss: DistillLoss | str = "pmaml", *, inner_steps: int = 1,
                 when: str = "every", reduction: str = "mean",
                 key: str = TEACHER_SUPPORT) -> None:
        super().__init__()
        if when not in ("every", "last"):
            raise ValueError(f"inner KD {when!r}: use 'every' or 'last' (inner step)")
        self.loss = preset(loss) if isinstance(loss, str) else loss
        self.inner_steps = int(inner_steps)
        self.when = when
        self.key = key
        self.ce = CrossEntropy(reduction)

    def forward(self, logits: Tensor, labels: Tensor, extras: Mapping[str, Tensor],
                step: int | Tensor) -> dict[str, Tensor]:
        teacher = extras.get(self.key)
        on = self.when == "every" or int(step) == self.inner_steps - 1
        if teacher is None or not on:
            return self.ce(logits, labels, extras, step)
        return self.loss(logits, teacher, labels, 1)


class PMAML(nn.Module):
    """A MAML student distilled from a frozen MAML teacher (see the module docstring).

    Args:
        model: the student's backbone (Conv-1, Conv-2, Conv-4...).
        teacher: the teacher, a :class:`metakd.meta.MAMLWrapper` (its own inner learning
            rate and steps adapt it when ``teacher_adapt``), a backbone together with
            ``teacher_inner_lr``, a function returning a ``MAMLWrapper``, called at the first
            training step (a run read back for evaluation never loads its teacher), or a
            :class:`~metakd.distill.FrozenTeacher` of one. Frozen here.
        inner_lr: the student's inner learning rate (PMAML: 0.4).
        inner_steps: the student's inner steps in training (PMAML: 1).
        test_inner_steps: inner steps at evaluation (default ``inner_steps``).
        first_order: first-order MAML for the student.
        loss: the distillation loss, a :class:`DistillLoss` or a preset's name (``"pmaml"``).
        schedule: a :class:`KDSchedule`, or ``"every"`` / ``"last"`` / a list of
            meta-iterations.
        total_steps: the run's meta-iterations (for ``schedule="last"``).
        inner_kd: ``None`` (the official code), ``"every"`` or ``"last"``: the term in the
            support loss too, at every inner step or at the last one (of the meta-iterations
            the schedule selects).
        teacher_adapt: adapt the teacher on each support set before taking its logits.
        teacher_inner_lr: with a backbone as ``teacher``, its inner learning rate.
        teacher_inner_steps: the teacher's adaptation steps (default: its
            ``test_inner_steps``).
        inner_loss_reduction: the student's support cross-entropy reduction (PMAML:
            ``"mean"``).
        **maml_kwargs: further :class:`metakd.meta.MAMLWrapper` arguments of the student
            (``backend``, ``compile``, ``adapt``...).

    Example:
        >>> import metakd
        >>> from metakd.data import TaskBatch
        >>> teacher = metakd.MAMLWrapper(metakd.create("conv4", num_classes=5, in_channels=1),
        ...                              inner_lr=0.4)
        >>> pmaml = PMAML(metakd.create("conv2", num_classes=5, in_channels=1), teacher,
        ...               inner_lr=0.4, schedule="every")
        >>> y = torch.arange(5)
        >>> batch = TaskBatch(torch.randn(2, 5, 1, 28, 28), y.repeat(2, 1),
        ...                   torch.randn(2, 10, 1, 28, 28), y.repeat_interleave(2).repeat(2, 1))
        >>> loss, metrics = pmaml.meta_loss(batch, step=0)
        >>> sorted(metrics["terms"])
        ['ce', 'kd']
        >>> any(n.startswith("teacher") for n in pmaml.state_dict())
        False
    """

    def __init__(
        self,
        model: nn.Module,
        teacher: MAMLWrapper | nn.Module | Callable[[], MAMLWrapper] | FrozenTeacher,
        *,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        test_inner_steps: int | None = None,
        first_order: bool = False,
        loss: DistillLoss | str = "pmaml",
        schedule: KDSchedule | str | Iterable[int] = "every",
        total_steps: int | None = None,
        inner_kd: str | None = None,
        teacher_adapt: bool = False,
        teacher_inner_lr: float | None = None,
        teacher_inner_steps: int | None = None,
        inner_loss_reduction: str = "mean",
        **maml_kwargs: Any,
    ) -> None:
        super().__init__()
        loss = preset(loss) if isinstance(loss, str) else loss
        wrapped: Any = teacher  # a MAMLWrapper, a loader or a FrozenTeacher
        if isinstance(teacher, nn.Module) and not isinstance(teacher, MAMLWrapper):
            if teacher_inner_lr is None:
                if teacher_adapt:
                    raise ValueError("an adapted teacher given as a backbone needs "
                                     "teacher_inner_lr (or pass a MAMLWrapper)")
                teacher_inner_lr = inner_lr  # unused: the unadapted teacher takes no step
            wrapped = MAMLWrapper(teacher, inner_lr=teacher_inner_lr,
                                  test_inner_steps=teacher_inner_steps)
        if isinstance(wrapped, MAMLWrapper) and wrapped.model is model:
            raise ValueError("the teacher and the student are the same model")
        if inner_kd not in (None, "every", "last"):
            raise ValueError(f"inner_kd={inner_kd!r}: use None, 'every' or 'last'")
        self.schedule = schedule if isinstance(schedule, KDSchedule) \
            else KDSchedule(schedule, total_steps)
        self.inner_kd = inner_kd
        self.teacher_adapt = bool(teacher_adapt)
        self.teacher_inner_steps = teacher_inner_steps
        support = None
        if inner_kd is not None:
            support = SupportDistill(loss, inner_steps=inner_steps, when=inner_kd,
                                     reduction=inner_loss_reduction)
        self.student = MAMLWrapper(
            model, inner_lr=inner_lr, inner_steps=inner_steps, first_order=first_order,
            test_inner_steps=test_inner_steps, inner_loss_reduction=inner_loss_reduction,
            support=support, objective=PMAMLObjective(loss), **maml_kwargs,
        )
        # A plain attribute (FrozenTeacher is not a module): not in parameters() or state_dict().
        self.frozen_teacher = wrapped if isinstance(wrapped, FrozenTeacher) \
            else FrozenTeacher(wrapped, kind=MAMLWrapper)

    @property
    def teacher(self) -> MAMLWrapper:
        """The frozen teacher (not a registered submodule), loaded at first use if need be."""
        return self.frozen_teacher.get(device_of(self.student))  # type: ignore[return-value]

    @property
    def model(self) -> nn.Module:
        """The student's backbone."""
        return self.student.model

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> PMAML:
        super()._apply(fn, recurse)  # .to(), .double(), ... move the teacher too
        self.frozen_teacher.apply_tensors(fn)
        return self

    def _check_ways(self, batch: TaskBatch) -> None:
        out = getattr(self.teacher.model, "out_features", None)
        ways = batch.query_y.max().item() + 1 if batch.query_y.numel() else 0
        if out is not None and out < ways:
            raise ValueError(f"the teacher classifies {out} ways, the episodes have {ways}")

    def teacher_logits(self, batch: TaskBatch, on: str = "query") -> Tensor:
        """The teacher's logits ``[T, M, N]`` of each task's query (or support) set, no graph.

        Unadapted: the teacher's initialisation on every task's set
        (``MAMLWrapper.forward_tasks``: one batched pass on an accelerator, task by task on
        the CPU, where that is faster; transductive batch norm sees one task's images either
        way, as the student's does). Adapted
        (``teacher_adapt``): after its own inner steps on the task's support set.
        """
        if on not in ("query", "support"):
            raise ValueError(f"on={on!r}: 'query' or 'support'")
        self._check_ways(batch)
        xs = batch.query_x if on == "query" else batch.support_x
        teacher = self.teacher  # eval mode, on the student's device
        if self.teacher_adapt and on == "query":
            return teacher.predict(batch, steps=self.teacher_inner_steps)
        with torch.no_grad():
            if self.teacher_adapt:
                out = []
                for i in range(len(batch)):
                    learner = teacher.adapt(batch.support_x[i], batch.support_y[i],
                                            steps=self.teacher_inner_steps)
                    out.append(learner(xs[i]))
                return torch.stack(out)
            return teacher.forward_tasks(xs)

    def meta_loss(self, task_batch: TaskBatch, training: bool = True,
                  step: int | Tensor | None = None) -> tuple[Tensor, dict[str, Any]]:
        """The student's meta-loss, with the teacher's logits where the schedule says.

        In training, at a meta-iteration the schedule selects, the batch gets the teacher's
        query logits (and, with ``inner_kd``, its support logits) as extras; otherwise, and
        in evaluation, the loss is the student's plain MAML cross-entropy.
        """
        extras: dict[str, Tensor] = {}
        if training and self.schedule.active(0 if step is None else int(step)):
            extras[TEACHER_QUERY] = self.teacher_logits(task_batch, "query")
            if self.inner_kd is not None:
                extras[TEACHER_SUPPORT] = self.teacher_logits(task_batch, "support")
        batch = task_batch.with_extras(**extras) if extras else task_batch
        return self.student.meta_loss(batch, training=training, step=step)

    def predict(self, task_batch: TaskBatch, steps: int | None = None,
                step: int | Tensor | None = None) -> Tensor:
        """The student's adapted query logits ``[T, N*Q, N]`` (see ``MAMLWrapper.predict``)."""
        return self.student.predict(task_batch, steps, step)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None,
              extras: Mapping[str, Tensor] | None = None) -> Any:
        """The student adapted to one task (see ``MAMLWrapper.adapt``)."""
        return self.student.adapt(support_x, support_y, steps, extras)

    def forward(self, x: Tensor) -> Tensor:
        """The student's unadapted logits."""
        return self.student(x)

    def extra_repr(self) -> str:
        return (f"schedule={self.schedule!r}, inner_kd={self.inner_kd!r}, "
                f"teacher_adapt={self.teacher_adapt}, teacher={self.frozen_teacher!r} "
                "(unregistered)")
