"""The vLLM / OpenAI-compatible provider: messages in, text and results out.

A thin layer over the engines: it turns a call (messages, keywords) into a ``CallSpec``
(body = config ``params`` overlaid with the call's keywords; ``route=`` pins a route and
``model=`` picks the pool), runs it through the sync or async engine, and shapes the answer.
One ``Balancer`` is shared by both engines, so what the sync path learns about a route's
health the async path uses, and the other way round.

Call keywords that steer the call rather than the body: ``route``, ``model``, ``deadline``
(seconds for all attempts), ``max_retries``. A keyword set to None removes a config default
from the body (``max_tokens=None``); ``extra_body={...}`` is merged into the body as it is.

Bad calls fail before any I/O with an ``InvalidRequestError`` (see "checks of a call" below):
malformed messages, values that are not JSON, wrong types for the common numeric keys, and
keywords that are near misses of a known one (``temprature=``), which a server would ignore.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any

import httpx

from ..call.spec import CallSpec
from ..call.validate import (
    CONTROL_KEYS,
    check_controls,
    check_keyword,
    check_messages,
    extra_body,
    shown,
)
from ..checker import ActiveChecker
from ..checks import RouteCheck, acheck_routes, check_routes
from ..config import LLMConfig, RouteConfig
from ..engine import AsyncEngine, SyncEngine
from ..errors import AllRoutesFailedError, Attempt, InvalidRequestError
from ..results import ChatResult, CompletionResult, StreamAccumulator, StreamEvent
from ..routing.balancer import Balancer
from ..transport import AsyncRoutingTransport, RoutingTransport

__all__ = ["VLLMOpenAIProvider"]



class VLLMOpenAIProvider:
    """Several OpenAI-compatible servers behind one object. Thread-safe; one per process."""

    name = "vllm_openai"

    def __init__(
        self,
        config: LLMConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.balancer = Balancer(
            config.routes.values(),
            policy=config.lb_policy,
            health=config.health,
            fallback_route=config.fallback_route,
            clock=clock,
            rng=rng,
        )
        self._engine = SyncEngine(
            config, self.balancer, clock=clock, sleep=sleep, transport=transport
        )
        self._checker: ActiveChecker | None = None
        if config.health.check_interval > 0:
            self._checker = ActiveChecker(
                list(config.routes.values()),
                self.balancer,
                self._engine.transport_for,
                config.health.check_interval,
                self._check_timeout(),
            ).start()
        if async_sleep is None:
            self._aengine = AsyncEngine(
                config, self.balancer, clock=clock, transport=async_transport
            )
        else:
            self._aengine = AsyncEngine(
                config, self.balancer, clock=clock, sleep=async_sleep, transport=async_transport
            )

    def __repr__(self) -> str:
        return (
            f"<VLLMOpenAIProvider routes={list(self.config.routes)} "
            f"default={self.config.default_route!r} policy={self.config.lb_policy!r}>"
        )

    # -- building calls ------------------------------------------------------------------

    def _spec(
        self,
        path: str,
        payload: dict[str, Any],
        options: Mapping[str, Any],
        *,
        stream: bool,
    ) -> CallSpec:
        body = dict(self.config.params)
        extra: Mapping[str, Any] | None = None
        for key, value in options.items():
            if key in CONTROL_KEYS:
                continue
            if value is None:
                body.pop(key, None)
                continue
            if key == "extra_body":
                extra = extra_body(value)
                continue
            check_keyword(key, value)
            body[key] = value
        if extra:
            body.update(extra)
        body.update(payload)
        body.pop("model", None)
        if stream:
            body["stream"] = True
            body.setdefault("stream_options", {"include_usage": True})
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        if not options:  # the common call: the config's defaults and nothing else
            return CallSpec(path=path, body=body, stream=stream)
        check_controls(options)
        return CallSpec(
            path=path,
            body=body,
            stream=stream,
            model=options.get("model"),
            route=options.get("route"),
            deadline=options.get("deadline"),
            max_retries=options.get("max_retries"),
        )

    def _chat_spec(
        self, messages: Sequence[Mapping[str, Any]], options: Mapping[str, Any], *, stream: bool
    ) -> CallSpec:
        check_messages(messages)
        return self._spec("/chat/completions", {"messages": list(messages)}, options, stream=stream)

    def _completion_spec(
        self, prompt: Any, options: Mapping[str, Any], *, stream: bool
    ) -> CallSpec:
        if not isinstance(prompt, (str, list)) or not prompt:
            raise InvalidRequestError(
                f"prompt must be a non-empty string or list, got {shown(prompt)}"
            )
        return self._spec("/completions", {"prompt": prompt}, options, stream=stream)

    # -- sync ----------------------------------------------------------------------------

    def chat(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> str:
        """The assistant's text for ``messages`` ("" when it answered only with tool calls)."""
        return self.chat_completion(messages, **options).content or ""

    def chat_completion(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> ChatResult:
        reply = self._engine.request(self._chat_spec(messages, options, stream=False))
        return ChatResult.from_answer(
            reply.data, reply.route, tuple(reply.attempts), reply.latency_s
        )

    def stream(
        self, messages: Sequence[Mapping[str, Any]], **options: Any
    ) -> Generator[str, None, None]:
        """Text deltas as they arrive."""
        events = self.stream_events(messages, **options)
        try:
            for event in events:
                if event.kind == "content":
                    yield event.text
        finally:
            events.close()

    def stream_events(
        self, messages: Sequence[Mapping[str, Any]], **options: Any
    ) -> Generator[StreamEvent, None, None]:
        """Typed pieces: content, reasoning, tool-call fragments, usage, and a final ``end``."""
        stream = self._engine.open_stream(self._chat_spec(messages, options, stream=True))
        accumulator = StreamAccumulator()
        try:
            for chunks in stream.batches():
                for chunk in chunks:
                    yield from accumulator.events(chunk)
        finally:
            stream.close()
        yield accumulator.end(stream.route, tuple(stream.attempts))

    def complete(self, prompt: str | list[Any], **options: Any) -> CompletionResult:
        """A text completion (/v1/completions)."""
        reply = self._engine.request(self._completion_spec(prompt, options, stream=False))
        return CompletionResult.from_answer(
            reply.data, reply.route, tuple(reply.attempts), reply.latency_s
        )

    def list_models(self) -> list[str]:
        """Model ids served by the routes that answer, sorted; raises if none answers."""
        return _models_of(self.health_checks())

    def is_available(self) -> bool:
        """True when some route of the default pool (or the fallback) passes a live check."""
        routes = self._default_routes()
        return any(
            c.healthy
            for c in check_routes(routes, self._engine.transport_for, self._check_timeout())
        )

    def health_checks(self, timeout: float | None = None) -> list[RouteCheck]:
        """A live check (/health, /v1/models) of every route, in config order."""
        return check_routes(
            list(self.config.routes.values()),
            self._engine.transport_for,
            timeout or self._check_timeout(),
        )

    def health(self, timeout: float | None = None) -> dict[str, dict[str, Any]]:
        """Per route: the live check merged with the balancer's state."""
        return self._merge(self.health_checks(timeout))

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per route: state, requests, failures, in-flight, EWMAs, ejections, last error."""
        return self.balancer.stats()

    def http_client(self, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` whose transport routes every request (for the OpenAI SDK & co).

        Use it with a base_url ending in /v1, e.g.
        ``openai.OpenAI(base_url="http://llm-routes/v1", api_key="unused", http_client=...)``.
        """
        kwargs.setdefault("base_url", "http://llm-routes/v1")
        kwargs.setdefault("timeout", httpx.Timeout(self.config.deadline + 5.0))
        return httpx.Client(transport=RoutingTransport(self._engine), **kwargs)

    def close(self) -> None:
        if self._checker is not None:
            self._checker.stop()
        self._engine.close()

    def __enter__(self) -> VLLMOpenAIProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- async ---------------------------------------------------------------------------

    async def achat(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> str:
        return (await self.achat_completion(messages, **options)).content or ""

    async def achat_completion(
        self, messages: Sequence[Mapping[str, Any]], **options: Any
    ) -> ChatResult:
        reply = await self._aengine.request(self._chat_spec(messages, options, stream=False))
        return ChatResult.from_answer(
            reply.data, reply.route, tuple(reply.attempts), reply.latency_s
        )

    async def astream(
        self, messages: Sequence[Mapping[str, Any]], **options: Any
    ) -> AsyncGenerator[str, None]:
        events = self.astream_events(messages, **options)
        try:
            async for event in events:
                if event.kind == "content":
                    yield event.text
        finally:
            await events.aclose()  # an async generator is not closed by its consumer's close

    async def astream_events(
        self, messages: Sequence[Mapping[str, Any]], **options: Any
    ) -> AsyncGenerator[StreamEvent, None]:
        stream = await self._aengine.open_stream(self._chat_spec(messages, options, stream=True))
        accumulator = StreamAccumulator()
        batches = stream.batches()
        try:
            async for chunks in batches:
                for chunk in chunks:
                    for event in accumulator.events(chunk):
                        yield event
        finally:
            await batches.aclose()  # an async generator is not closed by its consumer's close
            await stream.aclose()
        yield accumulator.end(stream.route, tuple(stream.attempts))

    async def acomplete(self, prompt: str | list[Any], **options: Any) -> CompletionResult:
        reply = await self._aengine.request(self._completion_spec(prompt, options, stream=False))
        return CompletionResult.from_answer(
            reply.data, reply.route, tuple(reply.attempts), reply.latency_s
        )

    async def alist_models(self) -> list[str]:
        return _models_of(await self.ahealth_checks())

    async def ais_available(self) -> bool:
        checks = await acheck_routes(
            self._default_routes(), self._aengine.transport_for, self._check_timeout()
        )
        return any(c.healthy for c in checks)

    async def ahealth_checks(self, timeout: float | None = None) -> list[RouteCheck]:
        return await acheck_routes(
            list(self.config.routes.values()),
            self._aengine.transport_for,
            timeout or self._check_timeout(),
        )

    async def ahealth(self, timeout: float | None = None) -> dict[str, dict[str, Any]]:
        return self._merge(await self.ahealth_checks(timeout))

    def async_http_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """The async twin of ``http_client``."""
        kwargs.setdefault("base_url", "http://llm-routes/v1")
        kwargs.setdefault("timeout", httpx.Timeout(self.config.deadline + 5.0))
        return httpx.AsyncClient(transport=AsyncRoutingTransport(self._aengine), **kwargs)

    async def aclose(self) -> None:
        await self._aengine.aclose()
        self.close()

    async def __aenter__(self) -> VLLMOpenAIProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- helpers -------------------------------------------------------------------------

    def _check_timeout(self) -> float:
        return min(5.0, self.config.timeout)

    def _default_routes(self) -> list[RouteConfig]:
        config = self.config
        names = list(config.pool(config.default_model))
        if config.fallback_route is not None:
            names.append(config.fallback_route)
        return [config.routes[name] for name in names]

    def _merge(self, checks: list[RouteCheck]) -> dict[str, dict[str, Any]]:
        stats = self.balancer.stats()
        report: dict[str, dict[str, Any]] = {}
        for check in checks:
            entry = check.as_dict()
            entry["state"] = stats[check.route]["state"]
            report[check.route] = entry
        return report


def _models_of(checks: list[RouteCheck]) -> list[str]:
    answered = [c for c in checks if c.error is None or c.models]
    if not answered:
        attempts = [Attempt(c.route, "check_failed", None, c.error) for c in checks]
        raise AllRoutesFailedError(
            "no route answered /v1/models: " + "; ".join(f"{c.route}: {c.error}" for c in checks),
            attempts=attempts,
        )
    return sorted({model for c in answered for model in c.models})
