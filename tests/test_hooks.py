"""Hooks on a live provider (llm.events): the events of a failover, a stream, a retry with
backoff and an ejection, sync and async, against fake vLLM servers on loopback; hooks from
the config; a hook that raises."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from llm import ConfigError, VLLMOpenAIProvider
from llm.events import (
    AttemptEnded,
    AttemptStarted,
    CallEnded,
    CallStarted,
    HealthChange,
    Hook,
    LoadReported,
)
from llm.factory import LLMFactory
from llm.testing import FakeVLLM

MESSAGES = [{"role": "user", "content": "hello there"}]


class RecordingHook(Hook):
    """Every event of a call, in order; adds a trace header to each attempt."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def call_started(self, event: CallStarted) -> None:
        self.events.append(event)

    def attempt_started(self, event: AttemptStarted) -> None:
        event.headers["traceparent"] = f"00-{'ab' * 16}-{event.number:016x}-01"
        self.events.append(event)

    def attempt_ended(self, event: AttemptEnded) -> None:
        self.events.append(event)

    def call_ended(self, event: CallEnded) -> None:
        self.events.append(event)

    def route_health(self, event: HealthChange) -> None:
        self.events.append(event)

    def load_reported(self, event: LoadReported) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


@pytest.fixture
def servers() -> Iterator[dict[str, FakeVLLM]]:
    fleet = {
        "a": FakeVLLM("tiny", name="a", tokens=6).start(),
        "b": FakeVLLM("tiny", name="b", tokens=6).start(),
    }
    try:
        yield fleet
    finally:
        for server in fleet.values():
            server.stop()


def provider(servers: dict[str, FakeVLLM], **llm: Any) -> VLLMOpenAIProvider:
    routes = {
        name: {"base_url": s.base_url, "model": "tiny", "timeout": 2} for name, s in servers.items()
    }
    config = {
        "llm": {
            "routes": routes,
            "params": {"max_tokens": 8},
            "retry": {"backoff_initial": 0.05, "backoff_max": 0.1},
            **llm,
        }
    }
    return LLMFactory.create_provider("vllm_openai", config=config)


def sequence(hook: RecordingHook) -> list[str]:
    shown = []
    for event in hook.events:
        if isinstance(event, (AttemptStarted, AttemptEnded)):
            outcome = f" {event.outcome}" if isinstance(event, AttemptEnded) else ""
            shown.append(f"{type(event).__name__} {event.route}{outcome}")
        elif isinstance(event, HealthChange):
            shown.append(f"{event.kind} {event.route}")
        elif isinstance(event, CallEnded):
            shown.append(f"CallEnded {event.outcome} {event.route}")
        else:
            shown.append(type(event).__name__)
    return shown


FAILOVER = [
    "CallStarted",
    "AttemptStarted a",
    "AttemptEnded a connect_error",
    "ejected a",
    "AttemptStarted b",
    "AttemptEnded b ok",
    "CallEnded ok b",
]


def check_failover(hook: RecordingHook, servers: dict[str, FakeVLLM]) -> None:
    assert [s for s in sequence(hook) if s != "ejected a"] == [
        s for s in FAILOVER if s != "ejected a"
    ]
    assert "ejected a" in sequence(hook)
    (ended,) = hook.of(CallEnded)
    assert ended.failover and not ended.fallback and ended.model == "tiny"
    assert [a.route for a in ended.attempts] == ["a", "b"]
    assert ended.completion_tokens == 6 and ended.prompt_tokens > 0
    second = hook.of(AttemptEnded)[1]
    assert (
        second.retry_reason == "connect_error" and second.delay_s == 0.0
    )  # another route: at once
    assert servers["b"].requests[-1].headers["traceparent"].endswith("0000000000000002-01")


def test_a_failover_sync(servers):
    servers["a"].down()
    hook = RecordingHook()
    with provider(servers, default_route="a") as p:
        p.add_hook(hook)
        p.chat(MESSAGES, route=None)
    check_failover(hook, servers)


async def test_a_failover_async(servers):
    servers["a"].down()
    hook = RecordingHook()
    async with provider(servers) as p:
        p.add_hook(hook)
        await p.achat(MESSAGES)
    check_failover(hook, servers)


