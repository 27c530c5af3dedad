"""The real OpenAI SDK (2.x, httpx-based) through provider.http_client(): routing for free."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import openai
import pytest

from llm import VLLMOpenAIProvider
from llm.factory import LLMFactory
from llm.send.transport import RoutesUnavailableError
from llm.testing import FakeVLLM

MESSAGES = [{"role": "user", "content": "hello world"}]


@pytest.fixture
def servers() -> Iterator[dict[str, FakeVLLM]]:
    fleet = {
        "a": FakeVLLM("tiny", name="a", api_key="key-a").start(),
        "b": FakeVLLM("tiny", name="b", api_key="key-b").start(),
    }
    try:
        yield fleet
    finally:
        for server in fleet.values():
            server.stop()


def provider_for(servers: dict[str, FakeVLLM]) -> VLLMOpenAIProvider:
    routes = {
        name: {"base_url": s.base_url, "model": "tiny", "api_key": f"key-{name}", "timeout": 2}
        for name, s in servers.items()
    }
    config = {"llm": {"routes": routes, "params": {"max_tokens": 8, "timeout": 2}}}
    return LLMFactory.create_provider("vllm_openai", config=config)


def sdk_client(provider: VLLMOpenAIProvider) -> openai.OpenAI:
    """The README's recipe."""
    return openai.OpenAI(
        base_url="http://llm-routes/v1",
        api_key="unused",
        http_client=provider.http_client(),
        max_retries=0,
    )


def test_openai_client_is_balanced_and_each_route_gets_its_own_key(servers):
    with provider_for(servers) as provider:
        client = sdk_client(provider)
        answers = [
            client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8)
            for _ in range(4)
        ]
        stats = provider.stats()
    assert all(a.choices[0].message.content for a in answers)
    assert Counter(s["requests"] for s in stats.values()) == Counter({2: 2})
    # The fakes demand their own key: a 401 would have failed the calls.
    assert servers["a"].requests[-1].headers["authorization"] == "Bearer key-a"
    assert servers["b"].requests[-1].headers["authorization"] == "Bearer key-b"


def test_openai_client_fails_over_and_streams(servers):
    servers["a"].down()
    with provider_for(servers) as provider:
        client = sdk_client(provider)
        answer = client.chat.completions.create(model="tiny", messages=MESSAGES)
        chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content


def test_openai_client_sees_status_errors_as_its_own(servers):
    with provider_for(servers) as provider:
        client = sdk_client(provider)
        with pytest.raises(openai.BadRequestError, match="max_model_len"):
            client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4096)
        with pytest.raises(openai.NotFoundError, match="no route serves model"):
            client.chat.completions.create(model="gpt-unknown", messages=MESSAGES)


async def test_async_openai_client(servers):
    async with provider_for(servers) as provider:
        client = openai.AsyncOpenAI(
            base_url="http://llm-routes/v1",
            api_key="unused",
            http_client=provider.async_http_client(),
            max_retries=0,
        )
        answer = await client.chat.completions.create(model="tiny", messages=MESSAGES)
        stream = await client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
    assert text == answer.choices[0].message.content


@pytest.fixture
def with_fallback() -> Iterator[dict[str, FakeVLLM]]:
    fleet = {
        "a": FakeVLLM("tiny", name="a").start(),
        "b": FakeVLLM("tiny", name="b").start(),
        "small": FakeVLLM("small", name="small").start(),
    }
    try:
        yield fleet
    finally:
        for server in fleet.values():
            server.stop()


def fallback_provider(servers: dict[str, FakeVLLM], **params: object) -> VLLMOpenAIProvider:
    routes = {
        name: {"base_url": s.base_url, "model": s.model, "timeout": 2}
        for name, s in servers.items()
    }
    config = {
        "llm": {
            "routes": routes,
            "default_route": "a",
            "fallback_route": "small",
            "params": {"max_tokens": 8, "timeout": 2, **params},
        }
    }
    return LLMFactory.create_provider("vllm_openai", config=config)


def test_an_endpoint_the_servers_lack_is_the_requests_fault(with_fallback):
    """vLLM serving a chat model has no /v1/embeddings: its 404 ejects no route, and the
    next chat is answered by the pool, not by the fallback's smaller model."""
    with fallback_provider(with_fallback) as provider:
        client = sdk_client(provider)
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model="tiny", input="hello")
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model="tiny", input="hello")
        stats = provider.stats()
        answer = provider.chat_completion(MESSAGES)
    assert all(s["state"] == "healthy" and s["failures"] == 0 for s in stats.values())
    assert answer.route in ("a", "b") and answer.model == "tiny"
    asked = [r.path for s in with_fallback.values() for r in s.requests]
    assert asked.count("/v1/embeddings") == 1 and asked.count("/v1/responses") == 1


def test_another_endpoint_never_goes_to_the_fallbacks_model(with_fallback):
    with_fallback["a"].down()
    with_fallback["b"].down()
    with fallback_provider(with_fallback) as provider:
        http = provider.http_client()
        with pytest.raises(RoutesUnavailableError) as caught:
            http.post("http://llm-routes/v1/embeddings", json={"model": "tiny", "input": "x"})
        chat = http.post(
            "http://llm-routes/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES}
        )
    assert {a.route for a in caught.value.__cause__.attempts} == {"a", "b"}
    # the embedding never went to "small" (the chat did)
    assert [r.path for r in with_fallback["small"].requests] == ["/v1/chat/completions"]
    assert chat.status_code == 200 and chat.extensions["llm_route"] == "small"  # a chat may


def test_the_sdks_timeout_is_the_calls_deadline(servers):
    servers["a"].set_latency(2.0)
    servers["b"].set_latency(2.0)
    with provider_for(servers) as provider:
        client = sdk_client(provider)
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="tiny", messages=MESSAGES, timeout=0.3)
        took = time.monotonic() - started
    assert took < 1.0, took  # not the route's 2 s timeout


async def test_the_async_sdks_timeout_is_the_calls_deadline(servers):
    servers["a"].set_latency(2.0)
    servers["b"].set_latency(2.0)
    async with provider_for(servers) as provider:
        client = openai.AsyncOpenAI(
            base_url="http://llm-routes/v1",
            api_key="unused",
            http_client=provider.async_http_client(),
            max_retries=0,
        )
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="tiny", messages=MESSAGES, timeout=0.3)
        took = time.monotonic() - started
    assert took < 1.0, took
