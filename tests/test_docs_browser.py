"""The documentation site, checked in a real browser (slow target: ``make test-slow``).

Builds the site strictly from the repository's ``mkdocs.yml``, serves it on localhost and loads
the home page, the MAML tutorial and an API page in Debian's headless Chromium. Each page must
answer HTTP 200, have a non-empty ``<h1>``, log no console error, show rendered content (code
blocks, tables, images) and no raw Markdown, load its images, and every link of it to the same
host must resolve, anchors included. A full-page screenshot of each page, and ``report.json``,
are written to ``runs/docs-browser/``.

Chromium comes from ``scripts/install_chromium.sh``. Without it (or without selenium) the test is
skipped, unless ``METAKD_REQUIRE_BROWSER`` is set, as ``make test-slow`` does: then it fails.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import pytest
from browser_helpers import (
    CHROMEDRIVER,
    CHROMIUM,
    build_site,
    check_page,
    chromium,
    find_page,
    page_paths,
    serve,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = REPO / "runs" / "docs-browser"

# (name, words the page's path must contain, elements the page must show)
PAGES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("home", (), ("code",)),
    ("tutorial-maml", ("tutorial", "maml"), ("code",)),
    ("api", ("api",), ()),
]


def _need_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    for module in ("selenium", "mkdocs"):
        if importlib.util.find_spec(module) is None:
            missing.append(f"the Python package {module!r}")
    if not missing:
        return
    reason = (
        f"browser check needs {', '.join(missing)}: run scripts/install_chromium.sh "
        "(Debian's chromium + chromium-driver) and `pip install -e .[dev]`"
    )
    if os.environ.get("METAKD_REQUIRE_BROWSER"):
        pytest.fail(f"METAKD_REQUIRE_BROWSER is set but the {reason}")
    pytest.skip(reason)


def test_docs_site_in_headless_chromium(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _need_browser()
    site = build_site(REPO / "mkdocs.yml", tmp_path / "site")
    paths = page_paths(site)

    chosen: list[tuple[str, str, tuple[str, ...]]] = []
    for name, words, need in PAGES:
        path = "/" if not words else find_page(paths, *words)
        if name == "api":  # the top-level package's page if there is one
            path = find_page(paths, "api", "metakd") or path
        assert path is not None, f"no page whose path contains {words} among {paths}"
        chosen.append((name, path, need))

    RUN_DIR.mkdir(parents=True, exist_ok=True)
    for old in RUN_DIR.glob("*.png"):
        old.unlink()
    reports = []
    http_cache: dict[str, tuple[int, str]] = {}
    with serve(site) as base, chromium(tmp_path / "chromium-profile") as driver:
        for name, path, need in chosen:
            report = check_page(driver, base, path, RUN_DIR / f"{name}.png", http_cache)
            reports.append((name, report, report.problems(need)))

    summary = {
        name: {**dataclasses.asdict(report), "problems": problems}
        for name, report, problems in reports
    }
    (RUN_DIR / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    with capsys.disabled():
        print(f"\n[docs-browser] screenshots and report.json in {RUN_DIR}")
        for name, report, problems in reports:
            print(
                f"[docs-browser] {name}: {report.url} -> {report.screenshot} "
                f"(page {report.page_height} px tall; h1 {report.h1[:1]}, {report.code_blocks} code blocks, {report.tables} tables, "
                f"{report.images} images, {report.links_checked} same-host links checked, "
                f"{len(problems)} problems)"
            )

    failures = [f"{name} ({r.url}): {p}" for name, r, problems in reports for p in problems]
    if any("fonts.googleapis.com" in f for f in failures):
        failures.append(
            "hint: Material for MkDocs loads Google Fonts unless mkdocs.yml sets `theme: font: "
            "false`; the site must load nothing from outside (offline readers, closed networks)"
        )
    assert not failures, "the docs site fails in the browser:\n" + "\n".join(failures)
