"""The inner-loop backends of :class:`~metakd.meta.MAMLWrapper`.

Every backend does the same mathematics (Finn et al., ICML 2017): ``steps`` gradient steps
``θ' = θ − α ⊙ ∇_θ L_support`` on the adapted parameters, then the query loss at ``θ'``.
They differ only in how the computation is expressed:

``func``
    ``torch.func.functional_call`` + ``torch.autograd.grad(create_graph=not first_order)``,
    one task after the other (optionally ``workers`` tasks at a time in threads).
``vmap``
    ``torch.func.vmap`` over the tasks of a meta-batch (in chunks of ``chunk`` tasks) with
    ``torch.func.grad`` for the inner gradients (``torch.autograd.grad`` does not work inside
    ``vmap``); the convolutions of all tasks in a chunk become one grouped convolution.
``learn2learn``
    learn2learn's ``MAML.clone()`` and ``maml_update``/``update_module``.
``higher``
    ``higher.innerloop_ctx`` with a differentiable SGD.

Internal module: use :class:`~metakd.meta.MAMLWrapper`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from metakd.data.batch import TaskBatch
from metakd.meta._params import ParamLayout, functional_forward

__all__ = [
    "BACKENDS",
    "Backend",
    "InnerProblem",
    "MAMLLearner",
    "Mode",
    "accuracy",
    "buffer_writers",
    "make_backend",
    "sgd_step",
    "vmap_unsafe",
]

logger = logging.getLogger(__name__)

BACKENDS = ("func", "vmap", "learn2learn", "higher")
# "auto" (the default) picks func or vmap for each meta-batch: see _func.AutoBackend.
# "second": differentiate through the inner updates; "first": inner gradients are constants
# (FOMAML); "none": no meta-graph at all (evaluation).
Mode = Literal["second", "first", "none"]
LossFn = Callable[[Tensor, Tensor], Tensor]


class MAMLLearner:
    """A model adapted to one task: ``learner(x) -> logits`` with the adapted parameters.

    Attributes:
        params: adapted parameter name -> tensor (the names of ``model.named_parameters()``).
            Graph-connected to the meta-parameters (and the Meta-SGD learning rates) unless the
            adaptation was first-order or ran without a meta-graph.

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


class InnerProblem:
    """What every backend needs to know about the inner loop, independent of the backend.

    With ANIL (every adapted parameter in ``model.head`` of a :class:`metakd.nn.Backbone`) the
    features are computed once per set and only the head runs in the inner loop, as in Raghu
    et al. (ICLR 2020): ``encode(x) = model.features(x)``, ``decode(p, h) = head(h; p)``.
    Otherwise ``encode`` is the identity and ``decode`` the full functional forward.
    """

    def __init__(
        self,
        model: nn.Module,
        layout: ParamLayout,
        adapted: list[str],
        loss_fn: LossFn,
    ) -> None:
        self.model = model
        self.layout = layout
        self.adapted = adapted
        self.loss_fn = loss_fn
        self.anil = _is_head_only(model, adapted)
        if self.anil:
            self.head_layout = ParamLayout(model.head)  # type: ignore[arg-type]
        self.per_step_bn = any(
            getattr(m, "mode", None) == "per_step" and _is_metakd_bn(m) for m in model.modules()
        )

    def set_step(self, model: nn.Module, step: int) -> None:
        """Select row ``step`` of MAML++ per-step BatchNorm statistics (no-op without them).

        The support forward of inner step ``s`` uses row ``s``; the query forward uses the
        last step's row, as in Antoniou et al. (ICLR 2019).
        """
        if self.per_step_bn:
            from metakd.nn.norm import set_bn_step

            set_bn_step(model, max(step, 0))

    def encode(self, model: nn.Module, x: Tensor) -> Tensor:
        return model.features(x) if self.anil else x  # type: ignore[operator]

    def decode(self, model: nn.Module, params: Mapping[str, Tensor], h: Tensor) -> Tensor:
        if self.anil:
            local = {n[len("head."):]: t for n, t in params.items()}
            return functional_forward(model.head, self.head_layout, local, h)  # type: ignore[arg-type]
        return functional_forward(model, self.layout, params, h)

    def inner_objective(self, logits: Tensor, y: Tensor, scale: float) -> Tensor:
        loss = self.loss_fn(logits, y)
        return loss * scale if scale != 1.0 else loss


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


def _is_head_only(model: nn.Module, adapted: list[str]) -> bool:
    """Whether the ANIL feature cache applies: a Backbone, head-only adaptation, and no
    BatchNorm that keeps running statistics (their updates would happen once per set instead
    of once per inner step)."""
    from metakd.nn.heads import Backbone

    head = getattr(model, "head", None)
    if not isinstance(model, Backbone) or not isinstance(head, nn.Module):
        return False
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or (
            _is_metakd_bn(m) and getattr(m, "mode", "transductive") != "transductive"
        ):
            return False
    ids = {id(p) for p in head.parameters()}
    params = dict(model.named_parameters())
    return all(id(params[n]) in ids and n.startswith("head.") for n in adapted)


