"""Which parameters the inner loop adapts: the ``adapt`` argument of the meta-learners.

Internal module: use ``MAMLWrapper(..., adapt=...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

from torch import nn

from metakd.meta.functional import ParamLayout

__all__ = ["AdaptSpec", "select_adapted"]

AdaptSpec: TypeAlias = str | Callable[[str, nn.Parameter], bool] | Sequence[str] | None


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
