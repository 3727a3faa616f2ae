"""What one training step computes: the loss of a batch (episodes or minibatches), named terms.

:class:`Objective` is the one place that decides which loss a batch gets. In order:

1. ``loss_fn(learner, batch, step) -> (loss, metrics)`` when the caller passes one (the older
   two-argument form ``loss_fn(learner, batch)`` is accepted too): an explicit objective wins;
2. the learner's own training objective, ``learner.training_loss(batch, step) -> (loss,
   metrics)`` (the :class:`HasTrainingLoss` protocol), for any batch, in training. A learner
   whose loss is more than the cross-entropy of its outputs (for example
   :class:`metakd.distill.Distiller`, whose loss has a distillation term) defines it, so
   ``fit(learner, ...)`` trains on that loss without being told;
3. **episodes** (a :class:`metakd.data.TaskBatch`): the meta-learner's
   ``meta_loss(batch, training=..., step=...)``, which is the training objective of the
   episodic learners (MAML, PMAML, Meta-LSTM, Meta-Baseline) and their evaluation;
4. **minibatches** (a tuple or list ``(x [B, ...], y [B])``; a ``NamedTuple`` counts):
   :func:`supervised_loss`, the cross-entropy of ``learner(x)``.

In evaluation (``training=False``) episodes go to ``meta_loss(batch, training=False)`` first,
and to ``training_loss`` (called in eval mode) only when the learner has no ``meta_loss``.

``metrics`` may hold ``"accuracy"`` (a float), ``"terms"`` (``{name: float or 0-d tensor}``,
the named parts of the loss, logged as ``loss/NAME``) and any other scalar; tensors with more
than one element (for example ``task_accuracy [T]`` or ``class_accuracy``) reach callbacks but
are not logged.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from metakd.data.batch import TaskBatch

__all__ = ["HasTrainingLoss", "LossFn", "Metrics", "own_training_loss", "supervised_loss"]

Metrics = dict[str, Any]
LossFn = Callable[..., tuple[torch.Tensor, Metrics]]
"""``loss_fn(learner, batch, step) -> (loss, metrics)``, or the older ``loss_fn(learner, batch)``."""


@runtime_checkable
class HasTrainingLoss(Protocol):
    """A learner with its own training objective, which :func:`metakd.engine.fit` prefers.

    ``training_loss(batch, step) -> (loss, metrics)``: the loss of one batch at the 0-based
    training ``step`` (a 0-d tensor with a graph) and its metrics (``"accuracy"``,
    ``"terms"``: the named parts of the loss). In eval mode it may return a plain validation
    loss. An explicit ``loss_fn`` passed to ``fit`` still wins; a learner without the method
    trains on its ``meta_loss`` (episodes) or on the cross-entropy of its outputs
    (minibatches).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Smooth(nn.Linear):
        ...     def training_loss(self, batch, step=0):
        ...         x, y = batch
        ...         loss = nn.functional.cross_entropy(self(x), y, label_smoothing=0.1)
        ...         return loss, {"terms": {"smoothed_ce": float(loss)}}
        >>> isinstance(Smooth(2, 2), HasTrainingLoss), isinstance(nn.Linear(2, 2), HasTrainingLoss)
        (True, False)
    """

    def training_loss(self, batch: Any, step: int = 0) -> tuple[torch.Tensor, Metrics]: ...


def own_training_loss(learner: Any) -> Callable[[Any, int], tuple[torch.Tensor, Metrics]] | None:
    """The learner's bound ``training_loss`` (see :class:`HasTrainingLoss`), or ``None``.

    Example:
        >>> from torch import nn
        >>> own_training_loss(nn.Linear(2, 2)) is None
        True
    """
    fn = getattr(learner, "training_loss", None)
    return fn if callable(fn) else None


def is_minibatch(batch: Any) -> bool:
    """``True`` for an ``(x, y, ...)`` tuple or list whose first item is a tensor."""
    return isinstance(batch, (tuple, list)) and len(batch) >= 1 and torch.is_tensor(batch[0])


def batch_size(batch: Any) -> tuple[int, str]:
    """How many items a batch holds and what they are: tasks, examples or (otherwise) batches."""
    if isinstance(batch, TaskBatch):
        return len(batch), "tasks"
    if is_minibatch(batch):
        return int(batch[0].shape[0]), "examples"
    return 1, "batches"


def batch_images(batch: Any) -> int:
    """The images a batch holds: support and query of every task, or the minibatch's."""
    if isinstance(batch, TaskBatch):
        n = batch.support_x.shape[0] * batch.support_x.shape[1]
        return int(n + batch.query_x.shape[0] * batch.query_x.shape[1])
    if is_minibatch(batch) and torch.is_tensor(batch[0]):
        return int(batch[0].shape[0])
    return 0


