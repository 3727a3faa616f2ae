"""docs/reproduction.md cannot drift from the result files it quotes.

Every measured figure on the page is followed by a marker naming the JSON file in
``benchmarks/results/`` and one expression per figure::

    88.1 ± 0.6%<!-- from maml_omniglot_120s_s4.json: metakd.test_accuracy * 100; metakd.ci95 * 100 -->

The expressions are read from the JSON: a name is a top-level key, ``.key`` and ``["key"]``
index into objects, ``[i]`` into lists, ``.key`` on a list takes that key of every element,
and ``+ - * /``, ``len``, ``sum``, ``min``, ``max`` and ``mean`` combine them. The marker
claims the last figures written before it in the same line (and table cell), one per
expression, and each must be its expression rounded to the decimals written.

In the summary table's "metakd measured" and "Budget" columns and in every "What metakd
measured" section, every decimal figure and every percentage must be claimed by a marker; an
integer that is not (a seed, a query count) must be a value of a JSON file cited there.

The test reads only the page, the JSON files and the navigation; it imports nothing of metakd.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reproduction.md"
RESULTS = ROOT / "benchmarks" / "results"

SYSTEMS = ("MAML", "PMAML", "Meta-Transfer Learning", "Meta-LSTM", "GDA for CIFAR",
           "Meta-Baseline")
VERDICTS = ("direction reproduced", "not reproduced", "not measurable here", "not measured",
            "reproduced")

MARKER = re.compile(r"<!--\s*from\s+(?P<file>[\w.\-]+\.json)\s*:(?P<exprs>.*?)-->", re.S)
COMMENT = re.compile(r"<!--.*?-->", re.S)
CODE = re.compile(r"`[^`\n]*`")
LINK_TARGET = re.compile(r"\]\([^)\s]*\)")
# Digits that are part of a name, not a figure: file names, Conv-4, ResNet-10, 5-way, 1-shot.
NAMES = re.compile(r"[\w\-]+\.(?:json|log|md|py|yml)\b"
                   r"|[A-Za-z][\w.]*-\d+\w*"
                   r"|\b\d+-(?:way|shot|core)\b")
NUMBER = re.compile(r"(?<![\w.,/])(?P<sign>[+\-−]?)(?P<int>\d{1,3}(?:,\d{3})+|\d+)"
                    r"(?P<frac>\.\d+)?(?![\w])")
HEADING = re.compile(r"^(#{1,6})\s+(.*)$", re.M)


@dataclass
class Figure:
    """A number as written on the page."""

    text: str
    value: float
    decimals: int
    strict: bool  # a decimal or a percentage: must be claimed by a marker

    def matches(self, value: float) -> bool:
        return abs(value - self.value) <= 0.5 * 10 ** -self.decimals + 1e-9


def figures(text: str) -> list[Figure]:
    """The figures of ``text`` in order, without comments, code spans, link targets or names."""
    text = COMMENT.sub(" ", text)
    text = CODE.sub(" ", text)
    text = LINK_TARGET.sub("]", text)
    text = NAMES.sub(" ", text)
    out = []
    for m in NUMBER.finditer(text):
        frac = m["frac"] or ""
        value = float(m["int"].replace(",", "") + frac)
        if m["sign"] in ("-", "−"):
            value = -value
        after = text[m.end():m.end() + 1]
        before = text[:m.start()].rstrip()[-1:]
        strict = bool(frac) or after == "%" or before == "±"
        out.append(Figure(m.group(0), value, max(len(frac) - 1, 0), strict))
    return out


# --- the expressions ----------------------------------------------------------------------
_FUNCS: dict[str, Callable[[Any], Any]] = {
    "len": len, "sum": sum, "min": min, "max": max, "mean": lambda xs: sum(xs) / len(xs)}
_OPS: dict[type, Callable[[Any, Any], Any]] = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
        ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def resolve(expr: str, data: Any) -> float:
    """The value of a marker expression over a JSON document."""

    def key(obj: Any, k: Any) -> Any:
        if isinstance(obj, list) and isinstance(k, str):
            return [e[k] for e in obj]
        return obj[k]

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)):
            return node.value
        if isinstance(node, ast.Name):
            return data[node.id]
        if isinstance(node, ast.Attribute):
            return key(ev(node.value), node.attr)
        if isinstance(node, ast.Subscript):
            return key(ev(node.value), ev(node.slice))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in _FUNCS and len(node.args) == 1 and not node.keywords):
            return _FUNCS[node.func.id](ev(node.args[0]))
        raise ValueError(f"unsupported expression: {ast.dump(node)}")

    value = ev(ast.parse(expr.strip(), mode="eval").body)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{expr.strip()!r} is not a number: {value!r}")
    return float(value)


def load(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def vocabulary(names: set[str]) -> set[float]:
    """Every integral value of the JSON files, numbers inside their strings included."""
    out: set[float] = set()

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
        elif isinstance(o, str):
            out.update(float(s.replace(",", ""))
                       for s in re.findall(r"\d{1,3}(?:,\d{3})+|\d+", o))
        elif (isinstance(o, (int, float)) and not isinstance(o, bool) and math.isfinite(o)
              and float(o).is_integer()):
            out.add(float(o))

    for n in names:
        walk(load(n))
    return out


# --- the page -----------------------------------------------------------------------------
def page() -> str:
    return PAGE.read_text(encoding="utf-8")


def segment_start(text: str, pos: int, floor: int) -> int:
    """Where the figures a marker at ``pos`` may claim begin: after the previous marker, the
    start of the line and the last table-cell border before it."""
    line = text.rfind("\n", 0, pos) + 1
    cell = text.rfind("|", line, pos) + 1
    return max(floor, line, cell)


@dataclass
class Claim:
    file: str
    expr: str
    figure: Figure | None


def claims(text: str) -> Iterator[tuple[str, list[Claim]]]:
    """Per marker of ``text``: its file and its expressions paired with the figures they
    claim (``None`` where the segment has too few figures)."""
    floor = 0
    for m in MARKER.finditer(text):
        exprs = [e for e in m["exprs"].split(";") if e.strip()]
        found = figures(text[segment_start(text, m.start(), floor):m.start()])
        mine: list[Figure | None] = [None] * max(len(exprs) - len(found), 0)
        mine += found[-len(exprs):] if exprs else []
        yield m["file"], [Claim(m["file"], e.strip(), f) for e, f in zip(exprs, mine)]
        floor = m.end()


def unclaimed(text: str) -> list[Figure]:
    """The figures of ``text`` that no marker claims."""
    out: list[Figure] = []
    floor = 0
    for m in MARKER.finditer(text):
        k = len([e for e in m["exprs"].split(";") if e.strip()])
        found = figures(text[floor:m.start()])
        out += found[:max(len(found) - k, 0)]
        floor = m.end()
    return out + figures(text[floor:])


def cited(text: str) -> set[str]:
    """The result files a piece of the page cites, in markers or in its text."""
    names = {m["file"] for m in MARKER.finditer(text)}
    names |= set(re.findall(r"([\w\-]+\.json)", COMMENT.sub(" ", text)))
    return {n for n in names if (RESULTS / n).is_file()}


def sections(text: str, title: str) -> list[tuple[str, str]]:
    """(system heading, body) of every subsection called ``title``."""
    heads = list(HEADING.finditer(text))
    out = []
    system = ""
    for i, h in enumerate(heads):
        if len(h[1]) == 2:
            system = h[2]
        if len(h[1]) == 3 and h[2].strip().lower() == title.lower():
            end = len(text)
            for nxt in heads[i + 1:]:
                if len(nxt[1]) <= 3:
                    end = nxt.start()
                    break
            out.append((system, text[h.end():end]))
    return out


def summary_table(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the first table after the "Summary" heading."""
    start = re.search(r"^## Summary\s*$", text, re.M)
    assert start, "docs/reproduction.md has no '## Summary' section"
    lines = text[start.end():].splitlines()
    rows: list[list[str]] = []
    for line in lines:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    assert len(rows) > 2, "the Summary section has no table"
    return rows[0], [r for r in rows[2:]]


