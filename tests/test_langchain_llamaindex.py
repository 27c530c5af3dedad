"""LangChain's ChatOpenAI and LlamaIndex's OpenAILike through provider.http_client(): the
recipes a user writes, against two fake vLLM servers of one model (so every call is balanced
between them, and fails over when one is down).

langchain-openai is in the dev extra (it takes openai 3). llama-index-llms-openai-like needs
openai < 3, so ``.ci/run`` installs it in its openai 2 step and runs this file again there;
its tests are skipped where it is not installed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

langchain_openai = pytest.importorskip("langchain_openai")

from langchain_core.messages import AIMessage, AIMessageChunk  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

try:
    import llama_index.llms.openai_like as openai_like
    from llama_index.core.llms import ChatMessage
except ImportError:  # needs openai < 3: installed in .ci/run's openai 2 step
    openai_like = None

needs_llamaindex = pytest.mark.skipif(
    openai_like is None, reason="llama-index-llms-openai-like (run in .ci/run's openai 2 step)"
)

from llm import VLLMOpenAIProvider  # noqa: E402
from llm.factory import LLMFactory  # noqa: E402
from llm.testing import FakeVLLM  # noqa: E402

pytestmark = pytest.mark.timeout(30)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


class Weather(BaseModel):
    """The weather in a city."""

    city: str = Field(description="the city")
    degrees: int = Field(default=20, description="the temperature in Celsius")


def get_weather(city: str) -> str:
    """Tell the weather in a city."""
    return f"sunny in {city}"


def get_time(city: str) -> str:
    """Tell the time in a city."""
    return f"noon in {city}"


@pytest.fixture
def servers() -> Iterator[dict[str, FakeVLLM]]:
    # 32 tokens: room for the whole JSON document a json_schema answer is
    fleet = {
        "a": FakeVLLM("tiny", name="a", api_key="key-a", tokens=32).start(),
        "b": FakeVLLM("tiny", name="b", api_key="key-b", tokens=32).start(),
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
    config = {"llm": {"routes": routes, "params": {"timeout": 2}}}
    return LLMFactory.create_provider("vllm_openai", config=config)


def calls(provider: VLLMOpenAIProvider) -> dict[str, int]:
    return {name: s["requests"] for name, s in provider.stats().items()}


def asked(servers: dict[str, FakeVLLM], path: str = CHAT) -> list[dict[str, Any]]:
    """The bodies the servers were sent on ``path``, both servers together."""
    return [r.json for s in servers.values() for r in s.requests if r.path == path]


def assert_balanced(provider: VLLMOpenAIProvider, total: int) -> None:
    counts = calls(provider)
    assert sum(counts.values()) == total, counts
    assert all(n >= 1 for n in counts.values()), counts  # both routes answered some


# --------------------------------------------------------------------------- LangChain


def chat_openai(provider: VLLMOpenAIProvider) -> Any:
    """The recipe: LangChain's ChatOpenAI over the provider's clients."""
    return langchain_openai.ChatOpenAI(
        model="tiny",
        base_url="http://llm-routes/v1",  # the host is ignored: the provider routes
        api_key="unused",  # each route sends its own key
        http_client=provider.http_client(),
        http_async_client=provider.async_http_client(),
        max_retries=0,  # retrying is the routing layer's job
    )


def test_langchain_invoke_is_balanced_and_each_route_gets_its_own_key(servers):
    with provider_for(servers) as provider:
        llm = chat_openai(provider)
        answers = [llm.invoke("hello world") for _ in range(4)]
        assert calls(provider) == {"a": 2, "b": 2}
    assert all(isinstance(a, AIMessage) and a.content for a in answers)
    assert len({a.content for a in answers}) == 1  # one prompt, one answer, whoever gave it
    assert servers["a"].requests[-1].headers["authorization"] == "Bearer key-a"
    assert servers["b"].requests[-1].headers["authorization"] == "Bearer key-b"
    assert {body["model"] for body in asked(servers)} == {"tiny"}


async def test_langchain_ainvoke(servers):
    async with provider_for(servers) as provider:
        llm = chat_openai(provider)
        answers = [await llm.ainvoke("hello world") for _ in range(4)]
        assert calls(provider) == {"a": 2, "b": 2}
    assert all(isinstance(a, AIMessage) and a.content for a in answers)


def test_langchain_stream_is_the_invokes_answer(servers):
    with provider_for(servers) as provider:
        llm = chat_openai(provider)
        answer = llm.invoke("hello world")
        chunks = list(llm.stream("hello world"))
        assert_balanced(provider, 2)
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len([c for c in chunks if c.content]) > 1  # it came in pieces
    assert "".join(str(c.content) for c in chunks) == answer.content
    assert [body.get("stream") for body in asked(servers)].count(True) == 1


async def test_langchain_astream_is_the_ainvokes_answer(servers):
    async with provider_for(servers) as provider:
        llm = chat_openai(provider)
        answer = await llm.ainvoke("hello world")
        chunks = [c async for c in llm.astream("hello world")]
        assert_balanced(provider, 2)
    assert len([c for c in chunks if c.content]) > 1
    assert "".join(str(c.content) for c in chunks) == answer.content


def test_langchain_batch_is_balanced(servers):
    prompts = [f"question {i}" for i in range(6)]
    with provider_for(servers) as provider:
        llm = chat_openai(provider)
        answers = llm.batch(prompts, config={"max_concurrency": 3})
        assert_balanced(provider, 6)
    assert len(answers) == 6 and all(a.content for a in answers)
    assert len({a.content for a in answers}) == 6  # each prompt got its own answer


async def test_langchain_abatch_is_balanced(servers):
    prompts = [f"question {i}" for i in range(6)]
    async with provider_for(servers) as provider:
        llm = chat_openai(provider)
        answers = await llm.abatch(prompts)
        assert_balanced(provider, 6)
    assert len(answers) == 6 and all(a.content for a in answers)
    assert len({a.content for a in answers}) == 6


def test_langchain_bind_tools_returns_the_tool_call(servers):
    with provider_for(servers) as provider:
        llm = chat_openai(provider)
        first = llm.bind_tools([get_weather, get_time]).invoke("weather in Paris?")
        named = llm.bind_tools([get_weather, get_time], tool_choice="get_time").invoke("time?")
        assert_balanced(provider, 2)
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert [(c["name"], c["args"]) for c in named.tool_calls] == [("get_time", {"city": "Paris"})]
    assert first.tool_calls[0]["id"]
    sent = asked(servers)
    assert [t["function"]["name"] for t in sent[0]["tools"]] == ["get_weather", "get_time"]


async def test_langchain_bind_tools_async(servers):
    async with provider_for(servers) as provider:
        llm = chat_openai(provider)
        answer = await llm.bind_tools([get_time], tool_choice="get_time").ainvoke("time?")
    assert answer.tool_calls[0]["name"] == "get_time"
    assert answer.tool_calls[0]["args"] == {"city": "Paris"}


def test_langchain_structured_output_by_function_calling(servers):
    with provider_for(servers) as provider:
        llm = chat_openai(provider).with_structured_output(Weather, method="function_calling")
        answers = [llm.invoke("weather in Paris?") for _ in range(2)]
        assert calls(provider) == {"a": 1, "b": 1}
    # the fake's tool call: {"city": "Paris"}; degrees keeps its default
    assert answers == [Weather(city="Paris", degrees=20)] * 2
    sent = asked(servers)[0]
    assert sent["tools"][0]["function"]["name"] == "Weather"
    assert "response_format" not in sent


def test_langchain_structured_output_by_json_schema(servers):
    with provider_for(servers) as provider:
        llm = chat_openai(provider).with_structured_output(Weather, method="json_schema")
        answers = [llm.invoke("weather in Paris?") for _ in range(2)]
        assert calls(provider) == {"a": 1, "b": 1}
    # the fake answers a document of the schema's shape: "fake" for a string, 42 for an int
    assert answers == [Weather(city="fake", degrees=42)] * 2
    sent = asked(servers)[0]
    assert sent["response_format"]["type"] == "json_schema"
    assert set(sent["response_format"]["json_schema"]["schema"]["properties"]) == {
        "city",
        "degrees",
    }
    assert "tools" not in sent


async def test_langchain_structured_output_async(servers):
    async with provider_for(servers) as provider:
        chat = chat_openai(provider)
        by_schema = await chat.with_structured_output(Weather, method="json_schema").ainvoke("?")
        by_tool = await chat.with_structured_output(Weather, method="function_calling").ainvoke("?")
        assert_balanced(provider, 2)
    assert by_schema == Weather(city="fake", degrees=42)
    assert by_tool == Weather(city="Paris", degrees=20)


def test_langchain_fails_over_when_a_server_is_down(servers):
    servers["a"].down()
    with provider_for(servers) as provider:
        llm = chat_openai(provider)
        answers = [llm.invoke("hello world") for _ in range(3)]
        chunks = list(llm.stream("hello world"))
        batch = llm.batch(["one", "two", "three"])
        stats = provider.stats()
    assert all(a.content for a in answers + batch)
    assert "".join(str(c.content) for c in chunks) == answers[0].content
    assert stats["b"]["requests"] == 7  # every call was answered by b
    assert stats["a"]["failures"] >= 1 and stats["a"]["state"] != "healthy"
    assert not servers["a"].requests


async def test_langchain_async_fails_over_when_a_server_is_down(servers):
    servers["b"].down()
    async with provider_for(servers) as provider:
        llm = chat_openai(provider)
        answers = [await llm.ainvoke("hello world") for _ in range(3)]
        chunks = [c async for c in llm.astream("hello world")]
        stats = provider.stats()
    assert all(a.content for a in answers)
    assert "".join(str(c.content) for c in chunks) == answers[0].content
    assert stats["a"]["requests"] == 4
    assert stats["b"]["failures"] >= 1


# --------------------------------------------------------------------------- LlamaIndex


def openai_like_llm(provider: VLLMOpenAIProvider, *, is_chat_model: bool = True) -> Any:
    """The recipe: LlamaIndex's OpenAILike over the provider's clients."""
    return openai_like.OpenAILike(
        model="tiny",
        api_base="http://llm-routes/v1",  # the host is ignored: the provider routes
        api_key="unused",
        http_client=provider.http_client(),
        async_http_client=provider.async_http_client(),
        is_chat_model=is_chat_model,  # /v1/chat/completions; False: /v1/completions
        context_window=512,
        max_retries=0,
    )


@needs_llamaindex
def test_llamaindex_complete_on_the_completions_endpoint(servers):
    with provider_for(servers) as provider:
        llm = openai_like_llm(provider, is_chat_model=False)
        answers = [llm.complete("hello world") for _ in range(4)]
        assert calls(provider) == {"a": 2, "b": 2}
    assert all(a.text for a in answers)
    assert len({a.text for a in answers}) == 1
    assert [b["prompt"] for b in asked(servers, COMPLETIONS)] == ["hello world"] * 4
    assert not asked(servers, CHAT)


@needs_llamaindex
def test_llamaindex_complete_and_chat_as_a_chat_model(servers):
    messages = [ChatMessage(role="user", content="hello world")]
    with provider_for(servers) as provider:
        llm = openai_like_llm(provider)
        completed = llm.complete("hello world")
        chatted = llm.chat(messages)
        assert calls(provider) == {"a": 1, "b": 1}
    assert completed.text
    assert chatted.message.role == "assistant"
    assert chatted.message.content == completed.text  # the same prompt both ways
    assert len(asked(servers, CHAT)) == 2 and not asked(servers, COMPLETIONS)


@needs_llamaindex
def test_llamaindex_stream_chat_is_the_chats_answer(servers):
    messages = [ChatMessage(role="user", content="hello world")]
    with provider_for(servers) as provider:
        llm = openai_like_llm(provider)
        answer = llm.chat(messages)
        chunks = list(llm.stream_chat(messages))
        streamed = list(llm.stream_complete("hello world"))
        assert_balanced(provider, 3)
    assert len([c for c in chunks if c.delta]) > 1
    assert "".join(c.delta or "" for c in chunks) == answer.message.content
    assert chunks[-1].message.content == answer.message.content
    assert streamed[-1].text == answer.message.content


@needs_llamaindex
async def test_llamaindex_async_complete_and_chat(servers):
    messages = [ChatMessage(role="user", content="hello world")]
    async with provider_for(servers) as provider:
        llm = openai_like_llm(provider)
        completed = await llm.acomplete("hello world")
        chatted = await llm.achat(messages)
        stream = await llm.astream_chat(messages)
        chunks = [c async for c in stream]
        text = openai_like_llm(provider, is_chat_model=False)
        plain = await text.acomplete("hello world")
        assert_balanced(provider, 4)
    assert completed.text and completed.text == chatted.message.content
    assert "".join(c.delta or "" for c in chunks) == chatted.message.content
    assert plain.text
    assert len(asked(servers, COMPLETIONS)) == 1


@needs_llamaindex
def test_llamaindex_fails_over_when_a_server_is_down(servers):
    servers["a"].down()
    messages = [ChatMessage(role="user", content="hello world")]
    with provider_for(servers) as provider:
        llm = openai_like_llm(provider)
        answers = [llm.chat(messages) for _ in range(3)]
        streamed = "".join(c.delta or "" for c in llm.stream_chat(messages))
        stats = provider.stats()
    assert all(a.message.content for a in answers)
    assert streamed == answers[0].message.content
    assert stats["b"]["requests"] == 4 and stats["a"]["failures"] >= 1


@needs_llamaindex
def test_llamaindex_structured_predict(servers):
    """OpenAILike's structured output: a tool call when it is a function-calling model."""
    with provider_for(servers) as provider:
        llm = openai_like.OpenAILike(
            model="tiny",
            api_base="http://llm-routes/v1",
            api_key="unused",
            http_client=provider.http_client(),
            async_http_client=provider.async_http_client(),
            is_chat_model=True,
            is_function_calling_model=True,
            context_window=512,
            max_retries=0,
        )
        weather = llm.as_structured_llm(Weather).complete("weather in Paris?")
    assert json.loads(weather.text) == {"city": "Paris", "degrees": 20}
    assert weather.raw == Weather(city="Paris", degrees=20)
