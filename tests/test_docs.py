"""The documentation site: strict build, every public name in the API pages, runnable snippets.

- the strict ``mkdocs build`` (a broken link, a page missing from the navigation, a malformed
  docstring or an unresolved cross-reference fails it);
- every name of ``metakd.__all__`` and of the sub-packages' ``__all__`` has its anchor in the
  built API pages;
- every ```` ```python ```` block of ``docs/index.md`` and ``docs/tutorials/*.md`` runs, in
  order, in one fresh namespace per page, in a temporary folder; the tutorials read
  ``METAKD_DOCS_BUDGET`` (meta-iterations), small here and unset in the slow variant;
- the blocks of ``docs/concepts/*.md`` marked ``<!-- tested -->`` run, in order, in one
  namespace per page (the concepts pages' other blocks need real data sets);
- the figure generators of ``docs/scripts/make_figures.py`` run and write PNGs.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API_PAGES = {
    "metakd": "metakd",
    "metakd.data": "data",
    "metakd.nn": "nn",
    "metakd.meta": "meta",
    "metakd.distill": "distill",
    "metakd.engine": "engine",
    "metakd.recipes": "recipes",
}
SNIPPET_PAGES = [DOCS / "index.md", *sorted((DOCS / "tutorials").glob("*.md"))]
PYTHON_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
# In the concepts pages (whose other blocks need real data), the blocks marked as tested.
TESTED_BLOCK = re.compile(r"^<!-- tested[^\n]*-->\n```python[^\n]*\n(.*?)^```",
                          re.MULTILINE | re.DOTALL)
TESTED_PAGES = [p for p in sorted((DOCS / "concepts").glob("*.md"))
                if TESTED_BLOCK.search(p.read_text())]

needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="mkdocs/mkdocstrings not installed (pip install -e '.[dev]' or make setup-dev)",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built with ``mkdocs build --strict`` into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


@needs_mkdocs
def test_strict_build(site: Path) -> None:
    for page in ("index.html", "getting-started/index.html", "tutorials/maml/index.html",
                 "benchmarks/index.html", "changelog/index.html", "concepts/index.html"):
        assert (site / page).is_file(), page
    tutorial = (site / "tutorials/maml/index.html").read_text()
    assert "maml_learning_curve.png" in tutorial and "maml_episode.png" in tutorial
    assert "maml_speed_cpu.png" in (site / "benchmarks/index.html").read_text()


@needs_mkdocs
@pytest.mark.parametrize("package", list(API_PAGES))
def test_every_public_name_in_api_pages(site: Path, package: str) -> None:
    html = (site / "api" / API_PAGES[package] / "index.html").read_text()
    names = importlib.import_module(package).__all__
    missing = [n for n in names if f'id="{package}.{n}"' not in html]
    assert not missing, f"{package}: names of __all__ missing from the API page: {missing}"


@needs_mkdocs
def test_sphinx_roles_become_links(site: Path) -> None:
    """``:class:`metakd.data.TaskBatch``` in a docstring renders as a link to its API entry."""
    html = (site / "api" / "engine" / "index.html").read_text()
    assert re.search(r'<a class="autorefs[^"]*"[^>]*href="\.\./data/#metakd\.data\.TaskBatch"', html)
    assert ":class:`" not in html and ":func:`" not in html


@needs_mkdocs
@pytest.mark.parametrize("package", list(API_PAGES))
def test_api_pages_open_with_a_summary_table(site: Path, package: str) -> None:
    """Above the entries, a table (``docs/scripts/api_summary.py``) links every public name."""
    html = (site / "api" / API_PAGES[package] / "index.html").read_text()
    start = html.index("<table>")
    assert start < html.index('class="doc doc-heading"'), "no table above the entries"
    table = html[start:html.index("</table>", start)]
    names = importlib.import_module(package).__all__
    missing = [n for n in names if f'href="#{package}.{n}"><code>{n}</code></a>' not in table]
    assert not missing, f"{package}: names missing from the summary table: {missing}"


@needs_mkdocs
def test_returns_sections_render_as_prose(site: Path) -> None:
    """A Returns section is one item, its inline code whole (no stray backticks, no italics)."""
    html = (site / "api" / "data" / "index.html").read_text()
    start = html.index("Returns:", html.index('id="metakd.data.few_shot"'))
    returns = html[start:html.index("</table>", start)]
    assert returns.count("doc-section-item") == 1
    assert "<code>support_x [T, N*K, C, H, W]</code>" in returns and "<em>" not in returns
    for page in API_PAGES.values():
        assert "``" not in (site / "api" / page / "index.html").read_text(), page


# reStructuredText that Markdown shows as text: a simple table's ``=====`` rules, and the ``::``
# that introduces a literal block, left at the end of a line, paragraph, list item or cell.
RST_TABLE_RULE = re.compile(r"={5,}")
RST_LITERAL_MARKER = re.compile(r"::(?:\n|\s*</(?:p|li|td|dd)>)")


@needs_mkdocs
@pytest.mark.parametrize("package", list(API_PAGES))
def test_no_rst_markup_in_api_pages(site: Path, package: str) -> None:
    """Docstrings are Markdown: tables are pipe tables, literal blocks fenced or indented."""
    html = (site / "api" / API_PAGES[package] / "index.html").read_text()
    for pattern in (RST_TABLE_RULE, RST_LITERAL_MARKER):
        found = [html[max(m.start() - 80, 0):m.end()] for m in pattern.finditer(html)]
        assert not found, f"{package}: reStructuredText markup shown as text: {found}"


def python_blocks(page: Path) -> list[str]:
    return PYTHON_BLOCK.findall(page.read_text())


def run_page(page: Path, cwd: Path, budget: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(page)
    assert blocks, f"{page} has no python blocks"
    monkeypatch.chdir(cwd)
    if budget is None:
        monkeypatch.delenv("METAKD_DOCS_BUDGET", raising=False)
    else:
        monkeypatch.setenv("METAKD_DOCS_BUDGET", budget)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{page.relative_to(ROOT)}[block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message names the block
            raise AssertionError(f"{page.name}, python block {i} failed: {e!r}\n{code}") from e


@pytest.mark.parametrize("page", SNIPPET_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_snippets_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_page(page, tmp_path, "3", monkeypatch)


@pytest.mark.parametrize("page", TESTED_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_tested_concept_blocks_run(page: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``<!-- tested -->`` blocks of a concepts page run, in order, in one namespace."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for i, code in enumerate(TESTED_BLOCK.findall(page.read_text())):
        exec(compile(code, f"{page.relative_to(ROOT)}[tested block {i}]", "exec"), namespace)


def test_the_outer_loop_example_is_tested() -> None:
    assert DOCS / "concepts" / "meta.md" in TESTED_PAGES


@pytest.mark.slow
@pytest.mark.parametrize("page", SNIPPET_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_snippets_run_full(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_page(page, tmp_path, None, monkeypatch)


def load_figures_module() -> dict[str, object]:
    return runpy.run_path(str(DOCS / "scripts" / "make_figures.py"), run_name="make_figures")


def test_figure_generators(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    figs = load_figures_module()
    paths = [*figs["maml_figures"](tmp_path, steps=2, val_tasks=2),  # type: ignore[operator]
             figs["speed_chart"](tmp_path / "speed.png")]  # type: ignore[operator]
    for p in paths:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p
    committed = {p.name for p in (DOCS / "images").glob("*.png")}
    assert {"maml_learning_curve.png", "maml_episode.png", "maml_speed_cpu.png"} <= committed
