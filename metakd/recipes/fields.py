"""The help of every config field, declared once: an entry of the ``Attributes:`` section.

A field's help is written once, in the docstring of the class that declares the field: a
method's config for its own fields, a part (:mod:`metakd.recipes.parts`) for the fields that
several methods share. :func:`compose_doc` completes a config's ``Attributes:`` section with
the entries of the parts it is made of, so ``help(MAMLConfig)``, the API pages,
``metakd train METHOD --help`` (:func:`metakd.recipes.options.add_config_arguments`), the
examples' original-name options (:class:`metakd.recipes.options.Alias`) and the docs' option
tables (:func:`option_table`, :func:`alias_table`) all show that one text. The parsers and the
tables also spell and group the options alike: :func:`option_flags` (with
:func:`alias_spellings`) gives a field's flags, :func:`alias_groups` the aliases that are one
option, :func:`alias_help` and :func:`alias_default` an alias's help and default.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from metakd.recipes.options import Alias

__all__ = ["alias_default", "alias_groups", "alias_help", "alias_spellings", "alias_table",
           "compose_doc", "field_docs", "flag", "option_flags", "option_table", "plain", "shown"]

T = TypeVar("T")

_ENTRY = re.compile(r"^(?P<names>[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*(?:\([^)]*\))?:"
                    r"\s*(?P<text>.*)$")
_SECTION = re.compile(r"^[A-Z][\w ]*:\s*$")
_WIDTH = 96


def _attribute_lines(doc: str) -> tuple[list[str], int, int]:
    """The cleaned docstring's lines and the ``[start, end)`` of its ``Attributes:`` body
    (``start == end == -1`` without one)."""
    lines = inspect.cleandoc(doc).splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "Attributes:" and not line.startswith(" "):
            end = i + 1
            while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" ")):
                end += 1
            while end > i + 1 and not lines[end - 1].strip():
                end -= 1
            return lines, i + 1, end
    return lines, -1, -1


def field_docs(config_cls: type[Any]) -> dict[str, str]:
    """``{field: text}`` from the ``Attributes:`` section of a Google-style class docstring.

    Continuation lines are joined with spaces. metakd's configs have one entry per field; an
    entry naming several (``ways, shots: episode shape``) gives each of them its text.

    Example:
        >>> class C:
        ...     '''A config.
        ...
        ...     Attributes:
        ...         lr: learning rate,
        ...             of Adam.
        ...         ways: N.
        ...     '''
        >>> field_docs(C)
        {'lr': 'learning rate, of Adam.', 'ways': 'N.'}
    """
    lines, start, end = _attribute_lines(config_cls.__doc__ or "")
    out: dict[str, str] = {}
    current: list[str] = []
    indent: int | None = None
    for line in lines[start:end] if start >= 0 else []:
        stripped = line.strip()
        if not stripped:
            continue
        level = len(line) - len(line.lstrip())
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


def compose_doc(cls: type[T]) -> type[T]:
    """Complete a config's ``Attributes:`` section with its parts' entries, in field order.

    A class decorator, applied after ``@dataclass``: every field keeps the text of the first
    class of the MRO that documents it (the config's own entry overrides a part's).

    Raises:
        TypeError: a field that no class of the MRO documents, or an entry of the class's
            own that names several fields (each field has its own entry).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Part:
        ...     '''A part.
        ...
        ...     Attributes:
        ...         seed: seeds everything.
        ...     '''
        ...     seed: int = 0
        >>> @compose_doc
        ... @dataclass
        ... class Cfg(Part):
        ...     '''A config.
        ...
        ...     Attributes:
        ...         lr: the learning rate.
        ...     '''
        ...     lr: float = 0.1
        >>> print(Cfg.__doc__)
        A config.
        <BLANKLINE>
        Attributes:
            seed: seeds everything.
            lr: the learning rate.
    """
    lines, start, end = _attribute_lines(cls.__doc__ or "")
    shared = [m["names"] for ln in lines[max(start, 0):max(end, 0)]
              if (m := _ENTRY.match(ln.strip())) and "," in m["names"]]
    if shared:
        raise TypeError(f"{cls.__name__}: one Attributes entry per field, not {shared}")
    texts: dict[str, str] = {}
    for klass in cls.__mro__:
        for name, text in field_docs(klass).items():
            texts.setdefault(name, text)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    missing = [n for n in names if not texts.get(n)]
    if missing:
        raise TypeError(f"{cls.__name__}: no Attributes entry documents {missing}")
    body: list[str] = []
    for name in names:
        body += textwrap.wrap(f"{name}: {texts[name]}", _WIDTH, initial_indent="    ",
                              subsequent_indent="        ", break_on_hyphens=False,
                              break_long_words=False)
    if start >= 0:
        lines[start:end] = body
    else:  # no section of its own: before the first other section, else at the end
        at = next((i for i, ln in enumerate(lines) if _SECTION.match(ln)), len(lines))
        head = [*lines[:at]]
        while head and not head[-1].strip():
            head.pop()
        lines = [*head, *([""] if head else []), "Attributes:", *body,
                 *(["", *lines[at:]] if at < len(lines) else [])]
    cls.__doc__ = "\n".join(lines)
    cls.__doc_composed__ = True  # type: ignore[attr-defined]  # read by the API pages' build
    return cls


_MARKUP = [(re.compile(r":(?:func|class|meth|mod|data|attr):`~?([^`]+)`"), r"\1"),
           (re.compile(r"``([^`]+)``"), r"\1"), (re.compile(r"`([^`]+)`"), r"\1")]


def plain(text: str) -> str:
    """Docstring markup out of a help text (``x``, :func:`x`, `x` become x).

    Example:
        >>> plain("``None``: the :func:`metakd.nn.create` default")
        'None: the metakd.nn.create default'
    """
    for pattern, repl in _MARKUP:
        text = pattern.sub(repl, text)
    return text


def shown(value: Any) -> str:
    """A value as the command line writes it (``none``, ``1 2 3``, ``k=v,k2=v2``).

    Example:
        >>> shown(None), shown([15000, 30000]), shown({"hidden": 32})
        ('none', '15000 30000', 'hidden=32')
    """
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def flag(name: str) -> str:
    """The command-line option of a config field.

    Example:
        >>> flag("test_inner_steps")
        '--test-inner-steps'
    """
    return "--" + name.replace("_", "-")


def alias_spellings(aliases: Iterable[Alias]) -> dict[str, list[str]]:
    """``{field: [flag, ...]}``: the aliases that only rename a field (:attr:`Alias.plain`),
    which are other spellings of the field's own option.

    Example:
        >>> from metakd.recipes.originals import META_LSTM
        >>> alias_spellings(META_LSTM)["shots"]
        ['--n-shot']
    """
    out: dict[str, list[str]] = {}
    for a in aliases:
        if a.plain:
            out.setdefault(a.fields[0], []).append(a.flag)
    return out


def option_flags(name: str, spellings: Mapping[str, Sequence[str]], *,
                 key_value: bool = False) -> list[str]:
    """Every spelling of a field's option: its :func:`flag`, ``--x-arg`` for a ``x_kwargs``
    field of ``KEY=VALUE`` pairs (``key_value``), then its ``spellings``
    (:func:`alias_spellings`).

    Example:
        >>> option_flags("model_kwargs", {"model_kwargs": ["--net"]}, key_value=True)
        ['--model-kwargs', '--model-arg', '--net']
    """
    flags = [flag(name)]
    if key_value and name.endswith("_kwargs"):
        flags.append(flag(name.removesuffix("_kwargs")) + "-arg")
    return [*flags, *spellings.get(name, [])]


def alias_groups(aliases: Iterable[Alias]) -> list[list[Alias]]:
    """The aliases grouped by what they do (the same fields, default, note and choices): each
    group is one option, spelled as each of its aliases, in the order of ``aliases``.

    Example:
        >>> from metakd.recipes.originals import GDA_FEWSHOT
        >>> [[a.flag for a in same] for same in alias_groups(GDA_FEWSHOT) if len(same) > 1]
        [['--temperature', '--T']]
    """
    groups: dict[tuple[Any, ...], list[Alias]] = {}
    for a in aliases:
        groups.setdefault((a.fields, repr(a.default), a.note, a.choices), []).append(a)
    return list(groups.values())


def alias_default(alias: Alias, reference: Any = None) -> Any:
    """The default an alias's option shows: its own, else ``reference``'s value of its first
    field (a ``paper`` config; a text: that text), else "the paper's".

    Example:
        >>> from metakd.recipes import MAMLConfig
        >>> from metakd.recipes.options import Alias
        >>> a = Alias("--update_lr", "inner_lr")
        >>> alias_default(a), alias_default(a, MAMLConfig.paper("omniglot"))
        ("the paper's", 0.4)
    """
    if alias.default is not None:
        return alias.default
    if isinstance(reference, str):
        return reference
    return getattr(reference, alias.fields[0]) if reference is not None else "the paper's"


def alias_help(docs: Mapping[str, str], alias: Alias) -> str:
    """An alias's help in plain text: that of its first field (from ``docs``,
    :func:`field_docs`), then the alias's note.

    Example:
        >>> from metakd.recipes.options import Alias
        >>> alias_help({"lr": "the ``lr``."}, Alias("--lr_x10", "lr", note="(times 10)"))
        'the lr (times 10)'
    """
    text = plain(docs.get(alias.fields[0], alias.fields[0]))
    return f"{text.rstrip('.')} {plain(alias.note)}" if alias.note else text


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _codes(names: Iterable[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def option_table(config_cls: type[Any], reference: Any = None, *,
                 aliases: Sequence[Alias] = ()) -> str:
    """A Markdown table of a config's ``metakd train`` options, from the fields' help.

    One row per field (its option, with the other spellings ``aliases`` give it; its default;
    its help), then one per alias that sets several fields or has a default of its own. The
    defaults are ``reference``'s values (for example the config ``paper(...)`` gives), else
    the class defaults.

    Example:
        >>> from metakd.recipes import MAMLConfig
        >>> print(option_table(MAMLConfig).splitlines()[3])
        | `--root` | `none` | the data set's folder. |
    """
    docs = field_docs(config_cls)
    ref = reference if reference is not None else config_cls()
    spellings = alias_spellings(aliases)
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(config_cls):
        value = getattr(ref, f.name)
        names = option_flags(f.name, spellings, key_value=isinstance(value, dict))
        rows.append(f"| {_codes(names)} | `{_cell(shown(value))}` | "
                    f"{_cell(plain(docs.get(f.name, '')))} |")
    for a in aliases:
        if not a.plain:
            rows.append(f"| `{a.flag}` | `{_cell(shown(alias_default(a, ref)))}` | sets "
                        f"{_codes(a.fields)}: {_cell(alias_help(docs, a))} |")
    return "\n".join(rows)


def alias_table(config_cls: type[Any], aliases: Sequence[Alias], reference: Any = None) -> str:
    """A Markdown table of an original project's options: what each sets, its default and
    the help of the field (and the alias's note).

    Defaults are the alias's own, else ``reference``'s (a ``paper`` config), else the class
    defaults.

    Example:
        >>> from metakd.recipes import MAMLConfig
        >>> from metakd.recipes.options import Alias
        >>> print(alias_table(MAMLConfig, [Alias("--k_spt", "shots", default=1)]))
        | option | sets | default | meaning |
        |---|---|---|---|
        | `--k_spt` | `shots` | `1` | K, the support images per class. |
    """
    docs = field_docs(config_cls)
    ref = reference if reference is not None else config_cls()
    rows = ["| option | sets | default | meaning |", "|---|---|---|---|"]
    for same in alias_groups(aliases):  # spellings of the same option: one row
        a = same[0]
        rows.append(f"| {_codes(b.flag for b in same)} | {_codes(a.fields)} | "
                    f"`{_cell(shown(alias_default(a, ref)))}` | {_cell(alias_help(docs, a))} |")
    return "\n".join(rows)
