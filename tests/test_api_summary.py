"""The summary tables of the API pages (``docs/scripts/api_summary.py``, an mkdocs hook).

The hook builds the tables during ``mkdocs build``; these tests check, without building the
site, that each page's table lists every public name of its package with a one-line summary,
and how the table is written. ``tests/test_docs.py`` checks the tables in the built site.
"""

from __future__ import annotations

import importlib
import runpy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("griffe")
pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"
PAGES = {"metakd": "metakd", "metakd.data": "data", "metakd.nn": "nn", "metakd.meta": "meta",
         "metakd.distill": "distill", "metakd.engine": "engine", "metakd.recipes": "recipes"}


@pytest.fixture(scope="module")
def hook() -> dict[str, Any]:
    return runpy.run_path(str(ROOT / "docs" / "scripts" / "api_summary.py"))


def test_every_api_page_has_a_summary_page() -> None:
    assert {p.stem for p in API.glob("*.md")} == set(PAGES.values())


@pytest.mark.parametrize("package", sorted(PAGES))
def test_each_public_name_has_a_row_with_a_one_line_summary(hook: dict[str, Any],
                                                            package: str) -> None:
    rows = hook["summary_rows"]((API / f"{PAGES[package]}.md").read_text())
    by_id = {r.identifier: r for r in rows}
    assert len(by_id) == len(rows), "a name has two rows"
    names = importlib.import_module(package).__all__
    missing = [n for n in names if f"{package}.{n}" not in by_id]
    assert not missing, f"{package}: no summary row for {missing}"
    for n in names:
        row = by_id[f"{package}.{n}"]
        assert row.name == n
        assert row.summary and "\n" not in row.summary, row


def test_rows_of_other_blocks_and_of_anchored_blocks(hook: dict[str, Any]) -> None:
    rows = {r.identifier: r for r in hook["summary_rows"]((API / "data.md").read_text())}
    # documented from its defining module, under the anchor written above the block
    assert rows["metakd.data.batches"].name == "batches"
    assert rows["metakd.data.batches"].summary.startswith("Whole-classification")
    markdown = """# x

::: metakd.nn
    options:
      members:
        - create

## Conventions

::: metakd.distill.losses
    options:
      members: false

::: metakd.nn.registry
    options:
      members:
        - register_model
"""
    assert [(r.identifier, r.name) for r in hook["summary_rows"](markdown)] == [
        ("metakd.nn.create", "create"),
        ("metakd.nn.registry.register_model", "registry.register_model"),
    ]


def test_the_table_goes_above_the_first_block(hook: dict[str, Any]) -> None:
    markdown = "# `metakd.nn`\n\nIntro.\n\n::: metakd.nn\n    options:\n      members:\n" \
               "        - create\n        - list_models\n"
    out = hook["add_summary_table"](markdown)
    assert out.startswith("# `metakd.nn`\n\nIntro.\n\n| Name | Summary |\n| --- | --- |\n")
    assert "| [`create`][metakd.nn.create] | Build the registered model ``name`` with " \
           "``kwargs``. |\n" in out
    assert out.endswith("\n\n" + markdown.split("\n\n", 2)[2])
    page = SimpleNamespace(file=SimpleNamespace(src_uri="api/nn.md"))
    assert hook["on_page_markdown"](markdown, page=page) == out
    other = SimpleNamespace(file=SimpleNamespace(src_uri="concepts/backbones.md"))
    assert hook["on_page_markdown"](markdown, page=other) == markdown


def test_cells_keep_code_and_escape_what_the_table_would_misread(hook: dict[str, Any]) -> None:
    cell = hook["_cell"]
    assert cell("``a || b`` then c | d") == r"``a || b`` then c \| d"
    assert cell("``[T, N*K]`` and [T, N*K], N*Q") == r"``[T, N*K]`` and [T, N\*K], N\*Q"
    assert cell("a step *or* time budget") == "a step *or* time budget"