def zones(text: str) -> list[tuple[str, str]]:
    """(where, text) of every part of the page that must hold only checked figures."""
    out = []
    header, rows = summary_table(text)
    cols = [i for i, h in enumerate(header)
            if h.lower().startswith(("metakd measured", "budget"))]
    assert len(cols) == 2, f"summary columns 'metakd measured' and 'Budget' missing: {header}"
    for row in rows:
        for i in cols:
            out.append((f"summary row {row[0]!r}, column {header[i]!r}", row[i]))
    for system, body in sections(text, "What metakd measured"):
        out.append((f"section {system!r}, What metakd measured", body))
    return out


# --- the tests ----------------------------------------------------------------------------
def test_every_marked_figure_is_its_json_value() -> None:
    text = page()
    problems, n = [], 0
    for file, items in claims(text):
        if not (RESULTS / file).is_file():
            problems.append(f"{file}: no such file in benchmarks/results")
            continue
        data = load(file)
        for c in items:
            n += 1
            try:
                value = resolve(c.expr, data)
            except (KeyError, IndexError, TypeError, ValueError, SyntaxError,
                    ZeroDivisionError) as e:
                problems.append(f"{file}: {c.expr}: cannot be read ({type(e).__name__}: {e})")
                continue
            if c.figure is None:
                problems.append(f"{file}: {c.expr} = {value:.6g}: no figure written before "
                                "its marker")
            elif not c.figure.matches(value):
                shown = round(value, c.figure.decimals)
                problems.append(f"{file}: {c.expr} = {value:.6g} (rounds to {shown}), "
                                f"but the page says {c.figure.text}")
    assert n > 100, f"only {n} marked figures on the page"
    assert not problems, "\n".join(problems)


