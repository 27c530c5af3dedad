"""Active checks of routes: ``GET /health`` and ``GET /v1/models``, sync and async.

A check is a look, not traffic: it does not move a route's health state in the balancer
(a server can answer /health while its model fails). ``provider.health()``,
``is_available()`` and ``list_models()`` are built on it; the healthcheck script too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from .config import RouteConfig


@dataclass(slots=True)
class RouteCheck:
    """What one look at one route found."""

    route: str
    base_url: str
    model: str
    healthy: bool = False
    latency_ms: float | None = None
    models: list[str] = field(default_factory=list)
    max_model_len: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _requests(route: RouteConfig, timeout: float) -> tuple[httpx.Request, httpx.Request]:
    headers = {"accept": "application/json", "user-agent": "llm-routes"}
    if route.api_key:
        headers["authorization"] = f"Bearer {route.api_key}"
    headers.update(route.headers)
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


def _judge(check: RouteCheck, health_status: int, models_status: int, body: bytes) -> None:
    if health_status != 200:
        check.error = f"/health answered HTTP {health_status}"
        return
    if models_status != 200:
        check.error = f"/v1/models answered HTTP {models_status}"
        return
    try:
        data = json.loads(body)
        entries = data["data"]
        check.models = [str(entry["id"]) for entry in entries]
    except (ValueError, KeyError, TypeError):
        check.error = "/v1/models answered something that is not a model list"
        return
    for entry in entries:
        if entry.get("id") == check.model and isinstance(entry.get("max_model_len"), int):
            check.max_model_len = entry["max_model_len"]
    if check.model not in check.models:
        check.error = f"model {check.model!r} not served (serves: {', '.join(check.models)})"
        return
    check.healthy = True


def _failure(check: RouteCheck, exc: BaseException, timeout: float) -> RouteCheck:
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, httpx.TimeoutException)):
        check.error = f"no answer within {timeout:g}s"
    else:
        check.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return check


def check_route(transport: httpx.BaseTransport, route: RouteConfig, timeout: float) -> RouteCheck:
    check = RouteCheck(route.name, route.base_url, route.model)
    started = time.perf_counter()
    health_request, models_request = _requests(route, timeout)
    try:
        health = transport.handle_request(health_request)
        health.read()
        health.close()
        models = transport.handle_request(models_request)
        body = models.read()
        models.close()
    except Exception as exc:  # noqa: BLE001 - a check reports every failure, never raises
        return _failure(check, exc, timeout)
    check.latency_ms = round((time.perf_counter() - started) * 1000.0, 2)
    _judge(check, health.status_code, models.status_code, body)
    return check


async def acheck_route(
    transport: httpx.AsyncBaseTransport, route: RouteConfig, timeout: float
) -> RouteCheck:
    check = RouteCheck(route.name, route.base_url, route.model)
    started = time.perf_counter()
    health_request, models_request = _requests(route, timeout)
    try:
        health = await transport.handle_async_request(health_request)
        await health.aread()
        await health.aclose()
        models = await transport.handle_async_request(models_request)
        body = await models.aread()
        await models.aclose()
    except Exception as exc:  # noqa: BLE001 - a check reports every failure, never raises
        return _failure(check, exc, timeout)
    check.latency_ms = round((time.perf_counter() - started) * 1000.0, 2)
    _judge(check, health.status_code, models.status_code, body)
    return check


def check_routes(
    routes: Sequence[RouteConfig],
    transport_for: Callable[[RouteConfig], httpx.BaseTransport],
    timeout: float,
) -> list[RouteCheck]:
    """Check every route at once (threads); results in the order of ``routes``."""
    if not routes:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(routes))) as pool:
        return list(pool.map(lambda r: check_route(transport_for(r), r, timeout), routes))


async def acheck_routes(
    routes: Sequence[RouteConfig],
    transport_for: Callable[[RouteConfig], httpx.AsyncBaseTransport],
    timeout: float,
) -> list[RouteCheck]:
    return list(await asyncio.gather(*(acheck_route(transport_for(r), r, timeout) for r in routes)))
