"""Build backbones by name (timm-style registry).

A model factory is a function that takes keyword arguments and returns an ``nn.Module``. It
joins the registry with the :func:`register_model` decorator; :func:`create` builds it by
name and :func:`list_models` lists the names.

A model ported from another code base may name a module differently there (metakd calls
every classifier ``head``; mdistiller's CIFAR models call it ``fc``, ``linear``,
``classifier`` or ``classifier.0``). Its factory registers the prefix renaming with
``original_keys``; :func:`original_key_map` returns it and :func:`rename_original_keys`
applies it, so the original's checkpoints load.

Example:
    >>> import metakd.nn as mnn
    >>> net = mnn.create("conv4", in_channels=1, num_classes=5)
    >>> "resnet12" in mnn.list_models()
    True
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

__all__ = [
    "create",
    "is_model",
    "list_models",
    "original_key_map",
    "register_model",
    "rename_original_keys",
]

F = TypeVar("F", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_ORIGINAL_KEYS: dict[str, dict[str, str]] = {}


def register_model(
    fn: F | None = None,
    *,
    name: str | None = None,
    original_keys: Mapping[str, str] | None = None,
) -> Any:
    """Register a model factory under its function name (or ``name``).

    Usable bare (``@register_model``) or with a name (``@register_model(name="conv4")``).
    Registering a name twice raises ``ValueError``.

    Args:
        fn: the factory, ``fn(**kwargs) -> nn.Module``.
        name: the registry name; defaults to ``fn.__name__``.
        original_keys: ``{prefix in the original code: prefix here}`` for the state-dict keys
            that the code the model was ported from names differently (see
            :func:`rename_original_keys`).

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
        if original_keys:
            _ORIGINAL_KEYS[key] = dict(original_keys)
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


def original_key_map(name: str) -> dict[str, str]:
    """The state-dict renaming of model ``name``: ``{prefix in the original: prefix here}``.

    Empty for a model whose keys are the original's (or that has no original).

    Args:
        name: a name from :func:`list_models`.

    Returns:
        A new dict; for mdistiller's CIFAR models, the classifier's name there and ``"head."``.

    Raises:
        ValueError: ``name`` is not registered.

    Example:
        >>> original_key_map("MobileNetV2"), original_key_map("vgg13")
        ({'classifier.0.': 'head.'}, {'classifier.': 'head.'})
        >>> original_key_map("conv4")
        {}
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return dict(_ORIGINAL_KEYS.get(name, {}))


def rename_original_keys(state: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A state dict of the original code of model ``name`` in metakd's key names.

    Each key that starts with a prefix of :func:`original_key_map` gets metakd's prefix
    instead; other keys (metakd's own among them) are kept, so renaming twice is harmless.

    Args:
        state: ``{key: tensor}`` saved by the original code (or by metakd).
        name: a name from :func:`list_models`.

    Returns:
        A new dict with the same values, in the same order.

    Example:
        >>> sd = {"conv1.weight": 1, "linear.weight": 2, "linear.bias": 3}
        >>> list(rename_original_keys(sd, "ShuffleV2"))
        ['conv1.weight', 'head.weight', 'head.bias']
    """
    renames = original_key_map(name)
    out: dict[str, Any] = {}
    for key, value in state.items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out
