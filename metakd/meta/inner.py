"""The one definition of a task's inner loop and outer objective.

For one task, with adapted parameters ``θ_0`` (the meta-learned initialisation of the
selected parameters), an update rule ``U`` with per-task state ``s``, a support objective
``L_S`` and a query objective ``L_Q``::

    for k in 0 .. steps-1:
        ℓ_k, g_k = L_S(f(x_S; θ_k), y_S, extras, k), ∇_θ L_S        # summed named terms
        θ_{k+1}, s_{k+1} = U(g_k, θ_k, s_k, k, ℓ_k)
    terms = L_Q(f(x_Q; θ_steps), y_Q, extras, meta_step)            # named terms

:func:`run_task` is that computation. Every execution path calls it and nothing else: the
``func`` backend one task at a time with ``torch.autograd.grad``, the ``vmap`` backend over a
chunk of tasks with ``torch.func.grad_and_value``, the compiled units
(:mod:`metakd.meta.accel`) as one pure function of the meta-parameters. A path only chooses
the gradient operator (:func:`autograd_grad` or :func:`func_grad`) and whether the
meta-parameters are the modules' own tensors or explicit inputs (``meta``).

With classifier-only adaptation (every adapted parameter in the ``head`` of a
:class:`metakd.nn.Backbone`: ANIL, Meta-Transfer Learning) the body's features are computed
once per set, whatever the batch-norm mode, on every path (Raghu et al., ICLR 2020); only
MAML++ per-step batch norm, whose body differs at each step, runs the body every step.

Modes: ``"second"`` differentiates through the inner updates; ``"first"`` feeds the rule
constant gradients (FOMAML); ``"none"`` builds no meta-graph at all (evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from metakd.meta.functional import ParamLayout, functional_forward
from metakd.meta.objectives import total

__all__ = ["GradFn", "InnerLoop", "Mode", "autograd_grad", "func_grad", "run_task"]

Mode = Literal["second", "first", "none"]
Params = dict[str, Tensor]
# grad(fn, params) -> ({name: d fn / d params[name]}, fn(params))
GradFn = Callable[[Callable[[Params], Tensor], Params], tuple[Params, Tensor]]
Fn = Callable[..., Any]


def autograd_grad(create_graph: bool) -> GradFn:
    """The gradient operator of the sequential path: ``torch.autograd.grad``.

    ``create_graph=True`` keeps the graph of the gradients (second-order MAML). Unused
    parameters get zero gradients.
    """

    def grad(fn: Callable[[Params], Tensor], params: Params) -> tuple[Params, Tensor]:
        loss = fn(params)
        grads = torch.autograd.grad(
            loss, list(params.values()), create_graph=create_graph, allow_unused=True
        )
        out = {
            n: torch.zeros_like(p) if g is None else g
            for (n, p), g in zip(params.items(), grads)
        }
        return out, loss

    grad.leaves = True  # type: ignore[attr-defined]  # params must be graph leaves in "none"
    return grad


def func_grad(fn: Callable[[Params], Tensor], params: Params) -> tuple[Params, Tensor]:
    """The gradient operator of the vmapped and compiled paths: ``torch.func.grad_and_value``
    (``torch.autograd.grad`` does not work inside ``vmap``)."""
    grads, loss = torch.func.grad_and_value(fn)(params)
    return grads, loss


class _Features(nn.Module):
    """``model.features`` as a module forward, for ``functional_call`` with given tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: Tensor) -> Tensor:
        return self.m.features(x)  # type: ignore[operator]


