"""The real OpenAI SDK (2.x, httpx-based) through provider.http_client(): routing for free."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import openai
import pytest

from llm import VLLMOpenAIProvider
from llm.factory import LLMFactory
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
