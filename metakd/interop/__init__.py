"""The original projects' checkpoints, read into metakd models: one registry of formats.

Each supported format (a project's way of saving weights) is a :class:`Format` registered
here by a module of this package, one module per original project. :func:`read` takes the
object ``torch.load(path, weights_only=True)`` returned, finds the format that recognises it
(or the one named), and returns a :class:`Converted`: the metakd architecture, the state dict
in metakd's key names, the model's constructor arguments, and what else the file says (a
temperature, the training epoch). A file whose keys fit but whose architecture differs from
the one asked for (where the file says which it is) is refused in one line.

:func:`metakd.distill.load_teacher`, ``metakd convert`` and ``metakd eval`` all read
checkpoints through :func:`read`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["Converted", "Format", "formats", "get_format", "read", "register_format"]


@dataclass
class Converted:
    """A checkpoint of an original project, in metakd's terms.

    Attributes:
        arch: the metakd model name (:func:`metakd.nn.create`).
        state: the state dict in that model's key names.
        model_kwargs: the arguments :func:`metakd.nn.create` needs to build the same network
            (``num_classes``, ``in_channels``, widths...).
        format: the name of the :class:`Format` that read it.
        extras: what else the file says (for example ``{"temperature": 10.0}`` for a
            Meta-Baseline, ``{"epoch": 240}``).

    Example:
        >>> Converted("conv4", {}, {"ways": 5}, "demo").arch
        'conv4'
    """

    arch: str
    state: dict[str, Tensor]
    model_kwargs: dict[str, Any]
    format: str
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Format:
    """One original project's checkpoint layout.

    Attributes:
        name: short name (``"maml_pytorch"``), used by ``--format``.
        project: the original project and its repository, for messages and docs.
        detect: ``detect(obj) -> bool``: whether a weights-only loaded object is in this
            format (cheap: key names and shapes only).
        convert: ``convert(obj, arch, **options) -> Converted``; ``arch`` is the requested
            metakd architecture or ``None`` (the format's default where the file says it);
            raises ``InputError`` (one line) when the file cannot be read as ``arch``.
        archs: the metakd architectures this format can produce.
        priority: detection order (higher first) where several formats could match.
    """

    name: str
    project: str
    detect: Callable[[Any], bool]
    convert: Callable[..., Converted]
    archs: tuple[str, ...] = ()
    priority: int = 0


_FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    """Add ``fmt`` to the registry (a name registered again replaces the old one)."""
    _FORMATS[fmt.name] = fmt
    return fmt


def formats() -> list[Format]:
    """The registered formats, in detection order.

    Example:
        >>> isinstance(formats(), list)
        True
    """
    _load_builtin()
    return sorted(_FORMATS.values(), key=lambda f: -f.priority)


def get_format(name: str) -> Format:
    """The registered format ``name``.

    Raises:
        InputError: no such format (the message lists them).
    """
    _load_builtin()
    try:
        return _FORMATS[name]
    except KeyError:
        from metakd.engine.errors import UsageError

        raise UsageError(f"unknown checkpoint format {name!r}; known: "
                         f"{', '.join(sorted(_FORMATS)) or '(none)'}") from None


def read(obj: Any, arch: str | None = None, *, format: str | None = None,
         source: str = "the checkpoint", **options: Any) -> Converted | None:
    """Read a loaded checkpoint object of an original project; ``None`` if no format knows it.

    Args:
        obj: what ``torch.load(path, weights_only=True)`` returned.
        arch: the metakd architecture wanted (``None``: the format's choice).
        format: the format's name; ``None``: detect it.
        source: the file's name, for messages.
        **options: format options (for example ``part="student"`` for a distiller's file).

    Raises:
        InputError: the format cannot read the object as ``arch`` (one line, naming
            ``source`` and what differs).
    """
    from metakd.engine.errors import InputError

    fmt = get_format(format) if format is not None else next(
        (f for f in formats() if _safe_detect(f, obj)), None)
    if fmt is None:
        return None
    try:
        return fmt.convert(obj, arch, **options)
    except InputError as e:
        raise InputError(f"{source}: {e}") from None


def _safe_detect(fmt: Format, obj: Any) -> bool:
    try:
        return bool(fmt.detect(obj))
    except Exception:  # a detector must never turn an unknown file into a crash
        return False


def _load_builtin() -> None:
    """Import the modules of this package that register the built-in formats."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def state_of(obj: Any) -> Mapping[str, Tensor] | None:
    """The flat ``{name: tensor}`` mapping of ``obj`` itself, or ``None`` if it is not one."""
    import torch

    if isinstance(obj, Mapping) and obj and all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        return obj
    return None
