#!/usr/bin/env python3
"""The failure-handling diagrams of the documentation site, drawn as plain SVG.

    python scripts/draw_diagrams.py          # docs/failure-attempts.svg, docs/failure-health.svg
    python scripts/draw_diagrams.py --check   # exit 1 when a file differs from what this writes

docs/failure-handling.md includes both files inline (pymdownx.snippets), so the page needs no
script, font or image from anywhere: boxes, arrows and text, in the page's own fonts. The
figures say what llm/routing/health.py and llm/routing/plan.py do; change them with the code.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

DOCS = Path(__file__).resolve().parent.parent / "docs"

INK = "#212121"
MUTED = "#546e7a"
ARROW = "#455a64"
GREEN = ("#e8f5e9", "#2e7d32")
ORANGE = ("#fff3e0", "#e65100")
BLUE = ("#e3f2fd", "#1565c0")
RED = ("#ffebee", "#c62828")
GREY = ("#fafafa", "#78909c")


@dataclass
class Drawing:
    """One SVG document, its elements in drawing order."""

    name: str  # prefix of its ids: several diagrams share one page
    width: int
    height: int
    title: str
    description: str
    parts: list[str]

    def box(
        self,
        x: float,
        y: float,
        w: float,
        h: float,
        lines: list[str],
        colours: tuple[str, str] = GREY,
        *,
        dashed: bool = False,
        bold_first: bool = True,
    ) -> None:
        fill, stroke = colours
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        self.parts.append(
            f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="1.6"{dash}/>'
        )
        top = y + h / 2 - (len(lines) - 1) * 8.5
        self.text(x + w / 2, top, lines, anchor="middle", bold_first=bold_first, colour=INK)

    def text(
        self,
        x: float,
        y: float,
        lines: list[str],
        *,
        anchor: str = "start",
        size: int = 13,
        colour: str = MUTED,
        bold_first: bool = False,
        leading: float = 17,
    ) -> None:
        spans = []
        for i, line in enumerate(lines):
            weight = ' font-weight="bold"' if bold_first and i == 0 else ""
            dy = "0" if i == 0 else f"{leading}"
            spans.append(f'<tspan x="{x}" dy="{dy}"{weight}>{escape(line)}</tspan>')
        self.parts.append(
            f'<text x="{x}" y="{y + 4.5}" text-anchor="{anchor}" font-size="{size}" '
            f'fill="{colour}">{"".join(spans)}</text>'
        )

    def arrow(self, points: list[tuple[float, float]], *, dashed: bool = False) -> None:
        path = " ".join(f"{'M' if i == 0 else 'L'} {x} {y}" for i, (x, y) in enumerate(points))
        dash = ' stroke-dasharray="5 4"' if dashed else ""
        self.parts.append(
            f'<path d="{path}" fill="none" stroke="{ARROW}" stroke-width="1.6"{dash} '
            f'marker-end="url(#{self.name}-head)"/>'
        )

    def svg(self) -> str:
        head = (
            f'<marker id="{self.name}-head" viewBox="0 0 10 10" refX="9" refY="5" '
            'markerWidth="8" markerHeight="8" orient="auto-start-reverse">'
            f'<path d="M 0 0 L 10 5 L 0 10 z" fill="{ARROW}"/></marker>'
        )
        body = "\n".join(self.parts)
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.width} {self.height}" '
            f'width="{self.width}" height="{self.height}" role="img" '
            f'aria-labelledby="{self.name}-title {self.name}-desc" '
            'font-family="system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, '
            'sans-serif" style="max-width: 100%; height: auto">\n'
            f'<title id="{self.name}-title">{escape(self.title)}</title>\n'
            f'<desc id="{self.name}-desc">{escape(self.description)}</desc>\n'
            f"<defs>{head}</defs>\n"
            f'<rect width="{self.width}" height="{self.height}" fill="#ffffff"/>\n'
            f"{body}\n</svg>\n"
        )


def attempts() -> str:
    """A call's attempts: first pick, retry elsewhere at once, fallback, backoff, give up."""
    d = Drawing(
        "attempts",
        720,
        640,
        "A call's attempts",
        "The first attempt goes to the policy's pick in the pool. When it fails, the route is "
        "ejected and the call goes at once to another route of the pool not yet tried; when "
        "every route of the pool has failed, to the fallback route; after that a route is tried "
        "again after an exponential backoff with jitter, never sooner than its Retry-After. "
        "Every attempt fits in the call's deadline; when max_retries is spent or the deadline "
        "is reached the call raises AllRoutesFailedError. Any attempt that succeeds is the "
        "answer. A 400 or 422 is the request's fault: BadRequestError at once, no retry.",
        [],
    )
    x, w, h = 60, 360, 70
    middle = x + w / 2
    d.box(x, 16, w, 52, ["a call", "provider.chat(...): the pool of its model"])
    steps = [
        (
            96,
            ["1. first attempt", "the policy's pick in the pool", "(after affinity, context fit)"],
        ),
        (214, ["2. retry at once, elsewhere", "a route of the pool not yet tried: no wait"]),
        (
            332,
            ["3. the fallback route", "once every route of the pool failed", "(its own model)"],
        ),
        (
            450,
            [
                "4. back off, then a route again",
                "backoff_initial × 2ⁿ, jittered, ≤ backoff_max,",
                "never sooner than its Retry-After",
            ],
        ),
    ]
    labels = [
        ["fails: connect error, timeout, 5xx, 429,", "bad answer; that route is ejected"],
        ["fails, and the pool is exhausted"],
        ["fails"],
        ["max_retries spent, or the deadline reached"],
    ]
    d.arrow([(middle, 68), (middle, 96)])
    for i, (y, lines) in enumerate(steps):
        d.box(x, y, w, h, lines, BLUE)
        d.arrow([(x + w, y + h / 2), (530, y + h / 2)])
        d.box(530, y + h / 2 - 18, 170, 36, ["answer"], GREEN)
        below = steps[i + 1][0] if i + 1 < len(steps) else 568
        d.arrow([(middle, y + h), (middle, below)])
        top = y + h + (below - y - h) / 2 - 3 - 7.5 * (len(labels[i]) - 1)
        d.text(middle + 12, top, labels[i], size=12, leading=15)
    d.box(
        x, 568, w, 56, ["AllRoutesFailedError", "error.attempts (each try), error.last_error"], RED
    )
    # one deadline over all the attempts
    d.parts.append(
        f'<path d="M 46 96 L 36 96 L 36 520 L 46 520" fill="none" stroke="{MUTED}" '
        'stroke-width="1.6"/>'
    )
    d.parts.append(
        f'<text transform="translate(24 308) rotate(-90)" text-anchor="middle" font-size="12" '
        f'fill="{MUTED}">one deadline (params.deadline), at most 1 + max_retries attempts</text>'
    )
    d.box(
        480,
        10,
        230,
        62,
        [
            "a 400 / 422 at any step:",
            "BadRequestError at once,",
            "no retry; route stays healthy",
        ],
        GREY,
        dashed=True,
        bold_first=False,
    )
    d.text(615, 540, ["an answer's result.attempts", "lists every try"], anchor="middle", size=12)
    return d.svg()


