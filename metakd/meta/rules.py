"""Inner-loop update rules: values that map (gradients, parameters, state, step) to new ones.

The inner loop of every meta-learner in :mod:`metakd.meta` calls its rule once per inner
step, TorchOpt-style::

    params, state = rule(grads, params, state, step, loss)

with ``grads`` and ``params`` dicts of the adapted parameters, ``state`` the rule's per-task
state (``rule.init_state(params)`` at the start of each task; any pytree of tensors, or
``None``), ``step`` the inner step index (a Python ``int``) and ``loss`` the support loss the
gradients come from (a 0-d tensor). A rule that is an ``nn.Module`` may hold learnable
tensors (Meta-SGD's rates, the Meta-LSTM's weights): they are meta-parameters, trained by the
outer loop and saved with the meta-learner. A rule with ``constant_grads = True`` receives
gradients and loss cut from the graph (the Meta-LSTM treats them as inputs, not functions of
the parameters, as Ravi & Larochelle do); otherwise the meta-learner decides (second-order
MAML keeps their graph, first-order MAML cuts it).

Every execution path (sequential, vmapped, compiled) calls the same rule, so a rule is
written once. Inside ``vmap`` and ``torch.compile`` it must be a pure function of its
inputs and its own parameters (no in-place updates of its inputs, no ``.item()``).

Example:
    >>> import torch
    >>> from metakd.meta.rules import SGD
    >>> rule = SGD(lr=0.5)
    >>> p, state = rule({"w": torch.ones(2)}, {"w": torch.zeros(2)}, None, 0, torch.tensor(1.0))
    >>> p["w"].tolist()
    [-0.5, -0.5]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["SGD", "MetaSGD", "UpdateRule"]

Params = dict[str, Tensor]


class UpdateRule(nn.Module):
    """Base class of the inner-loop update rules (see the module docstring for the contract).

    Subclasses implement :meth:`forward`; they override :meth:`init_state` when they carry
    per-task state, and set ``constant_grads = True`` when gradients must reach them as
    constants. Any callable with the same signature works as a rule too; subclassing adds
    learnable tensors and the ``state_dict`` they are saved in.

    Example:
        >>> import torch
        >>> class SignSGD(UpdateRule):
        ...     def forward(self, grads, params, state, step, loss):
        ...         return {n: p - 0.1 * grads[n].sign() for n, p in params.items()}, state
        >>> SignSGD()({"w": torch.tensor([-3.0])}, {"w": torch.tensor([1.0])}, None, 0, None)[0]
        {'w': tensor([1.1000])}
    """

    constant_grads: bool = False

    def init_state(self, params: Mapping[str, Tensor]) -> Any:
        """The per-task state before the first inner step (default ``None``)."""
        del params
        return None

    def forward(
        self, grads: Mapping[str, Tensor], params: Mapping[str, Tensor], state: Any, step: int,
        loss: Tensor | None,
    ) -> tuple[Params, Any]:
        """One inner step: ``(new_params, new_state)``.

        Args:
            grads: ``{name: gradient}`` of the support loss, each shaped like its parameter.
            params: ``{name: tensor}`` the current adapted parameters.
            state: this task's state (from :meth:`init_state` or the previous step).
            step: the inner step index, ``0 .. steps - 1``.
            loss: the support loss (0-d) at ``params``.
        """
        raise NotImplementedError

    def sgd_rates(self, names: Iterable[str]) -> dict[str, float | Tensor] | None:
        """Per-parameter rates if this rule is ``p - rate * g`` (learn2learn and higher
        backends implement only that form); ``None`` otherwise."""
        del names
        return None


def _check_lr(lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite float, got {lr!r}")
    return float(lr)


class SGD(UpdateRule):
    """Plain gradient descent, ``θ ← θ − α g``: the inner loop of MAML (Finn et al., 2017).

    Args:
        lr: the inner learning rate α (> 0).

    Example:
        >>> import torch
        >>> SGD(0.1)({"w": torch.tensor([2.0])}, {"w": torch.tensor([1.0])}, None, 0, None)[0]
        {'w': tensor([0.8000])}
    """

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = _check_lr(lr)

    def forward(
        self, grads: Mapping[str, Tensor], params: Mapping[str, Tensor], state: Any, step: int,
        loss: Tensor | None,
    ) -> tuple[Params, Any]:
        return {n: p - self.lr * grads[n] for n, p in params.items()}, state

    def sgd_rates(self, names: Iterable[str]) -> dict[str, float | Tensor]:
        return {n: self.lr for n in names}

    def extra_repr(self) -> str:
        return f"lr={self.lr}"


class MetaSGD(UpdateRule):
    """Meta-SGD (Li et al., 2017, arXiv:1707.09835): ``θ ← θ − α ⊙ g``, one learnable rate per
    parameter entry, initialised to ``lr`` and meta-learned with the initialisation.

    Args:
        params: the adapted parameters, ``{name: tensor}`` or ``model.named_parameters()``
            (only their shapes, dtypes and devices are used).
        lr: the initial rate of every entry.

    Attributes:
        lrs: ``nn.ParameterDict`` of the rates (``"."`` in names replaced by ``"-"``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> rule = MetaSGD(nn.Linear(2, 1).named_parameters(), lr=0.1)
        >>> sum(p.numel() for p in rule.parameters())
        3
    """

    def __init__(
        self, params: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]], lr: float
    ) -> None:
        super().__init__()
        lr = _check_lr(lr)
        items = params.items() if isinstance(params, Mapping) else params
        self.names: list[str] = []
        self.lrs = nn.ParameterDict()
        for name, p in items:
            self.names.append(name)
            self.lrs[_key(name)] = nn.Parameter(torch.full_like(p.detach(), lr))
        if not self.names:
            raise ValueError("MetaSGD needs at least one parameter")

    def rate(self, name: str) -> Tensor:
        """The rates of parameter ``name``."""
        try:
            return self.lrs[_key(name)]
        except KeyError:
            raise KeyError(
                f"MetaSGD has no rates for {name!r}; it was built for {self.names}"
            ) from None

    def forward(
        self, grads: Mapping[str, Tensor], params: Mapping[str, Tensor], state: Any, step: int,
        loss: Tensor | None,
    ) -> tuple[Params, Any]:
        return {n: p - self.rate(n) * grads[n] for n, p in params.items()}, state

    def sgd_rates(self, names: Iterable[str]) -> dict[str, float | Tensor]:
        return {n: self.rate(n) for n in names}

    def extra_repr(self) -> str:
        return f"tensors={len(self.names)}"


def _key(name: str) -> str:
    # ParameterDict keys cannot contain "."; "-" cannot occur in a parameter name.
    return name.replace(".", "-")
