"""Functional helpers for writing meta-learners: forward over a parameter dict, flat vectors.

A meta-learner keeps a model's *initial* parameters as ``nn.Parameter``s and runs the model
with other tensors in their place (the adapted parameters of a task). These helpers are the
pieces every meta-learner of :mod:`metakd.meta` is built from, public so that a new method
does not have to copy them.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from metakd.meta.functional import flatten_params, functional_forward, unflatten_params
    >>> net = nn.Linear(3, 2)
    >>> params = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    >>> functional_forward(net, params, torch.ones(4, 3)).abs().sum().item()
    0.0
    >>> vec = flatten_params(dict(net.named_parameters()))
    >>> vec.shape
    torch.Size([8])
    >>> sorted(unflatten_params(vec, dict(net.named_parameters())))
    ['bias', 'weight']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ParamLayout", "flatten_params", "functional_forward", "unflatten_params"]


class ParamLayout:
    """Where each trainable parameter of a model lives, with aliases resolved.

    A module registered twice (learn2learn's ``OmniglotCNN`` puts ``base`` both at ``base`` and
    at ``features.1``) gives each of its parameters two names but only one slot (one
    ``(module, attribute)`` pair). ``torch.func.functional_call`` with its default
    ``tie_weights=True``, or with both names given, swaps that slot twice and restores the
    wrong tensor, leaving plain tensors in the model and meta-gradients ``None``. So each slot
    is listed once. A parameter object genuinely shared by two *different* modules (tied
    weights) keeps one slot per module, and all of them get the same tensor.

    Args:
        model: the module.
        trainable_only: list only parameters with ``requires_grad=True`` in :attr:`names`.

    Attributes:
        names: canonical names of the (trainable) parameters, in ``named_parameters()`` order.
        slots: canonical name -> the distinct ``functional_call`` names to set.
        tied: whether any parameter has more than one slot.

    Example:
        >>> from torch import nn
        >>> ParamLayout(nn.Sequential(nn.Linear(2, 2))).names
        ['0.weight', '0.bias']
    """

    def __init__(self, model: nn.Module, trainable_only: bool = True) -> None:
        seen: set[tuple[int, str]] = set()
        canonical: dict[int, str] = {}
        slots: dict[str, list[str]] = {}
        for mod_name, module in model.named_modules(remove_duplicate=False):
            for attr, param in module._parameters.items():
                if param is None or (id(module), attr) in seen:
                    continue
                seen.add((id(module), attr))
                full = f"{mod_name}.{attr}" if mod_name else attr
                name = canonical.setdefault(id(param), full)
                slots.setdefault(name, []).append(full)
        keep = {n for n, p in model.named_parameters() if p.requires_grad or not trainable_only}
        self.names: list[str] = [n for n in slots if n in keep]
        self.slots: dict[str, list[str]] = {n: slots[n] for n in self.names}
        self.tied: bool = any(len(s) > 1 for s in self.slots.values())

    def expand(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``params`` keyed by every slot that ``functional_call`` must set."""
        if not self.tied:
            return dict(params)
        return {slot: t for name, t in params.items() for slot in self.slots.get(name, [name])}


def functional_forward(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Any,
    layout: ParamLayout | None = None,
) -> Any:
    """``model(x)`` with the tensors of ``params`` in place of its parameters of those names.

    Parameters and buffers not in ``params`` stay the model's own. Gradients flow to the
    tensors of ``params``, which may be graph-connected to anything (an inner loop's updates).

    Args:
        model: any ``nn.Module`` whose forward depends only on its parameters and buffers.
        params: parameter name (as in ``model.named_parameters()``) -> tensor of its shape.
        x: the forward's input.
        layout: the model's :class:`ParamLayout` when it registers a module twice (built once
            by the caller; ``None`` for ordinary models).

    Returns:
        The model's output.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(2, 1, bias=False)
        >>> functional_forward(net, {"weight": torch.tensor([[1.0, 2.0]])}, torch.ones(1, 2))
        tensor([[3.]])
    """
    full = layout.expand(params) if layout is not None else dict(params)
    return torch.func.functional_call(model, full, (x,), tie_weights=False, strict=False)


def flatten_params(params: Mapping[str, Tensor]) -> Tensor:
    """Concatenate the tensors of ``params``, flattened, in the mapping's order: ``[P]``.

    The inverse is :func:`unflatten_params` with a mapping of the same names and shapes. The
    Meta-LSTM optimizer keeps a learner's parameters as one such vector (its cell state).

    Example:
        >>> import torch
        >>> flatten_params({"a": torch.ones(2, 2), "b": torch.zeros(3)}).tolist()
        [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    """
    if not params:
        raise ValueError("flatten_params got no tensors")
    return torch.cat([t.reshape(-1) for t in params.values()])


def unflatten_params(vector: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Split a flat ``[P]`` vector into tensors shaped like those of ``like``, same names.

    The pieces are views of ``vector`` (gradients flow back to it).

    Example:
        >>> import torch
        >>> out = unflatten_params(torch.arange(5.0), {"w": torch.empty(2, 2), "b": torch.empty(1)})
        >>> out["w"].tolist(), out["b"].tolist()
        ([[0.0, 1.0], [2.0, 3.0]], [4.0])
    """
    total = sum(t.numel() for t in like.values())
    if vector.dim() != 1 or vector.numel() != total:
        raise ValueError(
            f"unflatten_params: a vector of shape {tuple(vector.shape)} cannot fill "
            f"{len(like)} tensors of {total} elements in all; pass a 1-d vector of {total}"
        )
    out: dict[str, Tensor] = {}
    offset = 0
    for name, t in like.items():
        out[name] = vector[offset : offset + t.numel()].view(t.shape)
        offset += t.numel()
    return out
