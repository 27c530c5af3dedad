"""The documentation site's own tools: the diagrams are what scripts/draw_diagrams.py draws,
and scripts/check_site.py finds what a reader would see broken (in Debian's Chromium, when it
is installed: .ci/run installs it after the tests, and runs the check on the real site)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_diagrams_are_what_the_script_draws():
    assert load("draw_diagrams").main(["--check"]) == 0, "run python scripts/draw_diagrams.py"


def test_the_failure_page_holds_the_diagrams_inline():
    page = (ROOT / "docs" / "failure-handling.md").read_text(encoding="utf-8")
    for name in load("draw_diagrams").FILES:
        assert f'--8<-- "docs/{name}"' in page, name


def test_the_pages_of_a_site_home_first(tmp_path: Path):
    check_site = load("check_site")
    for folder in ("", "b", "a", "a/deep"):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "index.html").write_text("<h1>x</h1>")
    (tmp_path / "404.html").write_text("<h1>not a page</h1>")
    assert check_site.pages(tmp_path) == ["/", "/a/", "/a/deep/", "/b/"]


def test_no_site_is_a_setup_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert load("check_site").main(["--site", str(tmp_path / "none")]) == 2
    assert "mkdocs build --strict" in capsys.readouterr().out


SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="40" height="20"/></svg>'  # noqa: E501


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no browser at {CHROMIUM}")
def test_the_check_finds_what_a_reader_would_see_broken(tmp_path: Path):
    pytest.importorskip("playwright")
    check_site = load("check_site")
    site = tmp_path / "site"
    (site / "bad").mkdir(parents=True)
    (site / "chart.svg").write_text(SVG)
    (site / "index.html").write_text(
        f'<html><body><article><h1>Home</h1><img src="chart.svg">{SVG}</article></body></html>'
    )
    (site / "bad" / "index.html").write_text(
        "<html><body><article><h1>Bad</h1>"
        '<img src="missing.svg"><svg width="0" height="0"></svg>'
        '<script src="https://cdn.example.invalid/lib.js"></script>'
        '<script>console.error("boom"); notDefined();</script>'
        "</article></body></html>"
    )
    shot = tmp_path / "home.png"
    problems = check_site.check(site, CHROMIUM, shot, 60)
    assert shot.stat().st_size > 0
    assert all(line.startswith("/bad/: ") for line in problems), problems
    text = "\n".join(problems)
    for expected in (
        "image does not render: missing.svg",
        "HTTP 404",
        "inline SVG has no size",
        "request to another host, blocked: https://cdn.example.invalid/lib.js",
        "console error: boom",
        "page error: notDefined is not defined",
    ):
        assert expected in text, (expected, problems)
    assert not check_site._profile_pids("check-site-chromium-"), "the browser was left running"
