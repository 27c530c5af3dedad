"""Prometheus metrics and OpenTelemetry spans of a live provider (llm.observe), against fake
vLLM servers: the exposition text parsed back with prometheus_client's own parser, the spans
read from the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llm import VLLMOpenAIProvider
from llm.factory import LLMFactory
from llm.observe.otel import OpenTelemetryHook
from llm.observe.prometheus import METRICS, PrometheusHook
from llm.testing import FakeVLLM

MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def servers() -> Iterator[dict[str, FakeVLLM]]:
    fleet = {name: FakeVLLM("tiny", name=name, tokens=5).start() for name in ("a", "b")}
    try:
        yield fleet
    finally:
        for server in fleet.values():
            server.stop()


def provider(servers: dict[str, FakeVLLM], **llm: Any) -> VLLMOpenAIProvider:
    routes = {
        n: {"base_url": s.base_url, "model": "tiny", "timeout": 2} for n, s in servers.items()
    }
    config = {
        "llm": {
            "routes": routes,
            "params": {"max_tokens": 8},
            "retry": {"backoff_initial": 0.02, "backoff_max": 0.05},
            "health": {"cooldown": 30},
            **llm,
        }
    }
    return LLMFactory.create_provider("vllm_openai", config=config)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition text, parsed back: {(name, sorted labels): value}."""
    text = generate_latest(registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


# -- Prometheus --------------------------------------------------------------------------


async def test_prometheus_carries_a_failover_a_stream_a_retry_and_an_ejection(servers):
    registry = CollectorRegistry()
    hook = PrometheusHook(registry)
    servers["a"].down()
    async with provider(servers, load={"orca": True, "poll_interval": 0.1}) as p:  # round robin
        p.add_hook(hook)
        await p.achat(MESSAGES, route=None)  # a's connection refused: a is ejected, b answers
        await p.achat(MESSAGES)
        pieces = [piece async for piece in p.astream(MESSAGES)]
        servers["b"].fail_next(1, 503)  # then a retry on b (a is ejected) after a backoff
        await p.achat(MESSAGES, route="b")
        for _ in range(50):  # /metrics is read in the background: running comes from there
            found = samples(registry)
            if ("llm_routes_load_running", (("route", "b"),)) in found:
                break
            await asyncio.sleep(0.1)
    assert pieces
    calls = value(found, "llm_routes_calls_total", model="tiny", route="b", outcome="ok")
    assert calls == 4
    assert value(found, "llm_routes_call_duration_seconds_count", model="tiny", outcome="ok") == 4
    refused = value(
        found, "llm_routes_attempts_total", route="a", outcome="connect_error", status=""
    )
    assert refused >= 1
    assert value(found, "llm_routes_attempts_total", route="b", outcome="status", status="503") == 1
    assert value(found, "llm_routes_attempts_total", route="b", outcome="ok", status="") == 4
    assert value(found, "llm_routes_retries_total", route="b", reason="status") == 1
    assert value(found, "llm_routes_retries_total", route="b", reason="connect_error") >= 1
    assert value(found, "llm_routes_failovers_total", model="tiny") >= 1
    assert value(found, "llm_routes_health_changes_total", route="a", change="ejected") == 1
    assert value(found, "llm_routes_time_to_first_token_seconds_count", route="b") == 1
    assert value(found, "llm_routes_tokens_total", route="b", kind="completion") >= 15
    assert value(found, "llm_routes_tokens_total", route="b", kind="prompt") > 0
    # the gauges, read from stats() at the scrape
    assert value(found, "llm_routes_in_flight", route="b") == 0
    assert value(found, "llm_routes_route_healthy", route="a") == 0
    assert value(found, "llm_routes_route_healthy", route="b") == 1
    assert value(found, "llm_routes_load_waiting", route="b") == 0
    assert value(found, "llm_routes_load_running", route="b") == 0
    assert 0 <= value(found, "llm_routes_load_report_age_seconds", route="b") < 3
    names = {name for name, _ in found}
    for documented in set(METRICS) - {"llm_routes_fallbacks_total", "llm_routes_hedges_total"}:
        assert any(name.startswith(documented.removesuffix("_total")) for name in names), documented


def test_prometheus_from_the_config_uses_the_global_registry(servers):
    with provider(servers, hooks=["prometheus"]) as p:
        (hook,) = p.balancer.hooks.hooks
        try:
            p.chat(MESSAGES)
            text = generate_latest(REGISTRY).decode()
        finally:
            hook.unregister()
    assert 'llm_routes_calls_total{model="tiny",outcome="ok",route="a"} 1.0' in text
    assert "llm_routes_calls_total" not in generate_latest(REGISTRY).decode()


def test_a_failed_call_is_counted_by_its_error_and_a_fallback_as_one(servers):
    registry = CollectorRegistry()
    for server in servers.values():
        server.down()
    with FakeVLLM("small", name="fb") as fallback:
        routes = {n: {"base_url": s.base_url, "model": "tiny"} for n, s in servers.items()}
        routes["fb"] = {"base_url": fallback.base_url, "model": "small"}
        config = {"llm": {"routes": routes, "params": {"max_tokens": 8, "max_retries": 1}}}
        with LLMFactory.create_provider(config=config) as p:
            p.add_hook(PrometheusHook(registry))
            with pytest.raises(Exception, match="all attempts failed"):
                p.chat(MESSAGES)
        config["llm"]["fallback_route"] = "fb"
        config["llm"]["params"]["max_retries"] = 2  # a, b, then the fallback
        with LLMFactory.create_provider(config=config) as p:
            p.add_hook(PrometheusHook(registry2 := CollectorRegistry()))
            assert p.chat_completion(MESSAGES).route == "fb"
    found = samples(registry)
    outcome = "AllRoutesFailedError"
    assert value(found, "llm_routes_calls_total", model="tiny", route="", outcome=outcome) == 1
    found = samples(registry2)
    assert value(found, "llm_routes_fallbacks_total", model="tiny") == 1
    assert value(found, "llm_routes_calls_total", model="tiny", route="fb", outcome="ok") == 1


# -- OpenTelemetry -----------------------------------------------------------------------


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def tracing(exporter: InMemorySpanExporter) -> TracerProvider:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider


def check_failover_spans(exporter: InMemorySpanExporter, app_span: Any, servers: dict) -> None:
    spans = {span.name: span for span in exporter.get_finished_spans() if span.name == "app"}
    calls = [s for s in exporter.get_finished_spans() if s.name == "chat tiny"]
    (app,) = spans.values()
    call = next(
        s for s in calls if s.parent is not None and s.parent.span_id == app.context.span_id
    )
    attempts = sorted(
        (s for s in calls if s.parent is not None and s.parent.span_id == call.context.span_id),
        key=lambda s: s.attributes["llm_routes.attempt"],
    )
    assert call.context.trace_id == app.context.trace_id
    assert call.attributes["gen_ai.operation.name"] == "chat"
    assert call.attributes["gen_ai.request.model"] == "tiny"
    assert call.attributes["gen_ai.usage.output_tokens"] == 5
    assert call.attributes["gen_ai.usage.input_tokens"] > 0
    assert call.attributes["llm_routes.route"] == "b" and call.attributes["llm_routes.failover"]
    assert (
        call.attributes["llm_routes.outcome"] == "ok"
        and call.status.status_code != StatusCode.ERROR
    )
    first, second = attempts
    assert first.attributes["llm_routes.route"] == "a"
    assert first.attributes["error.type"] == "connect_error"
    assert first.status.status_code == StatusCode.ERROR
    assert second.attributes["server.address"] == "127.0.0.1"
    assert second.attributes["server.port"] == servers["b"].port
    assert second.attributes["llm_routes.retry_reason"] == "connect_error"
    # the server got the attempt span's own trace context
    sent = servers["b"].requests[-1].headers["traceparent"]
    assert sent.startswith(f"00-{second.context.trace_id:032x}-{second.context.span_id:016x}-")


def test_otel_spans_of_a_failover_sync(servers, exporter):
    tracer_provider = tracing(exporter)
    servers["a"].down()
    with provider(servers) as p:
        p.add_hook(OpenTelemetryHook(tracer_provider))
        with tracer_provider.get_tracer("app").start_as_current_span("app") as app_span:
            p.chat(MESSAGES)
    check_failover_spans(exporter, app_span, servers)


async def test_otel_spans_of_a_failover_async(servers, exporter):
    tracer_provider = tracing(exporter)
    servers["a"].down()
    async with provider(servers) as p:
        p.add_hook(OpenTelemetryHook(tracer_provider))
        with tracer_provider.get_tracer("app").start_as_current_span("app") as app_span:
            await p.achat(MESSAGES)
    check_failover_spans(exporter, app_span, servers)


async def test_otel_span_of_a_stream_ends_with_the_stream(servers, exporter):
    tracer_provider = tracing(exporter)
    servers["a"].set_token_delay(0.01)
    async with provider(servers) as p:
        p.add_hook(OpenTelemetryHook(tracer_provider))
        async for _piece in p.astream(MESSAGES, route="a"):
            assert not exporter.get_finished_spans()  # nothing ends before the stream
    attempt, call = exporter.get_finished_spans()
    assert attempt.parent.span_id == call.context.span_id
    assert attempt.attributes["llm_routes.ttft_s"] > 0
    assert call.attributes["gen_ai.usage.output_tokens"] == 5
    assert call.end_time >= attempt.end_time


def test_otel_a_failed_call_is_an_error_span(servers, exporter):
    tracer_provider = tracing(exporter)
    with provider(servers) as p:
        p.add_hook(OpenTelemetryHook(tracer_provider))
        with pytest.raises(Exception, match=r"max_model_len|maximum context"):
            p.chat(MESSAGES, max_tokens=100_000)
    spans = exporter.get_finished_spans()
    call = spans[-1]
    assert call.status.status_code == StatusCode.ERROR
    assert call.attributes["error.type"] == call.attributes["llm_routes.outcome"] != "ok"
    assert trace.get_current_span() is trace.INVALID_SPAN  # the hook set no current span


# -- hedging -----------------------------------------------------------------------------


@pytest.fixture
def hung_first() -> Iterator[dict[str, FakeVLLM]]:
    """Two fakes, the first (round robin's first pick) hung: its call is hedged to b."""
    fleet = {name: FakeVLLM("tiny", name=name, tokens=5).start() for name in ("a", "b")}
    fleet["a"].hang()
    try:
        yield fleet
    finally:
        for server in fleet.values():
            server.stop()


HEDGE = {"enabled": True, "max_delay": 0.2, "min_delay": 0.05}


def test_prometheus_counts_hedges(hung_first):
    registry = CollectorRegistry()
    with provider(hung_first, lb_policy="round_robin", hedge=HEDGE) as p:
        p.add_hook(PrometheusHook(registry))
        assert p.chat_completion(MESSAGES).route == "b"
        found = samples(registry)
    assert value(found, "llm_routes_hedges_total", route="b", result="started") == 1
    assert value(found, "llm_routes_hedges_total", route="b", result="won") == 1
    assert value(found, "llm_routes_hedges_total", route="a", result="cancelled") == 1
    assert (
        value(found, "llm_routes_attempts_total", route="a", outcome="hedge_lost", status="") == 1
    )
    assert value(found, "llm_routes_calls_total", model="tiny", route="b", outcome="ok") == 1
    assert not any(name == "llm_routes_failovers_total" for name, _ in found)  # not a failover


def test_otel_spans_of_a_hedged_call(hung_first, exporter):
    with provider(hung_first, lb_policy="round_robin", hedge=HEDGE) as p:
        p.add_hook(OpenTelemetryHook(tracing(exporter)))
        assert p.chat_completion(MESSAGES).route == "b"
    spans = exporter.get_finished_spans()
    attempts = {
        s.attributes["llm_routes.route"]: s for s in spans if "llm_routes.attempt" in s.attributes
    }
    (call,) = [s for s in spans if "llm_routes.attempts" in s.attributes]
    assert set(attempts) == {"a", "b"}
    lost, won = attempts["a"], attempts["b"]
    assert lost.attributes["llm_routes.outcome"] == "hedge_lost"
    assert lost.status.status_code is StatusCode.UNSET  # a cancelled loser is no error
    assert won.attributes["llm_routes.hedge"] is True and "llm_routes.hedge" not in lost.attributes
    assert won.parent.span_id == lost.parent.span_id == call.context.span_id
    assert (call.attributes["llm_routes.hedged"], call.attributes["llm_routes.hedge_won"]) == (
        True,
        True,
    )
    assert call.attributes["llm_routes.failover"] is False
    # each attempt carried its own span's trace context
    sent = {
        r.headers.get("traceparent")
        for r in hung_first["b"].requests
        if r.path.endswith("completions")
    }
    assert f"{won.context.span_id:016x}" in next(iter(sent))
