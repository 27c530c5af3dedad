"""The provider against real HTTP: fake vLLM servers on 127.0.0.1, sync and async mirrored."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from llm import (
    AllRoutesFailedError,
    BadRequestError,
    ContextWindowError,
    LLMError,
    StreamInterruptedError,
    VLLMOpenAIProvider,
)
from llm.factory import LLMFactory
from llm.testing import FakeVLLM

MESSAGES = [{"role": "user", "content": "hello world"}]


def fleet_config(
    servers: dict[str, FakeVLLM], fallback: str | None = None, **llm: Any
) -> dict[str, Any]:
    routes = {
        name: {"base_url": server.base_url, "model": server_model(server), "timeout": 2}
        for name, server in servers.items()
    }
    config: dict[str, Any] = {
        "routes": routes,
        "default_route": next(iter(servers)),
        "lb_policy": "round_robin",
        "params": {"max_tokens": 8, "temperature": 0, "timeout": 2, "max_retries": 3},
        "retry": {"backoff_initial": 0.01, "backoff_max": 0.05},
        "health": {"cooldown": 5, "max_cooldown": 10},
    }
    if fallback is not None:
        config["fallback_route"] = fallback
    config.update(llm)
    return {"llm": config}


def server_model(server: FakeVLLM) -> str:
    return server.model


@pytest.fixture
def trio() -> Iterator[dict[str, FakeVLLM]]:
    servers = {name: FakeVLLM("tiny", name=name).start() for name in ("a", "b", "c")}
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture
def with_fallback() -> Iterator[dict[str, FakeVLLM]]:
    servers = {
        "a": FakeVLLM("tiny", name="a").start(),
        "b": FakeVLLM("tiny", name="b").start(),
        "fb": FakeVLLM("small", name="fb").start(),
    }
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def provider_for(servers: dict[str, FakeVLLM], **kwargs: Any) -> VLLMOpenAIProvider:
    return LLMFactory.create_provider("vllm_openai", config=fleet_config(servers, **kwargs))


# -- round robin -----------------------------------------------------------------------


def test_round_robin_splits_evenly(trio):
    with provider_for(trio) as provider:
        routes = Counter(provider.chat_completion(MESSAGES).route for _ in range(60))
    assert routes == {"a": 20, "b": 20, "c": 20}
    assert [s.request_count for s in trio.values()] == [20, 20, 20]


async def test_async_round_robin_splits_evenly(trio):
    async with provider_for(trio) as provider:
        results = await asyncio.gather(*(provider.achat_completion(MESSAGES) for _ in range(60)))
    assert Counter(r.route for r in results) == {"a": 20, "b": 20, "c": 20}


# -- least latency ---------------------------------------------------------------------


@pytest.fixture
def fast_and_slow() -> Iterator[dict[str, FakeVLLM]]:
    servers = {
        "slow": FakeVLLM("tiny", latency=0.08, name="slow").start(),
        "fast": FakeVLLM("tiny", latency=0.005, name="fast").start(),
    }
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def test_least_latency_prefers_the_fast_instance(fast_and_slow):
    with provider_for(fast_and_slow, lb_policy="least_latency") as provider:
        routes = Counter(provider.chat_completion(MESSAGES).route for _ in range(40))
    assert routes["fast"] >= 36, routes


async def test_async_least_latency_prefers_the_fast_instance(fast_and_slow):
    async with provider_for(fast_and_slow, lb_policy="least_latency") as provider:
        routes: Counter[str] = Counter()
        for _ in range(10):
            batch = await asyncio.gather(*(provider.achat_completion(MESSAGES) for _ in range(4)))
            routes.update(r.route for r in batch)
    assert routes["fast"] >= 32, routes


def test_least_latency_uses_ttft_for_streams(fast_and_slow):
    with provider_for(fast_and_slow, lb_policy="least_latency") as provider:
        for _ in range(12):
            assert "".join(provider.stream(MESSAGES))
        stats = provider.stats()
    assert stats["fast"]["ttft_ewma_ms"] < stats["slow"]["ttft_ewma_ms"]
    # the slow route's warm-up (3 streams), then the fast route only
    assert stats["fast"]["requests"] == 12 - 3 and stats["slow"]["requests"] == 3


# -- an instance killed mid-run ----------------------------------------------------------


async def test_async_instance_killed_mid_run_costs_zero_failed_calls(trio):
    trio["b"].set_latency(0.01)
    async with provider_for(trio) as provider:
        done = 0
        failures: list[BaseException] = []
        queue: asyncio.Queue[int] = asyncio.Queue()
        for number in range(400):
            queue.put_nowait(number)

        async def worker() -> None:
            nonlocal done
            while not queue.empty():
                number = queue.get_nowait()
                if number == 200:
                    trio["b"].down()
                try:
                    await provider.achat(MESSAGES)
                    done += 1
                except LLMError as error:  # pragma: no cover - the assertion below reports it
                    failures.append(error)

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(32))), timeout=60)
        stats = provider.stats()
    assert failures == [] and done == 400
    assert stats["b"]["ejections"] >= 1 and stats["b"]["state"] != "healthy"
    assert stats["a"]["in_flight"] == stats["b"]["in_flight"] == stats["c"]["in_flight"] == 0


def test_sync_instance_killed_mid_run_costs_zero_failed_calls(trio):
    trio["b"].set_latency(0.01)
    with provider_for(trio) as provider:

        def call(number: int) -> str:
            if number == 100:
                trio["b"].down()
            return provider.chat_completion(MESSAGES).route

        with ThreadPoolExecutor(max_workers=32) as pool:
            routes = Counter(pool.map(call, range(200), timeout=60))
        stats = provider.stats()
    assert sum(routes.values()) == 200
    assert stats["b"]["ejections"] >= 1 and stats["b"]["state"] != "healthy"
    assert all(s["in_flight"] == 0 for s in stats.values())


# -- fallback ---------------------------------------------------------------------------


def test_fallback_used_when_the_pool_is_down(with_fallback):
    with_fallback["a"].down()
    with_fallback["b"].down()
    with provider_for(with_fallback, fallback="fb") as provider:
        result = provider.chat_completion(MESSAGES)
    assert result.route == "fb"
    assert [a.route for a in result.attempts] == ["a", "b", "fb"]
    assert with_fallback["fb"].requests[-1].json["model"] == "small"


async def test_async_fallback_used_when_the_pool_is_down(with_fallback):
    with_fallback["a"].down()
    with_fallback["b"].fail_next(10, status=503)
    async with provider_for(with_fallback, fallback="fb") as provider:
        result = await provider.achat_completion(MESSAGES)
    assert result.route == "fb"
    assert [a.outcome for a in result.attempts] == ["connect_error", "status", "ok"]


def test_everything_down_raises_all_routes_failed(with_fallback):
    for server in with_fallback.values():
        server.down()
    with provider_for(with_fallback, fallback="fb") as provider:
        started = time.monotonic()
        with pytest.raises(AllRoutesFailedError) as caught:
            provider.chat(MESSAGES)
    assert time.monotonic() - started < 5
    assert len(caught.value.attempts) == 4
    assert {a.outcome for a in caught.value.attempts} == {"connect_error"}


# -- the request's fault ------------------------------------------------------------------


def test_400_does_not_eject(trio):
    with provider_for(trio) as provider:
        with pytest.raises(BadRequestError) as caught:
            provider.chat(MESSAGES, route="a", max_tokens=4096)
        stats = provider.stats()
    assert caught.value.status_code == 400
    assert "cannot be greater than max_model_len=512" in (caught.value.server_message or "")
    assert stats["a"]["state"] == "healthy" and stats["a"]["failures"] == 0
    assert trio["a"].request_count == 1


async def test_async_400_does_not_eject(trio):
    async with provider_for(trio) as provider:
        # too long for its first route: each route whose window is not known yet may still
        # take it (a 400 for context length teaches the window, routing/fit.py), so each is
        # asked once; the last one's 400 is the answer
        with pytest.raises(BadRequestError, match="max_model_len"):
            await provider.achat(MESSAGES, max_tokens=4096)
        assert all(s["state"] == "healthy" for s in provider.stats().values())
        assert sum(s.request_count for s in trio.values()) == 3
        with pytest.raises(ContextWindowError, match="max_tokens 4096"):
            await provider.achat(MESSAGES, max_tokens=4096)  # now known: nothing is sent
    assert sum(s.request_count for s in trio.values()) == 3


# -- streams ------------------------------------------------------------------------------


def test_streams_fail_over_before_the_first_token(trio):
    trio["a"].cut_streams_after(1)  # the role chunk, then the connection dies
    trio["b"].cut_streams_after(0)  # headers, then nothing
    with provider_for(trio) as provider:
        texts = ["".join(provider.stream(MESSAGES)) for _ in range(6)]
        stats = provider.stats()
    # Every server answers the same request with the same text: one distinct, non-empty answer.
    assert len(set(texts)) == 1 and texts[0]
    assert stats["a"]["state"] == stats["b"]["state"] == "ejected"
    assert stats["c"]["successes"] == 6


async def test_async_streams_fail_over_before_the_first_token(trio):
    trio["a"].cut_streams_after(1)
    trio["b"].fail_next(5, status=502)
    async with provider_for(trio) as provider:
        texts = []
        for _ in range(6):
            texts.append("".join([p async for p in provider.astream(MESSAGES)]))
        stats = provider.stats()
    assert len(set(texts)) == 1 and texts[0]
    assert stats["c"]["successes"] == 6


def test_stream_end_event_names_the_route_and_the_attempts(trio):
    trio["a"].cut_streams_after(0)
    with provider_for(trio) as provider:
        end = list(provider.stream_events(MESSAGES))[-1]
    assert end.kind == "end" and end.route == "b"
    assert [a.route for a in end.attempts] == ["a", "b"]
    assert end.attempts[0].outcome != "ok" and end.attempts[1].outcome == "ok"


async def test_async_stream_end_event_names_the_route_and_the_attempts(trio):
    trio["a"].fail_next(1, status=503)
    async with provider_for(trio) as provider:
        events = [event async for event in provider.astream_events(MESSAGES)]
    end = events[-1]
    assert end.kind == "end" and end.route == "b"
    assert [(a.route, a.outcome, a.status_code) for a in end.attempts] == [
        ("a", "status", 503),
        ("b", "ok", None),
    ]


def test_stream_cut_after_the_first_token_raises_and_counts(trio):
    trio["a"].cut_streams_after(3)
    with provider_for(trio) as provider:
        pieces: list[str] = []
        with pytest.raises(StreamInterruptedError) as caught:
            pieces.extend(provider.stream(MESSAGES, route="a"))
        stats = provider.stats()["a"]
    assert pieces  # the caller got tokens before the cut
    assert caught.value.route == "a"
    assert stats["state"] == "ejected" and stats["in_flight"] == 0


async def test_async_stream_cut_after_the_first_token_raises_and_counts(trio):
    trio["a"].cut_streams_after(3)
    async with provider_for(trio) as provider:
        with pytest.raises(StreamInterruptedError):
            async for _ in provider.astream(MESSAGES, route="a"):
                pass
        stats = provider.stats()["a"]
    assert stats["state"] == "ejected" and stats["in_flight"] == 0


async def test_async_stream_stopped_early_is_recorded(trio):
    trio["a"].set_token_delay(0.01)
    async with provider_for(trio) as provider:
        stream = provider.astream(MESSAGES, route="a", max_tokens=50)
        first = await stream.__anext__()
        await stream.aclose()
        stats = provider.stats()["a"]
    assert first and stats["in_flight"] == 0 and stats["ttft_ewma_ms"] is not None


# -- timeouts, Retry-After, recovery ---------------------------------------------------------


def test_hanging_instance_times_out_and_fails_over(trio):
    trio["a"].hang()
    cfg = fleet_config(trio)
    cfg["llm"]["routes"]["a"]["timeout"] = 0.3
    with LLMFactory.create_provider("vllm_openai", config=cfg) as provider:
        started = time.monotonic()
        result = provider.chat_completion(MESSAGES)
    assert result.route == "b"
    assert result.attempts[0].outcome == "timeout"
    assert time.monotonic() - started < 2


async def test_async_hanging_instance_times_out_and_fails_over(trio):
    trio["a"].hang()
    cfg = fleet_config(trio)
    cfg["llm"]["routes"]["a"]["timeout"] = 0.3
    async with LLMFactory.create_provider("vllm_openai", config=cfg) as provider:
        result = await provider.achat_completion(MESSAGES)
    assert result.route == "b" and result.attempts[0].outcome == "timeout"


def test_retry_after_is_honoured_on_a_single_route(trio):
    trio["a"].fail_next(1, status=429, retry_after=0.3)
    with provider_for({"a": trio["a"]}) as provider:
        started = time.monotonic()
        result = provider.chat_completion(MESSAGES)
    assert time.monotonic() - started >= 0.3
    assert [a.outcome for a in result.attempts] == ["status", "ok"]


def test_ejected_instance_gets_traffic_back_after_its_cooldown(trio):
    trio["a"].fail_next(1, status=500)
    with provider_for(trio, health={"cooldown": 0.2, "max_cooldown": 1}) as provider:
        provider.chat(MESSAGES, route="b")  # move the round-robin cursor off "a"... then:
        first = Counter(provider.chat_completion(MESSAGES).route for _ in range(6))
        assert provider.stats()["a"]["state"] in ("ejected", "probing", "healthy")
        time.sleep(0.3)
        later = Counter(provider.chat_completion(MESSAGES).route for _ in range(6))
        stats = provider.stats()["a"]
    assert sum(first.values()) == 6
    assert later["a"] == 2 and stats["state"] == "healthy" and stats["ejections"] == 1


# -- live checks ---------------------------------------------------------------------------


def test_health_list_models_and_is_available(with_fallback):
    with_fallback["b"].down()
    with provider_for(with_fallback, fallback="fb") as provider:
        report = provider.health(timeout=1)
        assert provider.list_models() == ["small", "tiny"]
        assert provider.is_available() is True
    assert report["a"]["healthy"] is True and report["a"]["max_model_len"] == 512
    assert report["b"]["healthy"] is False and report["b"]["error"]
    assert report["fb"]["models"] == ["small"]


async def test_async_health_and_is_available(with_fallback):
    for server in with_fallback.values():
        server.down()
    async with provider_for(with_fallback, fallback="fb") as provider:
        assert await provider.ais_available() is False
        report = await provider.ahealth(timeout=1)
        with pytest.raises(AllRoutesFailedError):
            await provider.alist_models()
    assert not any(entry["healthy"] for entry in report.values())


# -- active checks ---------------------------------------------------------------------------


def test_active_checks_eject_a_dead_route_before_traffic_finds_it(trio):
    health = {"cooldown": 5, "max_cooldown": 10, "check_interval": 0.1}
    with provider_for(trio, health=health) as provider:
        trio["a"].down()
        deadline = time.monotonic() + 3
        while provider.stats()["a"]["state"] == "healthy" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert provider.stats()["a"]["state"] == "ejected"
        assert "active check" in (provider.stats()["a"]["last_error"] or "")
        routes = Counter(provider.chat_completion(MESSAGES).route for _ in range(6))
        assert routes["a"] == 0  # no caller paid for discovering it
        trio["a"].up()
        deadline = time.monotonic() + 3
        while provider.stats()["a"]["state"] == "ejected" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert provider.stats()["a"]["state"] == "probing"  # cooldown cut short, not healed
        routes = Counter(provider.chat_completion(MESSAGES).route for _ in range(6))
        assert routes["a"] >= 1 and provider.stats()["a"]["state"] == "healthy"
