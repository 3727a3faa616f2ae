"""Build backbones by name (timm-style registry).

A model factory is a function that takes keyword arguments and returns an ``nn.Module``. It
joins the registry with the :func:`register_model` decorator; :func:`create` builds it by
name, :func:`list_models` lists the names and :func:`describe_models` says what each one is:
its family (``"few-shot"`` backbones or ``"cifar"`` models of the distillation literature)
and the summary of its factory's docstring.

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
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

from torch import nn

__all__ = [
    "FAMILIES",
    "ModelInfo",
    "create",
    "describe_models",
    "is_model",
    "list_models",
    "original_key_map",
    "register_model",
    "rename_original_keys",
]

F = TypeVar("F", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_ORIGINAL_KEYS: dict[str, dict[str, str]] = {}
_FAMILIES: dict[str, str] = {}

FAMILIES = ("few-shot", "cifar", "custom")
"""The model families: few-shot backbones (Omniglot, miniImageNet ... episodes), the CIFAR
models of the distillation literature, and models registered without a family."""


class ModelInfo(NamedTuple):
    """One row of :func:`describe_models`: a registered model's name, family and description."""

    name: str
    """The registry name, for :func:`create`."""
    family: str
    """``"few-shot"``, ``"cifar"`` or ``"custom"`` (see :data:`FAMILIES`)."""
    description: str
    """The summary of the factory's docstring, its first paragraph on one line (empty when it
    has none)."""


def register_model(
    fn: F | None = None,
    *,
    name: str | None = None,
    original_keys: Mapping[str, str] | None = None,
    family: str = "custom",
) -> Any:
    """Register a model factory under its function name (or ``name``).

    Usable bare (``@register_model``) or with a name (``@register_model(name="conv4")``).
    Registering a name twice raises ``ValueError``. The summary (first paragraph) of the
    factory's docstring is its description in :func:`describe_models`.

    Args:
        fn: the factory, ``fn(**kwargs) -> nn.Module``.
        name: the registry name; defaults to ``fn.__name__``.
        original_keys: ``{prefix in the original code: prefix here}`` for the state-dict keys
            that the code the model was ported from names differently (see
            :func:`rename_original_keys`).
        family: one of :data:`FAMILIES`; metakd's own models are ``"few-shot"`` or
            ``"cifar"``.

    Returns:
        The factory itself (unchanged), or a decorator when ``fn`` is omitted.

    Example:
        >>> @register_model(name="my_tiny_net")
        ... def _tiny(**kwargs):
        ...     return nn.Linear(2, 2)
        >>> create("my_tiny_net")
        Linear(in_features=2, out_features=2, bias=True)
    """

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def decorator(factory: F) -> F:
        key = name if name is not None else factory.__name__
        if not key or not isinstance(key, str):
            raise ValueError(f"invalid model name {key!r}")
        if key in _MODELS:
            raise ValueError(f"a model named {key!r} is already registered")
        _MODELS[key] = factory
        _FAMILIES[key] = family
        if original_keys:
            _ORIGINAL_KEYS[key] = dict(original_keys)
        return factory

    if fn is not None:
        return decorator(fn)
    return decorator


def list_models(pattern: str | None = None, *, family: str | None = None) -> list[str]:
    """The registered model names, sorted, optionally filtered by a glob ``pattern``.

    Args:
        pattern: a glob (``"resnet*"``) the names must match; ``None``: every name.
        family: keep only the models of this family (one of :data:`FAMILIES`).

    Returns:
        The names, sorted. :func:`describe_models` gives each one's family and description.

    Example:
        >>> list_models("resnet1?_bottle")
        ['resnet12_bottle', 'resnet18_bottle']
        >>> list_models("resnet*", family="cifar")[:3]
        ['resnet110', 'resnet14', 'resnet20']
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    names = sorted(_MODELS)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if family is not None:
        names = [n for n in names if _FAMILIES[n] == family]
    return names


def describe_models(pattern: str | None = None, *, family: str | None = None) -> list[ModelInfo]:
    """What each registered model is: name, family and one-line description.

    The same models, in the same order, as :func:`list_models` with the same arguments.

    Args:
        pattern: a glob (``"resnet*"``) the names must match; ``None``: every name.
        family: keep only the models of this family (one of :data:`FAMILIES`).

    Returns:
        One :class:`ModelInfo` ``(name, family, description)`` per model.

    Example:
        >>> for row in describe_models("conv[46]"):
        ...     print(row.name, row.family, row.description, sep=" | ")
        conv4 | few-shot | Conv-4 (PMAML/MAML conv blocks): four pooled blocks (84 px → 5×5, 28 px → 1×1).
        conv6 | few-shot | Conv-6 (PMAML/MAML conv blocks): four pooled blocks, then two without pooling.
        >>> describe_models("vgg8")[0].family
        'cifar'
    """
    return [
        ModelInfo(n, _FAMILIES[n], _summary(_MODELS[n])) for n in list_models(pattern, family=family)
    ]


def _summary(factory: Callable[..., nn.Module]) -> str:
    """The summary of ``factory``'s docstring (its first paragraph, on one line), or ``""``."""
    doc = inspect.getdoc(factory) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


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
