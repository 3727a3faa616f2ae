"""Evaluation: mean accuracy over episodes (Student-t CI) or top-1 over labelled examples.

:func:`evaluate` walks the data and hands each batch to a tally of its kind (episodes or
labelled examples), which scores it and, at the end, turns its counts into an
:class:`~metakd.engine.EvalResult`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metakd.data.batch import TaskBatch
from metakd.engine.objective import (
    LossFn,
    Objective,
    batch_size,
    is_minibatch,
    minibatch_xy,
    move_batch,
)
from metakd.engine.stats import EvalResult, binomial_confidence_interval, mean_confidence_interval

__all__ = ["evaluate"]


class _Episodes:
    """The running tally over episodes: one query accuracy per task, the summed loss."""

    def __init__(self) -> None:
        self.accs: list[float] = []
        self.losses: list[float] = []

    def add(self, objective: Objective, learner: nn.Module, batch: Any, step: int | None) -> None:
        """Score one batch of tasks (a :class:`TaskBatch`, or one task of another type)."""
        loss, metrics = objective(batch, step)
        n = len(batch) if isinstance(batch, TaskBatch) else 1
        acc = metrics.get("task_accuracy")
        if acc is None:
            raise KeyError(
                "evaluate() needs per-episode accuracies: the meta-learner's metrics must "
                "contain 'task_accuracy', a tensor of one accuracy per task"
            )
        values = torch.as_tensor(acc).detach().flatten().double().tolist()
        if len(values) != n:
            raise ValueError(f"'task_accuracy' has {len(values)} entries for {n} tasks")
        self.accs += values
        self.losses.append(float(loss.detach()) * n)

    def result(self) -> EvalResult:
        """Mean accuracy over the episodes with its Student-t interval."""
        return mean_confidence_interval(self.accs,
                                        loss=math.fsum(self.losses) / max(len(self.accs), 1))


class _Examples:
    """The running tally over labelled examples: hits, examples, summed cross-entropy."""

    def __init__(self) -> None:
        self.correct = 0
        self.examples = 0
        self.losses: list[float] = []
        self.hits: list[float] | None = []  # per example; None once a loss_fn hides them

    def add(self, objective: Objective, learner: nn.Module, batch: Any, step: int | None) -> None:
        """Score one ``(x, y)`` minibatch: ``learner(x)``'s top-1, or the ``loss_fn``'s."""
        n = batch_size(batch)[0]
        if objective.loss_fn is None:
            x, y = minibatch_xy(batch)
            with torch.no_grad():
                logits = learner(x)
                hits = (logits.argmax(-1) == y).double()
                self.losses.append(float(F.cross_entropy(logits.double(), y, reduction="sum")))
            self.correct += int(hits.sum())
            if self.hits is not None:
                self.hits.extend(hits.tolist())
        else:
            loss, metrics = objective(batch, step)
            if "accuracy" not in metrics:
                raise KeyError("evaluate() on minibatches with loss_fn needs metrics['accuracy'], "
                               "the top-1 accuracy over the batch")
            self.correct += round(float(metrics["accuracy"]) * n)
            self.losses.append(float(loss.detach()) * n)
            self.hits = None
        self.examples += n

    def result(self) -> EvalResult:
        """Top-1 accuracy over the examples with its binomial interval."""
        return binomial_confidence_interval(
            self.correct, self.examples, loss=math.fsum(self.losses) / max(self.examples, 1),
            values=self.hits)


def _kind(batch: Any) -> str:
    """``"episodes"``, ``"minibatches"`` or ``"other"`` (scored like episodes)."""
    if isinstance(batch, TaskBatch):
        return "episodes"
    return "minibatches" if is_minibatch(batch) else "other"


def evaluate(
    learner: nn.Module,
    data: Iterable[Any],
    device: torch.device | str | None = None,
    progress: bool = False,
    loss_fn: LossFn | None = None,
    *,
    step: int | None = None,
) -> EvalResult:
    """Accuracy with a 95% confidence interval, over episodes or over labelled examples.

    - **Episodes** (:class:`metakd.data.TaskBatch`): the mean query accuracy over episodes,
      with a Student-t interval (:func:`metakd.engine.mean_confidence_interval`); the learner's
      ``meta_loss(batch, training=False)`` supplies one accuracy per task
      (``metrics["task_accuracy"]``, ``[T]``).
    - **Minibatches** ``(x [B, ...], y [B])``: plain top-1 accuracy of ``learner(x)`` over all
      examples, with the normal approximation of a binomial proportion as its interval
      (:func:`metakd.engine.binomial_confidence_interval`); ``episodes`` is then the number of
      examples (``unit="examples"``) and ``loss`` the mean cross-entropy per example.

    The learner is put in eval mode and restored afterwards.

    Args:
        learner: a meta-learner (episodes) or a classifier (minibatches).
        data: the evaluation batches, typically ``few_shot(..., num_tasks=600, seed=...)`` or a
            finite list of ``(x, y)`` minibatches; all of one kind.
        device: where to run.
        progress: show a progress bar.
        loss_fn: ``loss_fn(learner, batch, step) -> (loss, metrics)`` (or the older
            ``loss_fn(learner, batch)``) instead of the default objective; its metrics must
            hold ``task_accuracy`` (episodes) or ``accuracy`` (minibatches, the batch's top-1).
        step: the training step, passed on as ``meta_loss(..., step=step)`` when the
            meta-learner takes it, and to ``loss_fn`` (0 when ``None``).

    Returns:
        :class:`metakd.engine.EvalResult` with ``mean``, ``ci95``, ``std``, ``episodes``,
        ``loss``, ``unit`` and ``values``: the per-episode accuracies in the order of ``data``
        (over examples, 1.0 / 0.0 per example; ``None`` with a ``loss_fn``, which reports
        only a batch's accuracy). Two learners scored on the same episodes are compared with
        :func:`metakd.engine.paired_difference`.

    Raises:
        ValueError: ``data`` is empty or mixes episodes and minibatches.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     model.weight.copy_(torch.eye(2))  # predicts the larger coordinate
        Parameter containing:
        tensor([[1., 0.],
                [0., 1.]], requires_grad=True)
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
        >>> y = torch.tensor([0, 1, 1, 1])  # the third is misclassified
        >>> r = evaluate(model, [(x[:2], y[:2]), (x[2:], y[2:])])
        >>> r.mean, r.episodes, r.unit, r.values
        (0.75, 4, 'examples', (1.0, 1.0, 0.0, 1.0))
    """
    from tqdm.auto import tqdm

    objective = Objective(learner, loss_fn, training=False, minibatch_default=None)
    kind = ""
    tally: _Episodes | _Examples | None = None
    was_training = learner.training
    learner.eval()
    try:
        total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
        for batch in tqdm(data, total=total, desc="evaluate", disable=not progress, leave=False):
            this = _kind(batch)
            if tally is None:
                kind, tally = this, _Examples() if this == "minibatches" else _Episodes()
            elif this != kind:
                raise ValueError(f"evaluate() got {this} after {kind}: evaluate one kind at a time")
            tally.add(objective, learner, move_batch(batch, device), step)
    finally:
        learner.train(was_training)
    if tally is None:
        raise ValueError("evaluate() got no batches")
    return tally.result()
