"""Helpers for the browser check of the documentation site (tests/test_docs_browser.py).

Build the site with ``mkdocs build --strict``, serve the built folder on localhost, drive
Debian's headless Chromium through selenium and check a page as a reader would see it: it loads,
has a title, logs no console error, shows rendered Markdown (code blocks, tables, images) rather
than raw Markdown, and every link to the same host (pages, anchors, assets) resolves.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# Without these, headless Chromium reaches for Google's hosts at every start and the closed
# network refuses it (see scripts/install_chromium.sh); --no-sandbox because the suite may run
# as root.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)

# Raw Markdown that leaked into the visible text, outside code: fences, table rules, links and
# images, headings, admonitions.
RAW_MARKDOWN = {
    "code fence": re.compile(r"^\s*(```|~~~)", re.M),
    "table rule": re.compile(r"\|\s*:?-{3,}:?\s*\|"),
    "Markdown link": re.compile(r"!?\[[^\]\n]+\]\((?:https?://|\.{0,2}/|#|[\w-]+\.md)[^)\s]*\)"),
    "Markdown heading": re.compile(r"^\s*#{1,6} [A-Za-z]", re.M),
    "admonition": re.compile(r"^\s*(!!!|\?\?\?\+?) \w", re.M),
    "reference link": re.compile(r"\]\[[\w.-]*\]"),
}


def build_site(config: Path, dest: Path, timeout: float = 600) -> Path:
    """``python -m mkdocs build --strict -f config -d dest`` from the config's folder; returns dest."""
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(dest)]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "NO_COLOR": "1"}
    proc = subprocess.run(
        cmd,
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0 or not (dest / "index.html").is_file():
        log = "\n".join(
            line
            for line in (proc.stdout + proc.stderr).splitlines()
            if line.strip() and not line.startswith("INFO")
        )
        raise AssertionError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{log}")
    return dest


def page_paths(site: Path) -> list[str]:
    """URL paths of the site's HTML pages (``/``, ``/tutorials/maml/``, ...), sorted."""
    paths = []
    for html in sorted(site.rglob("*.html")):
        rel = html.relative_to(site).as_posix()
        if rel == "404.html" or rel.startswith(("assets/", "search/")):
            continue
        if rel == "index.html":
            paths.append("/")
        elif rel.endswith("/index.html"):
            paths.append("/" + rel[: -len("index.html")])
        else:
            paths.append("/" + rel)
    return sorted(paths, key=lambda p: (p.count("/"), p))


def find_page(paths: list[str], *words: str) -> str | None:
    """The first page path (shallowest first) that contains every word, case-insensitive."""
    for path in paths:
        if all(word in path.lower() for word in words):
            return path
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on a free localhost port in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="docs-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def chromium(profile_dir: Path, width: int = 1280, height: int = 2000) -> Iterator[Any]:
    """A selenium driver for Debian's headless Chromium, with browser console logging on."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile_dir.mkdir(parents=True, exist_ok=True)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.set_window_size(width, height)
        yield driver
    finally:
        driver.quit()


def http_get(url: str, cache: dict[str, tuple[int, str]]) -> tuple[int, str]:
    """(status, body) of a GET, following redirects; cached per URL without fragment."""
    if url not in cache:
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = resp.read().decode("utf-8", errors="replace")
                cache[url] = (resp.status, body)
        except urllib.error.HTTPError as exc:
            cache[url] = (exc.code, "")
        except urllib.error.URLError as exc:
            cache[url] = (-1, str(exc.reason))
    return cache[url]


class _IdParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value is not None and (key == "id" or (key == "name" and tag == "a")):
                self.ids.add(value)


def html_ids(html: str) -> set[str]:
    """Every ``id`` (and ``<a name>``) in an HTML document: the anchors a fragment can name."""
    parser = _IdParser()
    parser.feed(html)
    return parser.ids


# Text of the page's main content without code blocks (inline code becomes a placeholder, as
# Markdown inside code is legitimate), with a line break after each block.
_VISIBLE_PROSE_JS = """
const root = document.querySelector('article') || document.querySelector('main') || document.body;
const clone = root.cloneNode(true);
clone.querySelectorAll('pre, script, style, .highlight').forEach(e => e.remove());
clone.querySelectorAll('code').forEach(e => e.replaceWith('\u2039code\u203a'));
clone.querySelectorAll('p, li, h1, h2, h3, h4, h5, h6, td, th, div, br, dt, dd')
  .forEach(e => e.append('\\n'));
return clone.textContent;
"""

_LINKS_JS = """
const out = [];
document.querySelectorAll('a[href]').forEach(a => out.push(['a', a.href]));
document.querySelectorAll('img[src]').forEach(e => out.push(['img', e.src]));
document.querySelectorAll('link[href]').forEach(e => out.push(['link', e.href]));
document.querySelectorAll('script[src]').forEach(e => out.push(['script', e.src]));
return out;
"""

_BROKEN_IMAGES_JS = """
return Array.from(document.images)
  .filter(i => !(i.complete && i.naturalWidth > 0))
  .map(i => i.currentSrc || i.src);
"""


@dataclass
class PageReport:
    """What a reader would meet on one page."""

    url: str
    status: int
    title: str = ""
    h1: list[str] = field(default_factory=list)
    code_blocks: int = 0
    tables: int = 0
    images: int = 0
    console_errors: list[str] = field(default_factory=list)
    raw_markdown: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    links_checked: int = 0
    broken_links: list[str] = field(default_factory=list)
    screenshot: str = ""
    page_height: int = 0

    def problems(self, need: tuple[str, ...] = ()) -> list[str]:
        """Every failed check, as sentences; ``need`` names elements the page must show."""
        out = []
        if self.status != 200:
            out.append(f"HTTP {self.status}")
        if not any(text.strip() for text in self.h1):
            out.append("no non-empty <h1>")
        out += [f"console error: {e}" for e in self.console_errors]
        out += [f"raw Markdown in the visible text: {r}" for r in self.raw_markdown]
        out += [f"image did not load: {src}" for src in self.broken_images]
        out += [f"broken internal link: {link}" for link in self.broken_links]
        counts = {"code": self.code_blocks, "table": self.tables, "img": self.images}
        if not any(counts.values()):
            out.append("no rendered <pre><code>, <table> or <img> at all")
        out += [f"no rendered {kind} (expected one)" for kind in need if counts[kind] == 0]
        return out


def _is_ignored_console_entry(entry: dict[str, Any]) -> bool:
    message = str(entry.get("message", ""))
    return "favicon" in message.lower() and "404" in message


def check_page(
    driver: Any,
    base: str,
    path: str,
    screenshot: Path,
    http_cache: dict[str, tuple[int, str]],
    max_screenshot_height: int = 16000,
) -> PageReport:
    """Load ``base + path`` in the browser, run every check, save a full-page screenshot.

    One screenshot holds at most ``max_screenshot_height`` pixels (Chromium's screenshots of
    taller windows are unreliable); a taller page is saved in parts, ``screenshot`` then
    ``<stem>-2.png`` and so on (the last part may overlap the one before).
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url = base + path
    status, _ = http_get(url, http_cache)
    report = PageReport(url=url, status=status)
    driver.get_log("browser")  # drop whatever an earlier page left
    driver.get(url)
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    report.title = driver.title
    report.h1 = [e.text for e in driver.find_elements(By.TAG_NAME, "h1")]
    report.code_blocks = len(driver.find_elements(By.CSS_SELECTOR, "pre code"))
    report.tables = len(driver.find_elements(By.CSS_SELECTOR, "article table, main table"))
    report.images = len(driver.find_elements(By.CSS_SELECTOR, "article img, main img"))
    report.broken_images = list(driver.execute_script(_BROKEN_IMAGES_JS))

    prose = driver.execute_script(_VISIBLE_PROSE_JS) or ""
    for name, pattern in RAW_MARKDOWN.items():
        for match in pattern.finditer(prose):
            line_start = prose.rfind("\n", 0, match.start()) + 1
            line_end = prose.find("\n", match.end())
            line = prose[line_start : line_end if line_end >= 0 else None].strip()
            report.raw_markdown.append(f"{name}: {line[:120]!r}")

    host = urllib.parse.urlsplit(base).netloc
    seen: set[str] = set()
    for kind, href in driver.execute_script(_LINKS_JS):
        parts = urllib.parse.urlsplit(href)
        if parts.scheme not in ("http", "https") or parts.netloc != host or href in seen:
            continue
        seen.add(href)
        target = urllib.parse.urlunsplit(parts._replace(fragment=""))
        code, body = http_get(target, http_cache)
        report.links_checked += 1
        if code != 200:
            report.broken_links.append(f"<{kind}> {href} -> HTTP {code}")
            continue
        fragment = urllib.parse.unquote(parts.fragment)
        if kind == "a" and fragment and fragment not in html_ids(body):
            report.broken_links.append(f"<a> {href} -> no id {fragment!r} in the target page")

    # Console entries last, so the checks above (which only read the page) are covered too.
    for entry in driver.get_log("browser"):
        message = str(entry.get("message", entry))
        severe = entry.get("level") == "SEVERE" and not _is_ignored_console_entry(entry)
        if severe and message not in report.console_errors:
            report.console_errors.append(message)

    width = driver.get_window_size()["width"]
    height = int(
        driver.execute_script(
            "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"
        )
    )
    report.page_height = height
    target = max(2000, min(height, max_screenshot_height))
    driver.set_window_size(width, target)
    # The window's own frame takes part of its height, even headless: grow it by that much so
    # the viewport, and so the screenshot, holds the whole page.
    frame = target - int(driver.execute_script("return window.innerHeight"))
    if frame > 0:
        driver.set_window_size(width, target + frame)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    # A page taller than one window goes into more files: NAME.png, NAME-2.png, ...
    shots = []
    for i, top in enumerate(range(0, height, target)):
        driver.execute_script("window.scrollTo(0, arguments[0])", top)
        shot = screenshot if i == 0 else screenshot.with_name(f"{screenshot.stem}-{i + 1}.png")
        driver.save_screenshot(str(shot))
        shots.append(str(shot))
    driver.execute_script("window.scrollTo(0, 0)")
    driver.set_window_size(width, 2000)
    report.screenshot = ", ".join(shots)
    return report
