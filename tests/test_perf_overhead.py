"""The overhead benchmark's machinery (not its speed: figures live in docs/performance.md)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from llm.perf.overhead import Run, available_clients, run_client, summarize
from llm.perf.report import chart_svg, overhead_markdown
from llm.testing.chaos import FakeProcess


def run(client: str, stream: bool, cpu_seconds: float, requests: int = 100) -> Run:
    return Run(client, stream, requests, 1.0, cpu_seconds, [0.02] * requests, [0.01] * stream)


def test_summary_takes_the_lowest_round_and_ratios_to_the_raw_client_of_its_kind():
    runs = [
        run("aiohttp", False, 0.020), run("aiohttp", False, 0.030), run("aiohttp", False, 0.025),
        run("provider-async", False, 0.030), run("provider-async", False, 0.031),
        run("provider-async", False, 0.100),
        run("httpx-sync", False, 0.100), run("provider-sync", False, 0.110),
    ]  # fmt: skip
    figures = {(f.client, f.stream): f for f in summarize(runs)}
    assert figures[("aiohttp", False)].cpu_us == 200.0
    assert figures[("provider-async", False)].cpu_us == 300.0
    assert figures[("provider-async", False)].ratio == 1.5  # to aiohttp
    assert figures[("provider-sync", False)].ratio == 1.1  # to httpx-sync, not aiohttp
    assert figures[("provider-async", False)].requests_per_round == 100
    assert figures[("aiohttp", False)].ratio == 1.0
    assert figures[("provider-async", False)].cpu_us_rounds == [300.0, 310.0, 1000.0]


def test_report_table_and_chart_name_every_client():
    figures = summarize(
        [run("aiohttp", False, 0.02), run("provider-async", False, 0.03),
         run("aiohttp", True, 0.06), run("provider-async", True, 0.05)]
    )  # fmt: skip
    table = overhead_markdown(figures)
    assert "| provider-async | plain | 300 | **1.50×** (over) | ≤ 1.3×" in table
    assert "| provider-async | stream | 500 | **0.83×** | ≤ 1.3×" in table
    svg = chart_svg(figures)
    root = ET.fromstring(svg)  # well-formed
    texts = [element.text or "" for element in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "aiohttp" in texts and "provider-async" in texts
    assert any(text.startswith("300") and "1.50×" in text for text in texts)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[FakeProcess]]:
    running = [FakeProcess(name, latency=0.001, tokens=4) for name in ("a", "b")]
    try:
        for server in running:
            server.start()
        yield running
    finally:
        for server in running:
            server.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("client", available_clients())
def test_every_client_makes_its_calls(servers, client, stream):
    measured = run_client(client, servers, stream, requests=24, warmup=4)
    assert measured.requests == 24 and len(measured.latencies) == 24
    assert measured.cpu_seconds > 0 and measured.seconds > 0
    if stream:
        assert len(measured.ttfts) == 24  # every stream saw its first token
        assert all(t <= total for t, total in zip(measured.ttfts, measured.latencies, strict=False))


@pytest.mark.parametrize("missing", [set(), {"litellm"}, {"openai", "litellm"}])
def test_optional_clients_are_listed_only_when_their_package_is_installed(monkeypatch, missing):
    import importlib.util

    from llm.perf import overhead

    found = importlib.util.find_spec
    monkeypatch.setattr(
        overhead.importlib.util,
        "find_spec",
        lambda name, *a: None if name in missing else found("json"),
    )
    clients = available_clients()
    assert ("litellm-router" in clients) == ("litellm" not in missing)
    assert ("openai-async" in clients) == ("openai" not in missing)
    assert {"aiohttp", "httpx-async", "provider-async", "httpx-sync", "provider-sync"} <= set(
        clients
    )


def test_memory_is_measured_in_a_fresh_process():
    from llm.perf.overhead import rss_growth_in_child

    growth = rss_growth_in_child(first=40, total=120, timeout=120)
    assert set(growth) == {"rss_after_40_mib", "rss_after_120_mib", "growth_mib"}
    assert 10 < growth["rss_after_40_mib"] < 1000  # MiB of a Python process, not bytes
    assert growth["growth_mib"] == pytest.approx(
        growth["rss_after_120_mib"] - growth["rss_after_40_mib"], abs=0.1
    )
