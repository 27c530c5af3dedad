"""Load signals over real sockets: the ORCA header asked for and read, ``/metrics`` polled.

How this works
--------------
Small raw servers (``raw_server``) answer with exactly the load header a test wants (vLLM's
two formats, garbage); the fake vLLM serves ``/metrics`` as vLLM does. Each test reads the
result where a user would: ``provider.stats()[route]["load"]``. Sync and async calls take the
same path through ``send/base.py``; both are driven.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from raw_server import RawRequest, RawServer, answer, chat_answer, response_head

from llm.config import parse_config
from llm.errors import ConfigError
from llm.factory import LLMFactory
from llm.probes.load_poll import LoadPoller, poll_route
from llm.providers.vllm_openai import VLLMOpenAIProvider
from llm.send.httpcore_sender import HttpcoreSender
from llm.testing import FakeVLLM

MESSAGES = [{"role": "user", "content": "hi"}]
TEXT = "TEXT named_metrics.num_requests_waiting=7.0, named_metrics.kv_cache_usage_perc=0.25"
JSON = 'JSON {"named_metrics": {"num_requests_waiting": 7.0, "kv_cache_usage_perc": 0.25}}'


def provider_for(urls: dict[str, str], **llm: Any) -> VLLMOpenAIProvider:
    routes = {name: {"base_url": url, "model": "m", "timeout": 5} for name, url in urls.items()}
    provider = LLMFactory.create_provider("vllm_openai", config={"llm": {"routes": routes, **llm}})
    assert isinstance(provider, VLLMOpenAIProvider)
    return provider


@pytest.fixture
def fake() -> Iterator[FakeVLLM]:
    server = FakeVLLM("m").start()
    try:
        yield server
    finally:
        server.stop()


# -- the ORCA header ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("llm", "asked"),
    [
        ({"lb_policy": "least_load"}, True),
        ({"lb_policy": "round_robin"}, False),
        ({"lb_policy": "least_latency"}, False),
        ({"lb_policy": "round_robin", "load": {"orca": True}}, True),
        ({"lb_policy": "least_load", "load": {"orca": False, "poll_interval": 0}}, False),
    ],
)
def test_the_load_report_is_asked_for_under_least_load_or_when_configured(
    fake: FakeVLLM, llm: dict[str, Any], asked: bool
) -> None:
    with provider_for({"a": fake.base_url}, **llm) as provider:
        provider.chat(MESSAGES, max_tokens=4)
    headers = fake.requests[-1].headers
    assert headers.get("endpoint-load-metrics-format") == ("TEXT" if asked else None)


@pytest.mark.parametrize("header", [TEXT, JSON])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_report_in_an_answer_becomes_the_route_s_load(header: str, mode: str) -> None:
    script = answer(chat_answer("hi"), extra=[("endpoint-load-metrics", header)])
    with RawServer(script) as server:
        provider = provider_for(
            {"a": server.base_url}, lb_policy="least_load", load={"poll_interval": 0}
        )
        if mode == "sync":
            assert provider.chat(MESSAGES) == "hi"
            provider.close()
        else:

            async def run() -> None:
                assert await provider.achat(MESSAGES) == "hi"
                await provider.aclose()

            asyncio.run(run())
    load = provider.stats()["a"]["load"]
    assert load["report_source"] == "orca"
    assert load["reported_waiting"] == 7.0 and load["kv_cache_usage"] == 0.25
    # no running count in ORCA: our own calls in flight at the report (none) stand in
    assert load["estimate"] == 7.0 and load["report_fresh"] is True
    assert server.requests[0].headers["endpoint-load-metrics-format"] == "TEXT"


@pytest.mark.parametrize(
    "header",
    [
        "TEXT named_metrics.num_requests_waiting=nan",
        "JSON {not json",
        "JSON " + "[" * 50_000,
        "TEXT named_metrics.num_requests_waiting=-4.0",
        "BIN AAAA",
        "x" * 10_000,
    ],
)
def test_a_garbage_report_is_ignored_and_the_call_is_unharmed(header: str) -> None:
    script = answer(chat_answer("fine"), extra=[("endpoint-load-metrics", header)])
    with RawServer(script) as server, provider_for(
        {"a": server.base_url}, lb_policy="least_load", load={"poll_interval": 0}
    ) as provider:
        assert provider.chat(MESSAGES) == "fine"
        stats = provider.stats()["a"]
    assert stats["state"] == "healthy" and stats["successes"] == 1
    assert stats["load"]["report_source"] is None and stats["load"]["estimate"] == 0


def test_a_stream_teaches_the_route_its_seconds_per_token(fake: FakeVLLM) -> None:
    fake.set_token_delay(0.02)
    with provider_for(
        {"a": fake.base_url}, lb_policy="least_load", load={"poll_interval": 0}
    ) as provider:
        pieces = list(provider.stream(MESSAGES, max_tokens=12))
        assert len(pieces) >= 5
        per_token = provider.stats()["a"]["ms_per_token"]
    # 20 ms between tokens; the first token's wait is left out
    assert per_token is not None and 15.0 <= per_token <= 80.0


# -- /metrics -------------------------------------------------------------------------------


def test_a_poll_reads_vllm_s_gauges(fake: FakeVLLM) -> None:
    fake.set_latency(1.0)
    sender = HttpcoreSender()
    route = parse_config(
        {"llm": {"routes": {"a": {"base_url": fake.base_url, "model": "m"}}}}
    ).routes["a"]
    done = threading.Event()
    with provider_for({"a": fake.base_url}) as provider:
        caller = threading.Thread(
            target=lambda: (provider.chat(MESSAGES, max_tokens=2), done.set()), daemon=True
        )
        caller.start()
        deadline = time.monotonic() + 5
        while fake.in_flight < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        report = poll_route(sender, route, timeout=2.0)
        caller.join(10)
    sender.close()
    assert done.is_set()
    assert report is not None and report.running == 1.0 and report.waiting == 0.0


def test_the_poller_reads_the_routes_in_use_only_and_stops_with_the_provider(
    fake: FakeVLLM,
) -> None:
    idle = FakeVLLM("m").start()
    try:
        provider = provider_for(
            {"a": fake.base_url, "idle": idle.base_url},
            lb_policy="least_load",
            load={"poll_interval": 0.05},
        )
        poller = provider._poller
        assert isinstance(poller, LoadPoller)
        provider.chat(MESSAGES, route="a", max_tokens=2)
        deadline = time.monotonic() + 5
        while provider.stats()["a"]["load"]["report_source"] != "metrics":
            assert time.monotonic() < deadline, "no /metrics report within 5 s"
            time.sleep(0.02)
        provider.close()
        assert not poller._thread.is_alive()
        assert not [r for r in idle.requests if r.path == "/metrics"]
        assert [r for r in fake.requests if r.path == "/metrics"]
        assert provider.stats()["idle"]["load"]["report_source"] is None
    finally:
        idle.stop()


async def _never_answer(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


async def _trickle(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    writer.write(response_head(200, [("content-type", "text/plain")], 10_000))
    for _ in range(600):
        writer.write(b"v")
        await writer.drain()
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "script",
    [
        answer(b"<html>not metrics</html>", content_type="text/html"),
        answer({"detail": "Not Found"}, status=404),
        answer(b'vllm:num_requests_waiting{engine="0"} NaN\n', content_type="text/plain"),
        answer(b"\xff\xfe" * 100_000, content_type="text/plain"),
        _never_answer,
        _trickle,
    ],
    ids=["html", "404", "nan", "binary", "silent", "trickled"],
)
def test_a_hostile_metrics_endpoint_gives_no_report_within_the_poll_timeout(script: Any) -> None:
    with RawServer(script) as server:
        route = parse_config(
            {"llm": {"routes": {"a": {"base_url": server.base_url, "model": "m"}}}}
        ).routes["a"]
        sender = HttpcoreSender()
        started = time.monotonic()
        report = poll_route(sender, route, timeout=0.5)
        elapsed = time.monotonic() - started
        sender.close()
    assert report is None
    assert elapsed < 1.5


# -- config ---------------------------------------------------------------------------------


def routes() -> dict[str, Any]:
    return {"a": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}}


def test_load_settings_and_their_defaults() -> None:
    plain = parse_config({"llm": {"routes": routes()}})
    assert plain.load.polls("round_robin") == 0 and not plain.load.asks_orca("round_robin")
    assert plain.load.polls("least_load") == 1.0 and plain.load.asks_orca("least_load")
    set_ = parse_config(
        {
            "llm": {
                "routes": routes(),
                "load": {"poll_interval": 0.25, "orca": "false", "max_age": 5},
            }
        }
    )
    assert set_.load.polls("round_robin") == 0.25 and not set_.load.asks_orca("least_load")
    assert set_.load.max_age == 5.0


@pytest.mark.parametrize(
    ("load", "path"),
    [
        ({"poll_interval": -1}, "llm.load.poll_interval"),
        ({"max_age": 0}, "llm.load.max_age"),
        ({"orca": "maybe"}, "llm.load.orca"),
        ({"poll": 1}, "llm.load"),
        ("often", "llm.load"),
    ],
)
def test_a_broken_load_section_names_its_key(load: Any, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"llm": {"routes": routes(), "load": load}})
    assert path in str(info.value)


def test_least_load_is_a_known_policy_and_a_typo_lists_it() -> None:
    assert parse_config({"llm": {"routes": routes(), "lb_policy": "least_load"}}).lb_policy == (
        "least_load"
    )
    with pytest.raises(ConfigError) as info:
        parse_config({"llm": {"routes": routes(), "lb_policy": "least_loaded"}})
    assert "least_load" in str(info.value)


def test_a_route_without_metrics_is_polled_less_and_less_and_again_once_it_reports() -> None:
    metrics_ok = False

    async def script(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        if request.path == "/metrics":
            if metrics_ok:
                body = b'vllm:num_requests_waiting{engine="0",model_name="m"} 2.0\n'
                writer.write(response_head(200, [("content-type", "text/plain")], len(body)))
                writer.write(body)
            else:
                await answer({"detail": "Not Found"}, status=404)(request, writer)
        else:
            await answer(chat_answer("hi"))(request, writer)

    with RawServer(script) as server:
        provider = provider_for({"a": server.base_url}, load={"poll_interval": 0})
        provider.chat(MESSAGES)  # the route is in use
        poller = LoadPoller(
            list(provider.config.routes.values()),
            provider.balancer,
            provider._engine.sender,
            interval=1.0,
            timeout=2.0,
        )

        def polls() -> int:
            return sum(1 for r in server.requests if r.path == "/metrics")

        rounds = [poller.run_once() for _ in range(20)]
        assert rounds == [0] * 20
        assert polls() == 4  # rounds 1, 3, 7 and 15: every 2, 4, 8, 16 rounds
        metrics_ok = True
        before = polls()
        taken = [poller.run_once() for _ in range(20)]
        # the next read is due at round 31 (15 + 16), then every round again
        assert sum(taken) == 10 and polls() - before == 10
        assert provider.stats()["a"]["load"]["reported_waiting"] == 2.0
        provider.close()
