"""Helpers the format modules of :mod:`metakd.interop` share (not a format: no registration)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from metakd.engine.errors import InputError
from metakd.interop import Converted

__all__ = ["build_model", "check_fits", "few", "numbered", "strip_prefix"]


def few(keys: list[str], limit: int = 4) -> str:
    """``"a, b, c, d (+3 more)"``: the first ``limit`` of ``keys`` for a one-line message."""
    extra = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + extra


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """``state`` without ``prefix`` when every key has it (``module.`` of ``DataParallel``)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def numbered(keys: Any, pattern: str) -> list[int]:
    """The sorted integers ``i`` of the keys matching ``pattern`` (a regex with one group)."""
    found = (re.fullmatch(pattern, k) for k in keys)
    return sorted(int(m.group(1)) for m in found if m is not None)


def _mismatch(model: nn.Module, state: Mapping[str, Tensor]) -> str:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} (model: {tuple(own[k].shape)})"
                    for k in set(own) & set(state) if own[k].shape != state[k].shape)
    parts = [f"missing {few(missing)}" if missing else "",
             f"unexpected {few(unexpected)}" if unexpected else "",
             f"shape mismatch {few(shapes, 2)}" if shapes else ""]
    return "; ".join(p for p in parts if p)


def check_fits(arch: str, model_kwargs: Mapping[str, Any], state: Mapping[str, Tensor],
               what: str) -> None:
    """Raise :class:`InputError` unless ``state`` loads strictly into ``create(arch, ...)``.

    Args:
        arch: the metakd model name.
        model_kwargs: its constructor arguments.
        state: the converted state dict.
        what: the file's content in words, for the message (``"the MAML-Pytorch net"``).
    """
    import metakd.nn as mnn

    try:
        try:
            with torch.device("meta"):  # shapes only: no memory, no initialisation
                model = mnn.create(arch, **model_kwargs)
        except (NotImplementedError, RuntimeError):  # a factory that needs real tensors
            model = mnn.create(arch, **model_kwargs)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} cannot be built as {arch!r} {dict(model_kwargs)}: {e}") from None
    problem = _mismatch(model, state)
    if problem:
        raise InputError(f"{what} does not fit {arch!r}: {problem}")


def build_model(converted: Converted, **model_kwargs: Any) -> nn.Module:
    """The metakd model of a :class:`~metakd.interop.Converted`, its weights loaded strictly.

    Args:
        converted: what :func:`metakd.interop.read` returned.
        **model_kwargs: arguments that replace or add to ``converted.model_kwargs``.

    Returns:
        The model (train mode, float32 unless the state's tensors say otherwise).

    Raises:
        InputError: the state does not load strictly (the keys or shapes that differ).

    Example:
        >>> import metakd.nn as mnn
        >>> net = mnn.create("conv4", num_classes=5)
        >>> c = Converted("conv4", net.state_dict(), {"num_classes": 5}, "demo")
        >>> type(build_model(c)).__name__
        'ConvNet'
    """
    import metakd.nn as mnn

    kwargs = {**converted.model_kwargs, **model_kwargs}
    model = mnn.create(converted.arch, **kwargs)
    problem = _mismatch(model, converted.state)
    if problem:
        raise InputError(f"the {converted.format} checkpoint does not fit "
                         f"{converted.arch!r}: {problem}")
    dtype = next((v.dtype for v in converted.state.values() if v.is_floating_point()), None)
    if dtype is not None:
        model.to(dtype)
    model.load_state_dict(converted.state, strict=True)
    return model
