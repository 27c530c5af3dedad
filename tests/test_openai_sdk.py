"""The real OpenAI SDK through provider.http_client(): routing for free.

Each test runs with both flavours of client: ``httpx`` (openai 2.x; openai 3 still accepts it)
and ``httpx2`` (openai 3's own package), when the installed openai takes it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import openai
import pytest

from llm import LLMError, VLLMOpenAIProvider
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


OPENAI_MAJOR = int(openai.__version__.split(".")[0])


@pytest.fixture(
    params=[
        "httpx",
        pytest.param(
            "httpx2",
            marks=pytest.mark.skipif(OPENAI_MAJOR < 3, reason="openai 2 takes httpx clients only"),
        ),
    ]
)
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def sdk_client(provider: VLLMOpenAIProvider, flavor: str = "auto") -> openai.OpenAI:
    """The README's recipe."""
    return openai.OpenAI(
        base_url="http://llm-routes/v1",
        api_key="unused",
        http_client=provider.http_client(flavor=flavor),
        max_retries=0,
    )


def test_openai_client_is_balanced_and_each_route_gets_its_own_key(servers, flavor):
    with provider_for(servers) as provider:
        client = sdk_client(provider, flavor)
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


def test_openai_client_fails_over_and_streams(servers, flavor):
    servers["a"].down()
    with provider_for(servers) as provider:
        client = sdk_client(provider, flavor)
        answer = client.chat.completions.create(model="tiny", messages=MESSAGES)
        chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content


def test_openai_client_sees_status_errors_as_its_own(servers, flavor):
    with provider_for(servers) as provider:
        client = sdk_client(provider, flavor)
        with pytest.raises(openai.BadRequestError, match="max_model_len"):
            client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4096)
        with pytest.raises(openai.NotFoundError, match="no route serves model"):
            client.chat.completions.create(model="gpt-unknown", messages=MESSAGES)


async def test_async_openai_client(servers, flavor):
    async with provider_for(servers) as provider:
        client = openai.AsyncOpenAI(
            base_url="http://llm-routes/v1",
            api_key="unused",
            http_client=provider.async_http_client(flavor=flavor),
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


def test_an_endpoint_the_servers_lack_is_the_requests_fault(with_fallback, flavor):
    """vLLM serving a chat model has no /v1/embeddings: its 404 ejects no route, and the
    next chat is answered by the pool, not by the fallback's smaller model."""
    with fallback_provider(with_fallback) as provider:
        client = sdk_client(provider, flavor)
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


def test_another_endpoint_never_goes_to_the_fallbacks_model(with_fallback, flavor):
    with_fallback["a"].down()
    with_fallback["b"].down()
    with fallback_provider(with_fallback) as provider:
        http = provider.http_client(flavor=flavor)
        with pytest.raises(LLMError) as caught:  # RoutesUnavailableError, of httpx or httpx2
            http.post("http://llm-routes/v1/embeddings", json={"model": "tiny", "input": "x"})
        chat = http.post(
            "http://llm-routes/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES}
        )
    assert {a.route for a in caught.value.__cause__.attempts} == {"a", "b"}
    # the embedding never went to "small" (the chat did)
    assert [r.path for r in with_fallback["small"].requests] == ["/v1/chat/completions"]
    assert chat.status_code == 200 and chat.extensions["llm_route"] == "small"  # a chat may


def test_the_model_list_is_the_fleets_as_list_models_says(with_fallback, flavor):
    """models.list() once answered one route's list: one model of the two served."""
    with fallback_provider(with_fallback) as provider:
        client = sdk_client(provider, flavor)
        listed = client.models.list()
        both = provider.list_models()
        one = client.models.retrieve("small")
        with pytest.raises(openai.NotFoundError, match="no route serves model"):
            client.models.retrieve("gpt-unknown")
        with_fallback["small"].down()  # a pool that fails is left out, as list_models does
        without_small = [model.id for model in client.models.list()]
        expected = provider.list_models()
    ids = [model.id for model in listed.data]
    assert ids == ["tiny", "small"] and sorted(ids) == both
    assert listed.data[0].owned_by == "vllm"  # the servers' own entries, kept whole
    assert one.id == "small" and one.owned_by == "vllm"  # vLLM has no /v1/models/{id}
    assert "/v1/models/small" not in [r.path for r in with_fallback["small"].requests]
    assert without_small == expected == ["tiny"]


async def test_the_async_model_list_asks_every_pool(with_fallback, flavor):
    async with fallback_provider(with_fallback) as provider:
        client = openai.AsyncOpenAI(
            base_url="http://llm-routes/v1",
            api_key="unused",
            http_client=provider.async_http_client(flavor=flavor),
            max_retries=0,
        )
        ids = [model.id async for model in client.models.list()]
        for server in with_fallback.values():
            server.down()
        with pytest.raises(openai.APIConnectionError):  # no pool answered: nothing to list
            await client.models.list()
        await client.close()
    assert ids == ["tiny", "small"]


def test_the_sdks_timeout_is_the_calls_deadline(servers, flavor):
    servers["a"].set_latency(2.0)
    servers["b"].set_latency(2.0)
    with provider_for(servers) as provider:
        client = sdk_client(provider, flavor)
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="tiny", messages=MESSAGES, timeout=0.3)
        took = time.monotonic() - started
    assert took < 1.5, took  # not the route's 2 s timeout (0.3 s here; the margin: a busy VM)


async def test_the_async_sdks_timeout_is_the_calls_deadline(servers, flavor):
    servers["a"].set_latency(2.0)
    servers["b"].set_latency(2.0)
    async with provider_for(servers) as provider:
        client = openai.AsyncOpenAI(
            base_url="http://llm-routes/v1",
            api_key="unused",
            http_client=provider.async_http_client(flavor=flavor),
            max_retries=0,
        )
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="tiny", messages=MESSAGES, timeout=0.3)
        took = time.monotonic() - started
    assert took < 1.5, took  # as above


def test_the_client_is_what_the_installed_openai_is_built_on(servers):
    with provider_for(servers) as provider:
        client = provider.http_client()
        expected = "httpx2" if OPENAI_MAJOR >= 3 else "httpx"
        assert type(client).__module__.split(".")[0] == expected
        assert type(provider.http_client(flavor="httpx")).__module__.split(".")[0] == "httpx"
        with pytest.raises(ValueError, match="flavor must be"):
            provider.http_client(flavor="requests")  # type: ignore[arg-type]
