"""docs/performance.md from the benchmarks' figures: tables, and a chart drawn as SVG.

How this works
--------------
``overhead_markdown`` tabulates ``llm.perf.overhead.Figures`` (CPU per request and its ratio
to the raw client of the same kind, requests per second, latency, time to first token);
``chart_svg`` draws the CPU per request of every client as horizontal bars on a log scale,
non-streamed and streamed side by side, with nothing but string formatting (no plotting
library to install).
``document`` puts these together with the other sections (routing cost, import time, the
least-latency experiment, memory), each given as ready markdown by its own module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from .overhead import Figures

TARGETS = {
    ("provider-async", False): 1.3,
    ("provider-async", True): 1.3,
    ("provider-async-load", False): 1.3,
    ("provider-async-load", True): 1.3,
    ("provider-async-hedge", False): 1.3,  # issue 17: hedging on, no fault
    ("provider-async-hedge", True): 1.3,
    ("provider-sync", False): 1.5,
    ("provider-sync", True): 1.5,
}


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def overhead_markdown(figures: Sequence[Figures]) -> str:
    lines = [
        "| client | kind | CPU µs / request | ratio to raw | target | requests/s | p50 ms "
        "| p95 ms | TTFT p50 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for item in sorted(figures, key=lambda f: (f.stream, f.client.endswith("-sync"), f.cpu_us)):
        target = TARGETS.get((item.client, item.stream))
        ratio = "—" if item.ratio is None else f"{item.ratio:.2f}×"
        if target is not None and item.ratio is not None:
            ratio = f"**{ratio}**" if item.ratio <= target else f"**{ratio}** (over)"
        bound = f"≤ {target:.1f}×" if target else ""
        lines.append(
            f"| {item.client} | {'stream' if item.stream else 'plain'} | {item.cpu_us:.0f} "
            f"| {ratio} | {bound} | {item.rps:.0f} "
            f"| {_ms(item.p50_ms)} | {_ms(item.p95_ms)} | {_ms(item.ttft_p50_ms)} |"
        )
    return "\n".join(lines)


def chart_svg(figures: Sequence[Figures], title: str = "Client CPU per request (µs)") -> str:
    """Horizontal bars: one row per client, non-streamed and streamed bars in each."""
    clients: list[str] = []
    for item in sorted(figures, key=lambda f: (f.client.endswith("-sync"), f.cpu_us)):
        if item.client not in clients:
            clients.append(item.client)
    value = {(f.client, f.stream): f for f in figures}
    # A log scale: the raw clients and the provider sit near 10^2.5, httpx's async pool near 10^4.
    low = 100.0
    top = max([low * 10, *(f.cpu_us for f in figures)])
    span = math.log10(top / low)
    label_w, bar_w, row_h, bar_h = 130, 520, 44, 16
    width, height = label_w + bar_w + 120, 60 + row_h * len(clients) + 40
    colors = {False: "#4c78a8", True: "#f58518"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{label_w}" y="32" width="12" height="12" fill="{colors[False]}"/>',
        f'<text x="{label_w + 16}" y="42">non-streamed</text>',
        f'<rect x="{label_w + 120}" y="32" width="12" height="12" fill="{colors[True]}"/>',
        f'<text x="{label_w + 136}" y="42">streamed (16 tokens)</text>',
    ]
    axis_bottom = 60 + row_h * len(clients) - 8
    decade = low
    while decade <= top:
        x = label_w + bar_w * math.log10(decade / low) / span
        parts.append(
            f'<line x1="{x:.1f}" y1="52" x2="{x:.1f}" y2="{axis_bottom}" stroke="#ddd"/>'
        )
        parts.append(f'<text x="{x + 2:.1f}" y="{axis_bottom + 12}" fill="#555">{decade:g}</text>')
        decade *= 10
    for row, client in enumerate(clients):
        y = 60 + row * row_h
        parts.append(f'<text x="10" y="{y + bar_h + 4}">{escape(client)}</text>')
        for offset, stream in ((0, False), (bar_h + 2, True)):
            bar = value.get((client, stream))
            if bar is None:
                continue
            length = max(1.0, bar_w * math.log10(max(bar.cpu_us, low) / low) / span)
            ratio = "" if bar.ratio is None else f"  ({bar.ratio:.2f}×)"
            parts.append(
                f'<rect x="{label_w}" y="{y + offset}" width="{length:.1f}" height="{bar_h}" '
                f'fill="{colors[stream]}"/>'
            )
            parts.append(
                f'<text x="{label_w + length + 4:.1f}" y="{y + offset + bar_h - 4}">'
                f"{bar.cpu_us:.0f}{escape(ratio)}</text>"
            )
    parts.append(
        f'<text x="10" y="{height - 8}" fill="#555">log scale; ratios: to raw aiohttp for async '
        "clients, to a raw httpx.Client for sync ones</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def document(
    *,
    date: str,
    machine: str,
    overhead: Sequence[Figures],
    chart_file: str,
    rounds: int,
    sections: Sequence[str],
) -> str:
    """The whole of docs/performance.md."""
    head = f"""# Performance

Generated by `python scripts/bench_overhead.py --write` on {date} ({machine}); run it again to
refresh this page and its chart. Speed is reported as CPU per request in the client process
(`resource.getrusage`, user + system, all threads), and as a ratio to a raw client measured in
the same run: this machine is small and shared, so absolute times move from run to run while
the ratios hold.

## CPU per request against raw clients

Two fake vLLM servers in child processes (20 ms per answer, 16 tokens), calls alternating
between them; async clients keep 64 calls in flight, sync ones run 16 threads. Every client
parses every answer (for streams: every event) as an application would. Clients take turns
over {rounds} rounds in rotating order; the CPU column is each client's lowest round (on a
shared machine, noise only ever adds CPU time; all rounds are in `--json`), the rate is the
median round. The provider's figures
include everything it does per call: checking the call, routing, health bookkeeping, the
retry plan, decoding, the typed result. For reference: httpx's own `AsyncClient`, the OpenAI
SDK's `AsyncOpenAI`, and LiteLLM's `Router` (`litellm-router`: both servers as deployments of
one model, retries off; measured when litellm is installed, which it is not by this package).

![CPU per request by client]({chart_file})

"""
    return head + overhead_markdown(overhead) + "\n\n" + "\n\n".join(sections) + "\n"