class Backend:
    """Base class: one task at a time through :meth:`adapt` (used by func, l2l, higher)."""

    name = "base"

    def __init__(self, problem: InnerProblem) -> None:
        self.problem = problem

    def adapt(
        self,
        sx: Tensor,
        sy: Tensor,
        steps: int,
        lrs: Mapping[str, float | Tensor],
        scale: float,
        mode: Mode,
    ) -> MAMLLearner:
        """Adapt to one support set ``sx [NK, ...]``, ``sy [NK]``."""
        raise NotImplementedError

    def meta_gradients(
        self,
        batch: TaskBatch,
        steps: int,
        lrs: Mapping[str, float | Tensor],
        scale: float,
        first_order: bool,
        inputs: Sequence[Tensor],
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Per-task query losses ``[T]``, accuracies ``[T]`` and ``d mean_loss / d inputs``."""
        mode: Mode = "first" if first_order else "second"
        n = len(batch)
        grads = [torch.zeros_like(t) for t in inputs]
        losses, accs = [], []
        for i in range(n):
            learner = self.adapt(batch.support_x[i], batch.support_y[i], steps, lrs, scale, mode)
            logits = learner(batch.query_x[i])
            loss = self.problem.loss_fn(logits, batch.query_y[i])
            task_grads = torch.autograd.grad(loss / n, list(inputs), allow_unused=True)
            for acc, g in zip(grads, task_grads):
                if g is not None:
                    acc.add_(g)
            losses.append(loss.detach())
            accs.append(accuracy(logits.detach(), batch.query_y[i]))
        return torch.stack(losses), torch.stack(accs), grads

    def evaluate(
        self,
        batch: TaskBatch,
        steps: int,
        lrs: Mapping[str, float | Tensor],
        scale: float,
    ) -> tuple[Tensor, Tensor]:
        """Per-task query losses and accuracies after ``steps`` steps, without a meta-graph."""
        losses, accs = [], []
        for i in range(len(batch)):
            learner = self.adapt(batch.support_x[i], batch.support_y[i], steps, lrs, scale, "none")
            with torch.no_grad():
                logits = learner(batch.query_x[i])
                losses.append(self.problem.loss_fn(logits, batch.query_y[i]))
                accs.append(accuracy(logits, batch.query_y[i]))
        return torch.stack(losses), torch.stack(accs)


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Fraction of correct predictions along the last example axis (``[..., NQ]`` -> ``[...]``)."""
    return (logits.argmax(-1) == y).to(logits.dtype).mean(-1)


def sgd_step(
    params: Mapping[str, Tensor],
    grads: Sequence[Tensor | None],
    lrs: Mapping[str, float | Tensor],
    mode: Mode,
) -> dict[str, Tensor]:
    """One inner step ``p - lr * g``; an unused parameter (``g is None``) stays as it is."""
    out = {}
    for (name, p), g in zip(params.items(), grads):
        if g is None:
            out[name] = p
        elif mode == "none":
            with torch.no_grad():
                out[name] = (p - lrs[name] * g).requires_grad_()
        else:
            out[name] = p - lrs[name] * g
    return out


def make_backend(
    name: str,
    problem: InnerProblem,
    *,
    inner_lr: float,
    first_order: bool,
    vmap_chunk: int | None,
    workers: int | None,
    compile: bool | str = False,
    compile_after_s: float | None = None,
) -> Backend:
    """Build the backend called ``name`` (one of :data:`BACKENDS`)."""
    if name in ("func", "vmap", "auto"):
        from metakd.meta._autocompile import AUTO_COMPILE_AFTER_S
        from metakd.meta._func import AutoBackend, FuncBackend, VmapBackend

        mode: bool | Literal["auto"] = "auto" if compile == "auto" else bool(compile)
        after = AUTO_COMPILE_AFTER_S if compile_after_s is None else compile_after_s
        if name == "auto":
            return AutoBackend(problem, workers=workers, compile=mode, compile_after_s=after)
        if name == "func":
            return FuncBackend(problem, workers=workers, compile=mode, compile_after_s=after)
        return VmapBackend(
            problem, chunk=vmap_chunk, workers=workers, compile=mode, compile_after_s=after
        )
    if name in ("learn2learn", "higher"):
        from metakd.meta._external import HigherBackend, Learn2LearnBackend

        if name == "learn2learn":
            return Learn2LearnBackend(problem, inner_lr, first_order)
        return HigherBackend(problem, inner_lr)
    raise ValueError(f"unknown backend {name!r}; choose one of {('auto', *BACKENDS)}")
