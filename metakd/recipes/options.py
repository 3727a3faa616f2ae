"""Command-line options of a method, derived from its config dataclass.

``metakd train METHOD`` adds the options shared by every method itself; a method that does
not write its own ``add_arguments`` gets one option per remaining config field, typed from the
field's annotation, with the help text of the field in the config's ``Attributes:`` docstring
section and the config's default. Every option defaults to ``None`` (not given), so that
``paper(dataset, ways, shots, **given)`` keeps the paper's value of what the user left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["KeyValueAction", "add_config_arguments", "field_docs", "parse_value"]

_ENTRY = re.compile(r"^(?P<names>[A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_][\w]*)*)\s*(?:\([^)]*\))?:\s*(?P<text>.*)$")


def field_docs(config_cls: type[Any]) -> dict[str, str]:
    """``{field: text}`` from the ``Attributes:`` section of a Google-style class docstring.

    An entry may name several fields (``ways, shots: episode shape``); continuation lines are
    joined with spaces.

    Example:
        >>> class C:
        ...     '''A config.
        ...
        ...     Attributes:
        ...         lr: learning rate,
        ...             of Adam.
        ...         ways, shots: episode shape.
        ...     '''
        >>> field_docs(C)
        {'lr': 'learning rate, of Adam.', 'ways': 'episode shape.', 'shots': 'episode shape.'}
    """
    lines = inspect.cleandoc(config_cls.__doc__ or "").splitlines()
    out: dict[str, str] = {}
    current: list[str] = []
    indent: int | None = None
    inside = False
    for line in lines:
        stripped = line.strip()
        if not inside:
            inside = stripped == "Attributes:"
            continue
        if not stripped:
            continue
        level = len(line) - len(line.lstrip())
        if level == 0:  # the next section
            break
        match = _ENTRY.match(stripped)
        if match and (indent is None or level <= indent):
            indent = level
            current = [n.strip() for n in match["names"].split(",")]
            for n in current:
                out[n] = match["text"].strip()
        elif current:
            for n in current:
                out[n] = f"{out[n]} {stripped}".strip()
    return out


def parse_value(raw: str) -> Any:
    """A command-line value typed as it reads: ``true``/``false``, an int, a float, else text.

    Example:
        >>> [parse_value(v) for v in ("true", "32", "1e-3", "xavier")]
        [True, 32, 0.001, 'xavier']
    """
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


class KeyValueAction(argparse.Action):
    """A repeatable ``KEY=VALUE`` option that collects a dict of typed values.

    Example:
        >>> p = argparse.ArgumentParser()
        >>> _ = p.add_argument("--model-arg", dest="model_kwargs", action=KeyValueAction)
        >>> p.parse_args(["--model-arg", "hidden=32", "--model-arg", "head-init=xavier"])
        Namespace(model_kwargs={'hidden': 32, 'head_init': 'xavier'})
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        key, sep, raw = str(values).partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentError(
                self, f"{values!r}: expected KEY=VALUE, e.g. head_init=xavier")
        found = dict(getattr(namespace, self.dest, None) or {})
        found[key.strip().replace("-", "_")] = parse_value(raw)
        setattr(namespace, self.dest, found)


def _unwrap_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type[Any],
                         skip: Sequence[str] = ()) -> list[str]:
    """Add one ``--field-name`` option per field of ``config_cls`` not in ``skip``.

    ``bool`` fields get ``--x``/``--no-x``; ``Literal`` fields get their choices; ``int``,
    ``float`` and ``str`` fields (optional or not) their type; ``dict`` fields a repeatable
    ``KEY=VALUE``; ``list``/``tuple`` fields one or more values. Fields of other types get no
    option. Every option defaults to ``None``.

    Returns:
        The names of the fields that got an option.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Cfg:
        ...     '''Attributes:
        ...         lr: learning rate.
        ...         schedule: the decay.
        ...     '''
        ...     lr: float = 0.1
        ...     schedule: Literal["constant", "cosine"] = "constant"
        >>> p = argparse.ArgumentParser()
        >>> add_config_arguments(p, Cfg)
        ['lr', 'schedule']
        >>> p.parse_args(["--lr", "0.5"])
        Namespace(lr=0.5, schedule=None)
    """
    hints = typing.get_type_hints(config_cls)
    docs = field_docs(config_cls)
    added: list[str] = []
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        tp = _unwrap_optional(hints.get(f.name, str))
        origin = typing.get_origin(tp)
        default = _default(f)
        text = docs.get(f.name, f.name.replace("_", " ")).rstrip(".")
        help_text = f"{text} (default: {default})".replace("%", "%%")
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            choices = list(typing.get_args(tp))
            kw.update(choices=choices, type=type(choices[0]))
        elif tp in (int, float, str):
            kw["type"] = tp
        elif tp is dict or origin is dict:
            kw.update(action=KeyValueAction, metavar="KEY=VALUE")
        elif origin in (list, tuple):
            inner = [a for a in typing.get_args(tp) if a is not Ellipsis]
            kw.update(nargs="+", type=inner[0] if inner and inner[0] in (int, float, str) else str)
        else:
            continue  # not expressible on the command line
        parser.add_argument(flag, **kw)
        added.append(f.name)
    return added
