"""The Meta-LSTM meta-learner of the original code (Ravi & Larochelle, ICLR 2017), and MLAL's.

:class:`MetaLSTM` runs an update rule (by default :class:`metakd.meta.MetaLSTMOptimizer`) over
epochs of support minibatches with the learner's batch-norm protocol of the original code,
and computes each episode's meta-gradient through the unrolled updates.

Example:
    >>> from metakd.nn import create
    >>> reset_batch_norm(create("conv2", in_channels=1, bn_mode="running"))
    2
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from metakd.data.batch import Task, TaskBatch
from metakd.meta.functional import ParamLayout
from metakd.meta.inner import InnerLoop, autograd_grad, run_task
from metakd.meta.meta_lstm import MetaLSTMOptimizer
from metakd.meta.objectives import CrossEntropy
from metakd.meta.outer import PerTask, Terms, outer_step
from metakd.meta.rules import UpdateRule

__all__ = ["MetaLSTM", "reset_batch_norm"]

Params = dict[str, Tensor]


def reset_batch_norm(model: nn.Module) -> int:
    """Reset the running statistics of every batch norm of ``model``; returns how many.

    Example:
        >>> from metakd.nn import create
        >>> reset_batch_norm(create("conv4", in_channels=1, bn_mode="running"))
        4
    """
    count = 0
    for m in model.modules():
        reset = getattr(m, "reset_running_stats", None)
        if callable(reset) and getattr(m, "running_mean", None) is not None:
            reset()
            count += 1
    return count


class MetaLSTM(nn.Module):
    """The Meta-LSTM meta-learner (Ravi & Larochelle, ICLR 2017), and MLAL's with attention.

    Per episode: the learner's batch-norm running statistics are reset; ``epochs`` passes
    over the support set in minibatches of ``batch_size`` (in order) give
    ``epochs * ceil(N*K / batch_size)`` updates of the rule (train-mode batch norm, which
    collects running statistics); the query set is then classified with batch statistics at
    meta-training (``training=True``) and with the running statistics this episode's support
    set collected at meta-test. Build the learner with ``bn_mode="running"`` to get this
    protocol (a transductive batch norm always uses batch statistics). Query labels are read
    only by the query objective, after adaptation.

    The meta-parameters are the learner's parameters (the initial cell state ``c_0``) and the
    rule's weights. :meth:`meta_loss` computes each episode's meta-gradient as soon as its
    query loss is known and frees its graph (memory: one episode's unrolled updates); its loss
    is a surrogate whose ``backward()`` gives exactly the mean meta-gradient.

    Args:
        model: the learner (any :mod:`metakd.nn` backbone, or an
            :class:`metakd.meta.AttentionLearner`); all its trainable parameters are adapted.
        rule: the update rule; default a :class:`MetaLSTMOptimizer` with the options below.
        epochs: passes over the support set per episode (12 for 1-shot, 8 for 5-shot).
        batch_size: support minibatch size (5 for 1-shot, 25 for 5-shot).
        test_epochs: passes at meta-test (default ``epochs``).
        hidden_size: the default rule's LSTM units.
        gate_feedback: the default rule's gate feedback (``"logit"`` or ``"sigmoid"``).
        attention: MLAL's self-attention in the default rule.
        attention_softmax: with a softmax.
        attention_chunk: coordinates per attention row.
        scale_grads: divide the gradients by ``batch_size`` as both codes do (default rule).
        support: the support objective (default cross-entropy, mean).
        objective: the query objective (default cross-entropy, mean).

    Shapes:
        ``meta_loss`` / ``predict`` take a :class:`metakd.data.TaskBatch`;
        ``predict`` returns ``[T, N*Q, N]``.

    Example:
        >>> import torch
        >>> from metakd.data import TaskBatch
        >>> from metakd.nn import create
        >>> net = create("conv4", in_channels=1, hidden=8, bn_mode="running")
        >>> meta = MetaLSTM(net, epochs=2, batch_size=5)
        >>> y = torch.arange(5)
        >>> batch = TaskBatch(torch.randn(1, 5, 1, 28, 28), y[None],
        ...                   torch.randn(1, 10, 1, 28, 28), y.repeat_interleave(2)[None])
        >>> loss, metrics = meta.meta_loss(batch)
        >>> loss.backward()
        >>> meta.predict(batch).shape, meta.inner_steps(5)
        (torch.Size([1, 10, 5]), 2)
    """

    def __init__(
        self,
        model: nn.Module,
        rule: UpdateRule | Callable[..., Any] | None = None,
        *,
        epochs: int = 8,
        batch_size: int = 25,
        test_epochs: int | None = None,
        hidden_size: int = 20,
        gate_feedback: str = "logit",
        scale_grads: bool = True,
        attention: bool = False,
        attention_softmax: bool = False,
        attention_chunk: int | None = None,
        support: Callable[..., Any] | None = None,
        objective: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        for what, v in (("epochs", epochs), ("batch_size", batch_size),
                        ("test_epochs", epochs if test_epochs is None else test_epochs)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{what} must be an int >= 1, got {v!r}")
        layout = ParamLayout(model)
        if not layout.names:
            raise ValueError("the model has no trainable parameter (requires_grad=True)")
        params = dict(model.named_parameters())
        adapted = {n: params[n] for n in layout.names}
        if rule is None:
            rule = MetaLSTMOptimizer(
                adapted, hidden_size=hidden_size, gate_feedback=gate_feedback,
                grad_scale=1.0 / batch_size if scale_grads else 1.0, attention=attention,
                attention_chunk=attention_chunk, attention_softmax=attention_softmax)
        self.model = model
        self.rule = rule
        self.support = CrossEntropy() if support is None else support
        self.objective = CrossEntropy() if objective is None else objective
        self.epochs, self.batch_size = int(epochs), int(batch_size)
        self.test_epochs = int(epochs if test_epochs is None else test_epochs)
        self.adapted_names = list(layout.names)
        self._loop = InnerLoop(model, self.adapted_names, rule, self.support, self.objective)

    def minibatches(self, n: int, device: torch.device | None = None) -> list[Tensor]:
        """The support minibatches of one epoch: index tensors of ``batch_size`` in order."""
        return [torch.arange(s, min(s + self.batch_size, n), device=device)
                for s in range(0, n, self.batch_size)]

    def inner_steps(self, n: int, training: bool = True) -> int:
        """Updates per episode for a support set of ``n`` examples."""
        return (self.epochs if training else self.test_epochs) * math.ceil(n / self.batch_size)

    def adapt_params(self, support_x: Tensor, support_y: Tensor, training: bool = False,
                     extras: Mapping[str, Tensor] | None = None) -> Params:
        """The learner's parameters after adapting to one support set.

        Resets the batch-norm running statistics, then runs the rule over the minibatches in
        train mode (so the running statistics are this support set's). ``training=True``
        keeps the graph to the meta-parameters.
        """
        model = self.model
        was_training = model.training
        reset_batch_norm(model)
        model.train()
        n = support_x.shape[0]
        try:
            with torch.enable_grad():
                params, _, _ = run_task(
                    self._loop, model, support_x, support_y, None, None, dict(extras or {}),
                    self.inner_steps(n, training), "first" if training else "none",
                    autograd_grad(False), batches=self.minibatches(n, support_x.device))
        finally:
            model.train(was_training)
        return params

    def query_logits(self, params: Mapping[str, Tensor], x: Tensor, training: bool) -> Tensor:
        """Logits of ``x`` with the adapted ``params``: batch statistics if ``training``, the
        running statistics collected by :meth:`adapt_params` otherwise."""
        model = self.model
        was_training = model.training
        model.train(training)
        try:
            return self._loop.decode(model, dict(params), x, None)
        finally:
            model.train(was_training)

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Callable[[Tensor], Tensor]:
        """A learner adapted to one support set: ``learner(x) -> logits`` (meta-test mode).

        Example:
            >>> import torch
            >>> from metakd.nn import create
            >>> meta = MetaLSTM(create("conv4", in_channels=1, hidden=4, bn_mode="running"),
            ...                 epochs=1, batch_size=5)
            >>> learner = meta.adapt(torch.randn(5, 1, 28, 28), torch.arange(5))
            >>> learner(torch.randn(3, 1, 28, 28)).shape
            torch.Size([3, 5])
        """
        params = self.adapt_params(support_x, support_y, training=False)
        state = {k: v.clone() for k, v in self.model.state_dict().items() if "running" in k
                 or "num_batches" in k}

        def learner(x: Tensor) -> Tensor:
            self.model.load_state_dict(state, strict=False)
            with torch.no_grad():
                return self.query_logits(params, x, training=False)

        return learner

    def meta_loss(
        self, task_batch: TaskBatch, training: bool = True, step: int | Tensor | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        """Mean over the episodes of the query objective after adaptation
        (:func:`metakd.meta.outer.outer_step`, one episode after the other).

        Returns ``(loss, metrics)`` as :meth:`metakd.meta.MAMLWrapper.meta_loss` does
        (``loss``, ``accuracy``, ``terms``, ``task_accuracy [T]``, ``class_accuracy [T, N]``).
        """
        return outer_step(PerTask(self._task_objective, self._task_evaluation), task_batch,
                          self, training=training, step=0 if step is None else step)

    def _task_objective(self, task: Task, step: int | Tensor) -> tuple[Terms, Tensor]:
        """One episode's query terms and logits, graph-connected to the meta-parameters."""
        with torch.enable_grad():
            params = self.adapt_params(task.support_x, task.support_y, training=True,
                                       extras=task.extras)
            logits = self.query_logits(params, task.query_x, training=True)
            return self.objective(logits, task.query_y, task.extras, step), logits

    def _task_evaluation(self, task: Task, step: int | Tensor) -> tuple[Terms, Tensor]:
        params = self.adapt_params(task.support_x, task.support_y, training=False,
                                   extras=task.extras)
        with torch.no_grad():
            logits = self.query_logits(params, task.query_x, training=False)
            return self.objective(logits, task.query_y, task.extras, step), logits

    def predict(self, task_batch: TaskBatch) -> Tensor:
        """The query logits ``[T, N*Q, N]`` after meta-test adaptation, without a graph.

        Reads ``support_x``, ``support_y`` and ``query_x`` only.
        """
        out = []
        for t in range(len(task_batch)):
            extras = {k: v[t] for k, v in task_batch.extras.items()}
            params = self.adapt_params(task_batch.support_x[t], task_batch.support_y[t],
                                       extras=extras)
            with torch.no_grad():
                out.append(self.query_logits(params, task_batch.query_x[t], training=False))
        return torch.stack(out)

    def extra_repr(self) -> str:
        return (f"epochs={self.epochs}, test_epochs={self.test_epochs}, "
                f"batch_size={self.batch_size}, adapted={len(self.adapted_names)} tensors")
