"""Build backbones by name (timm-style registry).

A model factory is a function that takes keyword arguments and returns an ``nn.Module``. It
joins the registry with the :func:`register_model` decorator; :func:`create` builds it by
name and :func:`list_models` lists the names.

Example:
    >>> import metakd.nn as mnn
    >>> net = mnn.create("conv4", in_channels=1, num_classes=5)
    >>> "resnet12" in mnn.list_models()
    True
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = ["create", "is_model", "list_models", "register_model"]

F = TypeVar("F", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: F | None = None, *, name: str | None = None) -> Any:
    """Register a model factory under its function name (or ``name``).

    Usable bare (``@register_model``) or with a name (``@register_model(name="conv4")``).
    Registering a name twice raises ``ValueError``.

    Args:
        fn: the factory, ``fn(**kwargs) -> nn.Module``.
        name: the registry name; defaults to ``fn.__name__``.

    Returns:
        The factory itself (unchanged), or a decorator when ``fn`` is omitted.

    Example:
        >>> @register_model(name="my_tiny_net")
        ... def _tiny(**kwargs):
        ...     return nn.Linear(2, 2)
        >>> create("my_tiny_net")
        Linear(in_features=2, out_features=2, bias=True)
    """

    def decorator(factory: F) -> F:
        key = name if name is not None else factory.__name__
        if not key or not isinstance(key, str):
            raise ValueError(f"invalid model name {key!r}")
        if key in _MODELS:
            raise ValueError(f"a model named {key!r} is already registered")
        _MODELS[key] = factory
        return factory

    if fn is not None:
        return decorator(fn)
    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """The registered model names, sorted, optionally filtered by a glob ``pattern``.

    Example:
        >>> list_models("resnet1?_bottle")
        ['resnet12_bottle', 'resnet18_bottle']
    """
    names = sorted(_MODELS)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _MODELS


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs``.

    ``ways`` is accepted as another spelling of ``num_classes`` (few-shot code says "ways").

    Args:
        name: a name from :func:`list_models`.
        **kwargs: passed to the factory (``num_classes``, ``in_channels``, ``bn_mode`` ...).

    Returns:
        A new ``nn.Module``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the known names).

    Example:
        >>> net = create("maml_omniglot", ways=20)
        >>> net.out_features
        20
    """
    try:
        factory = _MODELS[name]
    except KeyError:
        known = ", ".join(list_models()) or "(none)"
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None
    if "ways" in kwargs:
        if "num_classes" in kwargs:
            raise TypeError("pass either ways or num_classes, not both")
        kwargs["num_classes"] = kwargs.pop("ways")
    return factory(**kwargs)
