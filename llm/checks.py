"""Active checks of routes: ``GET /health`` and ``GET /v1/models``, sync and async.

A check is a look, not traffic: it does not move a route's health state in the balancer
(a server can answer /health while its model fails). ``provider.health()``,
``is_available()`` and ``list_models()`` are built on it; the healthcheck script too.

A check never raises: every failure becomes a short ``error`` text ("connection refused",
"no answer within 2s", "/health answered HTTP 503", "model 'x' not served (serves: y)", ...).
Error texts never carry request headers, and any form of the route's ``api_key`` or header
values that a library's message may quote is masked, so a secret cannot leak through them.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from .call.spec import route_headers
from .config import RouteConfig
from .config.redact import scrub, secret_forms


@dataclass(slots=True)
class RouteCheck:
    """What one look at one route found.

    ``latency_ms`` is the whole check (both requests, set when both were answered);
    ``health_ms`` and ``models_ms`` time ``GET /health`` and ``GET /v1/models`` on their own
    (each set once that request was answered, whatever its status).
    """

    route: str
    base_url: str
    model: str
    healthy: bool = False
    latency_ms: float | None = None
    models: list[str] = field(default_factory=list)
    max_model_len: int | None = None
    error: str | None = None
    health_ms: float | None = None
    models_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _requests(route: RouteConfig, timeout: float) -> tuple[httpx.Request, httpx.Request]:
    headers = route_headers(route)  # a check sends what calls send
    extensions = {
        "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
    }
    health = httpx.Request(
        "GET", route.server_url + "/health", headers=headers, extensions=extensions
    )
    models = httpx.Request(
        "GET", route.base_url + "/models", headers=headers, extensions=extensions
    )
    return health, models


_STATUS_HINTS = {
    401: " (check the route's api_key)",
    403: " (check the route's api_key)",
    404: " (check the route's base_url)",
}


def _media_type(content_type: str | None) -> str:
    """``text/html; charset=utf-8`` -> ``text/html``, printable and short; '' when absent."""
    media = (content_type or "").split(";", 1)[0].strip()
    media = "".join(ch for ch in media if ch.isprintable())
    return media[:60]


def _judge(
    check: RouteCheck,
    health_status: int,
    models_status: int,
    body: bytes,
    content_type: str | None = None,
) -> None:
    if health_status != 200:
        check.error = f"/health answered HTTP {health_status}"
        return
    if models_status != 200:
        hint = _STATUS_HINTS.get(models_status, "")
        check.error = f"/v1/models answered HTTP {models_status}{hint}"
        return
    try:
        data = json.loads(body)
        entries = data["data"]
        if not isinstance(entries, list):
            raise TypeError("data is not a list")
        check.models = [str(entry["id"]) for entry in entries]
    except (ValueError, KeyError, TypeError):
        what = _media_type(content_type) or ("empty body" if not body.strip() else "")
        check.error = "/v1/models answered something that is not a model list" + (
            f" ({what})" if what else ""
        )
        return
    for entry in entries:
        if entry.get("id") == check.model and isinstance(entry.get("max_model_len"), int):
            check.max_model_len = entry["max_model_len"]
    if check.model not in check.models:
        served = ", ".join(check.models) if check.models else "no model"
        check.error = f"model {check.model!r} not served (serves: {served})"
        return
    check.healthy = True


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes / contexts, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def describe_failure(exc: BaseException, timeout: float) -> str:
    """A short, key-free text for an exception raised while talking to a route."""
    links = list(_chain(exc))
    for link in links:
        if isinstance(link, ConnectionRefusedError) or (
            isinstance(link, OSError) and link.errno == errno.ECONNREFUSED
        ):
            return "connection refused"
    for link in links:
        if isinstance(link, socket.gaierror):
            return f"cannot resolve the host name ({link.strerror or link})"
    tls_errors = [link for link in links if isinstance(link, ssl.SSLError)]
    for link in tls_errors:
        # aiohttp's certificate error is an SSLError without .reason: prefer the link that
        # has the verification message or the reason (the original ssl error, further down).
        reason = getattr(link, "verify_message", None) or getattr(link, "reason", None)
        if reason:
            return f"TLS error: {reason}"
    if tls_errors:
        return f"TLS error: {tls_errors[-1]}"
    for link in links:
        # A header value the HTTP client refuses to send (a key with a line break, a non-ASCII
        # value...): the client's own message quotes the value, so it is never shown.
        if isinstance(link, (httpx.LocalProtocolError, UnicodeError)) or (
            type(link) is ValueError and "header" in str(link).lower()
        ):
            return (
                "the request was not sent: an api_key or header value is not a valid "
                "HTTP header value"
            )
    # httpx-aiohttp maps aiohttp errors onto httpx ones loosely (a refused connection becomes
    # ConnectTimeout), so the original aiohttp exception decides when there is one.
    cause = exc.__cause__
    original = cause if cause is not None and type(cause).__module__.startswith("aiohttp") else exc
    if isinstance(original, (TimeoutError, asyncio.TimeoutError, httpx.TimeoutException)):
        if (
            isinstance(original, httpx.ConnectTimeout)
            or "ConnectionTimeout" in type(original).__name__
        ):
            return f"could not connect within {timeout:g}s"
        return f"no answer within {timeout:g}s"
    for link in links:
        if isinstance(link, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return "connection dropped"
    if isinstance(exc, httpx.RemoteProtocolError) and "without sending" in str(exc):
        return "connection closed without an answer"
    for link in links:
        if isinstance(link, OSError) and link.strerror:
            return f"could not connect ({link.strerror})"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _failure(
    check: RouteCheck,
    exc: BaseException,
    timeout: float,
    step: str = "/health",
    route: RouteConfig | None = None,
) -> RouteCheck:
    reason = describe_failure(exc, timeout)
    if route is not None:
        reason = scrub(reason, secret_forms([route]))
    check.error = reason if step == "/health" else f"{step}: {reason}"
    return check


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000.0, 2)


def check_route(transport: httpx.BaseTransport, route: RouteConfig, timeout: float) -> RouteCheck:
    check = RouteCheck(route.name, route.shown_url, route.model)
    started = time.perf_counter()
    step = "/health"
    try:
        health_request, models_request = _requests(route, timeout)
        health = transport.handle_request(health_request)
        try:
            health.read()
        finally:
            health.close()
        check.health_ms = _ms(started)
        step = "/v1/models"
        models_started = time.perf_counter()
        models = transport.handle_request(models_request)
        try:
            body = models.read()
        finally:
            models.close()
        check.models_ms = _ms(models_started)
    except Exception as exc:  # noqa: BLE001 - a check reports every failure, never raises
        return _failure(check, exc, timeout, step, route)
    check.latency_ms = _ms(started)
    _judge(check, health.status_code, models.status_code, body, models.headers.get("content-type"))
    return check


async def acheck_route(
    transport: httpx.AsyncBaseTransport, route: RouteConfig, timeout: float
) -> RouteCheck:
    check = RouteCheck(route.name, route.shown_url, route.model)
    started = time.perf_counter()
    step = "/health"
    try:
        health_request, models_request = _requests(route, timeout)
        health = await transport.handle_async_request(health_request)
        try:
            await health.aread()
        finally:
            await health.aclose()
        check.health_ms = _ms(started)
        step = "/v1/models"
        models_started = time.perf_counter()
        models = await transport.handle_async_request(models_request)
        try:
            body = await models.aread()
        finally:
            await models.aclose()
        check.models_ms = _ms(models_started)
    except Exception as exc:  # noqa: BLE001 - a check reports every failure, never raises
        return _failure(check, exc, timeout, step, route)
    check.latency_ms = _ms(started)
    _judge(check, health.status_code, models.status_code, body, models.headers.get("content-type"))
    return check


def _setup_failure(route: RouteConfig, exc: Exception) -> RouteCheck:
    """The check of a route whose HTTP client could not even be built (a bad CA bundle...)."""
    check = RouteCheck(route.name, route.shown_url, route.model)
    reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
    if isinstance(route.verify, str):
        check.error = scrub(f"cannot use verify {route.verify!r}: {reason}", secret_forms([route]))
    else:
        check.error = scrub(f"cannot set up the HTTP client: {reason}", secret_forms([route]))
    return check


def _check_one(
    transport_for: Callable[[RouteConfig], httpx.BaseTransport],
    route: RouteConfig,
    timeout: float,
) -> RouteCheck:
    try:
        transport = transport_for(route)
    except Exception as exc:  # noqa: BLE001 - a check reports every failure, never raises
        return _setup_failure(route, exc)
    return check_route(transport, route, timeout)


async def _acheck_one(
    transport_for: Callable[[RouteConfig], httpx.AsyncBaseTransport],
    route: RouteConfig,
    timeout: float,
) -> RouteCheck:
    try:
        transport = transport_for(route)
    except Exception as exc:  # noqa: BLE001 - a check reports every failure, never raises
        return _setup_failure(route, exc)
    return await acheck_route(transport, route, timeout)


def check_routes(
    routes: Sequence[RouteConfig],
    transport_for: Callable[[RouteConfig], httpx.BaseTransport],
    timeout: float,
) -> list[RouteCheck]:
    """Check every route at once (threads); results in the order of ``routes``."""
    if not routes:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(routes))) as pool:
        return list(pool.map(lambda r: _check_one(transport_for, r, timeout), routes))


async def acheck_routes(
    routes: Sequence[RouteConfig],
    transport_for: Callable[[RouteConfig], httpx.AsyncBaseTransport],
    timeout: float,
) -> list[RouteCheck]:
    return list(await asyncio.gather(*(_acheck_one(transport_for, r, timeout) for r in routes)))