def check_stream(hook: RecordingHook, pieces: list[str]) -> None:
    assert sequence(hook) == [
        "CallStarted",
        "AttemptStarted a",
        "AttemptEnded a ok",
        "CallEnded ok a",
    ]
    started, _, ended_attempt, ended = hook.events
    assert started.call.stream and started.call.operation == "chat"
    assert ended.call is started.call
    assert ended_attempt.ttft_s is not None and 0 < ended_attempt.ttft_s <= ended_attempt.latency_s
    assert ended.ttft_s == ended_attempt.ttft_s and ended.completion_tokens == len(pieces)
    assert ended.duration_s >= ended_attempt.latency_s


def test_a_stream_sync(servers):
    servers["a"].set_token_delay(0.01)
    hook = RecordingHook()
    with provider(servers) as p:
        p.add_hook(hook)
        pieces = []
        for piece in p.stream(MESSAGES, route="a"):
            assert not hook.of(CallEnded)  # the call ends with its stream, not before
            pieces.append(piece)
    check_stream(hook, pieces)


async def test_a_stream_async(servers):
    servers["a"].set_token_delay(0.01)
    hook = RecordingHook()
    async with provider(servers) as p:
        p.add_hook(hook)
        pieces = []
        async for piece in p.astream(MESSAGES, route="a"):
            assert not hook.of(CallEnded)
            pieces.append(piece)
    check_stream(hook, pieces)


def check_retry(hook: RecordingHook) -> None:
    first, second = hook.of(AttemptEnded)
    assert (first.route, first.outcome, first.status_code) == ("a", "status", 503)
    assert second.route == "a" and second.outcome == "ok"
    assert second.retry_reason == "status" and 0.025 <= second.delay_s <= 0.1  # jittered backoff
    assert [e.kind for e in hook.of(HealthChange)] == ["ejected", "recovered"]
    (ended,) = hook.of(CallEnded)
    assert ended.outcome == "ok" and not ended.failover and len(ended.attempts) == 2


def test_a_retry_with_backoff_and_an_ejection_sync(servers):
    servers["a"].fail_next(1, 503)
    hook = RecordingHook()
    with provider({"a": servers["a"]}) as p:
        p.add_hook(hook)
        p.chat(MESSAGES)
        assert p.stats()["a"]["failures"] == 1
    check_retry(hook)


async def test_a_retry_with_backoff_and_an_ejection_async(servers):
    servers["a"].fail_next(1, 503)
    hook = RecordingHook()
    async with provider({"a": servers["a"]}) as p:
        p.add_hook(hook)
        await p.achat(MESSAGES)
    check_retry(hook)


def test_a_call_that_fails_ends_with_its_error_and_counts_match_the_stats(servers):
    for server in servers.values():
        server.down()
    seen: list[Any] = []
    with provider(servers, params={"max_tokens": 8, "max_retries": 1}) as p:
        p.add_hook(seen.append)  # a function gets every event
        with pytest.raises(Exception) as caught:
            p.chat(MESSAGES)
        stats = p.stats()
    ended = [e for e in seen if isinstance(e, CallEnded)]
    assert [e.outcome for e in ended] == [type(caught.value).__name__] == ["AllRoutesFailedError"]
    assert ended[0].error is caught.value and ended[0].route is None
    failures = [e for e in seen if isinstance(e, AttemptEnded) and e.outcome != "ok"]
    assert len(failures) == sum(s["failures"] for s in stats.values()) == 2


def test_a_call_no_route_can_take_ends_at_once(servers):
    hook = RecordingHook()
    with provider(servers, hooks=None) as p:
        p.add_hook(hook)
        with pytest.raises(Exception, match="no route serves model"):
            p.chat(MESSAGES, model="gpt-unknown")
    assert sequence(hook) == ["CallStarted", "CallEnded NoRouteError None"]


def test_load_reports_reach_the_hooks(servers):
    hook = RecordingHook()
    with provider(servers, lb_policy="least_load", load={"poll_interval": 0}) as p:
        p.add_hook(hook)
        p.chat(MESSAGES)
    (report,) = hook.of(LoadReported)
    assert report.source == "orca" and report.waiting == 0 and report.route in servers