def move_batch(batch: Any, device: torch.device | str | None, pin: bool = False) -> Any:
    """``batch.to(device)`` for a TaskBatch (or anything with ``.to``), per tensor for tuples;
    ``pin``: through pinned host memory, without blocking (CUDA)."""
    if device is None:
        return batch
    if isinstance(batch, (tuple, list)):
        items = [move_batch(v, device, pin) if torch.is_tensor(v) else v for v in batch]
        if hasattr(batch, "_fields"):  # a NamedTuple
            return type(batch)(*items)
        return type(batch)(items)
    if pin and torch.is_tensor(batch) and batch.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    if pin and isinstance(batch, TaskBatch):
        return batch.pin_memory().to(device, non_blocking=True)
    if hasattr(batch, "to"):
        return batch.to(device)
    return batch


def minibatch_xy(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of a labelled minibatch, checked: a clear error for anything else."""
    if not (is_minibatch(batch) and len(batch) == 2 and torch.is_tensor(batch[1])):
        raise TypeError(
            "the supervised objective needs a minibatch (x [B, ...], y [B]), got "
            f"{type(batch).__name__}"
            + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else "")
            + "; pass loss_fn=... for batches that carry more (teacher logits, ...)"
        )
    x, y = batch
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels y {tuple(y.shape)} do not match x {tuple(x.shape)}: need y [B]")
    return x, y


def supervised_loss(learner: nn.Module, batch: Any, step: int = 0) -> tuple[torch.Tensor, Metrics]:
    """Cross-entropy of ``learner(x)`` on a labelled minibatch: whole-classification training.

    The default objective of :func:`metakd.engine.fit` for ``(x, y)`` minibatches (for example
    the pre-training of Meta-Transfer Learning and Classifier-Baseline).

    Args:
        learner: a classifier, ``learner(x) -> logits [B, C]``.
        batch: ``(x [B, ...], y [B])`` with int64 labels in ``0..C-1``.
        step: the index of the training step (unused; part of the objective signature).

    Returns:
        ``(loss, metrics)``: the mean cross-entropy (a 0-d tensor with a graph) and
        ``{"accuracy": top-1 over the batch, "terms": {"ce": the loss as a float}}``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(3, 2)
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
        >>> loss, metrics = supervised_loss(model, (x, y), step=0)
        >>> loss.shape, sorted(metrics), list(metrics["terms"])
        (torch.Size([]), ['accuracy', 'terms'], ['ce'])
    """
    x, y = minibatch_xy(batch)
    logits = learner(x)
    loss = F.cross_entropy(logits, y)
    with torch.no_grad():
        acc = (logits.argmax(-1) == y).double().mean()
    return loss, {"accuracy": float(acc), "terms": {"ce": float(loss.detach())}}


def _positional_capacity(fn: Callable[..., Any]) -> int:
    """How many positional arguments ``fn`` accepts (a large number for ``*args``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: assume the new form
        return 3
    n = 0
    for p in params:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return 1 << 30
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            n += 1
    return n


def _accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    p = params.get(name)
    return p is not None and p.kind is not inspect.Parameter.POSITIONAL_ONLY


class Objective:
    """``objective(batch, step) -> (loss, metrics)`` for one learner; signatures inspected once.

    The order in which the objective is chosen is the module docstring's: an explicit
    ``loss_fn``, then the learner's ``training_loss`` (:class:`HasTrainingLoss`), then
    ``meta_loss`` for episodes and ``minibatch_default`` for minibatches. In evaluation
    (``training=False``) episodes prefer ``meta_loss``.

    Args:
        learner: the model or meta-learner.
        loss_fn: a user objective (three- or two-argument form), or ``None`` for the defaults.
        training: passed to ``meta_loss`` as ``training=``.
        minibatch_default: the default objective for minibatches (``None``: no default).
    """

    def __init__(self, learner: nn.Module, loss_fn: LossFn | None, training: bool,
                 minibatch_default: LossFn | None = supervised_loss) -> None:
        self.learner = learner
        self.loss_fn = loss_fn
        self.training = training
        self.minibatch_default = minibatch_default
        self.own = own_training_loss(learner) if loss_fn is None else None
        self._with_step = _positional_capacity(loss_fn) >= 3 if loss_fn is not None else True
        self._meta_step: bool | None = None  # does meta_loss take step=? (checked on first use)

    def __call__(self, batch: Any, step: int | None) -> tuple[torch.Tensor, Metrics]:
        if self.loss_fn is not None:
            if self._with_step:
                return self.loss_fn(self.learner, batch, 0 if step is None else step)
            return self.loss_fn(self.learner, batch)
        meta_loss = getattr(self.learner, "meta_loss", None) if isinstance(batch, TaskBatch) \
            else None
        if self.own is not None and (self.training or meta_loss is None):
            return self.own(batch, 0 if step is None else step)
        if isinstance(batch, TaskBatch):
            if meta_loss is None:
                raise TypeError(
                    f"{type(self.learner).__name__} has no meta_loss(batch, training, step) "
                    "nor training_loss(batch, step): train episodes with a meta-learner (e.g. "
                    "metakd.MAMLWrapper) or pass loss_fn=..."
                )
            if self._meta_step is None:
                self._meta_step = _accepts_keyword(meta_loss, "step")
            if self._meta_step and step is not None:
                return meta_loss(batch, training=self.training, step=step)
            return meta_loss(batch, training=self.training)
        if is_minibatch(batch) and self.minibatch_default is not None:
            return self.minibatch_default(self.learner, batch, 0 if step is None else step)
        raise TypeError(
            f"no default objective for a batch of type {type(batch).__name__}: the engine knows "
            "TaskBatch episodes and (x, y) minibatches; pass loss_fn(learner, batch, step) or "
            "give the learner a training_loss(batch, step)"
        )


def _scalar(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if torch.is_tensor(value) and value.numel() == 1:
        return float(value.detach().reshape(()))
    return None


def loggable_metrics(metrics: Metrics, reserved: frozenset[str] = frozenset()) -> dict[str, float]:
    """The scalars of ``metrics`` for a log record: ``terms`` as ``loss/NAME``, other numbers as is.

    ``accuracy`` and the names in ``reserved`` are left to the caller; tensors with more than
    one element and non-numeric values are skipped.
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key == "terms":
            if not isinstance(value, dict):
                raise TypeError(f"metrics['terms'] must be a dict of named terms, got {type(value)}")
            for name, term in value.items():
                v = _scalar(term)
                if v is not None:
                    out[f"loss/{name}"] = v
        elif key != "accuracy" and key not in reserved:
            v = _scalar(value)
            if v is not None:
                out[key] = v
    return out


def metric_accuracy(metrics: Metrics) -> float:
    """``metrics["accuracy"]`` as a float, NaN when the objective does not report one."""
    v = _scalar(metrics.get("accuracy"))
    return math.nan if v is None else v
