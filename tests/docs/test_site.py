"""The rendered site, as a reader sees it, in a real browser (headless Chromium).

The site is built (`mkdocs build --strict`) into a temporary directory and served on
127.0.0.1 at a free port. Every page is loaded at a desktop width (1280 px) and at a
phone's (390 px), and checked from inside the page:

- **Nothing is cut off.** A code block, a table or a diagram wider than its room must sit
  in something that scrolls sideways (mkdocs-material scrolls code blocks and tables);
  what is not fine is content cut off by `overflow: hidden`, or sticking out of the page.
  So for each of them: it clips nothing, and the outermost box around it that scrolls
  sideways (or it, if none does) ends inside the window.
- **No table cell breaks a word.** Each word of a cell (a run of letters, digits,
  underscores and dots: `SingletonPool`, `qdbpool.dsn`, `__init__.py`) is measured through
  a DOM Range: its pieces must all lie on one line. A line may still break at a space, or
  after punctuation such as `-`, `/`, `,` or `=`, as in prose.
- **Diagrams render, and their text fits.** No Mermaid block is left unrendered (a syntax
  error leaves it as text), and every text of a diagram lies inside the diagram. The theme
  draws diagrams in a closed shadow root; the test opens it (an init script makes
  `attachShadow` open) to look inside.
- **Offline.** The page asks nothing of any other host (fonts, scripts from a CDN), and
  raises no JavaScript error.

Chromium is Debian's (`apt-get install chromium`), driven by playwright; without either,
the test is skipped locally and fails under CI=true. Set QDBPOOL_SITE_SCREENSHOTS=DIR to
keep a full-page screenshot of every page at both widths.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qdbpool.testing.availability import under_ci

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
WIDTHS = {"desktop": 1280, "phone": 390}
# One URL per page (mkdocs' use_directory_urls: docs/a/b.md is served at a/b/).
PAGES = sorted(
    "" if md == Path("index.md") else md.with_suffix("").as_posix() + "/"
    for md in (p.relative_to(DOCS) for p in DOCS.rglob("*.md"))
)

# What is checked inside the page (a function returning the problems it finds).
CHECKS = (Path(__file__).parent / "site_checks.js").read_text()

# Diagrams are drawn in a closed shadow root; open it so that the checks can look inside.
OPEN_SHADOW_ROOTS = """
const attachShadow = Element.prototype.attachShadow;
Element.prototype.attachShadow = function (init) {
  return attachShadow.call(this, Object.assign({}, init, {mode: 'open'}));
};
"""


def _unavailable(reason: str) -> None:
    if under_ci():
        pytest.fail(f"{reason} (required under CI)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def site_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=REPO,
        check=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    # Port 0: the system picks a free one among its high (ephemeral) ports.
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(site))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    if chromium is None:
        _unavailable("chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[docs]')")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
@pytest.mark.parametrize("path", PAGES, ids=[p or "index" for p in PAGES])
def test_page_reads_well(site_url: str, browser: Any, path: str, width: int) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = browser.new_page(viewport={"width": width, "height": 900})
    try:
        page.add_init_script(OPEN_SHADOW_ROOTS)
        elsewhere: list[str] = []
        errors: list[str] = []

        def only_this_site(route: Any) -> None:
            if route.request.url.startswith(site_url):
                route.continue_()
            else:
                elsewhere.append(route.request.url)
                route.abort()

        page.route("**/*", only_this_site)
        page.on("pageerror", lambda error: errors.append(str(error)))
        response = page.goto(site_url + path, wait_until="load")
        assert response is not None and response.ok, f"{path}: {response and response.status}"
        # The theme renders diagrams after the page has loaded: wait for the last of them
        # (one that never renders is reported by the checks).
        with contextlib.suppress(PlaywrightTimeout):
            page.wait_for_function(
                "document.querySelectorAll('.md-content pre.mermaid').length === 0",
                timeout=20_000,
            )
        problems = page.evaluate(CHECKS)
        shots = os.environ.get("QDBPOOL_SITE_SCREENSHOTS")
        if shots:
            name = path.strip("/").replace("/", "_") or "index"
            page.screenshot(path=str(Path(shots) / f"{name}-{width}.png"), full_page=True)
    finally:
        page.close()
    assert not elsewhere, f"{path} asked other hosts: {elsewhere}"
    assert not errors, f"{path} raised JavaScript errors: {errors}"
    assert not problems, f"{path} at {width} px:\n" + "\n".join(problems)
