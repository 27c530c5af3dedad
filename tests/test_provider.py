"""Provider behaviour against respx-mocked routes: no sockets, sync and async mirrored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
from loguru import logger

from llm import (
    AllRoutesFailedError,
    AuthenticationError,
    BadRequestError,
    InvalidRequestError,
    NoRouteError,
    ServerError,
    VLLMOpenAIProvider,
    parse_config,
)

A = "http://127.0.0.1:8001/v1"
B = "http://127.0.0.1:8002/v1"
F = "http://127.0.0.1:8009/v1"
SECRET_A = "sk-route-a-secret-0123456789"


def answer(content: str | None = "hello", **message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "reasoning": None, **message},
                "finish_reason": "stop" if not message.get("tool_calls") else "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 3, "total_tokens": 5, "completion_tokens": 2},
    }


def config(**overrides: Any) -> dict[str, Any]:
    llm: dict[str, Any] = {
        "routes": {
            "a": {"base_url": A, "model": "m", "api_key": SECRET_A},
            "b": {"base_url": B, "model": "m", "headers": {"X-Team": "blue"}},
            "fb": {"base_url": F, "model": "small"},
        },
        "default_route": "a",
        "fallback_route": "fb",
        "lb_policy": "round_robin",
        "params": {"temperature": 0.0, "max_tokens": 16, "timeout": 5, "max_retries": 3},
        "retry": {"backoff_initial": 0.01, "backoff_max": 0.05},
    }
    llm.update(overrides)
    return {"llm": llm}


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def router() -> Iterator[respx.Router]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as mock:
        yield mock


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make(router: respx.Router, sleeps: Sleeps, **overrides: Any) -> VLLMOpenAIProvider:
    return VLLMOpenAIProvider(
        parse_config(config(**overrides)),
        transport=httpx.MockTransport(router.handler),
        async_transport=httpx.MockTransport(router.async_handler),
        sleep=sleeps,
        async_sleep=sleeps.asleep,
    )


def sent(route: respx.Route) -> dict[str, Any]:
    return json.loads(route.calls.last.request.content)


MESSAGES = [{"role": "user", "content": "hi"}]


def test_body_is_config_params_overlaid_by_call_keywords(router, sleeps):
    a = router.post(f"{A}/chat/completions").respond(json=answer())
    provider = make(router, sleeps)
    provider.chat(MESSAGES, route="a", temperature=0.7, top_k=5, max_tokens=None, seed=1)
    body = sent(a)
    assert body["model"] == "m"
    assert body["temperature"] == 0.7
    assert body["top_k"] == 5 and body["seed"] == 1
    assert "max_tokens" not in body  # None removes a config default
    assert "route" not in body and "stream" not in body
    assert body["messages"] == MESSAGES


def test_round_robin_alternates_and_each_route_gets_its_own_credentials(router, sleeps):
    a = router.post(f"{A}/chat/completions").respond(json=answer("from a"))
    b = router.post(f"{B}/chat/completions").respond(json=answer("from b"))
    provider = make(router, sleeps)
    routes = [provider.chat_completion(MESSAGES).route for _ in range(4)]
    assert sorted(routes) == ["a", "a", "b", "b"]
    assert a.calls.last.request.headers["authorization"] == f"Bearer {SECRET_A}"
    assert b.calls.last.request.headers["authorization"] == "Bearer EMPTY"
    assert b.calls.last.request.headers["x-team"] == "blue"
    assert "x-team" not in a.calls.last.request.headers


def test_chat_completion_result_fields(router, sleeps):
    tool_call = {
        "id": "call-1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    payload = answer(None, tool_calls=[tool_call])
    payload["choices"][0]["message"]["reasoning"] = "thinking"
    router.post(f"{A}/chat/completions").respond(json=payload)
    router.post(f"{B}/chat/completions").respond(json=payload)
    result = make(router, sleeps).chat_completion(MESSAGES, tools=[{"type": "function"}])
    assert result.content is None and str(result) == ""
    assert result.tool_calls == [tool_call]
    assert result.reasoning == "thinking"
    assert result.finish_reason == "tool_calls"
    assert result.usage == {"prompt_tokens": 3, "total_tokens": 5, "completion_tokens": 2}
    assert result.route in ("a", "b")
    assert [a.outcome for a in result.attempts] == ["ok"]
    assert result.latency_s >= 0 and result.raw == payload


def test_reasoning_content_of_older_servers(router, sleeps):
    payload = answer("x")
    del payload["choices"][0]["message"]["reasoning"]
    payload["choices"][0]["message"]["reasoning_content"] = "old style"
    router.post(f"{A}/chat/completions").respond(json=payload)
    assert make(router, sleeps).chat_completion(MESSAGES, route="a").reasoning == "old style"


def test_send_model_false_omits_model(router, sleeps):
    cfg = config()
    cfg["llm"]["routes"]["a"]["send_model"] = False
    a = router.post(f"{A}/chat/completions").respond(json=answer())
    provider = VLLMOpenAIProvider(parse_config(cfg), transport=httpx.MockTransport(router.handler))
    provider.chat(MESSAGES, route="a")
    assert "model" not in sent(a)


def test_model_keyword_selects_the_pool_and_fallback_model_replaces_the_requests(router, sleeps):
    fb = router.post(f"{F}/chat/completions").respond(json=answer("small"))
    provider = make(router, sleeps)
    assert provider.chat_completion(MESSAGES, model="small").route == "fb"
    assert sent(fb)["model"] == "small"


def test_unknown_route_or_model_fails_before_any_io(router, sleeps):
    provider = make(router, sleeps)
    with pytest.raises(NoRouteError, match=r"no route named 'nope'.*a, b, fb"):
        provider.chat(MESSAGES, route="nope")
    with pytest.raises(NoRouteError, match="no route serves model 'gpt-9'"):
        provider.chat(MESSAGES, model="gpt-9")
    assert len(router.calls) == 0


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [([], "empty"), ("hi", "must be a list"), ([{"content": "no role"}], "messages\\[0\\]")],
)
def test_invalid_messages_fail_before_any_io(router, sleeps, messages, fragment):
    with pytest.raises(InvalidRequestError, match=fragment):
        make(router, sleeps).chat(messages)
    assert len(router.calls) == 0


def test_unserialisable_params_fail_before_any_io(router, sleeps):
    with pytest.raises(InvalidRequestError, match="not JSON-serialisable"):
        make(router, sleeps).chat(MESSAGES, stop={1, 2})
    assert len(router.calls) == 0
    assert all(s["in_flight"] == 0 for s in make(router, sleeps).stats().values())


def test_400_is_raised_at_once_with_the_server_message_and_does_not_eject(router, sleeps):
    body = {
        "error": {
            "message": "max_tokens=4096 cannot be greater than max_model_len=512.",
            "type": "BadRequestError",
            "param": "max_tokens",
            "code": 400,
        }
    }
    a = router.post(f"{A}/chat/completions").respond(400, json=body)
    b = router.post(f"{B}/chat/completions").respond(json=answer())
    provider = make(router, sleeps)
    with pytest.raises(BadRequestError) as caught:
        provider.chat(MESSAGES, route="a", max_tokens=4096)
    error = caught.value
    assert error.status_code == 400 and error.route == "a"
    assert error.server_message is not None and "max_model_len=512" in error.server_message
    assert a.call_count == 1 and b.call_count == 0
    assert provider.stats()["a"]["state"] == "healthy"


def test_flat_error_body_of_older_vllm_is_parsed(router, sleeps):
    body = {
        "object": "error",
        "message": "old-style failure",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    router.post(f"{A}/chat/completions").respond(400, json=body)
    with pytest.raises(BadRequestError, match="old-style failure"):
        make(router, sleeps).chat(MESSAGES, route="a")


def test_5xx_fails_over_at_once_and_ejects(router, sleeps):
    router.post(f"{A}/chat/completions").respond(503, json={"error": {"message": "busy"}})
    router.post(f"{B}/chat/completions").respond(json=answer("b"))
    provider = make(router, sleeps)
    results = [provider.chat_completion(MESSAGES) for _ in range(4)]
    assert all(r.content == "b" for r in results)
    assert sleeps == []  # failover to an untried route does not wait
    stats = provider.stats()
    assert stats["a"]["state"] == "ejected" and stats["a"]["requests"] == 1
    assert "busy" in (stats["a"]["last_error"] or "")


def test_401_counts_against_the_route_next_route_tried_and_logged_loudly(router, sleeps):
    router.post(f"{A}/chat/completions").respond(401, json={"error": "Unauthorized"})
    router.post(f"{B}/chat/completions").respond(json=answer("b"))
    lines: list[str] = []
    logger.enable("llm")
    sink = logger.add(lines.append, level="ERROR")
    try:
        result = make(router, sleeps).chat_completion(MESSAGES, route=None)
        if result.route == "a":  # pragma: no cover - round robin started elsewhere
            raise AssertionError
    finally:
        logger.remove(sink)
        logger.disable("llm")
    assert result.content == "b"
    assert any("misconfigured" in line and "Unauthorized" in line for line in lines)


def test_pool_down_uses_the_fallback_with_its_model(router, sleeps):
    router.post(f"{A}/chat/completions").mock(side_effect=httpx.ConnectError("refused"))
    router.post(f"{B}/chat/completions").respond(502, text="<html>bad gateway</html>")
    fb = router.post(f"{F}/chat/completions").respond(json=answer("fallback"))
    result = make(router, sleeps).chat_completion(MESSAGES)
    assert result.route == "fb" and result.content == "fallback"
    assert sent(fb)["model"] == "small"
    assert [a.route for a in result.attempts] == ["a", "b", "fb"]
    assert [a.outcome for a in result.attempts] == ["connect_error", "status", "ok"]


def test_everything_down_raises_all_routes_failed_with_attempts(router, sleeps):
    router.post(f"{A}/chat/completions").respond(503, json={"error": {"message": "a busy"}})
    router.post(f"{B}/chat/completions").respond(500, json={"error": {"message": "b broke"}})
    router.post(f"{F}/chat/completions").respond(503, json={"error": {"message": "fb busy"}})
    with pytest.raises(AllRoutesFailedError) as caught:
        make(router, sleeps).chat(MESSAGES)
    error = caught.value
    assert len(error.attempts) == 4  # 1 + max_retries
    assert [a.route for a in error.attempts[:3]] == ["a", "b", "fb"]
    assert isinstance(error.last_error, ServerError)
    assert "a, b, fb" in str(error)
    assert len(sleeps) == 1  # only the repeat waited


def test_garbage_200_fails_over(router, sleeps):
    router.post(f"{A}/chat/completions").respond(200, text='{"id": "x", "choices": [')
    router.post(f"{B}/chat/completions").respond(json=answer("good"))
    result = make(router, sleeps).chat_completion(MESSAGES)
    assert result.content == "good"
    assert result.attempts[0].outcome == "invalid_response"


def test_retry_after_is_honoured_when_retrying_the_same_route(router, sleeps):
    a = router.post(f"{A}/chat/completions")
    a.side_effect = [
        httpx.Response(429, headers={"retry-after": "1.5"}, json={"error": {"message": "slow"}}),
        httpx.Response(200, json=answer("ok")),
    ]
    result = make(router, sleeps).chat_completion(MESSAGES, route="a")
    assert result.content == "ok"
    assert len(sleeps) == 1 and 1.4 <= sleeps[0] <= 1.6  # until Retry-After ends


def test_auth_401_is_an_authentication_error_when_pinned(router, sleeps):
    router.post(f"{A}/chat/completions").respond(401, json={"error": "Unauthorized"})
    with pytest.raises(AllRoutesFailedError) as caught:
        make(router, sleeps).chat(MESSAGES, route="a", max_retries=0)
    assert isinstance(caught.value.last_error, AuthenticationError)
    assert caught.value.last_error.status_code == 401


def test_completions_endpoint(router, sleeps):
    route = router.post(f"{A}/completions").respond(
        json={
            "id": "cmpl-1",
            "object": "text_completion",
            "model": "m",
            "choices": [{"index": 0, "text": "tr sjnt", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "total_tokens": 5, "completion_tokens": 2},
        }
    )
    result = make(router, sleeps).complete("hello world", route="a", max_tokens=2)
    assert str(result) == "tr sjnt" and result.finish_reason == "length"
    assert sent(route)["prompt"] == "hello world" and sent(route)["max_tokens"] == 2


def sse(*events: dict[str, Any]) -> bytes:
    lines = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
    return b"".join(lines) + b"data: [DONE]\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


STREAM = sse(
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning": "hmm"}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "f", "arguments": ""},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": '}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}, "tool_calls"),
    {
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 1, "total_tokens": 3, "completion_tokens": 2},
    },
)
SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8"}


def event_stream(content: bytes) -> Any:
    """A fresh streaming response per request (a respx response object is single-use)."""
    return lambda request: httpx.Response(200, headers=SSE_HEADERS, content=content)


def test_stream_text_and_events(router, sleeps):
    a = router.post(f"{A}/chat/completions").mock(side_effect=event_stream(STREAM))
    provider = make(router, sleeps)
    assert "".join(provider.stream(MESSAGES, route="a")) == "Hello"
    body = sent(a)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    events = list(provider.stream_events(MESSAGES, route="a"))
    kinds = [e.kind for e in events]
    assert kinds == [
        "reasoning",
        "content",
        "content",
        "tool_call",
        "tool_call",
        "tool_call",
        "usage",
        "end",
    ]
    end = events[-1]
    assert end.finish_reason == "tool_calls" and end.route == "a"
    assert end.usage == {"prompt_tokens": 1, "total_tokens": 3, "completion_tokens": 2}
    assert end.tool_calls == [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]
    stats = provider.stats()["a"]
    assert stats["in_flight"] == 0 and stats["successes"] == 2
    assert stats["ttft_ewma_ms"] is not None


def test_stream_fails_over_before_the_first_token(router, sleeps):
    cut = b"data: " + json.dumps(chunk({"role": "assistant", "content": ""})).encode() + b"\n\n"
    router.post(f"{A}/chat/completions").mock(side_effect=event_stream(cut))
    router.post(f"{B}/chat/completions").mock(side_effect=event_stream(STREAM))
    provider = make(router, sleeps)
    texts = ["".join(provider.stream(MESSAGES)) for _ in range(2)]
    assert texts == ["Hello", "Hello"]
    assert provider.stats()["a"]["state"] == "ejected"


def test_stream_error_status_fails_over(router, sleeps):
    router.post(f"{A}/chat/completions").respond(503, json={"error": {"message": "busy"}})
    router.post(f"{B}/chat/completions").mock(side_effect=event_stream(STREAM))
    provider = make(router, sleeps)
    assert ["".join(provider.stream(MESSAGES)) for _ in range(2)] == ["Hello", "Hello"]


def test_stream_with_wrong_content_type_fails_over(router, sleeps):
    router.post(f"{A}/chat/completions").respond(200, json=answer("not a stream"))
    router.post(f"{B}/chat/completions").mock(side_effect=event_stream(STREAM))
    provider = make(router, sleeps)
    assert ["".join(provider.stream(MESSAGES)) for _ in range(2)] == ["Hello", "Hello"]


def test_stopping_a_stream_early_releases_the_route(router, sleeps):
    router.post(f"{A}/chat/completions").mock(side_effect=event_stream(STREAM))
    provider = make(router, sleeps)
    pieces = provider.stream(MESSAGES, route="a")
    assert next(pieces) == "Hel"
    pieces.close()
    stats = provider.stats()["a"]
    assert stats["in_flight"] == 0 and stats["ttft_ewma_ms"] is not None


def test_secrets_never_in_repr_errors_stats_or_logs(router, sleeps):
    router.post(f"{A}/chat/completions").respond(401, json={"error": "Unauthorized"})
    router.post(f"{B}/chat/completions").mock(side_effect=httpx.ConnectError("refused"))
    router.post(f"{F}/chat/completions").respond(503)
    lines: list[str] = []
    logger.enable("llm")
    sink = logger.add(lines.append, level="DEBUG")
    try:
        provider = make(router, sleeps)
        with pytest.raises(AllRoutesFailedError) as caught:
            provider.chat(MESSAGES)
    finally:
        logger.remove(sink)
        logger.disable("llm")
    visible = [
        repr(provider),
        repr(provider.config),
        str(caught.value),
        repr(caught.value),
        json.dumps(provider.stats()),
        *lines,
    ]
    assert lines  # something was logged
    assert all(SECRET_A not in text for text in visible)


def test_library_is_silent_until_enabled(router, sleeps, capsys):
    router.post(f"{A}/chat/completions").respond(503)
    router.post(f"{B}/chat/completions").respond(json=answer())
    make(router, sleeps).chat(MESSAGES)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# -- async mirrors ---------------------------------------------------------------------


async def test_async_body_and_result(router, sleeps):
    a = router.post(f"{A}/chat/completions").respond(json=answer("async"))
    provider = make(router, sleeps)
    result = await provider.achat_completion(MESSAGES, route="a", top_p=0.5)
    assert result.content == "async" and result.route == "a"
    assert sent(a)["top_p"] == 0.5
    assert await provider.achat(MESSAGES, route="a") == "async"


async def test_async_400_raised_at_once(router, sleeps):
    a = router.post(f"{A}/chat/completions").respond(400, json={"error": {"message": "bad"}})
    provider = make(router, sleeps)
    with pytest.raises(BadRequestError, match="bad"):
        await provider.achat(MESSAGES, route="a")
    assert a.call_count == 1 and provider.stats()["a"]["state"] == "healthy"


async def test_async_pool_down_uses_the_fallback(router, sleeps):
    router.post(f"{A}/chat/completions").mock(side_effect=httpx.ConnectError("refused"))
    router.post(f"{B}/chat/completions").mock(side_effect=httpx.ReadTimeout("slow"))
    router.post(f"{F}/chat/completions").respond(json=answer("fallback"))
    result = await make(router, sleeps).achat_completion(MESSAGES)
    assert result.route == "fb"
    assert [a.outcome for a in result.attempts] == ["connect_error", "timeout", "ok"]


async def test_async_everything_down(router, sleeps):
    for url in (A, B, F):
        router.post(f"{url}/chat/completions").respond(503)
    with pytest.raises(AllRoutesFailedError) as caught:
        await make(router, sleeps).achat(MESSAGES)
    assert len(caught.value.attempts) == 4 and len(sleeps) == 1


async def test_async_stream_and_events(router, sleeps):
    router.post(f"{A}/chat/completions").mock(side_effect=event_stream(STREAM))
    provider = make(router, sleeps)
    assert "".join([p async for p in provider.astream(MESSAGES, route="a")]) == "Hello"
    events = [e async for e in provider.astream_events(MESSAGES, route="a")]
    assert events[-1].kind == "end" and events[-1].finish_reason == "tool_calls"
    assert provider.stats()["a"]["in_flight"] == 0


async def test_async_stream_fails_over_before_the_first_token(router, sleeps):
    cut = b"data: " + json.dumps(chunk({"role": "assistant", "content": ""})).encode() + b"\n\n"
    router.post(f"{A}/chat/completions").mock(side_effect=event_stream(cut))
    router.post(f"{B}/chat/completions").mock(side_effect=event_stream(STREAM))
    provider = make(router, sleeps)
    texts = []
    for _ in range(2):
        texts.append("".join([p async for p in provider.astream(MESSAGES)]))
    assert texts == ["Hello", "Hello"]


async def test_async_completions(router, sleeps):
    router.post(f"{A}/completions").respond(
        json={"choices": [{"index": 0, "text": "abc", "finish_reason": "stop"}], "usage": None}
    )
    assert str(await make(router, sleeps).acomplete("x", route="a")) == "abc"


def test_sync_and_async_share_one_balancer(router, sleeps):
    provider = make(router, sleeps)
    assert provider._engine.balancer is provider._aengine.balancer is provider.balancer