def health() -> str:
    """A route's health: healthy, ejected for a cooldown, one trial, healthy or ejected again."""
    d = Drawing(
        "health",
        720,
        610,
        "A route's health states",
        "A healthy route that fails (connect error, timeout, 5xx, 429, a bad answer, or a "
        "failing background check) is ejected for a cooldown that doubles with each ejection "
        "in a row, capped by max_cooldown, jittered, never shorter than its Retry-After. When "
        "the cooldown is over, or a background check passes, the route takes one trial request "
        "at a time: a success makes it healthy again, a failure ejects it again for longer. "
        "A 401, 403, 404 or redirect is an ejection too, logged at ERROR as misconfigured.",
        [],
    )
    x, w, middle = 200, 220, 310
    d.box(x, 50, w, 64, ["healthy", "takes its share of calls"], GREEN)
    d.box(x, 220, w, 76, ["ejected", "rests for its cooldown:", "no call is sent to it"], ORANGE)
    d.box(x, 400, w, 64, ["trial", "one request at a time"], BLUE)
    d.box(
        490, 222, 210, 72, ["misconfigured", "an ejection: same cooldown,", "logged at ERROR"], RED
    )
    # healthy -> ejected
    d.arrow([(middle, 114), (middle, 220)])
    d.text(
        middle + 12,
        140,
        [
            "the route's failure:",
            "connect error, timeout,",
            "5xx, 429, a bad answer;",
            "a failing check",
        ],
        size=12,
        leading=15,
    )
    # healthy -> misconfigured, which is an ejection
    d.arrow([(x + w, 82), (595, 82), (595, 222)])
    d.text(507, 70, ["401 / 403 / 404, a redirect"], anchor="middle", size=12)
    d.arrow([(490, 258), (x + w, 258)], dashed=True)
    # ejected -> trial
    d.arrow([(middle, 296), (middle, 400)])
    d.text(
        middle + 12,
        318,
        [
            "cooldown over: × 2 per ejection",
            "in a row, ≤ max_cooldown, jittered,",
            "≥ Retry-After; or a passing check",
        ],
        size=12,
        leading=15,
    )
    # the trial fails: back to ejected, on the left
    d.arrow([(x, 420), (160, 420), (160, 276), (x, 276)])
    d.text(
        150,
        326,
        ["the trial fails:", "ejected again,", "for twice as long"],
        anchor="end",
        size=12,
        leading=15,
    )
    # the trial succeeds: back to healthy, around the left
    d.arrow([(middle, 464), (middle, 500), (20, 500), (20, 70), (x, 70)])
    d.text(
        360,
        518,
        ["the trial succeeds: healthy again, the count of ejections in a row forgotten"],
        anchor="middle",
        size=12,
    )
    d.text(
        20,
        552,
        [
            "Calls already in flight when a route is ejected do not change its state. Every route",
            "of a pool ejected: the one whose cooldown ends first is tried (a call always gets a",
            "real attempt). A route gone quiet (calls in flight, none ending) gets no new call",
            "while another route can take it; that is not an ejection.",
        ],
        size=12,
        leading=15,
    )
    return d.svg()


FILES = {"failure-attempts.svg": attempts, "failure-health.svg": health}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when a file is not current")
    args = parser.parse_args(argv)
    stale = []
    for name, draw in FILES.items():
        path = DOCS / name
        text = draw()
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote docs/{name}")
    if stale:
        print(f"not current: {', '.join(stale)}; run python scripts/draw_diagrams.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