class InnerLoop:
    """What a task's inner loop and outer objective are made of.

    Args:
        model: the network (forward depends only on its parameters and buffers).
        adapted: names of the parameters the inner loop adapts.
        rule: the update rule (:mod:`metakd.meta.rules`).
        support: the support objective (:mod:`metakd.meta.objectives`).
        objective: the query objective.

    Attributes:
        head_only: the features are computed once per set (see the module docstring).
        per_step_bn: the model has MAML++ per-step batch norm.
        constant_grads: the rule takes its gradients as constants.

    Example:
        >>> from metakd.meta import SGD, CrossEntropy
        >>> from metakd.nn import create
        >>> net = create("conv4", in_channels=1, hidden=4, num_classes=3)
        >>> loop = InnerLoop(net, ["head.weight", "head.bias"], SGD(0.1), CrossEntropy(),
        ...                  CrossEntropy())
        >>> loop.head_only  # classifier-only: features once per set
        True
    """

    def __init__(
        self, model: nn.Module, adapted: Sequence[str], rule: Fn, support: Fn, objective: Fn
    ) -> None:
        self.model = model
        self.layout = ParamLayout(model)
        self.adapted = list(adapted)
        self.rule = rule
        self.support = support
        self.objective = objective
        self.constant_grads = bool(getattr(rule, "constant_grads", False))
        self.per_step_bn = any(
            getattr(m, "mode", None) == "per_step" and _is_metakd_bn(m) for m in model.modules()
        )
        self.head_only = _is_head_only(model, self.adapted) and not self.per_step_bn
        if self.head_only:
            self.head_layout = ParamLayout(model.head)  # type: ignore[arg-type]

    def init_state(self, params: Mapping[str, Tensor], rule: Fn | None = None) -> Any:
        """The rule's per-task state before the first step."""
        init = getattr(self.rule if rule is None else rule, "init_state", None)
        return None if init is None else init(params)

    def set_step(self, model: nn.Module, step: int) -> None:
        """Select row ``step`` of MAML++ per-step batch-norm statistics (no-op without them).

        The support forward of inner step ``s`` uses row ``s``; the query forward uses the
        last step's row, as in Antoniou et al. (ICLR 2019).
        """
        if self.per_step_bn:
            from metakd.nn.norm import set_bn_step

            set_bn_step(model, max(step, 0))

    def encode(self, model: nn.Module, x: Tensor, meta: Mapping[str, Tensor] | None) -> Tensor:
        """The body's features with ``head_only`` (else ``x`` itself)."""
        if not self.head_only:
            return x
        if meta is None:
            return model.features(x)  # type: ignore[operator]
        body = {f"m.{slot}": t for n, t in meta.items() if not n.startswith("head.")
                for slot in self.layout.slots[n]}
        return torch.func.functional_call(_Features(model), body, (x,), tie_weights=False,
                                          strict=False)

    def decode(
        self, model: nn.Module, params: Mapping[str, Tensor], h: Tensor,
        meta: Mapping[str, Tensor] | None,
    ) -> Tensor:
        """Logits of ``h`` (features or inputs) with ``params`` in place of the adapted ones."""
        full = dict(params) if meta is None else {**meta, **params}
        if self.head_only:
            local = {n[len("head."):]: t for n, t in full.items() if n.startswith("head.")}
            return functional_forward(model.head, local, h, self.head_layout)  # type: ignore[arg-type]
        return functional_forward(model, full, h, self.layout)


