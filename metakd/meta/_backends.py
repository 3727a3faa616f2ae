"""The execution paths of :class:`~metakd.meta.MAMLWrapper`: their shared base and helpers.

Every path adapts each task of a meta-batch with :func:`metakd.meta.inner.run_task` (or as
learn2learn and higher write it) and is, through :meth:`Backend.strategy`, a strategy of the
outer loop (:mod:`metakd.meta.outer`), which owns the meta-gradient accumulation, the
surrogate loss and the metrics. The paths differ only in how they run the tasks:

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

from metakd.data.batch import Task, TaskBatch
from metakd.meta.inner import InnerLoop, Mode
from metakd.meta.outer import MetaParams, OuterResult, PerTask, Strategy, Terms

__all__ = [
    "BACKENDS",
    "Backend",
    "MAMLClone",
    "MAMLLearner",
    "Path",
    "buffer_writers",
    "task_extras",
    "vmap_unsafe",
    "zero_filled",
]

BACKENDS = ("func", "vmap", "learn2learn", "higher")
# "auto" (the default) picks func or vmap for each meta-batch: see _func.AutoBackend.


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


class MAMLClone(MAMLLearner):
    """learn2learn's ``clone()``: a learner at the meta-parameters that :meth:`adapt` moves
    one step of the update rule per loss. Made by :meth:`metakd.meta.MAMLWrapper.clone`.

    Attributes:
        params: the adapted parameters (graph-connected to the meta-parameters).
        first_order: the gradients of :meth:`adapt` are constants.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from metakd.meta import MAMLWrapper
        >>> maml = MAMLWrapper(torch.nn.Linear(4, 3), inner_lr=0.1)
        >>> x, y = torch.randn(6, 4), torch.arange(3).repeat(2)
        >>> learner = maml.clone()  # as in learn2learn
        >>> for _ in range(2):
        ...     learner.adapt(F.cross_entropy(learner(x), y))
        >>> F.cross_entropy(learner(x), y).backward()  # second order, into maml's .grad
        >>> maml.model.weight.grad.shape
        torch.Size([3, 4])
    """

    def __init__(self, loop: InnerLoop, first_order: bool) -> None:
        if loop.per_step_bn:
            raise ValueError("clone() does not follow MAML++ per-step batch norm; use "
                             "maml.adapt(support_x, support_y)")
        self._loop = loop
        self.first_order = first_order
        meta = dict(loop.model.named_parameters())
        params: dict[str, Tensor] = {n: meta[n] for n in loop.adapted}
        self._state = loop.init_state(params)
        self._step = 0
        super().__init__(self._logits, params)

    def _logits(self, x: Tensor) -> Tensor:
        loop = self._loop
        return loop.decode(loop.model, self.params, loop.encode(loop.model, x, None), None)

    def adapt(self, loss: Tensor, first_order: bool | None = None) -> None:
        """One step of the update rule on ``loss`` (a scalar computed with this learner)."""
        if not isinstance(loss, Tensor) or not loss.requires_grad:
            raise ValueError("learner.adapt(loss) takes a loss computed with learner(x) with "
                             "gradients enabled; or adapt on a support set: "
                             "maml.adapt(support_x, support_y)")
        loop = self._loop
        constant = (self.first_order if first_order is None else first_order) or \
            loop.constant_grads
        grads = torch.autograd.grad(loss, list(self.params.values()), create_graph=not constant,
                                    allow_unused=True)
        g = {n: torch.zeros_like(p) if gi is None else gi
             for (n, p), gi in zip(self.params.items(), grads)}
        if constant:
            g, loss = {n: t.detach() for n, t in g.items()}, loss.detach()
        self.params, self._state = loop.rule(g, self.params, self._state, self._step, loss)
        self._step += 1


def task_extras(batch: TaskBatch, i: int | slice) -> dict[str, Tensor]:
    """Task ``i``'s (or a slice's) extras of ``batch``."""
    return {k: v[i] for k, v in batch.extras.items()}


def zero_filled(result: OuterResult, params: Sequence[Tensor]) -> OuterResult:
    """``result`` with a zero gradient for every meta-parameter no task reached (MAML's
    meta-parameters always get a ``.grad``)."""
    grads: list[Tensor | None] = [
        torch.zeros_like(p) if g is None else g for p, g in zip(params, result.grads)]
    return result._replace(grads=grads)


class Backend:
    """Base of the paths: one task at a time through :meth:`adapt` (learn2learn, higher).

    :meth:`strategy` is what :func:`metakd.meta.outer.outer_step` runs: this path with a
    number of inner steps and an order.
    """

    name = "base"

    def __init__(self, loop: InnerLoop) -> None:
        self.loop = loop

    def strategy(self, steps: int, first_order: bool) -> Strategy:
        """This path as the :class:`~metakd.meta.outer.Strategy` of ``steps`` inner steps."""
        return Path(self, steps, first_order)

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
        inputs: MetaParams,
        meta_step: Tensor,
    ) -> OuterResult:
        """Per-task query terms ``{name: [T]}``, query logits ``[T, N*Q, N]`` and
        ``d mean_t(sum of terms) / d inputs``."""
        mode: Mode = "first" if first_order else "second"

        def objective(task: Task, step: Tensor) -> tuple[Terms, Tensor]:
            learner = self.adapt(task.support_x, task.support_y, task.extras, steps, mode)
            logits = learner(task.query_x)
            return self.loop.objective(logits, task.query_y, task.extras, step), logits

        return zero_filled(PerTask(objective).meta_gradients(batch, inputs, meta_step),
                           inputs.flat)

    def predict(self, batch: TaskBatch, steps: int, meta_step: Tensor) -> tuple[Terms, Tensor]:
        """Query terms and logits after ``steps`` steps, without a meta-graph."""

        def evaluate(task: Task, step: Tensor) -> tuple[Terms, Tensor]:
            learner = self.adapt(task.support_x, task.support_y, task.extras, steps, "none")
            with torch.no_grad():
                logits = learner(task.query_x)
                return self.loop.objective(logits, task.query_y, task.extras, step), logits

        return PerTask(evaluate).evaluate(batch, meta_step)


class Path(Strategy):
    """A backend with a number of inner steps and an order, as an outer-loop strategy."""

    def __init__(self, backend: Backend, steps: int, first_order: bool) -> None:
        self.backend, self.steps, self.first_order = backend, steps, first_order
        self.name = backend.name

    def meta_gradients(self, batch: TaskBatch, params: MetaParams, step: Any) -> OuterResult:
        return self.backend.meta_gradients(batch, self.steps, self.first_order, params, step)

    def evaluate(self, batch: TaskBatch, step: Any) -> tuple[Terms, Tensor]:
        return self.backend.predict(batch, self.steps, step)


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
