#!/usr/bin/env python3
"""Open every page of the built documentation site in headless Chromium, as a reader would.

    mkdocs build --strict && python scripts/check_site.py

Serves ``site/`` on 127.0.0.1 (an ephemeral port, ``http.server`` in a thread) and opens each of
its pages (every ``index.html``) in Debian's Chromium (``/usr/bin/chromium``, driven by
Playwright with a fresh profile in a temporary folder; Playwright's own browser download is
never used). A page fails on:

- a console error, or an error thrown by its scripts;
- a request that fails (no answer, or a 4xx/5xx status), or one that leaves 127.0.0.1 (the site
  must carry everything it shows: no web font, no script or style from a CDN); such a request
  is blocked, and reported;
- an ``<img>`` that does not render (``naturalWidth`` 0: a missing or broken chart);
- an inline ``<svg>`` of the page's content with no size (a diagram that does not render);
- no ``<h1>`` in its content.

The home page's screenshot goes to ``.ci/artifacts/site-home.png``. Exit status: 0 when every
page passes, 1 with one line per problem (page and error) when one does not, 2 when the check
cannot run (no site, no browser, the time budget spent). Every step has a timeout, and the
browser is stopped whatever happens (its processes are found by their profile folder and
killed by process id if closing it left any).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_TIMEOUT_MS = 20_000
SETTLE_TIMEOUT_MS = 5_000

# What each page is asked once it has loaded: its images that did not render, its content's
# inline SVGs that have no size, and whether its content has a title.
PAGE_REPORT_JS = """
() => {
  const content = document.querySelector("article") || document.body;
  const images = Array.from(document.images)
    .filter((img) => !(img.complete && img.naturalWidth > 0))
    .map((img) => img.getAttribute("src"));
  const svgs = Array.from(content.querySelectorAll("svg"))
    .filter((svg) => !svg.parentElement.closest("svg"))
    .filter((svg) => {
      const box = svg.getBoundingClientRect();
      return !(box.width > 0 && box.height > 0);
    })
    .map((svg) => svg.getAttribute("aria-labelledby") || svg.outerHTML.slice(0, 80));
  const inlineSvgs = content.querySelectorAll("svg").length;
  return {images, svgs, inlineSvgs, title: !!content.querySelector("h1"),
          imageCount: document.images.length};
}
"""


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """``folder`` over HTTP on 127.0.0.1, an ephemeral port; yields the base URL."""
    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="site-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def pages(site: Path) -> list[str]:
    """The URL path of every page: each folder holding an index.html, home first."""
    found = sorted(
        "/" + ("" if path.parent == site else path.parent.relative_to(site).as_posix() + "/")
        for path in site.rglob("index.html")
    )
    return sorted(found, key=lambda page: (page != "/", page))


def _profile_pids(profile: str) -> list[int]:
    """Processes whose command line names ``profile``: this check's browser, and only it."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if profile.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def stop_leftovers(profile: str) -> None:
    """Kill, by process id, any browser process still running on this check's profile."""
    for pid in _profile_pids(profile):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Budget(Exception):
    """The whole check's time budget is spent."""


