"""MAML, first-order MAML, Meta-SGD and ANIL behind one wrapper with interchangeable backends."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd.data.batch import TaskBatch
from metakd.meta._backends import (
    BACKENDS,
    Backend,
    InnerProblem,
    MAMLLearner,
    Mode,
    make_backend,
)
from metakd.meta._params import AdaptSpec, ParamLayout, select_adapted

__all__ = ["MAMLLearner", "MAMLWrapper", "default_backend"]

logger = logging.getLogger(__name__)

REDUCTIONS = ("mean", "sum_over_k")


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
    (see ``metakd.meta._func.AutoBackend``). On top of either, ``MAMLWrapper``'s default
    ``compile="auto"`` compiles a signature in the background once a run has spent 120 s on it.

    No accelerator was available to measure on; the same rule is used there. Run the
    benchmark with ``--device cuda`` to compare.

    Example:
        >>> default_backend("cpu")
        'auto'
    """
    del device  # the same rule everywhere until another device is measured
    return "auto"


class MAMLWrapper(nn.Module):
    """Model-Agnostic Meta-Learning around any ``nn.Module`` (Finn, Abbeel, Levine, ICML 2017).

    The inner loop adapts the selected parameters to a task's support set with ``inner_steps``
    gradient steps, ``θ' = θ − α ⊙ ∇_θ L_support(θ)``; the meta-loss is the mean over tasks of
    the query loss at ``θ'`` (only after the last step, as in the paper). Options cover the
    usual variants:

    - ``first_order=True``: first-order MAML (FOMAML), inner gradients are constants.
    - ``learn_inner_lr=True``: Meta-SGD (Li et al., 2017, arXiv:1707.09835): one learnable
      learning rate per parameter entry, initialized to ``inner_lr`` and meta-learned.
    - ``adapt="head"``: ANIL (Raghu et al., ICLR 2020): only the classifier head is adapted,
      the body is meta-learned by the outer loss. With a :class:`metakd.nn.Backbone` whose
      BatchNorms are transductive, the features are computed once per set instead of once
      per step (same gradients, checked against learn2learn in the tests).
    - ``inner_loss_reduction="sum_over_k"``: the TF reference's inner loss, the support loss
      summed and divided by K, i.e. ``N · mean`` (cbfinn/maml ``utils.py``), so ``inner_lr``
      has the meaning it has in the paper's hyperparameter tables.

    :meth:`meta_loss` computes the meta-gradient of each task (or chunk of tasks) as soon as
    its query loss is known and frees that task's graph, so memory does not grow with the
    meta-batch. The loss it returns is therefore a *surrogate*: its value is the mean query
    loss, and ``loss.backward()`` puts exactly the meta-gradient into the ``.grad`` of the
    model's trainable parameters (and of the Meta-SGD rates). It can be scaled and added to
    other losses, but it is only differentiable once and only with respect to those
    parameters; use :meth:`adapt` for a full graph.

    Args:
        model: the network; its forward must depend only on its parameters and buffers
            (every :mod:`metakd.nn` model does). Freeze parameters (``requires_grad=False``)
            before wrapping: they are then neither adapted nor meta-learned.
        inner_lr: inner learning rate α (> 0); the initial value of the rates with Meta-SGD.
        inner_steps: inner steps at meta-training (``>= 0``).
        first_order: first-order MAML.
        backend: ``"func"``, ``"vmap"``, ``"learn2learn"``, ``"higher"`` or ``"auto"`` (see
            :func:`default_backend`). All give the same gradients; ``learn2learn`` and
            ``higher`` are imported only when chosen.
        test_inner_steps: inner steps at evaluation (``meta_loss(training=False)``);
            defaults to ``inner_steps``.
        adapt: which parameters the inner loop adapts: ``None``/``"all"``, ``"head"`` (ANIL),
            a list of names from ``model.named_parameters()`` or a callable
            ``(name, param) -> bool``.
        learn_inner_lr: Meta-SGD.
        inner_loss: ``loss(logits, labels) -> scalar`` with mean reduction; used for the
            support (inner) and query (outer) losses.
        inner_loss_reduction: ``"mean"`` or ``"sum_over_k"`` (TF reference, see above).
        vmap_chunk: tasks per ``vmap`` call with ``backend="vmap"``. ``None``: as many as
            hold about 320 Omniglot-sized images (support + query, the support counted once
            per inner step in second order, whose graphs are all kept), spread evenly, e.g.
            all 32 tasks of a 5-way 1-shot 1-query meta-batch at 1 step, 4 chunks of 8 at 5
            steps, 4 tasks with 15 queries, 1 on miniImageNet; measured fastest on CPU within
            a memory bound (see ``metakd.meta._func.CHUNK_ELEMENTS``). Compiled, chunks of at
            most 8 tasks.
        workers: threads that run tasks (func) or chunks (vmap) concurrently, sharing the
            intra-op threads; each holds one task's (chunk's) graph. ``None``: func 2 on a
            CPU with at least 2 threads, else 1 (and 1 whenever a module writes running
            statistics); vmap 1. More than 1 needs a forward that writes no buffers. Only
            the func and vmap backends use it.
        compile: ``torch.compile`` each task's (func) or chunk's (vmap) whole meta-gradient
            computation (``channels_last`` inside, Inductor's C++ wrapper): on CPU 1.15-1.7x
            faster than eager once compiled (1.3-3x learn2learn's tasks/s); the first compile of a (inner steps, order,
            task shape) signature takes one to three minutes, a few seconds in later
            processes (Inductor's disk cache). ``"auto"`` (default): tiered, as in a JIT:
            each signature runs eager until it has cost ``compile_after_s`` seconds, then
            compiles in a background thread while training goes on eager, and runs compiled
            from then on; short runs and tests never compile and no call waits for a compile,
            though a cold compile slows the eager loop while it runs (only on CPU; see
            ``metakd.meta._autocompile``). ``True``: compile at the first
            meta-batch (and wait). ``False``: always eager. Evaluation stays eager. Ignored
            (except ``True``, an error) by the learn2learn and higher backends.
        compile_after_s: eager seconds per signature before ``compile="auto"`` compiles it
            (default 120; 0 compiles from the first meta-batch, in the background).

    Shapes:
        ``meta_loss`` takes a :class:`metakd.data.TaskBatch` (``support_x [T, N*K, C, H, W]``,
        ``support_y [T, N*K]``, ``query_x [T, N*Q, C, H, W]``, ``query_y [T, N*Q]``);
        ``adapt`` takes one task's ``support_x [N*K, C, H, W]`` and ``support_y [N*K]``.

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
        >>> loss, metrics = maml.meta_loss(batch)
        >>> loss.backward(); opt.step(); opt.zero_grad()
        >>> sorted(metrics)
        ['accuracy', 'loss', 'task_accuracy']
        >>> learner = maml.adapt(batch.support_x[0], batch.support_y[0])
        >>> learner(batch.query_x[0]).shape
        torch.Size([10, 5])
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float,
        inner_steps: int,
        first_order: bool = False,
        backend: str = "auto",
        test_inner_steps: int | None = None,
        adapt: AdaptSpec = None,
        learn_inner_lr: bool = False,
        inner_loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
        inner_loss_reduction: str = "mean",
        vmap_chunk: int | None = None,
        workers: int | None = None,
        compile: bool | Literal["auto"] = "auto",
        compile_after_s: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        if isinstance(inner_lr, bool) or not isinstance(inner_lr, (int, float)):
            raise ValueError(f"inner_lr must be a positive float, got {inner_lr!r}")
        if not math.isfinite(inner_lr) or inner_lr <= 0:
            raise ValueError(f"inner_lr must be a positive finite float, got {inner_lr}")
        _check_steps("inner_steps", inner_steps)
        if test_inner_steps is not None:
            _check_steps("test_inner_steps", test_inner_steps)
        if backend not in ("auto", *BACKENDS):
            raise ValueError(f"backend={backend!r} is unknown; use one of {('auto', *BACKENDS)}")
        if inner_loss_reduction not in REDUCTIONS:
            raise ValueError(
                f"inner_loss_reduction={inner_loss_reduction!r} is unknown; use 'mean' "
                "(mean over the support set) or 'sum_over_k' (TF reference: sum / K)"
            )
        if not callable(inner_loss):
            raise ValueError("inner_loss must be a callable loss(logits, labels) -> scalar")
        if vmap_chunk is not None and (isinstance(vmap_chunk, bool) or vmap_chunk < 1):
            raise ValueError(f"vmap_chunk must be a positive int or None, got {vmap_chunk!r}")
        if vmap_chunk is not None and backend not in ("vmap", "auto"):
            raise ValueError(f"vmap_chunk applies to backend='vmap' only, not {backend!r}")
        if workers is not None and (isinstance(workers, bool) or workers < 1):
            raise ValueError(f"workers must be a positive int or None, got {workers!r}")
        if compile not in (True, False, "auto"):
            raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")
        if compile is True and backend not in ("func", "vmap", "auto"):
            raise ValueError(f"compile=True needs backend 'func', 'vmap' or 'auto', not {backend!r}")
        if compile_after_s is not None and not (
            isinstance(compile_after_s, (int, float)) and compile_after_s >= 0
        ):
            raise ValueError(f"compile_after_s must be a number >= 0, got {compile_after_s!r}")

        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.test_inner_steps = int(inner_steps if test_inner_steps is None else test_inner_steps)
        self.first_order = bool(first_order)
        self.inner_loss = inner_loss
        self.inner_loss_reduction = inner_loss_reduction
        self.learn_inner_lr = bool(learn_inner_lr)

        layout = ParamLayout(model)
        if not layout.names:
            raise ValueError("the model has no trainable parameter (requires_grad=True)")
        self.adapted_names: list[str] = select_adapted(model, layout, adapt)
        self._layout = layout
        params = dict(model.named_parameters())
        self.inner_lrs = nn.ParameterDict()
        if self.learn_inner_lr:
            for n in self.adapted_names:
                self.inner_lrs[_lr_key(n)] = nn.Parameter(torch.full_like(params[n], inner_lr))

        if backend == "auto":
            device = next(iter(params.values())).device
            backend = "func" if compile is True else default_backend(device)
        self.backend_name = backend
        self.compile_mode: bool | Literal["auto"] = (
            compile if backend in ("func", "vmap", "auto") else False
        )
        problem = InnerProblem(model, layout, self.adapted_names, inner_loss)
        self._backend: Backend = make_backend(
            self.backend_name,
            problem,
            inner_lr=self.inner_lr,
            first_order=self.first_order,
            vmap_chunk=vmap_chunk,
            workers=workers,
            compile=self.compile_mode,
            compile_after_s=compile_after_s,
        )
        logger.debug("MAMLWrapper: backend %s, compile=%s", self.backend_name, self.compile_mode)

    # ------------------------------------------------------------------------------ helpers
    def _lrs(self) -> dict[str, float | Tensor]:
        if self.learn_inner_lr:
            return {n: self.inner_lrs[_lr_key(n)] for n in self.adapted_names}
        return {n: self.inner_lr for n in self.adapted_names}

    def _scale(self, ways: int) -> float:
        return float(ways) if self.inner_loss_reduction == "sum_over_k" else 1.0

    def _meta_inputs(self) -> list[Tensor]:
        params = dict(self.model.named_parameters())
        inputs: list[Tensor] = [params[n] for n in self._layout.names]
        if self.learn_inner_lr:
            inputs += [self.inner_lrs[_lr_key(n)] for n in self.adapted_names]
        return inputs

    # ---------------------------------------------------------------------------- public API
    def forward(self, x: Tensor) -> Tensor:
        """The unadapted model: ``model(x)``."""
        return self.model(x)

    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        steps: int | None = None,
    ) -> MAMLLearner:
        """Adapt to one task's support set and return the adapted learner.

        Under ``torch.no_grad()`` the adaptation is first-order and keeps no meta-graph
        (evaluation); otherwise the learner's parameters are graph-connected to the
        meta-parameters (to second order unless ``first_order``).

        Args:
            support_x: ``[N*K, C, H, W]`` support images.
            support_y: ``[N*K]`` int64 labels in ``0..N-1``.
            steps: inner steps; defaults to ``inner_steps`` with grad enabled and
                ``test_inner_steps`` under ``torch.no_grad()``.

        Returns:
            A :class:`MAMLLearner`: ``learner(query_x) -> logits``, ``learner.params``.
        """
        grad = torch.is_grad_enabled()
        if steps is None:
            steps = self.inner_steps if grad else self.test_inner_steps
        _check_steps("steps", steps)
        if support_x.shape[0] != support_y.shape[0]:
            raise ValueError(
                f"support_x has {support_x.shape[0]} examples but support_y has "
                f"{support_y.shape[0]}; pass one task (use meta_loss for a TaskBatch)"
            )
        mode: Mode = ("first" if self.first_order else "second") if grad else "none"
        ways = int(support_y.max().item()) + 1 if support_y.numel() else 1
        return self._backend.adapt(
            support_x, support_y, steps, self._lrs(), self._scale(ways), mode
        )

    def meta_loss(
        self, task_batch: TaskBatch, training: bool = True
    ) -> tuple[Tensor, dict[str, Any]]:
        """Mean query loss over the tasks of ``task_batch`` after the inner loop.

        Args:
            task_batch: a :class:`metakd.data.TaskBatch` of ``T`` tasks.
            training: ``True``: ``inner_steps`` steps and a (surrogate) loss whose
                ``backward()`` gives the meta-gradient; ``False``: ``test_inner_steps``
                steps, first-order inner loop, query forward under ``torch.no_grad()``, and
                a loss without graph.

        Returns:
            ``(loss, metrics)``: ``metrics["loss"]`` and ``metrics["accuracy"]`` (mean query
            accuracy over tasks) are Python floats, ``metrics["task_accuracy"]`` a ``[T]``
            tensor.
        """
        if not isinstance(task_batch, TaskBatch):
            raise ValueError(
                f"meta_loss takes a metakd.data.TaskBatch, got {type(task_batch).__name__}; "
                "for one task use adapt(support_x, support_y)"
            )
        if len(task_batch) == 0:
            raise ValueError("meta_loss got an empty TaskBatch")
        scale = self._scale(task_batch.ways)
        lrs = self._lrs()
        if training:
            inputs = self._meta_inputs()
            with torch.enable_grad():
                losses, accs, grads = self._backend.meta_gradients(
                    task_batch, self.inner_steps, lrs, scale, self.first_order, inputs
                )
                loss = losses.mean()
                # Surrogate: value = mean query loss, d/dθ = the meta-gradient just computed.
                dot = torch.stack([(t * g).sum() for t, g in zip(inputs, grads)]).sum()
                loss = loss + (dot - dot.detach())
        else:
            losses, accs = self._backend.evaluate(task_batch, self.test_inner_steps, lrs, scale)
            loss = losses.mean()
        metrics: dict[str, Any] = {
            "loss": float(loss.detach()),
            "accuracy": float(accs.mean()),
            "task_accuracy": accs,
        }
        return loss, metrics

    def _auto_compilers(self) -> list[Any]:
        backend = self._backend
        parts = [getattr(backend, "func", None), getattr(backend, "vmap", None), backend]
        found = [getattr(b, "auto_compiler", None) for b in parts if b is not None]
        return [a for a in found if a is not None]

    def compile_status(self) -> list[dict[str, Any]]:
        """With ``compile="auto"``: one dict per meta-gradient signature seen so far.

        Keys: ``signature``, ``state`` (``"eager"``, ``"compiling"``, ``"compiled"`` or
        ``"failed"``), ``eager_s`` (eager seconds spent on it), ``compile_s`` (the background
        compile's wall time) and ``error``. Empty for other ``compile`` settings.
        """
        return [row for a in self._auto_compilers() for row in a.status()]

    def wait_for_compile(self, timeout: float | None = None) -> bool:
        """Block until the background compiles under way finish (``compile="auto"``).

        Returns ``False`` if one is still running after ``timeout`` seconds.
        """
        return all(a.wait(timeout) for a in self._auto_compilers())

    def extra_repr(self) -> str:
        return (
            f"inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
            f"test_inner_steps={self.test_inner_steps}, first_order={self.first_order}, "
            f"backend={self.backend_name!r}, adapted={len(self.adapted_names)} tensors, "
            f"meta_sgd={self.learn_inner_lr}, reduction={self.inner_loss_reduction!r}"
        )


def _lr_key(name: str) -> str:
    # ParameterDict keys cannot contain "."; "-" cannot occur in a parameter name.
    return name.replace(".", "-")


def _check_steps(what: str, steps: object) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{what} must be an int >= 0, got {steps!r}")
