"""MAML, first-order MAML, Meta-SGD and ANIL behind one wrapper with interchangeable backends."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from metakd.data.batch import TaskBatch
from metakd.meta._backends import Backend, MAMLClone, MAMLLearner, vmap_unsafe
from metakd.meta._checks import check_maml_arguments, check_steps
from metakd.meta._params import AdaptSpec, select_adapted
from metakd.meta.functional import ParamLayout
from metakd.meta.inner import InnerLoop, Mode
from metakd.meta.objectives import CrossEntropy, LossObjective
from metakd.meta.outer import MetaParams, check_batch, outer_step
from metakd.meta.rules import SGD, MetaSGD

__all__ = ["MAMLClone", "MAMLLearner", "MAMLWrapper", "default_backend"]

logger = logging.getLogger(__name__)


def default_backend(device: torch.device | str | None = None) -> str:
    """The backend that ``backend="auto"`` means on ``device``: ``"auto"``, a per-meta-batch
    choice between ``vmap`` (small tasks) and ``func`` (large tasks).

    Decided from measurements on the 2-core CPU (torch 2.14.1, second-order ``maml_omniglot``,
    5-way 1-shot, meta-batch 32, eager, one run of ``python -m benchmarks.maml_speed``, which
    has the full table and learn2learn's figures; docs/benchmarks.md):

    - 1 query per class (the reference's Omniglot training episodes): ``func`` one task at a
      time 49.8 tasks/s, ``vmap`` in one chunk of 32 tasks 107.9-122.4;
    - 15 queries per class: ``func`` in 2 worker threads 31.4 (1 step) and 16.2 (5 steps)
      tasks/s, ``vmap`` in chunks of 4 tasks 19.1 and 10.2.

    So ``"auto"`` sends a meta-batch to ``vmap`` when at least 8 of its tasks fit in one chunk
    of about 320 Omniglot-sized images and the model is vmap-safe, and to ``func`` otherwise
    (see ``metakd.meta._func.AutoBackend``). The choice depends on the meta-batch's shapes
    alone, so the same seed gives the same numbers.

    No accelerator was available to measure on; the same rule is used there. Run the
    benchmark with ``--device cuda`` to compare.

    Example:
        >>> default_backend("cpu")
        'auto'
    """
    del device  # the same rule everywhere until another device is measured
    return "auto"


class MAMLWrapper(nn.Module):
    """Model-Agnostic Meta-Learning around any ``nn.Module`` (Finn, Abbeel, Levine, ICML 2017),
    with a pluggable inner update rule and pluggable objectives.

    For each task the inner loop adapts the selected parameters to the support set with
    ``inner_steps`` steps of an update rule (``θ' = θ − α ∇_θ L_support`` by default); the
    meta-loss is the mean over tasks of the query objective's terms at ``θ'`` (only after the
    last step, as in the paper). The mathematics is :func:`metakd.meta.inner.run_task`, the
    same on every backend. Options cover the usual variants and the methods built on MAML:

    - ``first_order=True``: first-order MAML (FOMAML), inner gradients are constants.
    - ``learn_inner_lr=True``: Meta-SGD (:class:`metakd.meta.MetaSGD`).
    - ``rule=``: any update rule (:mod:`metakd.meta.rules`), e.g. a learned optimiser.
    - ``adapt="head"``: ANIL (Raghu et al., ICLR 2020) and Meta-Transfer Learning's
      classifier-only inner loop: only the ``head`` is adapted and the body's features are
      computed once per set.
    - ``support=`` / ``objective=``: the inner and outer objectives
      (:mod:`metakd.meta.objectives`): named loss terms that may read per-task extras carried
      by the batch (:attr:`metakd.data.TaskBatch.extras`, e.g. a teacher's query logits) and
      the step.
    - ``inner_loss_reduction="sum_over_k"``: the TF reference's support loss (sum / K), so
      ``inner_lr`` has the meaning it has in the paper's tables.

    :meth:`meta_loss` is :func:`metakd.meta.outer.outer_step` with the backend as its
    strategy: it computes the meta-gradient of each task (or chunk of tasks) as soon as its
    query terms are known and frees that task's graph, so memory does not grow with the
    meta-batch. The loss it returns is therefore a *surrogate*: its value is the mean query
    loss, and ``loss.backward()`` puts exactly the meta-gradient into the ``.grad`` of every
    trainable meta-parameter (the model's, and the rule's and objectives' learnable tensors).
    It can be scaled and added to other losses, but it is only differentiable once and only
    with respect to those parameters; use :meth:`adapt` for a full graph, or :meth:`clone`
    and ``learner.adapt(loss)`` as in learn2learn.

    Args:
        model: the network; its forward must depend only on its parameters and buffers
            (every :mod:`metakd.nn` model does). Freeze parameters (``requires_grad=False``)
            before wrapping: they are then neither adapted nor meta-learned.
        inner_lr: inner learning rate α (> 0) of the default rule (SGD, or the initial
            Meta-SGD rates); leave it out when passing ``rule``.
        inner_steps: inner steps at meta-training (``>= 0``).
        first_order: first-order MAML.
        backend: ``"func"``, ``"vmap"``, ``"learn2learn"``, ``"higher"`` or ``"auto"`` (see
            :func:`default_backend`). All give the same gradients; ``learn2learn`` and
            ``higher`` are imported only when chosen and run only rules of the form
            ``θ − α ⊙ g``.
        test_inner_steps: inner steps at evaluation; defaults to ``inner_steps``.
        adapt: which parameters the inner loop adapts: ``None``/``"all"``, ``"head"`` (ANIL),
            a list of names from ``model.named_parameters()`` or a callable
            ``(name, param) -> bool``.
        learn_inner_lr: Meta-SGD.
        inner_loss: a plain ``loss(logits, labels) -> scalar`` used for the support and
            query losses (instead of cross-entropy); ignored where ``support``/``objective``
            are given.
        inner_loss_reduction: ``"mean"`` or ``"sum_over_k"`` (TF reference) for the default
            support objective.
        rule: the update rule; default ``SGD(inner_lr)`` (``MetaSGD`` with
            ``learn_inner_lr``).
        support: the support objective; default cross-entropy with ``inner_loss_reduction``.
        objective: the query objective; default cross-entropy (term ``"ce"``).
        vmap_chunk: tasks per ``vmap`` call with ``backend="vmap"``. ``None``: as many as
            hold about 320 Omniglot-sized images (support + query, the support counted once
            per inner step in second order), spread evenly (see ``_func.CHUNK_ELEMENTS``).
        workers: threads that run tasks (func) or chunks (vmap) concurrently, each on a
            replica of the model. Default: 1 (no threads) eager; compiled on a CPU, 2 for
            per-task units (Inductor's C++ wrapper releases the GIL, so they overlap), 1 for
            vmap chunks.
        compile: ``"auto"`` (default): ``torch.compile`` each task's (func) or chunk's (vmap)
            whole meta-gradient where the model allows it (CPU or CUDA, no per-step batch
            norm, no running statistics updated in ``train()``), decided at the first
            meta-batch and kept for the run; if compiling fails then, one warning and eager.
            The compile happens at the first meta-batch and waits for it: on a 2-core CPU
            40-95 s the first time for the Omniglot network, 5-12 s in a later process
            (Inductor's disk cache); then 1.1-2.6x the eager speed (``benchmarks.maml_speed``).
            ``METAKD_COMPILE=0`` in the environment keeps ``"auto"`` eager. On a CPU,
            ``"auto"`` and ``True`` also keep the memory a meta-batch frees in the C heap for
            the next (:func:`metakd.engine.keep_freed_memory`, once per process; changes no
            number). ``True``: compile (an error where the model does not allow it);
            ``False``: plain eager, one thread, the heap left alone.
            Evaluation (``adapt``, ``predict``) is always eager. ``"auto"`` is eager on the
            learn2learn and higher backends. ``workers`` and ``compile`` are a shorthand for
            :func:`metakd.meta.accel.accelerate` on the built wrapper.

    Shapes:
        ``meta_loss`` takes a :class:`metakd.data.TaskBatch` (``support_x [T, N*K, C, H, W]``,
        ``support_y [T, N*K]``, ``query_x [T, N*Q, C, H, W]``, ``query_y [T, N*Q]``,
        ``extras {name: [T, ...]}``); ``adapt`` takes one task's ``support_x [N*K, C, H, W]``
        and ``support_y [N*K]``.

    Example:
        >>> import torch
        >>> from metakd.data import TaskBatch
        >>> from metakd.meta import MAMLWrapper
        >>> from metakd.nn import create
        >>> maml = MAMLWrapper(create("maml_omniglot", num_classes=5), inner_lr=0.4,
        ...                    inner_steps=1, test_inner_steps=3)
        >>> opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
        >>> y = torch.arange(5)
        >>> batch = TaskBatch(torch.randn(2, 5, 1, 28, 28), y.repeat(2, 1),
        ...                   torch.randn(2, 10, 1, 28, 28), y.repeat_interleave(2).repeat(2, 1))
        >>> loss, metrics = maml.meta_loss(batch, step=0)
        >>> loss.backward(); opt.step(); opt.zero_grad()
        >>> sorted(metrics)
        ['accuracy', 'class_accuracy', 'loss', 'task_accuracy', 'terms']
        >>> maml.predict(batch).shape
        torch.Size([2, 10, 5])
        >>> learner = maml.adapt(batch.support_x[0], batch.support_y[0])
        >>> learner(batch.query_x[0]).shape
        torch.Size([10, 5])
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float | None = None,
        inner_steps: int = 1,
        first_order: bool = False,
        backend: str = "auto",
        test_inner_steps: int | None = None,
        adapt: AdaptSpec = None,
        learn_inner_lr: bool = False,
        inner_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
        inner_loss_reduction: str = "mean",
        rule: Callable[..., Any] | None = None,
        support: Callable[..., Any] | None = None,
        objective: Callable[..., Any] | None = None,
        vmap_chunk: int | None = None,
        workers: int | None = None,
        compile: bool | str = "auto",
    ) -> None:
        super().__init__()
        check_maml_arguments(model, inner_lr, inner_steps, backend, test_inner_steps,
                             learn_inner_lr, inner_loss, inner_loss_reduction, rule, support,
                             objective, vmap_chunk, workers, compile)
        self.model = model
        self.inner_steps = int(inner_steps)
        self.test_inner_steps = int(inner_steps if test_inner_steps is None else test_inner_steps)
        self.first_order = bool(first_order)
        self.inner_loss_reduction = inner_loss_reduction
        self.learn_inner_lr = bool(learn_inner_lr)
        self.inner_lr = None if inner_lr is None else float(inner_lr)

        layout = ParamLayout(model)
        if not layout.names:
            raise ValueError("the model has no trainable parameter (requires_grad=True)")
        self.adapted_names: list[str] = select_adapted(model, layout, adapt)
        self._layout = layout
        params = dict(model.named_parameters())
        if rule is None:
            assert inner_lr is not None
            rule = (MetaSGD({n: params[n] for n in self.adapted_names}, inner_lr)
                    if self.learn_inner_lr else SGD(inner_lr))
        if support is None:
            support = (LossObjective(inner_loss, reduction=inner_loss_reduction)
                       if inner_loss is not None else CrossEntropy(inner_loss_reduction))
        if objective is None:
            objective = LossObjective(inner_loss) if inner_loss is not None else CrossEntropy()
        # Modules are registered (their tensors are meta-parameters, saved with the model);
        # plain callables are kept as they are.
        self.rule = rule
        self.support = support
        self.objective = objective

        if backend == "auto":
            backend = default_backend(next(iter(params.values())).device)
        self.backend_name = backend
        # False, True or "auto"; set by metakd.meta.accel.accelerate.
        self.compile_mode: bool | str = False
        self._loop = InnerLoop(model, self.adapted_names, rule, support, objective)
        self._backend: Backend = _make_backend(backend, self._loop, self.first_order, vmap_chunk)
        if backend in ("func", "vmap", "auto") and (compile or workers not in (None, 1)):
            # The accelerations live outside the core; these arguments are a shorthand.
            from metakd.meta.accel import accelerate

            accelerate(self, compile=compile, workers=workers)
        logger.debug("MAMLWrapper: backend %s, compile=%s", self.backend_name, self.compile_mode)

    # ------------------------------------------------------------------------------ helpers
    @property
    def inner_lrs(self) -> nn.ParameterDict:
        """Meta-SGD's learned rates (``"."`` in names replaced by ``"-"``)."""
        if not isinstance(self.rule, MetaSGD):
            raise AttributeError("inner_lrs exists with learn_inner_lr=True (Meta-SGD) only")
        return self.rule.lrs

    def _meta_params(self) -> MetaParams:
        """The meta-parameters: the model's trainable ones, then the learnable tensors of
        the rule and the objectives (modules), grouped by part."""
        params = dict(self.model.named_parameters())
        return MetaParams({
            "model": {n: params[n] for n in self._layout.names},
            **{g: part if isinstance(part, nn.Module) else None
               for g, part in (("rule", self.rule), ("support", self.support),
                               ("objective", self.objective))},
        })

    @staticmethod
    def _step_tensor(step: int | Tensor | None, device: torch.device) -> Tensor:
        value = 0 if step is None else int(step)
        return torch.tensor(value, dtype=torch.int64, device=device)

    # ---------------------------------------------------------------------------- public API
    def forward(self, x: Tensor) -> Tensor:
        """The unadapted model: ``model(x)``."""
        return self.model(x)

    def forward_tasks(self, xs: Tensor, batched: bool | None = None) -> Tensor:
        """The unadapted model on every task's images: ``xs`` ``[T, M, ...]`` to ``[T, M, N]``.

        Batched (``torch.func.vmap`` over the tasks, one forward call): transductive batch
        norm still normalises each task by its own statistics, as the loop
        ``torch.stack([model(x) for x in xs])`` does. ``batched=None`` (the default) batches
        off the CPU and loops on it: on the 2-core CPU (torch 2.14.1, 1 thread) a Conv-4/64
        on 4 tasks of 75 images took 0.48-0.52 s batched against 0.22-0.31 s in the loop
        (vmap's batch norm decomposes into separate reductions and its convolution runs
        on one 300-image call). Models with running statistics in train mode always loop.
        For a frozen teacher's logits on a meta-batch (PMAML).

        Example:
            >>> import metakd
            >>> maml = MAMLWrapper(metakd.create("conv4", num_classes=5, in_channels=1), 0.4)
            >>> xs = torch.randn(3, 10, 1, 28, 28)
            >>> torch.allclose(maml.forward_tasks(xs, batched=True), maml.forward_tasks(xs),
            ...                atol=1e-5)
            True
        """
        if batched is None:
            batched = xs.device.type != "cpu"
        if not batched or vmap_unsafe(self.model) is not None:
            return torch.stack([self.model(x) for x in xs])
        state = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}

        def one(x: Tensor) -> Tensor:
            return torch.func.functional_call(self.model, state, (x,))

        return torch.func.vmap(one, randomness="different")(xs)

    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        steps: int | None = None,
        extras: Mapping[str, Tensor] | None = None,
    ) -> MAMLLearner:
        """Adapt to one task's support set and return the adapted learner.

        Under ``torch.no_grad()`` the adaptation keeps no meta-graph (evaluation); otherwise
        the learner's parameters are graph-connected to the meta-parameters (to second
        order unless ``first_order``).

        Args:
            support_x: ``[N*K, C, H, W]`` support images.
            support_y: ``[N*K]`` int64 labels in ``0..N-1``.
            steps: inner steps; defaults to ``inner_steps`` with grad enabled and
                ``test_inner_steps`` under ``torch.no_grad()``.
            extras: this task's extras for the support objective.

        Returns:
            A :class:`MAMLLearner`: ``learner(query_x) -> logits``, ``learner.params``.
        """
        grad = torch.is_grad_enabled()
        if steps is None:
            steps = self.inner_steps if grad else self.test_inner_steps
        check_steps("steps", steps)
        if support_x.shape[0] != support_y.shape[0]:
            raise ValueError(
                f"support_x has {support_x.shape[0]} examples but support_y has "
                f"{support_y.shape[0]}; pass one task (use meta_loss for a TaskBatch)"
            )
        mode: Mode = ("first" if self.first_order else "second") if grad else "none"
        return self._backend.adapt(support_x, support_y, dict(extras or {}), steps, mode)

    def meta_loss(
        self, task_batch: TaskBatch, training: bool = True, step: int | Tensor | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        """Mean over the tasks of ``task_batch`` of the query objective after the inner loop.

        Args:
            task_batch: a :class:`metakd.data.TaskBatch` of ``T`` tasks.
            training: ``True``: ``inner_steps`` steps and a (surrogate) loss whose
                ``backward()`` gives the meta-gradient; ``False``: ``test_inner_steps``
                steps, no meta-graph, and a loss without graph.
            step: the meta-iteration, passed to the query objective (``fit`` passes it, and
                restores it on resume); default 0.

        Returns:
            ``(loss, metrics)``: ``metrics["loss"]`` and ``metrics["accuracy"]`` (mean query
            accuracy over tasks) are Python floats, ``metrics["terms"]`` maps each named term
            of the objective to its mean over tasks (floats), ``metrics["task_accuracy"]`` is
            a ``[T]`` tensor and ``metrics["class_accuracy"]`` a ``[T, N]`` tensor of per-class
            query accuracy (NaN for a class without queries).
        """
        check_batch(task_batch)
        meta_step = self._step_tensor(step, task_batch.support_x.device)
        steps = self.inner_steps if training else self.test_inner_steps
        return outer_step(self._backend.strategy(steps, self.first_order), task_batch,
                          self._meta_params(), training=training, step=meta_step)

    def clone(self, first_order: bool | None = None) -> MAMLClone:
        """learn2learn's ``clone()``: a learner at the meta-parameters, adapted by losses.

        ``learner.adapt(loss)`` takes one step of the update rule on ``loss`` (computed with
        ``learner(x)``), to second order unless ``first_order`` (default: the wrapper's);
        the learner stays graph-connected to the meta-parameters, so a query loss computed
        with it can be back-propagated. The same steps as :meth:`adapt` on a support set
        (``maml.adapt(support_x, support_y)`` is the metakd call, and :meth:`meta_loss` the
        batched one).

        Example:
            >>> import torch
            >>> import torch.nn.functional as F
            >>> maml = MAMLWrapper(torch.nn.Linear(4, 3), inner_lr=0.1)
            >>> x, y = torch.randn(6, 4), torch.arange(3).repeat(2)
            >>> learner = maml.clone()
            >>> learner.adapt(F.cross_entropy(learner(x), y))
            >>> F.cross_entropy(learner(x), y).backward()
            >>> torch.allclose(learner.params["weight"], maml.adapt(x, y, steps=1).params["weight"])
            True
        """
        fo = self.first_order if first_order is None else bool(first_order)
        return MAMLClone(self._loop, fo)

    def predict(
        self, task_batch: TaskBatch, steps: int | None = None, step: int | Tensor | None = None
    ) -> Tensor:
        """The adapted query logits ``[T, N*Q, N]`` of every task, without a graph.

        Each task is adapted on its support set with ``steps`` inner steps (default
        ``test_inner_steps``) and its query set is classified, as in evaluation: for a
        teacher adapted on the support set, or evaluation by other code.
        """
        if not isinstance(task_batch, TaskBatch):
            raise ValueError(f"predict takes a metakd.data.TaskBatch, got {type(task_batch).__name__}")
        steps = self.test_inner_steps if steps is None else steps
        check_steps("steps", steps)
        meta_step = self._step_tensor(step, task_batch.support_x.device)
        _, logits = self._backend.predict(task_batch, steps, meta_step)
        return logits.detach()

    def extra_repr(self) -> str:
        return (
            f"inner_steps={self.inner_steps}, test_inner_steps={self.test_inner_steps}, "
            f"first_order={self.first_order}, backend={self.backend_name!r}, "
            f"adapted={len(self.adapted_names)} tensors, compile={self.compile_mode}"
        )


def _make_backend(name: str, loop: InnerLoop, first_order: bool, vmap_chunk: int | None
                  ) -> Backend:
    """Build the path called ``name`` (``"auto"`` or one of ``"func"``, ``"vmap"``,
    ``"learn2learn"``, ``"higher"``), eager and without threads."""
    if name in ("func", "vmap", "auto"):
        from metakd.meta._func import AutoBackend, FuncBackend, VmapBackend

        if name == "auto":
            return AutoBackend(loop)
        return FuncBackend(loop) if name == "func" else VmapBackend(loop, chunk=vmap_chunk)
    from metakd.meta._external import HigherBackend, Learn2LearnBackend

    if name == "learn2learn":
        return Learn2LearnBackend(loop, first_order)
    return HigherBackend(loop)