def run_task(
    loop: InnerLoop,
    model: nn.Module,
    sx: Tensor,
    sy: Tensor,
    qx: Tensor | None,
    qy: Tensor | None,
    extras: Mapping[str, Tensor],
    steps: int,
    mode: Mode,
    grad: GradFn,
    meta_step: int | Tensor = 0,
    meta: Mapping[str, Tensor] | None = None,
    fns: tuple[Fn, Fn, Fn] | None = None,
    batches: Sequence[Tensor] | None = None,
) -> tuple[Params, dict[str, Tensor] | None, Tensor | None]:
    """Adapt to one task's support set, then score its query set (see the module docstring).

    Args:
        loop: the inner loop's parts.
        model: the module to run (``loop.model`` or a replica of it in a worker thread).
        sx: support ``[N*K, ...]``.
        sy: support labels ``[N*K]``.
        qx: query ``[N*Q, ...]``; ``None``: adapt only.
        qy: query labels ``[N*Q]``; ``None``: adapt only.
        extras: this task's extras (``{name: tensor}``).
        steps: inner steps.
        mode: ``"second"``, ``"first"`` or ``"none"``.
        grad: the gradient operator of the path.
        meta_step: the meta-iteration, passed to the query objective.
        meta: all trainable model parameters as explicit tensors (compiled path); ``None``:
            the model's own.
        fns: ``(rule, support, objective)`` to call instead of ``loop``'s (the compiled path
            passes them with their parameters as explicit tensors).
        batches: support minibatches: index tensors into the support set, step ``k`` uses
            ``batches[k % len(batches)]`` (the Meta-LSTM's epochs over the support set in
            minibatches); ``None``: every step uses the whole support set.

    Returns:
        ``(adapted params, query terms or None, query logits [N*Q, N] or None)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from metakd.meta import SGD, CrossEntropy, InnerLoop, run_task
        >>> from metakd.meta.inner import autograd_grad
        >>> net = nn.Linear(4, 2)
        >>> loop = InnerLoop(net, ["weight", "bias"], SGD(0.1), CrossEntropy(), CrossEntropy())
        >>> sx, sy = torch.randn(4, 4), torch.tensor([0, 1, 0, 1])
        >>> params, terms, logits = run_task(loop, net, sx, sy, sx, sy, {}, steps=2,
        ...                                  mode="second", grad=autograd_grad(True))
        >>> sorted(params), sorted(terms), logits.shape
        (['bias', 'weight'], ['ce'], torch.Size([4, 2]))
    """
    rule, support, objective = (loop.rule, loop.support, loop.objective) if fns is None else fns
    source = dict(model.named_parameters()) if meta is None else meta
    params: Params = {n: source[n] for n in loop.adapted}
    leaves = getattr(grad, "leaves", False) and mode == "none"
    if leaves:
        params = {n: p.detach().requires_grad_() for n, p in params.items()}
    constant = mode != "second" or loop.constant_grads
    state = loop.init_state(params, rule)
    if steps > 0:
        h = None
        if loop.head_only:  # features once per set; without a meta-graph at evaluation
            with torch.no_grad() if mode == "none" else torch.enable_grad():
                h = loop.encode(model, sx, meta)
        for k in range(steps):
            loop.set_step(model, k)
            idx = None if not batches else batches[k % len(batches)]
            xk, yk = (sx, sy) if idx is None else (sx[idx], sy[idx])
            hk = loop.encode(model, xk, meta) if h is None else (h if idx is None else h[idx])

            def support_loss(p: Params, _h: Tensor = hk, _k: int = k, _y: Tensor = yk) -> Tensor:
                return total(support(loop.decode(model, p, _h, meta), _y, extras, _k))

            g, loss = grad(support_loss, params)
            if constant:
                g = {n: t.detach() for n, t in g.items()}
                loss = loss.detach()
            if mode == "none":
                with torch.no_grad():
                    params, state = rule(g, params, state, k, loss)
            else:
                params, state = rule(g, params, state, k, loss)
            if leaves:
                params = {n: p.detach().requires_grad_() for n, p in params.items()}
    if qx is None or qy is None:
        return params, None, None
    loop.set_step(model, steps - 1)
    logits = loop.decode(model, params, loop.encode(model, qx, meta), meta)
    return params, objective(logits, qy, extras, meta_step), logits


def _is_metakd_bn(module: nn.Module) -> bool:
    from metakd.nn.norm import BatchNorm1d, BatchNorm2d

    return isinstance(module, (BatchNorm1d, BatchNorm2d))


def _is_head_only(model: nn.Module, adapted: Sequence[str]) -> bool:
    """Whether every adapted parameter belongs to the ``head`` of a metakd Backbone."""
    from metakd.nn.heads import Backbone

    head = getattr(model, "head", None)
    if not isinstance(model, Backbone) or not isinstance(head, nn.Module):
        return False
    ids = {id(p) for p in head.parameters()}
    params = dict(model.named_parameters())
    return all(id(params[n]) in ids and n.startswith("head.") for n in adapted)
