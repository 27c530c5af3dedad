"""OpenTelemetry tracing of a provider's calls: a span per call, a child span per attempt.

How this works
--------------
``OpenTelemetryHook`` is a hook (``llm.events``). ``CallStarted`` opens the call's span as a
child of whatever span is current where the call was made (the application's request, say);
``AttemptStarted`` opens a child span for the attempt and injects its trace context into the
attempt's request headers (W3C ``traceparent``, or whatever propagator the application set),
so a server that traces (vLLM with ``--otlp-traces-endpoint``) joins the same trace;
``AttemptEnded`` and ``CallEnded`` set the outcome and close them. Spans are kept in the
call's ``context`` between events, never in a global table.

Names and attributes follow OpenTelemetry's semantic conventions for generative AI: span name
``{gen_ai.operation.name} {gen_ai.request.model}``, kind CLIENT, ``gen_ai.operation.name``
(``chat``, ``text_completion``), ``gen_ai.provider.name`` (``vllm``), ``gen_ai.request.model``,
``gen_ai.response.model``, ``gen_ai.usage.input_tokens`` / ``output_tokens``,
``server.address`` / ``server.port``, ``error.type`` on failure; plus the library's own under
``llm_routes.``: ``route``, ``outcome``, ``attempts``, ``failover``, ``fallback``, ``hedged``,
``hedge_won`` (call) and ``attempt``, ``hedge``, ``retry_reason``, ``backoff_s``,
``status_code``, ``ttft_s`` (attempt). A hedge's loser (outcome ``hedge_lost``) is no error.
No prompt or answer text is recorded.

Requires ``opentelemetry-api`` (``pip install 'llm-routes[opentelemetry]'``); spans go
wherever the application's tracer provider sends them.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..events import AttemptEnded, AttemptStarted, CallEnded, CallStarted, Hook

__all__ = ["OpenTelemetryHook"]

_CALL_SPAN = "otel.span"
_ATTEMPT_SPAN = "otel.attempt_span"
PROVIDER_NAME = "vllm"


class OpenTelemetryHook(Hook):
    """Spans of calls and attempts, from ``tracer_provider`` (default: the global one)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("llm-routes", tracer_provider=tracer_provider)

    def __repr__(self) -> str:
        return "<OpenTelemetryHook>"

    def call_started(self, event: CallStarted) -> None:
        call = event.call
        model = call.model or ""
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": call.operation,
            "gen_ai.provider.name": PROVIDER_NAME,
            "gen_ai.request.model": model,
        }
        if call.route is not None:
            attributes["llm_routes.pinned_route"] = call.route
        call.context[_CALL_SPAN] = self._tracer.start_span(
            f"{call.operation} {model}".strip(), kind=SpanKind.CLIENT, attributes=attributes
        )

    def attempt_started(self, event: AttemptStarted) -> None:
        parent = event.call.context.get(_CALL_SPAN)
        if parent is None:
            return
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": event.call.operation,
            "gen_ai.provider.name": PROVIDER_NAME,
            "gen_ai.request.model": event.model,
            "server.address": event.server_address,
            "llm_routes.route": event.route,
            "llm_routes.attempt": event.number,
            "llm_routes.fallback": event.fallback,
        }
        if event.hedge:
            attributes["llm_routes.hedge"] = True
        if event.server_port is not None:
            attributes["server.port"] = event.server_port
        if event.delay_s:
            attributes["llm_routes.backoff_s"] = event.delay_s
        context = trace.set_span_in_context(parent)
        span = self._tracer.start_span(
            f"{event.call.operation} {event.model}",
            context=context,
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        event.call.context[f"{_ATTEMPT_SPAN}.{event.number}"] = span  # a hedge: two at once
        propagate.inject(event.headers, context=trace.set_span_in_context(span))

    def attempt_ended(self, event: AttemptEnded) -> None:
        span = event.call.context.pop(f"{_ATTEMPT_SPAN}.{event.number}", None)
        if span is None:
            return
        span.set_attribute("llm_routes.outcome", event.outcome)
        if event.retry_reason is not None:
            span.set_attribute("llm_routes.retry_reason", event.retry_reason)
        if event.status_code is not None:
            span.set_attribute("http.response.status_code", event.status_code)
        if event.ttft_s is not None:
            span.set_attribute("llm_routes.ttft_s", event.ttft_s)
        if event.outcome == "ok":
            span.set_attribute("gen_ai.response.model", event.model)
            _usage(span, event.prompt_tokens, event.completion_tokens)
        elif event.outcome != "hedge_lost":  # cancelled: another attempt answered first
            span.set_attribute("error.type", event.outcome)
            span.set_status(Status(StatusCode.ERROR, event.error))
        span.end()

    def call_ended(self, event: CallEnded) -> None:
        span = event.call.context.pop(_CALL_SPAN, None)
        if span is None:
            return
        span.set_attribute("llm_routes.outcome", event.outcome)
        span.set_attribute("llm_routes.attempts", len(event.attempts))
        span.set_attribute("llm_routes.failover", event.failover)
        span.set_attribute("llm_routes.fallback", event.fallback)
        if event.hedged:
            span.set_attribute("llm_routes.hedged", True)
            span.set_attribute("llm_routes.hedge_won", event.hedge_won)
        if event.route is not None:
            span.set_attribute("llm_routes.route", event.route)
        if event.model is not None:
            span.set_attribute("gen_ai.response.model", event.model)
        if event.outcome == "ok":
            _usage(span, event.prompt_tokens, event.completion_tokens)
        else:
            span.set_attribute("error.type", event.outcome)
            message = str(event.error) if event.error is not None else event.outcome
            span.set_status(Status(StatusCode.ERROR, message))
        span.end()


def _usage(span: Any, prompt_tokens: int, completion_tokens: int | None) -> None:
    if prompt_tokens:
        span.set_attribute("gen_ai.usage.input_tokens", prompt_tokens)
    if completion_tokens is not None:
        span.set_attribute("gen_ai.usage.output_tokens", completion_tokens)
