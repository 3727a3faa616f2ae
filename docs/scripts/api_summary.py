"""mkdocs hook: a summary table, name and one line, at the top of every API reference page.

A page of ``docs/api/`` documents names with mkdocstrings blocks (``::: metakd.nn`` and its
``members:`` list). Before the page is rendered, this hook puts a table above its first block:
one row per documented name, in the page's order, with the name linked to its entry and the
summary of its docstring (the first paragraph, on one line). The docstrings are read with
griffe and the Sphinx-role extension of the site (``docs/griffe_roles.py``), as mkdocstrings
reads them; nothing is written into the pages, so the tables follow the code on every build.

Used from ``mkdocs.yml`` (``hooks: [docs/scripts/api_summary.py]``). Rows per block:

- a ``members:`` list: one row per member (``accel.accelerate`` for a block of the page other
  than its package's);
- ``members: false``: none (the block shows a module's prose);
- no ``members``: one row for the object itself, under the autorefs anchor
  (``[](){#metakd.data.batches}``) written just above the block, if any.

``tests/test_api_summary.py`` checks the rows of every page against the packages' ``__all__``.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any, NamedTuple

import yaml

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^::: *([\w.]+) *$")
ANCHOR = re.compile(r"^\[\]\(\)\{#([\w.]+)\} *$")
CODE = re.compile(r"(`+).+?\1")  # inline code spans (``x`` and `x`), left as they are
INTRAWORD_STAR = re.compile(r"(?<=\w)\*(?=\w)")  # N*K: a product, not emphasis


class Row(NamedTuple):
    """One row of a summary table."""

    identifier: str  # the documented path, the link's target (``metakd.nn.Backbone``)
    name: str  # what the table shows (``Backbone``)
    summary: str  # the first paragraph of the docstring, on one line ("" if none)


_PACKAGE: Any = None  # the griffe tree of metakd, loaded once per build


def _package() -> Any:
    global _PACKAGE
    if _PACKAGE is None:
        import griffe

        _PACKAGE = griffe.load(
            "metakd",
            search_paths=[str(ROOT)],
            docstring_parser="google",
            extensions=griffe.load_extensions(str(ROOT / "docs" / "griffe_roles.py")),
        )
    return _PACKAGE


def _lookup(identifier: str) -> Any:
    """The griffe object of ``metakd.a.b``; ``None`` where it does not exist."""
    package = _package()
    parts = identifier.split(".")
    if parts[0] != package.name:
        return None
    try:
        return package[".".join(parts[1:])] if len(parts) > 1 else package
    except KeyError:
        return None


def summary(identifier: str) -> str:
    """The first paragraph of the docstring of ``identifier``, on one line.

    A constant without a docstring (``__version__``) shows its value; anything else without
    one, ``""``.
    """
    obj = _lookup(identifier)
    if obj is None:
        return ""
    if obj.docstring is None:
        value = getattr(obj, "value", None) if obj.is_attribute else None
        return f"``{value}``" if value is not None else ""
    return " ".join(obj.docstring.value.strip().split("\n\n", 1)[0].split())


def _blocks(markdown: str) -> list[tuple[str, dict[str, Any], str | None]]:
    """``(target, options, anchor above it)`` of every ``:::`` block, in page order."""
    lines = markdown.splitlines()
    out = []
    for i, line in enumerate(lines):
        m = BLOCK.match(line)
        if m is None:
            continue
        body = []
        for nxt in lines[i + 1:]:
            if nxt.strip() and not nxt.startswith(" "):
                break
            body.append(nxt)
        config = yaml.safe_load(textwrap.dedent("\n".join(body))) or {}
        anchor = None
        for prev in reversed(lines[:i]):
            if prev.strip():
                a = ANCHOR.match(prev)
                anchor = a.group(1) if a else None
                break
        out.append((m.group(1), config.get("options") or {}, anchor))
    return out


def summary_rows(markdown: str) -> list[Row]:
    """The rows of the summary table of an API page (see the module docstring)."""
    blocks = _blocks(markdown)
    if not blocks:
        return []
    package = blocks[0][0]
    rows: dict[str, Row] = {}  # a name documented twice keeps its first place, its last entry
    for target, options, anchor in blocks:
        members = options.get("members")
        if isinstance(members, list):
            idents = [f"{target}.{name}" for name in members]
        elif members is None and getattr(_lookup(target), "is_module", True) is False:
            idents = [target]
        else:
            continue
        for ident in idents:
            shown = anchor if anchor is not None and ident == target else ident
            rows[shown] = Row(shown, shown.removeprefix(package + "."), summary(ident))
    return list(rows.values())


def _escape(prose: str) -> str:
    return INTRAWORD_STAR.sub(r"\*", prose).replace("|", r"\|")


def _cell(text: str) -> str:
    """``text`` safe in a Markdown table cell: outside inline code (where the table reads
    ``|`` as code), ``|`` and the ``*`` between two word characters (``N*K``) escaped."""
    out, last = [], 0
    for m in CODE.finditer(text):
        out += [_escape(text[last:m.start()]), m.group(0)]
        last = m.end()
    out.append(_escape(text[last:]))
    return "".join(out)


def summary_table(rows: list[Row]) -> str:
    """The Markdown table of ``rows``: each name linked (autorefs) to its entry."""
    lines = ["| Name | Summary |", "| --- | --- |"]
    lines += [f"| [`{r.name}`][{r.identifier}] | {_cell(r.summary)} |" for r in rows]
    return "\n".join(lines) + "\n"


def add_summary_table(markdown: str) -> str:
    """``markdown`` with its summary table inserted above the first ``:::`` block."""
    rows = summary_rows(markdown)
    if not rows:
        return markdown
    lines = markdown.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if BLOCK.match(line.rstrip("\n")))
    return "".join(lines[:first]) + summary_table(rows) + "\n" + "".join(lines[first:])


# --- mkdocs hooks --------------------------------------------------------------------------------
def on_pre_build(config: Any, **kwargs: Any) -> None:
    """Forget the docstrings read by the previous build (``mkdocs serve`` rebuilds)."""
    global _PACKAGE
    _PACKAGE = None


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Add the summary table to the pages of ``api/``."""
    if not page.file.src_uri.startswith("api/"):
        return markdown
    return add_summary_table(markdown)
