"""The execution paths of :class:`~metakd.meta.MAMLWrapper`: their shared base and helpers.

Every path computes :func:`metakd.meta.inner.run_task` for each task of a meta-batch; they
differ only in how:

``func``
    one task after the other with ``torch.autograd.grad`` (``_func.FuncBackend``).
``vmap``
    ``torch.func.vmap`` over chunks of tasks with ``torch.func.grad_and_value``
    (``_func.VmapBackend``); the convolutions of a chunk become one grouped convolution.
``learn2learn`` / ``higher``
    the inner loop as those libraries write it (``_external``), kept because users come from
    them and as independent references that the tests compare with; they support the update
    rules of the form ``θ − α ⊙ g`` (SGD, Meta-SGD).

Internal module: use :class:`~metakd.meta.MAMLWrapper`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from metakd.data.batch import TaskBatch
from metakd.meta.inner import InnerLoop, Mode
from metakd.meta.objectives import total

__all__ = [
    "BACKENDS",
    "Backend",
    "MAMLLearner",
    "Terms",
    "accuracy",
    "buffer_writers",
    "class_accuracy",
    "task_extras",
    "vmap_unsafe",
]

BACKENDS = ("func", "vmap", "learn2learn", "higher")
# "auto" (the default) picks func or vmap for each meta-batch: see _func.AutoBackend.
Terms = dict[str, Tensor]


class MAMLLearner:
    """A model adapted to one task: ``learner(x) -> logits`` with the adapted parameters.

    Attributes:
        params: adapted parameter name -> tensor (the names of ``model.named_parameters()``).
            Graph-connected to the meta-parameters (and the update rule's learnable tensors)
            unless the adaptation was first-order or ran without a meta-graph.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from metakd.meta import MAMLWrapper
        >>> maml = MAMLWrapper(nn.Linear(4, 3), inner_lr=0.1, inner_steps=1)
        >>> learner = maml.adapt(torch.randn(6, 4), torch.arange(3).repeat(2))
        >>> learner(torch.randn(2, 4)).shape, sorted(learner.params)
        (torch.Size([2, 3]), ['bias', 'weight'])
    """

    def __init__(self, forward: Callable[[Tensor], Tensor], params: dict[str, Tensor]) -> None:
        self._forward = forward
        self.params = params

    def __call__(self, x: Tensor) -> Tensor:
        """Logits of ``x`` (``[B, C, H, W]`` or whatever the model takes) under ``params``."""
        return self._forward(x)

    def __repr__(self) -> str:
        return f"MAMLLearner(adapted={sorted(self.params)})"


def task_extras(batch: TaskBatch, i: int | slice) -> dict[str, Tensor]:
    """Task ``i``'s (or a slice's) extras of ``batch``."""
    return {k: v[i] for k, v in batch.extras.items()}


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Fraction of correct predictions along the last example axis (``[..., M]`` -> ``[...]``)."""
    return (logits.argmax(-1) == y).to(logits.dtype).mean(-1)


def class_accuracy(logits: Tensor, y: Tensor, ways: int) -> Tensor:
    """Per-class query accuracy ``[T, N]`` from ``logits [T, M, N]`` and ``y [T, M]``.

    A class without a query example gets NaN.
    """
    correct = (logits.argmax(-1) == y).to(torch.float64)
    onehot = torch.nn.functional.one_hot(y, ways).to(torch.float64)  # [T, M, N]
    hits = (onehot * correct.unsqueeze(-1)).sum(1)
    count = onehot.sum(1)
    return hits / count  # 0/0 -> NaN for absent classes


def query_metrics(loss: Tensor, terms: dict[str, Tensor], logits: Tensor, y: Tensor
                  ) -> dict[str, Any]:
    """A meta-learner's metrics of a meta-batch: ``loss``, the mean of each term over tasks,
    and the query ``accuracy``, ``task_accuracy [T]`` and ``class_accuracy [T, N]`` from
    ``logits [T, M, N]`` and ``y [T, M]`` (NaN for regression targets)."""
    metrics: dict[str, Any] = {"loss": float(loss.detach()),
                               "terms": {k: float(v.mean()) for k, v in terms.items()}}
    if y.dtype.is_floating_point or y.dim() != 2:  # regression: no accuracy
        nan = torch.full((y.shape[0],), float("nan"), dtype=torch.float64)
        metrics.update(accuracy=float("nan"), task_accuracy=nan, class_accuracy=nan[:, None])
    else:
        accs = accuracy(logits, y)
        metrics.update(accuracy=float(accs.mean()), task_accuracy=accs,
                       class_accuracy=class_accuracy(logits, y, logits.shape[-1]))
    return metrics


