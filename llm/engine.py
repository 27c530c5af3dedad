"""The I/O shell: send one call's attempts over HTTP, in a sync and an async twin.

How this works
--------------
``EngineBase`` holds everything that is not I/O: resolving a ``CallSpec`` to a ``CallPlan``
(pool, fallback, deadline), building the ``httpx.Request`` for a route (cached URL and
headers, the body encoded once), and ``_judge``: what a status and body mean for the call
(success, the request's fault, or the route's failure). ``SyncEngine`` and ``AsyncEngine``
are the same loop written twice; they only send, read, sleep and hand results to the plan::

    while (route := plan.next()) is not None:
        sleep(plan.delay); send; read
        on an I/O error: plan.failed(...) and go on
        reply = self._judge(...)   # returns a Reply, raises the caller's fault, or None: go on
    raise plan.exhausted()

Streams go through the same loop until the first event that carries something for the caller
(a token, a tool call, an ending) has arrived: up to then a failure fails over. ``SyncStream``
/ ``AsyncStream`` then hand out the events; a break after that raises
``StreamInterruptedError`` and counts against the route; closing early is recorded too.

The sync path sends through httpx's own ``HTTPTransport``; the async path through httpx-aiohttp's
``AiohttpTransport`` (aiohttp is imported only when the async path is first used). Both are
called at the transport level: the routing layer does what ``httpx.Client`` would add.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import ssl
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from .aio import NativeResponse, NativeSender
from .call.spec import BodyEncoder, CallSpec, carries_payload, error_in, route_headers
from .config import LLMConfig, RouteConfig
from .errors import (
    Attempt,
    InvalidRequestError,
    InvalidResponseError,
    LLMError,
    NoRouteError,
    RouteConnectionError,
    RouteError,
    RouteTimeoutError,
    StreamInterruptedError,
)
from .outcomes import (
    Verdict,
    outcome_name,
    retry_after_seconds,
    status_error,
    transport_error,
    verdict_for_status,
)
from .routing.balancer import Balancer
from .routing.plan import CallPlan
from .routing.state import RouteState
from .sse import OversizedEventError, SSEDecoder

# What an attempt gets back: httpx's response, or the async engine's own (see llm/aio.py).
Answer = httpx.Response | NativeResponse

_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=256, keepalive_expiry=4.0)
# keepalive_expiry stays under uvicorn's 5 s keep-alive (vLLM's server) so that we never reuse
# a connection the server is about to close, which would look like a route failure.

_SYNC_IO_ERRORS: tuple[type[BaseException], ...] = (httpx.HTTPError, OSError)
_HTTPX_IO_ERRORS = _SYNC_IO_ERRORS  # the async engine's until it first uses aiohttp
_loads = json.loads


@dataclass(slots=True)
class Reply:
    """A successful non-streamed answer."""

    route: str
    status_code: int
    headers: Mapping[str, str]
    content: bytes
    data: Any
    attempts: list[Attempt]
    latency_s: float


class EngineBase:
    """Shared, I/O-free part of both engines."""

    def __init__(
        self,
        config: LLMConfig,
        balancer: Balancer,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.balancer = balancer
        self.clock = clock
        self.rng = rng or balancer.rng
        self._urls: dict[tuple[str, str], httpx.URL] = {}
        self._headers: dict[str, list[tuple[bytes, bytes]]] = {}
        self.max_response_bytes = config.max_response_bytes

    # -- planning ------------------------------------------------------------------------

    def plan(self, spec: CallSpec) -> CallPlan:
        balancer = self.balancer
        config = self.config
        fallback = None
        if spec.route is not None:
            try:
                pool = balancer.single(spec.route)
            except KeyError:
                raise NoRouteError(
                    f"no route named {spec.route!r}; configured routes: " + ", ".join(config.routes)
                ) from None
        else:
            model = spec.model or config.default_model
            found = balancer.pool(model)
            if found is None:
                raise NoRouteError(
                    f"no route serves model {model!r}; models served: "
                    + ", ".join(balancer.models())
                )
            pool = found
            name = config.fallback_route
            if name is not None and name not in pool.names:
                fallback = balancer.single(name)
        return CallPlan(
            balancer,
            pool,
            fallback,
            retry=config.retry,
            deadline=spec.deadline if spec.deadline is not None else config.deadline,
            stream=spec.stream,
            max_retries=spec.max_retries,
        )

    # -- building requests ---------------------------------------------------------------

    @staticmethod
    def _content(body: BodyEncoder, config: RouteConfig) -> bytes | None:
        try:
            return body.for_route(config)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"request body is not JSON-serialisable: {exc}") from None

    def _build(
        self, route: RouteState, spec: CallSpec, content: bytes | None, timeout: float
    ) -> httpx.Request:
        config = route.config
        key = (config.name, spec.path)
        url = self._urls.get(key)
        if url is None:
            url = httpx.URL(config.base_url + spec.path)
            self._urls[key] = url
        headers = self._headers.get(config.name)
        if headers is None:
            headers = route_headers(route.config)
            self._headers[config.name] = headers
        if spec.headers:
            headers = headers + [(k.encode(), v.encode()) for k, v in spec.headers.items()]
        connect = min(self.config.connect_timeout, timeout)
        request = httpx.Request(spec.method, url, headers=headers, content=content)
        request.extensions["timeout"] = {
            "connect": connect,
            "read": timeout,
            "write": timeout,
            "pool": timeout,
        }
        return request

    # -- judging answers -----------------------------------------------------------------

    def _judge(
        self,
        plan: CallPlan,
        route: RouteState,
        started: float,
        response: Answer,
        content: bytes,
        spec: CallSpec,
    ) -> Reply | None:
        """A Reply on success; None when the route failed (try the next); raises on caller fault."""
        status = response.status_code
        verdict = verdict_for_status(status)
        if verdict is Verdict.OK:
            data, problem = _decode_answer(content, spec.expect)
            if problem is None:
                latency = self.clock() - started
                plan.succeeded(route, started, latency)
                return Reply(
                    route.name, status, response.headers, content, data, plan.attempts, latency
                )
            invalid = InvalidResponseError(f"HTTP {status} with {problem}", route=route.name)
            plan.failed(route, started, invalid, "invalid_response", status_code=status)
            return None
        location = response.headers.get("location") if 300 <= status < 400 else None
        error = status_error(route.name, status, content, location=location)
        if verdict is Verdict.CALLER_FAULT:
            plan.finished(route, started, error, "status", status)
            error.attempts = tuple(plan.attempts)
            raise error
        retry_after = None
        if status in (429, 503):
            retry_after = retry_after_seconds(response.headers, self.config.retry.retry_after_max)
        plan.failed(
            route,
            started,
            error,
            "status",
            status_code=status,
            retry_after=retry_after,
            loud=verdict is Verdict.MISCONFIGURED,
        )
        return None

    def _stream_problem(self, response: Answer) -> str | None:
        content_type = response.headers.get("content-type", "")
        if "text/event-stream" not in content_type:
            return f"content-type {content_type or 'missing'!r} instead of an event stream"
        return None


def tls_verify(route: RouteConfig) -> bool | ssl.SSLContext:
    """What the HTTP clients get for a route's ``verify``: a CA bundle path becomes an SSL
    context (httpx no longer takes a path). A path that cannot be used is the route's failure,
    a ``RouteConnectionError`` naming the key, so calls fail over to the other routes."""
    verify = route.verify
    if not isinstance(verify, str):
        return verify
    try:
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RouteConnectionError(
            f"cannot use llm.routes.{route.name}.verify {verify!r}: {reason}", route=route.name
        ) from None


def _decode_answer(content: bytes, expect: str | None) -> tuple[Any, str | None]:
    """(data, None) for a usable JSON answer, else (None, what is wrong with it)."""
    if not content:
        return None, "an empty body"
    try:
        data = _loads(content)
    except (ValueError, UnicodeDecodeError):
        snippet = content[:80].decode("utf-8", "replace")
        return None, f"a body that is not JSON: {snippet!r}"
    if not isinstance(data, dict):
        return None, f"a JSON {type(data).__name__} instead of an object"
    if expect is not None and not isinstance(data.get(expect), list):
        found = error_in(data)
        if found is not None:
            return None, f"an error in the body: {found[0]}"
        return None, f"a JSON object without {expect!r}"
    return data, None


def _oversized(route: str, limit: int, what: str = "answer") -> InvalidResponseError:
    return InvalidResponseError(
        f"{what} larger than max_response_bytes ({limit} bytes): refused", route=route
    )


def _too_long(route: str, timeout: float, what: str = "answer not complete") -> RouteTimeoutError:
    return RouteTimeoutError(f"{what} within {timeout:g}s", route=route)


def _declared_oversized(response: Answer, limit: int) -> bool:
    declared = response.headers.get("content-length")
    return declared is not None and declared.isdigit() and int(declared) > limit


def _events_of(decoder: SSEDecoder, chunk: bytes, route: str) -> list[dict[str, Any]]:
    """The events that ``chunk`` completes, decoded; a broken or error event raises."""
    try:
        payloads = decoder.feed(chunk)
    except OversizedEventError as exc:
        raise _oversized(route, exc.limit, "stream event") from None
    events = []
    for data in payloads:
        try:
            event = _loads(data)
        except (ValueError, UnicodeDecodeError):
            snippet = data[:80].decode("utf-8", "replace")
            raise InvalidResponseError(
                f"stream event is not JSON: {snippet!r}", route=route
            ) from None
        if type(event) is not dict or "choices" not in event:  # a chunk has choices (maybe [])
            _check_event(event, route)
        events.append(event)
    return events


def _check_event(event: Any, route: str) -> None:
    if not isinstance(event, dict):
        raise InvalidResponseError("stream event is not a JSON object", route=route)
    found = error_in(event)
    if found is not None:
        raise InvalidResponseError(f"server error in stream: {found[0]}", route=route)


# ======================================================================================
# sync
# ======================================================================================


class SyncEngine(EngineBase):
    def __init__(
        self,
        config: LLMConfig,
        balancer: Balancer,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(config, balancer, clock=clock, rng=rng)
        self.sleep = sleep
        self._given_transport = transport
        self._transports: dict[bool | str, httpx.BaseTransport] = {}
        self._lock = threading.Lock()

    def transport_for(self, route: RouteConfig) -> httpx.BaseTransport:
        if self._given_transport is not None:
            return self._given_transport
        transport = self._transports.get(route.verify)
        if transport is None:
            with self._lock:  # threads racing here would each make (and leak) a pool
                transport = self._transports.get(route.verify)
                if transport is None:
                    verify = tls_verify(route)
                    transport = httpx.HTTPTransport(verify=verify, limits=_LIMITS)
                    self._transports[route.verify] = transport
        return transport

    def close(self) -> None:
        with self._lock:
            transports, self._transports = self._transports, {}
        for transport in transports.values():
            transport.close()

    def _read(
        self, response: httpx.Response, route: str, started: float, timeout: float
    ) -> bytes:
        """The whole body, refused past ``max_response_bytes`` or after ``timeout`` in all."""
        limit = self.max_response_bytes
        if _declared_oversized(response, limit):
            raise _oversized(route, limit)
        clock, deadline = self.clock, started + timeout
        parts: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise _oversized(route, limit)
            parts.append(chunk)
            if clock() > deadline:  # a server trickling bytes never trips the read timeout
                raise _too_long(route, timeout)
        return b"".join(parts)

    def request(self, spec: CallSpec) -> Reply:
        plan = self.plan(spec)
        body = BodyEncoder(spec)
        while (route := plan.next()) is not None:
            if plan.delay > 0:
                self.sleep(plan.delay)
            request = self._build(route, spec, self._content(body, route.config), plan.timeout)
            started = plan.start(route)
            try:
                response = self.transport_for(route.config).handle_request(request)
                try:
                    content = self._read(response, route.name, started, plan.timeout)
                finally:
                    response.close()
            except _SYNC_IO_ERRORS as exc:
                error = transport_error(route.name, exc)
                plan.failed(route, started, error, outcome_name(error))
                continue
            except RouteError as failure:  # from _read
                plan.failed(route, started, failure, outcome_name(failure))
                continue
            except BaseException:
                plan.finished(route, started)
                raise
            reply = self._judge(plan, route, started, response, content, spec)
            if reply is not None:
                return reply
        raise plan.exhausted()

    def open_stream(self, spec: CallSpec) -> SyncStream:
        """Start a stream; returns once its first event with a payload is in hand."""
        plan = self.plan(spec)
        body = BodyEncoder(spec)
        while (route := plan.next()) is not None:
            if plan.delay > 0:
                self.sleep(plan.delay)
            request = self._build(route, spec, self._content(body, route.config), plan.timeout)
            started = plan.start(route)
            try:
                response = self.transport_for(route.config).handle_request(request)
                if not 200 <= response.status_code < 300:
                    try:
                        content = self._read(response, route.name, started, plan.timeout)
                    finally:
                        response.close()
                    self._judge(plan, route, started, response, content, spec)
                    continue
                problem = self._stream_problem(response)
                if problem is not None:
                    response.close()
                    invalid = InvalidResponseError(problem, route=route.name)
                    plan.failed(route, started, invalid, "invalid_response")
                    continue
            except _SYNC_IO_ERRORS as exc:
                error = transport_error(route.name, exc)
                plan.failed(route, started, error, outcome_name(error))
                continue
            except (InvalidResponseError, RouteTimeoutError, RouteConnectionError) as failure:
                plan.failed(route, started, failure, outcome_name(failure))
                continue
            except LLMError:
                raise
            except BaseException:
                plan.finished(route, started)
                raise
            stream = SyncStream(self, plan, route, started, response)
            if stream._prime():
                return stream
        raise plan.exhausted()


class SyncStream:
    """An open stream: iterate for events (dicts) or ``iter_raw`` for bytes; always close it."""

    def __init__(
        self,
        engine: SyncEngine,
        plan: CallPlan,
        route: RouteState,
        started: float,
        response: httpx.Response,
    ) -> None:
        self._engine = engine
        self._plan = plan
        self._route = route
        self._started = started
        self._response = response
        # A response that was read already (a mock transport may do that) still streams.
        self._raw = (
            iter((response.content,)) if response.is_stream_consumed else response.iter_raw()
        )
        self._decoder = SSEDecoder(engine.max_response_bytes)
        self._events: list[dict[str, Any]] = []
        self._chunks: list[bytes] = []
        self.piece = b""
        self._reported = False
        self.route = route.name
        self.attempts = plan.attempts
        self.ttft_s: float | None = None
        self.status_code = response.status_code
        self.headers = response.headers

    def _prime(self) -> bool:
        """Read up to the first event with a payload. False (reported, closed) on failure."""
        decoder = self._decoder
        clock, timeout = self._engine.clock, self._plan.timeout
        try:
            for chunk in self._raw:
                self._chunks.append(chunk)
                events = _events_of(decoder, chunk, self.route)
                self._events.extend(events)
                if any(carries_payload(event) for event in events):
                    self.ttft_s = clock() - self._started
                    return True
                if decoder.done:
                    return True
                if clock() - self._started > timeout:  # keep-alive comments, role chunks...
                    raise _too_long(self.route, timeout, "no first token")
            error: RouteError = StreamInterruptedError(
                "stream ended before its first token", route=self.route
            )
        except _SYNC_IO_ERRORS as exc:
            error = transport_error(self.route, exc)
        except RouteError as exc:
            error = exc
        except BaseException:
            self._finish_neutral()
            raise
        self._fail(
            error,
            outcome_name(error) if not isinstance(error, StreamInterruptedError) else "stream_cut",
        )
        return False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for events in self.batches():
            yield from events

    def iter_raw(self) -> Iterator[bytes]:
        for _events in self.batches():
            yield self.piece

    def batches(self) -> Iterator[list[dict[str, Any]]]:
        """The events as they come, a list per piece of the body (``piece``: its bytes)."""
        try:
            if self._chunks:
                self.piece = b"".join(self._chunks)
                yield self._events
                self._chunks, self._events = [], []
            decoder = self._decoder
            route = self.route
            while not decoder.done:
                try:
                    chunk = next(self._raw)
                except StopIteration:
                    raise StreamInterruptedError(
                        "stream ended without [DONE]", route=route
                    ) from None
                events = _events_of(decoder, chunk, route)
                if self.ttft_s is None and any(carries_payload(e) for e in events):
                    self.ttft_s = self._engine.clock() - self._started
                self.piece = chunk
                yield events
            self._succeed()
        except _SYNC_IO_ERRORS as exc:
            self._raise_interrupted(transport_error(self.route, exc))
        except RouteError as exc:
            self._raise_interrupted(exc)
        finally:
            self.close()

    def _raise_interrupted(self, cause: RouteError) -> None:
        error = StreamInterruptedError(
            f"stream interrupted after the first token: {Exception.__str__(cause)}",
            route=self.route,
            attempts=self.attempts,
        )
        self._fail(error, "stream_cut")
        error.attempts = tuple(self.attempts)
        raise error from cause

    def _succeed(self) -> None:
        if not self._reported:
            self._reported = True
            latency = self._engine.clock() - self._started
            self._plan.succeeded(self._route, self._started, latency, self.ttft_s)

    def _fail(self, error: RouteError, outcome: str) -> None:
        if not self._reported:
            self._reported = True
            self._plan.failed(self._route, self._started, error, outcome)
        self._response.close()

    def _finish_neutral(self) -> None:
        if not self._reported:
            self._reported = True
            self._plan.finished(self._route, self._started)
        self._response.close()

    def close(self) -> None:
        """Release the connection; a stream closed before its end still records its TTFT."""
        if not self._reported:
            self._reported = True
            if self.ttft_s is not None:
                self._plan.succeeded(self._route, self._started, None, self.ttft_s)
            else:
                self._plan.finished(self._route, self._started)
        self._response.close()

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ======================================================================================
# async
# ======================================================================================


def _async_io_errors() -> tuple[type[BaseException], ...]:
    import aiohttp

    return (httpx.HTTPError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


class AsyncEngine(EngineBase):
    def __init__(
        self,
        config: LLMConfig,
        balancer: Balancer,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(config, balancer, clock=clock, rng=rng)
        self.sleep = sleep
        self._given_transport = transport
        self._transports: dict[bool | str, httpx.AsyncBaseTransport] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._io_errors: tuple[type[BaseException], ...] = _HTTPX_IO_ERRORS
        # Calls go over aiohttp directly unless an httpx transport was given (tests, mocks).
        self._native = NativeSender(tls_verify) if transport is None else None
        self._native_urls: dict[tuple[str, str], str] = {}
        self._native_headers: dict[str, dict[str, str]] = {}

    async def _send_httpx(
        self, route: RouteState, spec: CallSpec, content: bytes | None, timeout: float
    ) -> Answer:
        request = self._build(route, spec, content, timeout)
        return await self.transport_for(route.config).handle_async_request(request)

    def _send(
        self, route: RouteState, spec: CallSpec, content: bytes | None, timeout: float
    ) -> Awaitable[Any]:
        """The attempt's request, to be awaited once: an aiohttp answer to wrap in a
        ``NativeResponse``, or (with a given httpx transport) an ``httpx.Response``."""
        native = self._native
        if native is None:
            return self._send_httpx(route, spec, content, timeout)
        if self._io_errors is _HTTPX_IO_ERRORS:
            self._io_errors = _async_io_errors()
        config = route.config
        key = (config.name, spec.path)
        url = self._native_urls.get(key)
        if url is None:
            url = self._native_urls[key] = config.base_url + spec.path
        headers = self._native_headers.get(config.name)
        if headers is None:
            headers = {k.decode(): v.decode() for k, v in route_headers(config)}
            self._native_headers[config.name] = headers
        if spec.headers:
            headers = {**headers, **spec.headers}
        connect = min(self.config.connect_timeout, timeout)
        return native.send(config, url, headers, content, timeout, connect, spec.stream)

    def transport_for(self, route: RouteConfig) -> httpx.AsyncBaseTransport:
        if self._given_transport is not None:
            return self._given_transport
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # aiohttp sessions belong to the loop that made them: start afresh on a new loop.
            self._transports = {}
            self._loop = loop
        verify = route.verify
        transport = self._transports.get(verify)
        if transport is None:
            from httpx_aiohttp import AiohttpTransport

            self._io_errors = _async_io_errors()
            transport = AiohttpTransport(verify=tls_verify(route), limits=_LIMITS)
            self._transports[verify] = transport
        return transport

    async def aclose(self) -> None:
        if self._native is not None:
            await self._native.aclose()
        transports, self._transports = self._transports, {}
        for transport in transports.values():
            await transport.aclose()

    async def _read(
        self,
        response: Answer,
        route: str,
        started: float,
        timeout: float,
    ) -> bytes:
        """The async twin of ``SyncEngine._read``."""
        limit = self.max_response_bytes
        if type(response) is NativeResponse:  # the common case: one read of a declared length
            whole = await response.read_declared(limit)
            if whole is not None:
                return whole
        if _declared_oversized(response, limit):
            raise _oversized(route, limit)
        clock, deadline = self.clock, started + timeout
        parts: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise _oversized(route, limit)
            parts.append(chunk)
            if clock() > deadline:
                raise _too_long(route, timeout)
        return b"".join(parts)

    async def request(self, spec: CallSpec) -> Reply:
        plan = self.plan(spec)
        body = BodyEncoder(spec)
        while (route := plan.next()) is not None:
            if plan.delay > 0:
                await self.sleep(plan.delay)
            payload = self._content(body, route.config)
            started = plan.start(route)
            try:
                answer = await self._send(route, spec, payload, plan.timeout)
                response = answer if self._native is None else NativeResponse(answer)
                try:
                    # A declared length within the cap is read at once (no _read frame).
                    content = (
                        None
                        if self._native is None
                        else await response.read_declared(self.max_response_bytes)
                    )
                    if content is None:
                        content = await self._read(response, route.name, started, plan.timeout)
                finally:
                    await response.aclose()
            except RouteError as failure:  # from _read
                plan.failed(route, started, failure, outcome_name(failure))
                continue
            except BaseException as exc:
                if not isinstance(exc, self._io_errors):
                    plan.finished(route, started)
                    raise
                error = transport_error(route.name, exc)
                plan.failed(route, started, error, outcome_name(error))
                continue
            reply = self._judge(plan, route, started, response, content, spec)
            if reply is not None:
                return reply
        raise plan.exhausted()

    async def open_stream(self, spec: CallSpec) -> AsyncStream:
        """Start a stream; returns once its first event with a payload is in hand."""
        plan = self.plan(spec)
        body = BodyEncoder(spec)
        while (route := plan.next()) is not None:
            if plan.delay > 0:
                await self.sleep(plan.delay)
            content = self._content(body, route.config)
            started = plan.start(route)
            try:
                answer = await self._send(route, spec, content, plan.timeout)
                response = answer if self._native is None else NativeResponse(answer)
                if not 200 <= response.status_code < 300:
                    try:
                        content = await self._read(response, route.name, started, plan.timeout)
                    finally:
                        await response.aclose()
                    self._judge(plan, route, started, response, content, spec)
                    continue
                problem = self._stream_problem(response)
                if problem is not None:
                    await response.aclose()
                    invalid = InvalidResponseError(problem, route=route.name)
                    plan.failed(route, started, invalid, "invalid_response")
                    continue
            except (InvalidResponseError, RouteTimeoutError, RouteConnectionError) as failure:
                plan.failed(route, started, failure, outcome_name(failure))
                continue
            except LLMError:
                raise
            except BaseException as exc:
                if not isinstance(exc, self._io_errors):
                    plan.finished(route, started)
                    raise
                error = transport_error(route.name, exc)
                plan.failed(route, started, error, outcome_name(error))
                continue
            stream = AsyncStream(self, plan, route, started, response)
            if await stream._prime():
                return stream
        raise plan.exhausted()


async def _replay(content: bytes) -> AsyncIterator[bytes]:
    yield content


class AsyncStream:
    """The async twin of ``SyncStream``."""

    def __init__(
        self,
        engine: AsyncEngine,
        plan: CallPlan,
        route: RouteState,
        started: float,
        response: Answer,
    ) -> None:
        self._engine = engine
        self._plan = plan
        self._route = route
        self._started = started
        self._response = response
        self._raw = (
            _replay(response.content) if response.is_stream_consumed else response.aiter_raw()
        )
        self._decoder = SSEDecoder(engine.max_response_bytes)
        self._events: list[dict[str, Any]] = []
        self._chunks: list[bytes] = []
        self.piece = b""
        self._reported = False
        self.route = route.name
        self.attempts = plan.attempts
        self.ttft_s: float | None = None
        self.status_code = response.status_code
        self.headers = response.headers

    async def _prime(self) -> bool:
        decoder = self._decoder
        io_errors = self._engine._io_errors
        clock, timeout = self._engine.clock, self._plan.timeout
        try:
            async for chunk in self._raw:
                self._chunks.append(chunk)
                events = _events_of(decoder, chunk, self.route)
                self._events.extend(events)
                if any(carries_payload(event) for event in events):
                    self.ttft_s = clock() - self._started
                    return True
                if decoder.done:
                    return True
                if clock() - self._started > timeout:
                    raise _too_long(self.route, timeout, "no first token")
            error: RouteError = StreamInterruptedError(
                "stream ended before its first token", route=self.route
            )
        except RouteError as exc:
            error = exc
        except BaseException as exc:
            if not isinstance(exc, io_errors):
                await self._finish_neutral()
                raise
            error = transport_error(self.route, exc)
        await self._fail(
            error,
            outcome_name(error) if not isinstance(error, StreamInterruptedError) else "stream_cut",
        )
        return False

    async def __aiter__(self) -> AsyncGenerator[dict[str, Any], None]:
        async for events in self.batches():
            for event in events:
                yield event

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        async for _events in self.batches():
            yield self.piece

    async def batches(self) -> AsyncGenerator[list[dict[str, Any]], None]:
        """The events as they come, a list per piece of the body (``piece``: its bytes)."""
        io_errors = self._engine._io_errors
        try:
            if self._chunks:
                self.piece = b"".join(self._chunks)
                yield self._events
                self._chunks, self._events = [], []
            decoder = self._decoder
            route = self.route
            raw = self._raw
            while not decoder.done:
                try:
                    chunk = await raw.__anext__()
                except StopAsyncIteration:
                    raise StreamInterruptedError(
                        "stream ended without [DONE]", route=route
                    ) from None
                events = _events_of(decoder, chunk, route)
                if self.ttft_s is None and any(carries_payload(e) for e in events):
                    self.ttft_s = self._engine.clock() - self._started
                self.piece = chunk
                yield events
            await self._succeed()
        except RouteError as exc:
            await self._raise_interrupted(exc)
        except BaseException as exc:
            if not isinstance(exc, io_errors):
                raise
            await self._raise_interrupted(transport_error(self.route, exc))
        finally:
            await self.aclose()

    async def _raise_interrupted(self, cause: RouteError) -> None:
        error = StreamInterruptedError(
            f"stream interrupted after the first token: {Exception.__str__(cause)}",
            route=self.route,
            attempts=self.attempts,
        )
        await self._fail(error, "stream_cut")
        error.attempts = tuple(self.attempts)
        raise error from cause

    async def _succeed(self) -> None:
        if not self._reported:
            self._reported = True
            latency = self._engine.clock() - self._started
            self._plan.succeeded(self._route, self._started, latency, self.ttft_s)

    async def _fail(self, error: RouteError, outcome: str) -> None:
        if not self._reported:
            self._reported = True
            self._plan.failed(self._route, self._started, error, outcome)
        await self._close_response()

    async def _finish_neutral(self) -> None:
        if not self._reported:
            self._reported = True
            self._plan.finished(self._route, self._started)
        await self._close_response()

    async def _close_response(self) -> None:
        # Closing a broken connection must not mask the error being reported.
        with contextlib.suppress(Exception):
            await self._response.aclose()

    async def aclose(self) -> None:
        """Release the connection; a stream closed before its end still records its TTFT."""
        if not self._reported:
            self._reported = True
            if self.ttft_s is not None:
                self._plan.succeeded(self._route, self._started, None, self.ttft_s)
            else:
                self._plan.finished(self._route, self._started)
        await self._close_response()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
