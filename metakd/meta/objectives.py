"""Objectives: values that map a task's logits to named loss terms.

Every meta-learner of :mod:`metakd.meta` scores a task with two objectives, called by every
execution path (sequential, vmapped, compiled) with the same signature::

    terms = objective(logits, labels, extras, step)   # {name: 0-d tensor}

- the **support objective** of the inner loop: ``logits [N*K, N]`` of the support set,
  ``step`` the inner step (a Python ``int``); the rule descends on the sum of its terms;
- the **query objective** of the outer loop: ``logits [N*Q, N]`` of the adapted model on the
  query set, ``step`` the meta-iteration (a 0-d int64 tensor, restored on resume); the
  meta-loss is the mean over tasks of the sum of its terms, and every term is reported.

``extras`` is this task's slice of :attr:`metakd.data.TaskBatch.extras` (for example a
teacher's query logits ``[N*Q, N]`` under the key the objective reads). An objective may be
an ``nn.Module`` with learnable tensors (a temperature): they are meta-parameters.
Under ``vmap`` and ``torch.compile`` an objective must be a pure tensor function: write a
schedule on ``step`` with tensor operations (``torch.where``), not ``if``.

Example:
    >>> import torch
    >>> from metakd.meta.objectives import CrossEntropy
    >>> terms = CrossEntropy()(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]), {}, 0)
    >>> {k: round(v.item(), 4) for k, v in terms.items()}
    {'ce': 0.6931}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CrossEntropy", "LossObjective", "Objective", "total"]

Terms = dict[str, Tensor]
REDUCTIONS = ("mean", "sum_over_k")


class Objective(nn.Module):
    """Base class of objectives (see the module docstring for the contract).

    Any callable with the same signature is an objective too; subclassing adds learnable
    tensors and their ``state_dict``.

    Example:
        >>> import torch
        >>> class Confidence(Objective):  # CE plus an entropy penalty, two named terms
        ...     def forward(self, logits, labels, extras, step):
        ...         p = logits.softmax(-1)
        ...         return {"ce": F.cross_entropy(logits, labels),
        ...                 "entropy": -(p * p.clamp_min(1e-12).log()).sum(-1).mean()}
        >>> sorted(Confidence()(torch.randn(3, 2), torch.tensor([0, 1, 1]), {}, 0))
        ['ce', 'entropy']
    """

    def forward(
        self, logits: Tensor, labels: Tensor, extras: Mapping[str, Tensor], step: int | Tensor
    ) -> Terms:
        """Named loss terms (0-d tensors) of one task's ``logits [M, N]`` and ``labels [M]``."""
        raise NotImplementedError


class CrossEntropy(Objective):
    """Cross-entropy, the objective of MAML's inner and outer loops.

    Args:
        reduction: ``"mean"`` over the examples, or ``"sum_over_k"``: the sum divided by the
            shots ``K``, i.e. ``N`` times the mean with ``N = logits.shape[-1]`` (the TF
            MAML reference's support loss, cbfinn/maml ``utils.py``, so that the inner
            learning rate has the meaning it has in the paper's tables).
        name: the term's name.

    Example:
        >>> import torch
        >>> y = torch.tensor([0, 1, 2])
        >>> CrossEntropy("sum_over_k")(torch.zeros(3, 3), y, {}, 0)["ce"].item() / 3
        1.0986...
    """

    def __init__(self, reduction: str = "mean", name: str = "ce") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"reduction={reduction!r} is unknown; use 'mean' (mean over the examples) or "
                "'sum_over_k' (TF MAML reference: sum / K)"
            )
        self.reduction = reduction
        self.name = name

    def forward(
        self, logits: Tensor, labels: Tensor, extras: Mapping[str, Tensor], step: int | Tensor
    ) -> Terms:
        loss = F.cross_entropy(logits, labels)
        if self.reduction == "sum_over_k":
            loss = loss * logits.shape[-1]
        return {self.name: loss}

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, name={self.name!r}"


class LossObjective(Objective):
    """A plain ``loss(logits, labels) -> scalar`` as a one-term objective.

    Args:
        loss: the loss function (mean reduction expected).
        name: the term's name.
        reduction: ``"mean"`` (the loss as it is) or ``"sum_over_k"`` (times
            ``N = logits.shape[-1]``, as :class:`CrossEntropy`).

    Example:
        >>> import torch
        >>> obj = LossObjective(F.mse_loss, name="mse")
        >>> obj(torch.ones(2, 1), torch.zeros(2, 1), {}, 0)
        {'mse': tensor(1.)}
    """

    def __init__(
        self, loss: Callable[[Tensor, Tensor], Tensor], name: str = "loss",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if not callable(loss):
            raise ValueError("loss must be a callable loss(logits, labels) -> scalar")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction={reduction!r} is unknown; use 'mean' or 'sum_over_k'")
        self.loss = loss
        self.name = name
        self.reduction = reduction

    def forward(
        self, logits: Tensor, labels: Tensor, extras: Mapping[str, Tensor], step: int | Tensor
    ) -> Terms:
        value = self.loss(logits, labels)
        if self.reduction == "sum_over_k":
            value = value * logits.shape[-1]
        return {self.name: value}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, reduction={self.reduction!r}"


def total(terms: Mapping[str, Tensor]) -> Tensor:
    """The sum of named terms (what a loop descends on).

    Example:
        >>> import torch
        >>> total({"ce": torch.tensor(1.0), "kd": torch.tensor(0.5)})
        tensor(1.5000)
    """
    if not terms:
        raise ValueError("an objective returned no terms")
    values = list(terms.values())
    out = values[0]
    for v in values[1:]:
        out = out + v
    return out