def test_a_hook_that_raises_breaks_no_call_and_is_logged_once(servers):
    class Broken(Hook):
        def attempt_ended(self, event: AttemptEnded) -> None:
            raise RuntimeError("the hook's own bug")

    lines: list[str] = []
    logger.enable("llm")
    sink = logger.add(lines.append, level="ERROR", format="{message}")
    try:
        with provider(servers) as p:
            p.add_hook(Broken())
            answers = [p.chat(MESSAGES) for _ in range(3)]
    finally:
        logger.remove(sink)
        logger.disable("llm")
    assert all(answers)
    assert (
        len(lines) == 1
        and "raised on AttemptEnded" in lines[0]
        and "the hook's own bug" in lines[0]
    )


def test_adding_and_removing_hooks(servers):
    with provider(servers) as p:
        assert p.balancer.hooks is None  # no hook: calls pay for nothing
        added = p.add_hook(print)
        hook = p.add_hook(RecordingHook())
        assert p.balancer.hooks is not None and len(p.balancer.hooks.hooks) == 2
        p.remove_hook(print)  # the function as given, or `added`, the hook it became
        p.remove_hook(hook)
        assert p.balancer.hooks is None and added is not hook


def test_hooks_from_the_config_and_the_factory(servers):
    with provider(servers, hooks=["test_hooks:RecordingHook"]) as p:
        (from_config,) = p.balancer.hooks.hooks
        p.chat(MESSAGES)
    assert isinstance(from_config, RecordingHook) and sequence(from_config)[-1] == "CallEnded ok a"
    extra = RecordingHook()
    routes = {"a": {"base_url": servers["a"].base_url, "model": "tiny"}}
    with LLMFactory.create_provider(config={"llm": {"routes": routes}}, hooks=[extra]) as p:
        p.chat(MESSAGES)
    assert sequence(extra)[-1] == "CallEnded ok a"


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("no_such_module_xyz:Hook", "llm.hooks[0]: cannot import 'no_such_module_xyz'"),
        (
            "test_hooks:NoSuchThing",
            "llm.hooks[0]: module 'test_hooks' has no attribute 'NoSuchThing'",
        ),
        ("collections:OrderedDict", "llm.hooks[0]: a hook is a llm.events.Hook or a function"),
        ("test_hooks:NeedsArguments", "llm.hooks[0]: test_hooks:NeedsArguments could not be made"),
    ],
)
def test_a_bad_hook_reference_is_a_config_error_naming_it(servers, reference, message):
    with pytest.raises(ConfigError) as caught:
        provider(servers, hooks=[reference])
    assert str(caught.value).startswith(message) and caught.value.key_path == "llm.hooks[0]"


def test_a_builtin_hook_whose_package_is_missing_says_what_to_install(servers, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    monkeypatch.delitem(sys.modules, "llm.observe.prometheus", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'llm-routes\[prometheus\]'"):
        provider(servers, hooks=["prometheus"])


class NeedsArguments(Hook):
    def __init__(self, registry: object) -> None:
        self.registry = registry


def test_calls_through_the_sdk_path_have_their_events(servers):
    hook = RecordingHook()
    with provider(servers) as p:
        p.add_hook(hook)
        http = p.http_client(flavor="httpx")
        chat = http.post(
            "http://llm-routes/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES}
        )
        embedding = http.post(
            "http://llm-routes/v1/embeddings", json={"model": "tiny", "input": "x"}
        )
    assert chat.status_code == 200 and embedding.status_code == 404
    chat_ended, embedding_ended = hook.of(CallEnded)
    assert (chat_ended.call.operation, chat_ended.outcome) == ("chat", "ok")
    assert (embedding_ended.call.operation, embedding_ended.outcome) == (
        "embeddings",
        "NotFoundError",
    )


def test_an_attempt_cut_short_by_the_calls_cancellation_ends_as_cancelled(servers):
    """Cancelled while its server hangs: the attempt ends ``cancelled``, not ``ok``, and
    the route is not blamed."""
    import asyncio

    servers["a"].hang()
    hook = RecordingHook()
    p = provider(servers, lb_policy="round_robin")
    p.add_hook(hook)

    async def go() -> None:
        call = asyncio.ensure_future(p.achat(MESSAGES))
        await asyncio.sleep(0.3)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await p.aclose()

    asyncio.run(go())
    (ended,) = hook.of(AttemptEnded)
    assert (ended.route, ended.outcome) == ("a", "cancelled")
    (call_ended,) = hook.of(CallEnded)
    assert call_ended.outcome == "cancelled"
    assert p.stats()["a"]["failures"] == 0 and p.stats()["a"]["in_flight"] == 0