class Backend:
    """Base of the paths: one task at a time through :meth:`adapt` (learn2learn, higher)."""

    name = "base"

    def __init__(self, loop: InnerLoop) -> None:
        self.loop = loop

    def adapt(
        self, sx: Tensor, sy: Tensor, extras: Mapping[str, Tensor], steps: int, mode: Mode
    ) -> MAMLLearner:
        """Adapt to one support set ``sx [NK, ...]``, ``sy [NK]``."""
        raise NotImplementedError

    def meta_gradients(
        self,
        batch: TaskBatch,
        steps: int,
        first_order: bool,
        inputs: Any,
        meta_step: Tensor,
    ) -> tuple[Terms, Tensor, list[Tensor]]:
        """Per-task query terms ``{name: [T]}``, query logits ``[T, N*Q, N]`` and
        ``d mean_t(sum of terms) / d inputs`` (``inputs``: a ``_func.MetaInputs``)."""
        mode: Mode = "first" if first_order else "second"
        n = len(batch)
        inputs = list(inputs.flat)
        grads = [torch.zeros_like(t) for t in inputs]
        terms: list[Terms] = []
        logits_all = []
        for i in range(n):
            extras = task_extras(batch, i)
            learner = self.adapt(batch.support_x[i], batch.support_y[i], extras, steps, mode)
            logits = learner(batch.query_x[i])
            task_terms = self.loop.objective(logits, batch.query_y[i], extras, meta_step)
            task_grads = torch.autograd.grad(
                total(task_terms) / n, list(inputs), allow_unused=True
            )
            for acc, g in zip(grads, task_grads):
                if g is not None:
                    acc.add_(g)
            terms.append({k: v.detach() for k, v in task_terms.items()})
            logits_all.append(logits.detach())
        return stack_terms(terms), torch.stack(logits_all), grads

    def predict(self, batch: TaskBatch, steps: int, meta_step: Tensor) -> tuple[Terms, Tensor]:
        """Query terms and logits after ``steps`` steps, without a meta-graph."""
        terms: list[Terms] = []
        logits_all = []
        for i in range(len(batch)):
            extras = task_extras(batch, i)
            learner = self.adapt(batch.support_x[i], batch.support_y[i], extras, steps, "none")
            with torch.no_grad():
                logits = learner(batch.query_x[i])
                terms.append(self.loop.objective(logits, batch.query_y[i], extras, meta_step))
            logits_all.append(logits)
        return stack_terms(terms), torch.stack(logits_all)


def stack_terms(per_task: Sequence[Terms]) -> Terms:
    """``[{name: 0-d}] * T`` -> ``{name: [T]}``."""
    names = list(per_task[0])
    return {k: torch.stack([t[k].detach() for t in per_task]) for k in names}


def cat_terms(parts: Sequence[Terms]) -> Terms:
    """``[{name: [t_i]}]`` -> ``{name: [sum t_i]}``."""
    names = list(parts[0])
    return {k: torch.cat([p[k].detach().reshape(-1) for p in parts]) for k in names}


def _is_metakd_bn(module: nn.Module) -> bool:
    from metakd.nn.norm import BatchNorm1d, BatchNorm2d

    return isinstance(module, (BatchNorm1d, BatchNorm2d))


def buffer_writers(model: nn.Module) -> list[str]:
    """Names of the modules whose forward writes running statistics in their current mode."""
    out = []
    for name, m in model.named_modules():
        if _is_metakd_bn(m):
            if m.training and getattr(m, "mode", "transductive") != "transductive":
                out.append(name)
        elif (
            isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.training
            and m.track_running_stats
        ):
            out.append(name)
    return out


def vmap_unsafe(model: nn.Module) -> str | None:
    """Why ``model`` cannot run under the vmap backend now, or ``None`` if it can."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return (
                f"{name} is a torch.nn.{type(m).__name__}: F.batch_norm gives silently wrong "
                "second-order gradients under vmap (torch 2.14); use metakd.nn.BatchNorm2d "
                "or backend='func'"
            )
    writers = buffer_writers(model)
    if writers:
        return (
            f"{writers} update running BatchNorm statistics in train() mode, which a vmap over "
            "tasks cannot do (one buffer, many tasks); use backend='func', "
            "bn_mode='transductive', or model.eval()"
        )
    return None
