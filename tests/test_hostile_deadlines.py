"""One deadline holds for everything a call waits on, against peers that send a little at a time.

Raw servers (``raw_server.RawServer``) send ``102 Processing`` forever, trickle their headers
a byte at a time, trickle a body, or keep a stream alive without a token. Every call, sync,
async and streamed, must end by its deadline (plus a margin for a loaded machine), and with a
healthy route beside the bad one it must be answered by the healthy one. A stream that starts
late in its deadline keeps its route's own timeout between tokens. Health checks (the
provider's, the command's, the background checker's) end by their timeout too, and a
``/health`` that never ends is cut at a size cap.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from raw_server import RawRequest, RawServer, chat_chunk, response_head

from llm import VLLMOpenAIProvider, parse_config
from llm.errors import AllRoutesFailedError
from llm.probes.check import CheckSettings
from llm.probes.checker import ActiveChecker
from llm.testing import FakeVLLM

MSG = [{"role": "user", "content": "hi"}]
MARGIN = 1.0  # seconds a loaded 2-core machine may add to a bound
KINDS = ["sync", "async", "stream", "astream"]
ROOT = Path(__file__).resolve().parent.parent


async def processing_forever(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    while True:
        writer.write(b"HTTP/1.1 102 Processing\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)


async def headers_trickled(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-slow: ")
    while True:
        writer.write(b"a")
        await writer.drain()
        await asyncio.sleep(0.05)


async def body_trickled(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    content_type = "text/event-stream" if b'"stream":true' in request.body else "application/json"
    writer.write(response_head(200, [("content-type", content_type)], length=10**6))
    while True:
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.05)


async def stream_without_a_token(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    writer.write(response_head(200, [("content-type", "text/event-stream")]))
    writer.write(b"data: " + _json(chat_chunk()) + b"\n\n")
    while True:
        writer.write(b": keep-alive\n\n")
        await writer.drain()
        await asyncio.sleep(0.05)


def _json(value: Any) -> bytes:
    import json

    return json.dumps(value).encode()


HOSTILE = {
    "102-forever": processing_forever,
    "headers-trickled": headers_trickled,
    "body-trickled": body_trickled,
}


def config_for(routes: dict[str, str], **params: Any) -> Any:
    return parse_config(
        {
            "llm": {
                "routes": {name: {"base_url": url, "model": "m"} for name, url in routes.items()},
                "params": {"timeout": 1.0, "deadline": 1.5, "max_retries": 1, **params},
                "health": {"cooldown": 30},
            }
        },
        environ={},
    )


def call(provider: VLLMOpenAIProvider, kind: str) -> tuple[str, float]:
    """(the route that answered, seconds taken); async ones on a loop of their own."""
    started = time.monotonic()
    if kind == "sync":
        route = provider.chat_completion(MSG).route
    elif kind == "stream":
        route = [event for event in provider.stream_events(MSG)][-1].route
    else:

        async def run() -> str:
            try:
                if kind == "async":
                    return (await provider.achat_completion(MSG)).route
                events = [event async for event in provider.astream_events(MSG)]
                return events[-1].route
            finally:
                await provider.aclose()

        route = asyncio.run(run())
    assert route is not None
    return route, time.monotonic() - started


@pytest.fixture
def good() -> Iterator[FakeVLLM]:
    with FakeVLLM("m", name="good") as server:
        yield server


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("script", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_call_to_a_peer_sending_a_little_at_a_time_ends_by_its_deadline(
    script: Any, kind: str
) -> None:
    with RawServer(script) as bad:
        provider = VLLMOpenAIProvider(config_for({"bad": bad.base_url}))
        started = time.monotonic()
        try:
            with pytest.raises(AllRoutesFailedError) as caught:
                call(provider, kind)
        finally:
            provider.close()
        took = time.monotonic() - started
    assert took < 1.5 + MARGIN, f"{took:.2f}s past a 1.5 s deadline"
    assert {attempt.outcome for attempt in caught.value.attempts} == {"timeout"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("script", HOSTILE.values(), ids=HOSTILE.keys())
def test_beside_a_healthy_route_the_call_moves_on_after_the_route_timeout(
    good: FakeVLLM, script: Any, kind: str
) -> None:
    with RawServer(script) as bad:
        config = config_for({"bad": bad.base_url, "good": good.base_url}, deadline=10)
        provider = VLLMOpenAIProvider(config)
        try:
            route, took = call(provider, kind)
            state = provider.stats()["bad"]["state"]
        finally:
            provider.close()
    assert route == "good"
    assert took < 1.0 + MARGIN  # the bad route's 1 s timeout, then a fast answer
    assert state == "ejected"


@pytest.mark.parametrize("kind", ["stream", "astream"])
def test_a_stream_without_a_token_ends_by_its_deadline(kind: str) -> None:
    with RawServer(stream_without_a_token) as bad:
        provider = VLLMOpenAIProvider(config_for({"bad": bad.base_url}))
        started = time.monotonic()
        try:
            with pytest.raises(AllRoutesFailedError):
                call(provider, kind)
        finally:
            provider.close()
    assert time.monotonic() - started < 1.5 + MARGIN


@pytest.mark.parametrize("kind", ["stream", "astream"])
def test_a_stream_started_late_in_its_deadline_keeps_the_route_timeout_between_tokens(
    kind: str,
) -> None:
    """The first route answers 503 after most of the deadline; the second streams with gaps
    longer than what was left of the deadline but shorter than its own timeout."""

    async def late_503(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(1.2)
        writer.write(response_head(503, [("content-type", "application/json")], length=2))
        writer.write(b"{}")

    async def slow_tokens(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response_head(200, [("content-type", "text/event-stream")]))
        for text in ("one", " two", " three"):
            writer.write(b"data: " + _json(chat_chunk(text)) + b"\n\n")
            await writer.drain()
            await asyncio.sleep(0.6)  # longer than the 0.3 s left of the deadline
        writer.write(b"data: [DONE]\n\n")

    with RawServer(late_503) as first, RawServer(slow_tokens) as second:
        config = config_for(
            {"first": first.base_url, "second": second.base_url}, timeout=2.0, deadline=1.5
        )
        provider = VLLMOpenAIProvider(config)
        try:
            route, _took = call(provider, kind)
            stats = provider.stats()
        finally:
            provider.close()
    assert route == "second"
    assert stats["second"]["state"] == "healthy" and stats["second"]["failures"] == 0


# -- health checks ------------------------------------------------------------------------


async def health_trickled(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    writer.write(response_head(200, [("content-type", "application/json")], length=10**6))
    while True:
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.05)


async def health_endless(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    writer.write(response_head(200, [("content-type", "application/json")]))
    block = b" " * 65536
    while True:  # no length, no end: only a size cap stops the reader
        writer.write(block)
        await writer.drain()


def test_live_checks_end_by_their_timeout() -> None:
    with RawServer(health_trickled) as bad:
        provider = VLLMOpenAIProvider(config_for({"bad": bad.base_url}))
        try:
            started = time.monotonic()
            checks = provider.health_checks(timeout=0.5)
            sync_took = time.monotonic() - started
            started = time.monotonic()
            available = provider.is_available()
            available_took = time.monotonic() - started

            async def run() -> Any:
                try:
                    started = time.monotonic()
                    found = await provider.ahealth_checks(timeout=0.5)
                    return found, time.monotonic() - started
                finally:
                    await provider.aclose()

            async_checks, async_took = asyncio.run(run())
        finally:
            provider.close()
    assert checks[0].healthy is False and async_checks[0].healthy is False
    assert available is False
    assert "within 0.5s" in (checks[0].error or "")
    assert sync_took < 0.5 + MARGIN and async_took < 0.5 + MARGIN
    assert available_took < 1.0 + MARGIN  # min(5 s, the 1 s route timeout)


def test_a_health_answer_that_never_ends_is_cut_at_a_size_cap() -> None:
    with RawServer(health_endless) as bad:
        provider = VLLMOpenAIProvider(config_for({"bad": bad.base_url}))
        try:
            (check,) = provider.health_checks(timeout=30)
        finally:
            provider.close()
    assert check.healthy is False
    assert "larger than" in (check.error or "") and "refused" in (check.error or "")


def test_the_background_checker_ends_its_round_by_the_timeout_and_ejects_a_dead_route() -> None:
    with RawServer(health_trickled) as bad:
        provider = VLLMOpenAIProvider(config_for({"bad": bad.base_url}))
        checker = ActiveChecker(
            list(provider.config.routes.values()),
            provider.balancer,
            provider._engine.sender,
            interval=60,
            settings=CheckSettings(0.5, 4096, provider.balancer.redact),
        )
        try:
            started = time.monotonic()
            checker.run_once()
            took = time.monotonic() - started
        finally:
            provider.close()
    assert took < 0.5 + MARGIN
    assert provider.stats()["bad"]["state"] == "ejected"


def test_the_healthcheck_command_ends_by_its_timeout(tmp_path: Path) -> None:
    with RawServer(health_trickled) as bad:
        path = tmp_path / "config.yaml"
        routes = {"bad": {"base_url": bad.base_url, "model": "m"}}
        path.write_text(yaml.safe_dump({"llm": {"routes": routes}}))
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "healthcheck_vllm.py"), "--config",
             str(path), "--timeout", "1", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert '"healthy": false' in done.stdout
    assert took < 1.0 + 2 * MARGIN  # plus the interpreter's start