def test_measured_figures_are_all_checked() -> None:
    problems = []
    for where, text in zones(page()):
        if not MARKER.search(text):
            problems.append(f"{where}: no marked figure")
        names = cited(text)
        vocab = vocabulary(names)
        for f in unclaimed(text):
            if f.strict:
                problems.append(f"{where}: {f.text} has no marker")
            elif f.value not in vocab:
                problems.append(f"{where}: {f.text} is in none of {sorted(names)}; mark it")
    assert not problems, "\n".join(problems)


def test_each_marker_names_a_file_cited_in_the_text() -> None:
    """The file of every marker is named in the visible text: in the same row of the summary
    table, else in the same section."""
    text = page()
    heads = [0] + [h.start() for h in HEADING.finditer(text)] + [len(text)]
    summary = re.search(r"^## Summary\s*$", text, re.M)
    assert summary
    summary_end = min(h for h in heads if h > summary.start())
    problems = []
    for m in MARKER.finditer(text):
        line_start = text.rfind("\n", 0, m.start()) + 1
        line_end = text.find("\n", m.end())
        line = text[line_start:line_end if line_end >= 0 else len(text)]
        if summary.start() < m.start() < summary_end:
            scope = line
        else:
            lo = max(h for h in heads if h <= m.start())
            hi = min(h for h in heads if h > m.start())
            scope = text[lo:hi]
        if m["file"] not in COMMENT.sub(" ", scope):
            problems.append(f"{m['file']} is not named near {line.strip()[:80]!r}")
    assert not problems, "\n".join(problems)


def test_summary_has_every_system_and_a_verdict() -> None:
    header, rows = summary_table(page())
    assert header[-1].lower().startswith("verdict"), header
    assert any(h.lower().startswith("paper") for h in header), header
    for system in SYSTEMS:
        row = [r for r in rows if system.lower() in r[0].lower()]
        assert row, f"no summary row for {system}"
    for r in rows:
        assert any(v in r[-1].lower() for v in VERDICTS), f"{r[0]}: verdict {r[-1]!r}"


def test_every_system_has_its_sections() -> None:
    text = page()
    for title in ("The paper's claim", "What metakd measured", "Verdict",
                  "The paper's setting on a GPU"):
        found = [s for s, _ in sections(text, title)]
        for system in SYSTEMS:
            assert any(system.lower() in s.lower() for s in found), \
                f"no '{title}' section under a heading naming {system}"


def test_the_page_is_linked() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    assert re.search(r"- Benchmarks: benchmarks\.md\n\s*- Reproduction: reproduction\.md", nav)
    assert "(reproduction.md)" in (ROOT / "docs" / "index.md").read_text()
    assert "(docs/reproduction.md)" in (ROOT / "README.md").read_text()


def test_the_checker_reads_what_it_should() -> None:
    """The parsing rules on a made-up line."""
    line = ("Conv-4, 5-way 1-shot: 88.1 ± 0.6% over 1,304 × 16 tasks, "
            "−5.6 [−10.6, +1.1] (`x=3e-3`, [a](b2.md))")
    assert [f.text for f in figures(line)] == ["88.1", "0.6", "1,304", "16", "−5.6",
                                               "−10.6", "+1.1"]
    assert [f.strict for f in figures(line)] == [True, True, False, False, True, True, True]
    data = {"a": {"b c": [{"x": 0.8807}, {"x": 0.5}]}, "n": 3}
    assert math.isclose(resolve('a["b c"][0].x * 100', data), 88.07)
    assert math.isclose(resolve('mean(a["b c"].x) * n', data), (0.8807 + 0.5) / 2 * 3)
    assert Figure("88.1", 88.1, 1, True).matches(88.07)
    assert not Figure("88.2", 88.2, 1, True).matches(88.07)
    text = "88.1 ± 0.6%<!-- from f.json: a; b --> and 12.5"
    assert [[c.figure.text for c in items if c.figure] for _, items in claims(text)] == \
        [["88.1", "0.6"]]
    assert [f.text for f in unclaimed(text)] == ["12.5"]
