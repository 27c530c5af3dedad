"""What bounds an attempt: the response size cap, the attempt's total time, and redirects.

A mock transport answers with bodies that are too large, arrive too slowly (bytes trickling in
under the read timeout), or redirect. Route "bad" misbehaves, route "good" answers; every call
must end on "good" within its time, with "bad" failed over and ejected. Sync and async alike.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from llm import AllRoutesFailedError, VLLMOpenAIProvider, parse_config
from llm.errors import APIStatusError

GOOD = "http://127.0.0.1:8001/v1"
BAD = "http://127.0.0.1:8002/v1"
LIMIT = 4096

ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
    }
).encode()
STREAM = (
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)
MESSAGES = [{"role": "user", "content": "hi"}]


class Pieces(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that arrives in pieces, ``delay`` seconds apart."""

    def __init__(self, pieces: list[bytes], delay: float = 0.0) -> None:
        self.pieces = pieces
        self.delay = delay

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.pieces:
            time.sleep(self.delay)
            yield piece

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            await asyncio.sleep(self.delay)
            yield piece


Bad = Callable[[httpx.Request], httpx.Response]


def handler(bad: Bad) -> Callable[[httpx.Request], httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        if str(request.url).startswith(BAD):
            return bad(request)
        if json.loads(request.content).get("stream"):
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, stream=Pieces([STREAM])
            )
        return httpx.Response(200, headers={"content-type": "application/json"}, content=ANSWER)

    return handle


def provider(bad: Bad, **params: Any) -> VLLMOpenAIProvider:
    config = parse_config(
        {
            "llm": {
                "routes": {
                    "bad": {"base_url": BAD, "model": "m"},
                    "good": {"base_url": GOOD, "model": "m"},
                },
                "params": {"timeout": 0.3, "max_response_bytes": LIMIT, **params},
                "retry": {"backoff_initial": 0.01, "backoff_max": 0.02},
            }
        },
        environ={},
    )
    transport = httpx.MockTransport(handler(bad))
    return VLLMOpenAIProvider(config, transport=transport, async_transport=transport)


def call(api: str, stream: bool, bad: Bad, **params: Any) -> tuple[Any, VLLMOpenAIProvider]:
    """One call (the first goes to "bad": round robin starts there); its result or error."""
    chosen = provider(bad, **params)

    async def async_call() -> Any:
        try:
            if stream:
                return [event async for event in chosen.astream_events(MESSAGES)][-1]
            return await chosen.achat_completion(MESSAGES)
        finally:
            await chosen.aclose()

    try:
        if api == "async":
            return asyncio.run(async_call()), chosen
        if stream:
            return list(chosen.stream_events(MESSAGES))[-1], chosen
        return chosen.chat_completion(MESSAGES), chosen
    finally:
        chosen.close()


def first_failure(result: Any) -> Any:
    assert result.route == "good"
    assert [a.route for a in result.attempts] == ["bad", "good"]
    return result.attempts[0]


API = pytest.mark.parametrize("api", ["sync", "async"])


@API
@pytest.mark.parametrize("declared", [True, False])
def test_an_answer_past_the_cap_is_refused_and_fails_over(api, declared):
    body = b'{"choices": "' + b"x" * (LIMIT * 4) + b'"}'
    headers = {"content-type": "application/json"}
    if declared:
        headers["content-length"] = str(len(body))
    pieces = Pieces([body[i : i + 1000] for i in range(0, len(body), 1000)])

    def bad(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=headers, stream=pieces)

    result, chosen = call(api, False, bad)
    attempt = first_failure(result)
    assert attempt.outcome == "invalid_response"
    assert f"larger than max_response_bytes ({LIMIT} bytes)" in attempt.error
    assert chosen.stats()["bad"]["state"] == "ejected"


@API
def test_an_error_body_past_the_cap_is_refused_too(api):
    def bad(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, content=b"e" * (LIMIT + 1))

    result, _ = call(api, False, bad)
    assert "larger than max_response_bytes" in first_failure(result).error


@API
def test_a_stream_event_past_the_cap_is_refused_before_the_first_token(api):
    huge = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * (LIMIT * 2)

    def bad(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=Pieces([huge])
        )

    end, chosen = call(api, True, bad)
    attempt = first_failure(end)
    assert attempt.outcome == "invalid_response"
    assert "stream event larger than max_response_bytes" in attempt.error
    assert chosen.stats()["bad"]["state"] == "ejected"


@API
def test_a_trickling_answer_ends_at_the_attempt_timeout(api):
    # 10 pieces 0.1 s apart: each read is quick, the whole is past the 0.3 s attempt timeout.
    def bad(request: httpx.Request) -> httpx.Response:
        pieces = [ANSWER[i : i + 8] for i in range(0, len(ANSWER), 8)][:10]
        return httpx.Response(
            200, headers={"content-type": "application/json"}, stream=Pieces(pieces, 0.1)
        )

    started = time.monotonic()
    result, _ = call(api, False, bad)
    elapsed = time.monotonic() - started
    attempt = first_failure(result)
    assert attempt.outcome == "timeout" and "answer not complete within 0.3s" in attempt.error
    assert elapsed < 0.9  # the attempt's 0.3 s, one more piece at most, and the good answer


@API
def test_a_stream_without_a_first_token_ends_at_the_attempt_timeout(api):
    pings = [b": ping\n\n"] * 20  # comments only, 0.05 s apart: 1 s in all

    def bad(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=Pieces(pings, 0.05)
        )

    started = time.monotonic()
    end, _ = call(api, True, bad)
    attempt = first_failure(end)
    assert attempt.outcome == "timeout" and "no first token within 0.3s" in attempt.error
    assert time.monotonic() - started < 0.9


@API
@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed_and_mean_a_misconfigured_route(api, status):
    seen: list[str] = []

    def bad(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(
            status, headers={"location": "https://user:pw@elsewhere.example/v1/chat?k=s"}
        )

    result, chosen = call(api, False, bad)
    attempt = first_failure(result)
    assert attempt.status_code == status
    assert "redirect to https://elsewhere.example/v1/chat not followed" in attempt.error
    assert "pw" not in attempt.error and "k=s" not in attempt.error
    assert seen == [BAD + "/chat/completions"]  # once, and nothing sent to the Location
    assert chosen.stats()["bad"]["state"] == "ejected"


@API
def test_a_redirect_on_the_only_route_raises_a_typed_error(api):
    def bad(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "http://elsewhere.example/v1"})

    with pytest.raises(AllRoutesFailedError) as caught:
        call(api, False, bad, max_retries=0)
    error = caught.value
    assert isinstance(error.last_error, APIStatusError)
    assert error.last_error.status_code == 302 and error.attempts[0].route == "bad"


def test_the_cap_does_not_refuse_an_answer_just_under_it():
    body = b'{"choices": [], "pad": "' + b"x" * (LIMIT - 40) + b'"}'
    assert len(body) <= LIMIT

    def bad(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "application/json"}, content=body)

    result, _ = call("sync", False, bad)
    assert result.route == "bad" and len(result.attempts) == 1