def check(site: Path, chromium: str, screenshot: Path, budget_s: float) -> list[str]:
    """Every problem found, as "page: error" lines."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    urls = pages(site)
    if not urls:
        return [f"{site}: no index.html: build the site first (mkdocs build --strict)"]
    current = {"page": "(starting)"}

    def problem(text: str) -> None:
        problems.append(f"{current['page']}: {text}")

    def on_timeout(signum: int, frame: Any) -> None:
        raise Budget(f"the check took more than {budget_s:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_timeout)
    signal.setitimer(signal.ITIMER_REAL, budget_s)
    profile = tempfile.mkdtemp(prefix="check-site-chromium-")
    try:
        with serve(site) as base, sync_playwright() as playwright:
            origin = urlsplit(base).netloc
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=chromium,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1280, "height": 800},
                timeout=30_000,
            )
            try:

                def route(handle: Any) -> None:
                    url = handle.request.url
                    parts = urlsplit(url)
                    if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != origin:
                        problem(f"request to another host, blocked: {url}")
                        handle.abort("blockedbyclient")
                    else:
                        handle.continue_()

                context.route("**/*", route)
                page = context.pages[0] if context.pages else context.new_page()
                page.set_default_timeout(PAGE_TIMEOUT_MS)
                page.on(
                    "console",
                    lambda message: (
                        message.type == "error"
                        and problem(
                            f"console error: {message.text} ({message.location.get('url')})"
                        )
                    ),
                )
                page.on("pageerror", lambda error: problem(f"page error: {error}"))
                page.on(
                    "requestfailed",
                    lambda request: (
                        urlsplit(request.url).netloc == origin
                        and problem(f"request failed: {request.url} ({request.failure})")
                    ),
                )
                page.on(
                    "response",
                    lambda response: (
                        response.status >= 400
                        and problem(f"HTTP {response.status}: {response.url}")
                    ),
                )
                for path in urls:
                    current["page"] = path
                    try:
                        answer = page.goto(base + path, wait_until="load")
                        if answer is None or answer.status != 200:
                            problem(f"HTTP {answer.status if answer else 'no answer'}")
                        try:
                            page.wait_for_load_state("networkidle", timeout=SETTLE_TIMEOUT_MS)
                        except PlaywrightError:
                            problem("still loading after 5 s")
                        report = page.evaluate(PAGE_REPORT_JS)
                    except PlaywrightError as error:
                        problem(f"could not be opened: {error.message.splitlines()[0]}")
                        continue
                    for src in report["images"]:
                        problem(f"image does not render: {src}")
                    for svg in report["svgs"]:
                        problem(f"inline SVG has no size: {svg}")
                    if not report["title"]:
                        problem("no <h1> in the page's content")
                    print(
                        f"  {path}: {report['imageCount']} image(s), "
                        f"{report['inlineSvgs']} inline SVG(s)",
                        flush=True,
                    )
                    if path == "/":
                        screenshot.parent.mkdir(parents=True, exist_ok=True)
                        page.screenshot(path=str(screenshot), timeout=PAGE_TIMEOUT_MS)
                current["page"] = "(closing)"
            finally:
                context.close()
    except Budget as error:
        problems.append(f"{current['page']}: {error}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        stop_leftovers(profile)
        _remove_tree(profile)
    return problems


def _remove_tree(folder: str) -> None:
    import shutil

    for _ in range(3):  # the browser may still be writing its profile for a moment
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.exists(folder):
            return
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, default=ROOT / "site", help="the built site")
    parser.add_argument(
        "--chromium",
        default=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
        help="the browser (default: $CHROMIUM, else /usr/bin/chromium)",
    )
    parser.add_argument(
        "--screenshot",
        type=Path,
        default=ROOT / ".ci" / "artifacts" / "site-home.png",
        help="where the home page's screenshot goes",
    )
    parser.add_argument(
        "--timeout", type=float, default=180, help="seconds for the whole check (180)"
    )
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        print(f"check_site: no {args.site}/index.html: run mkdocs build --strict first")
        return 2
    if not os.access(args.chromium, os.X_OK):
        print(f"check_site: no browser at {args.chromium} (apt-get install chromium)")
        return 2
    started = time.monotonic()
    print(f"check_site: {len(pages(args.site))} pages of {args.site} in {args.chromium}")
    try:
        problems = check(args.site, args.chromium, args.screenshot, args.timeout)
    except Exception as error:  # noqa: BLE001 - the browser could not start: say so, exit 2
        print(f"check_site: the check could not run: {type(error).__name__}: {error}")
        return 2
    took = time.monotonic() - started
    if problems:
        print(f"check_site: {len(problems)} problem(s) in {took:.1f} s:")
        for line in problems:
            print(f"  {line}")
        return 1
    print(f"check_site: every page passed in {took:.1f} s; screenshot: {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
