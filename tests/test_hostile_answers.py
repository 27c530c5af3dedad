"""Hostile answers: every answer and stream event is checked by shape before use.

A raw server (``raw_server.RawServer``) answers 200 with bodies the protocol does not allow
(``choices: [null]``, a string ``message``, ``tool_calls: 5``, JSON nested 100,000 deep...);
the call must fail over to a healthy fake vLLM, the bad route must be ejected (counted as a
failure, not a success), and no in-flight count or trial slot may leak. Sync, async and
streamed alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from raw_server import RawServer, answer, chat_answer, chat_chunk, sse

from llm import VLLMOpenAIProvider, parse_config
from llm.errors import StreamInterruptedError
from llm.testing import FakeVLLM

MSG = [{"role": "user", "content": "hi"}]
DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000

MALFORMED_ANSWERS = {
    "choices-null-item": {"choices": [None]},
    "choices-number-item": {"choices": [1]},
    "choices-string": {"choices": "abc"},
    "message-string": {"choices": [{"index": 0, "message": "hi", "finish_reason": "stop"}]},
    "content-number": {"choices": [{"index": 0, "message": {"content": 5}}]},
    "tool-calls-number": {"choices": [{"index": 0, "message": {"tool_calls": 5}}]},
    "tool-call-string": {"choices": [{"message": {"tool_calls": ["f"]}}]},
    "tool-function-string": {"choices": [{"message": {"tool_calls": [{"function": "f"}]}}]},
    "arguments-object": {
        "choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": {}}}]}}]
    },
    "finish-reason-number": {"choices": [{"message": {"content": "x"}, "finish_reason": 3}]},
    "usage-string": {**chat_answer(), "usage": "lots"},
    "deep-list": DEEP,
    "deep-object": DEEP_OBJECT,
}


def _chunk_with(**choice: Any) -> dict[str, Any]:
    chunk = chat_chunk("x")
    chunk["choices"] = [{"index": 0, **choice}]
    return chunk


MALFORMED_CHUNKS = {
    "choices-string": {**chat_chunk("x"), "choices": "abc"},
    "choices-null-item": {**chat_chunk("x"), "choices": [None]},
    "delta-string": _chunk_with(delta="x"),
    "content-number": _chunk_with(delta={"content": 5}),
    "tool-calls-number": _chunk_with(delta={"tool_calls": 5}),
    "tool-call-index-string": _chunk_with(delta={"tool_calls": [{"index": "0"}]}),
    "index-string": _chunk_with(index="0", delta={"content": "x"}),
    "usage-list": {**chat_chunk("x"), "usage": [1]},
    "deep": DEEP,
}


@pytest.fixture
def good() -> Iterator[FakeVLLM]:
    with FakeVLLM("m", name="good") as server:
        yield server


def provider_for(bad: RawServer, good: FakeVLLM, **health: Any) -> VLLMOpenAIProvider:
    config = {
        "llm": {
            "routes": {
                "bad": {"base_url": bad.base_url, "model": "m"},
                "good": {"base_url": good.base_url, "model": "m"},
            },
            "params": {"timeout": 5, "max_retries": 2},
            "health": {"cooldown": 30, **health},
        }
    }
    return VLLMOpenAIProvider(parse_config(config, environ={}))


def sync_call(provider: VLLMOpenAIProvider, kind: str) -> tuple[str, list[Any]]:
    """One call of ``kind`` ("sync" or "stream"): (the route that answered, its attempts)."""
    if kind == "sync":
        result = provider.chat_completion(MSG)
        return result.route, list(result.attempts)
    return _end(list(provider.stream_events(MSG)))


async def async_call(provider: VLLMOpenAIProvider, kind: str) -> tuple[str, list[Any]]:
    """One call of ``kind`` ("async" or "astream")."""
    if kind == "async":
        result = await provider.achat_completion(MSG)
        return result.route, list(result.attempts)
    return _end([event async for event in provider.astream_events(MSG)])


def _end(events: list[Any]) -> tuple[str, list[Any]]:
    end = events[-1]
    assert end.kind == "end"
    return end.route, list(end.attempts)


def call(provider: VLLMOpenAIProvider, kind: str) -> tuple[str, list[Any]]:
    """One call of any kind; the async ones on a loop of their own, closed after."""
    if kind in ("sync", "stream"):
        return sync_call(provider, kind)

    async def run() -> tuple[str, list[Any]]:
        try:
            return await async_call(provider, kind)
        finally:
            await provider.aclose()

    return asyncio.run(run())


def assert_nothing_leaked(provider: VLLMOpenAIProvider) -> None:
    for route in provider.balancer.routes.values():
        assert route.in_flight == 0, route.name
        assert route.health.trial_in_flight == 0, route.name


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("body", MALFORMED_ANSWERS.values(), ids=MALFORMED_ANSWERS.keys())
def test_a_malformed_answer_ejects_the_route_and_the_call_moves_on(
    good: FakeVLLM, body: Any, kind: str
) -> None:
    with RawServer(answer(body)) as bad:
        provider = provider_for(bad, good)
        try:
            route, attempts = call(provider, kind)
            stats = provider.stats()
        finally:
            provider.close()
    assert route == "good"
    assert attempts[0].route == "bad" and attempts[0].outcome == "invalid_response"
    assert stats["bad"]["state"] == "ejected"
    assert stats["bad"]["failures"] == 1 and stats["bad"]["successes"] == 0
    assert_nothing_leaked(provider)


@pytest.mark.parametrize("kind", ["stream", "astream"])
@pytest.mark.parametrize("chunk", MALFORMED_CHUNKS.values(), ids=MALFORMED_CHUNKS.keys())
def test_a_malformed_event_before_the_first_token_fails_the_stream_over(
    good: FakeVLLM, chunk: Any, kind: str
) -> None:
    with RawServer(sse([chat_chunk(), chunk])) as bad:
        provider = provider_for(bad, good)
        try:
            route, attempts = call(provider, kind)
            stats = provider.stats()
        finally:
            provider.close()
    assert route == "good"
    assert attempts[0].route == "bad" and attempts[0].outcome == "invalid_response"
    assert stats["bad"]["state"] == "ejected" and stats["bad"]["successes"] == 0
    assert_nothing_leaked(provider)


@pytest.mark.parametrize("kind", ["stream", "astream"])
@pytest.mark.parametrize("chunk", MALFORMED_CHUNKS.values(), ids=MALFORMED_CHUNKS.keys())
def test_a_malformed_event_after_the_first_token_is_a_typed_cut_counted_against_the_route(
    good: FakeVLLM, chunk: Any, kind: str
) -> None:
    with RawServer(sse([chat_chunk(), chat_chunk("Hel"), chunk], pause=0.05)) as bad:
        provider = provider_for(bad, good)
        try:
            with pytest.raises(StreamInterruptedError) as caught:
                call(provider, kind)
            stats = provider.stats()
        finally:
            provider.close()
    assert caught.value.route == "bad"
    assert stats["bad"]["state"] == "ejected"
    assert stats["bad"]["failures"] == 1 and stats["bad"]["successes"] == 0
    assert_nothing_leaked(provider)


@pytest.mark.parametrize("kind", ["sync", "async", "stream", "astream"])
def test_an_error_body_nested_too_deeply_is_still_a_server_error(
    good: FakeVLLM, kind: str
) -> None:
    with RawServer(answer(DEEP, status=500)) as bad:
        provider = provider_for(bad, good)
        try:
            route, attempts = call(provider, kind)
        finally:
            provider.close()
    assert route == "good"
    assert attempts[0].route == "bad" and attempts[0].status_code == 500
    assert_nothing_leaked(provider)


@pytest.mark.parametrize("kind", ["sync", "async", "stream", "astream"])
def test_a_probing_route_that_answers_garbage_is_ejected_again_not_stuck(
    good: FakeVLLM, kind: str
) -> None:
    body = DEEP if kind in ("sync", "async") else None
    script = answer(body) if body is not None else sse([chat_chunk(), DEEP])
    with RawServer(script) as bad:
        provider = provider_for(bad, good, cooldown=0.05, max_cooldown=0.05)
        try:
            if kind in ("sync", "stream"):
                states = probe_twice_sync(provider, kind)
            else:
                states = asyncio.run(probe_twice_async(provider, kind))
        finally:
            provider.close()
    probing, (route, attempts), after_trial, later = states
    assert probing == "probing"
    assert route == "good" and attempts[0].route == "bad"
    assert after_trial["state"] == "ejected" and after_trial["failures"] == 2
    assert later["state"] == "probing"  # its trial slot is free again
    assert_nothing_leaked(provider)


def probe_twice_sync(provider: VLLMOpenAIProvider, kind: str) -> tuple[Any, ...]:
    sync_call(provider, kind)  # bad fails, ejected for 0.05 s
    time.sleep(0.1)  # bad is probing: the next call is its trial
    probing = provider.stats()["bad"]["state"]
    second = sync_call(provider, kind)
    after_trial = provider.stats()["bad"]
    time.sleep(0.1)
    return probing, second, after_trial, provider.stats()["bad"]


async def probe_twice_async(provider: VLLMOpenAIProvider, kind: str) -> tuple[Any, ...]:
    try:
        await async_call(provider, kind)
        await asyncio.sleep(0.1)
        probing = provider.stats()["bad"]["state"]
        second = await async_call(provider, kind)
        after_trial = provider.stats()["bad"]
        await asyncio.sleep(0.1)
        return probing, second, after_trial, provider.stats()["bad"]
    finally:
        await provider.aclose()


@pytest.mark.parametrize(
    ("usage", "counts"),
    [
        ({"prompt_tokens": 422, "prompt_tokens_details": {"cached_tokens": 384}}, (422, 384)),
        ({"prompt_tokens": 422, "prompt_tokens_details": None}, (422, 0)),
        ({"prompt_tokens": 422}, (422, 0)),
        ({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 11}}, (10, 0)),
        ({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": -1}}, (10, 0)),
        ({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": True}}, (10, 0)),
        ({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 5.0}}, (10, 0)),
        ({"prompt_tokens": "many", "prompt_tokens_details": {"cached_tokens": 1}}, (0, 0)),
        ({"prompt_tokens": 1 << 60}, (0, 0)),
        ({"prompt_tokens": -5}, (0, 0)),
        ({"prompt_tokens": True}, (0, 0)),
        ([1, 2], (0, 0)),
        (None, (0, 0)),
    ],
)
def test_usage_counts_for_stats_take_only_sane_numbers(
    usage: object, counts: tuple[int, int]
) -> None:
    from llm.judge.answers import prompt_counts

    assert prompt_counts(usage) == counts
