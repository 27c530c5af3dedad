"""Benchmark: what one large, never-ending server-sent event costs the decoder.

How this works
--------------
An ``SSEDecoder`` (no ``max_event_bytes``) is fed one event that never ends (``data: xxx...``,
no blank line) in pieces of 4 KiB, as a stream's body arrives, until it holds 1, 4 and 16 MiB.
For each size the CPU time of all the feeds (``time.process_time``) and the longest single
feed (``time.perf_counter``: how long one feed keeps an event loop from anything else) are
printed, then the ratio of the CPU times of 16 MiB and 1 MiB: about 16 when the work is linear
in the size of the event, about 256 when it is quadratic. Each event is then ended (not timed)
and its data checked, so a decoder that dropped bytes cannot look fast.

``python -m llm.perf.sse`` prints the table (``--json`` for JSON, ``--piece`` and ``--sizes``
to change the shape).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..judge.sse import SSEDecoder

MIB = 1024 * 1024
DEFAULT_SIZES = (1, 4, 16)  # MiB
DEFAULT_PIECE = 4096


@dataclass(frozen=True)
class Figure:
    """One event of ``mib`` MiB fed in ``piece``-byte pieces."""

    mib: int
    piece: int
    feeds: int
    cpu_s: float
    longest_feed_ms: float


def measure(mib: int, piece: int = DEFAULT_PIECE) -> Figure:
    """Feed one unterminated event of ``mib`` MiB in ``piece``-byte pieces."""
    head = b"data: "
    body = head + b"x" * (mib * MIB - len(head))
    pieces = [body[i : i + piece] for i in range(0, len(body), piece)]
    decoder = SSEDecoder()
    longest = 0.0
    started = time.process_time()
    for chunk in pieces:
        before = time.perf_counter()
        if decoder.feed(chunk):
            raise AssertionError("an event that was never ended was dispatched")
        longest = max(longest, time.perf_counter() - before)
    cpu = time.process_time() - started
    (data,) = decoder.feed(b"\n\n")
    if len(data) != len(body) - len(head):
        raise AssertionError(f"the event's data lost bytes: {len(data)} of {len(body)}")
    return Figure(mib, piece, len(pieces), cpu, longest * 1000.0)


def run(sizes: Sequence[int] = DEFAULT_SIZES, piece: int = DEFAULT_PIECE) -> list[Figure]:
    return [measure(mib, piece) for mib in sizes]


def ratio(figures: Sequence[Figure]) -> float | None:
    """CPU time of the largest event over that of the smallest (None if too small to tell)."""
    smallest, largest = figures[0], figures[-1]
    if smallest.cpu_s <= 0:
        return None
    return largest.cpu_s / smallest.cpu_s


def render_text(figures: Sequence[Figure]) -> str:
    lines = [
        f"one unterminated event fed in {figures[0].piece}-byte pieces",
        f"{'size':>8}  {'feeds':>6}  {'CPU s':>8}  {'longest feed ms':>16}",
    ]
    for figure in figures:
        lines.append(
            f"{figure.mib:>5} MiB  {figure.feeds:>6}  {figure.cpu_s:>8.3f}  "
            f"{figure.longest_feed_ms:>16.3f}"
        )
    found = ratio(figures)
    shown = "n/a" if found is None else f"{found:.1f}"
    expected = (figures[-1].mib // figures[0].mib) if figures[0].mib else 0
    lines.append(
        f"ratio {figures[-1].mib} MiB / {figures[0].mib} MiB: {shown} "
        f"(linear ~ {expected}, quadratic ~ {expected * expected})"
    )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llm.perf.sse", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--piece", type=int, default=DEFAULT_PIECE, help="bytes per feed")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(DEFAULT_SIZES),
        help="event sizes in MiB, smallest first",
    )
    args = parser.parse_args(argv)
    figures = run(sorted(args.sizes), args.piece)
    if args.json:
        print(json.dumps({"figures": [asdict(f) for f in figures], "ratio": ratio(figures)}))
    else:
        print(render_text(figures), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
