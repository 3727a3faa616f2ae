"""Parameter bookkeeping shared by the MAML backends: names, aliases, selection, functional calls.

Internal module: nothing here is public API.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import TypeAlias

import torch
from torch import Tensor, nn

__all__ = [
    "AdaptSpec",
    "ParamLayout",
    "functional_forward",
    "replicate",
    "select_adapted",
]

AdaptSpec: TypeAlias = str | Callable[[str, nn.Parameter], bool] | Sequence[str] | None


class ParamLayout:
    """Where each trainable parameter of a model lives, with aliases resolved.

    A module registered twice (learn2learn's ``OmniglotCNN`` puts ``base`` both at ``base`` and
    at ``features.1``) gives each of its parameters two names but only one slot (one
    ``(module, attribute)`` pair). ``torch.func.functional_call`` with its default
    ``tie_weights=True``, or with both names given, swaps that slot twice and restores the
    wrong tensor, leaving plain tensors in the model and meta-gradients ``None``. So each slot
    is listed once. A parameter object genuinely shared by two *different* modules (tied
    weights) keeps one slot per module, and all of them get the same tensor.

    Attributes:
        names: canonical names of the trainable parameters, in ``named_parameters()`` order.
        slots: canonical name -> the distinct ``functional_call`` names to set.
        tied: whether any parameter has more than one slot.
    """

    def __init__(self, model: nn.Module) -> None:
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
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.names: list[str] = [n for n in slots if n in trainable]
        self.slots: dict[str, list[str]] = {n: slots[n] for n in self.names}
        self.tied: bool = any(len(s) > 1 for s in self.slots.values())


def functional_forward(
    model: nn.Module, layout: ParamLayout, params: Mapping[str, Tensor], x: Tensor
) -> Tensor:
    """``model(x)`` with the parameters in ``params`` substituted (others stay the model's)."""
    if layout.tied:
        full = {slot: t for name, t in params.items() for slot in layout.slots[name]}
    else:
        full = dict(params)
    return torch.func.functional_call(model, full, (x,), tie_weights=False, strict=False)


def select_adapted(model: nn.Module, layout: ParamLayout, adapt: AdaptSpec) -> list[str]:
    """Resolve the ``adapt`` argument of :class:`~metakd.meta.MAMLWrapper` to parameter names."""
    names = layout.names
    if adapt is None or (isinstance(adapt, str) and adapt == "all"):
        chosen = list(names)
    elif isinstance(adapt, str) and adapt == "head":
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Module):
            raise ValueError(
                f"adapt='head' (ANIL) needs a model with a `head` submodule; "
                f"{type(model).__name__} has none. Pass adapt=[names] or a callable instead."
            )
        ids = {id(p) for p in head.parameters()}
        params = dict(model.named_parameters())
        chosen = [n for n in names if id(params[n]) in ids]
    elif isinstance(adapt, str):
        raise ValueError(
            f"adapt={adapt!r} is not understood; use None or 'all' (every parameter), 'head' "
            "(ANIL), a list of parameter names or a callable(name, param) -> bool"
        )
    elif callable(adapt):
        params = dict(model.named_parameters())
        chosen = [n for n in names if adapt(n, params[n])]
    else:
        wanted = list(adapt)
        unknown = [n for n in wanted if n not in layout.slots]
        if unknown:
            raise ValueError(
                f"adapt names {unknown} are not trainable parameters of the model; "
                f"valid names: {names}"
            )
        chosen = [n for n in names if n in set(wanted)]
    if not chosen:
        raise ValueError(
            f"adapt={adapt!r} selects no trainable parameter; valid names: {names}"
        )
    return chosen


def replicate(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` that shares its parameter and buffer tensors.

    ``functional_call`` swaps tensors into the module's attributes for the duration of a call,
    so two threads must not run it on the same module object; each worker gets a replica.
    """
    memo: dict[int, object] = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    return copy.deepcopy(model, memo)


def zeros_for_none(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> list[Tensor]:
    """Replace the ``None`` gradients of unused inputs by zeros."""
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like)]
