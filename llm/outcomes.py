"""What an answer or an exception means: pure classification shared by the sync and async paths.

- ``verdict_for_status``: is a status a success, the request's fault (raise at once, route
  stays healthy), a route failure (eject, try another), or a misconfigured route (the same,
  logged loudly)?
- ``status_error``: the typed error for an error response, with the server's own message
  parsed from vLLM's nested ``{"error": {...}}`` or the older flat ``{"object": "error", ...}``.
- ``transport_error``: the typed error for an exception raised by httpx or aiohttp.
- ``retry_after_seconds``: the Retry-After header, as seconds, capped.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import httpx

from .config.redact import without_credentials
from .errors import (
    APIStatusError,
    Attempt,
    RouteConnectionError,
    RouteError,
    RouteTimeoutError,
    status_error_class,
)


class Verdict(Enum):
    OK = "ok"
    CALLER_FAULT = "caller_fault"
    ROUTE_FAILURE = "route_failure"
    MISCONFIGURED = "misconfigured"


_MISCONFIGURED = frozenset({401, 403, 404})
_ROUTE_FAILURE_4XX = frozenset({408, 425, 429})


def verdict_for_status(status: int) -> Verdict:
    if 200 <= status < 300:
        return Verdict.OK
    if status >= 500 or status in _ROUTE_FAILURE_4XX:
        return Verdict.ROUTE_FAILURE
    if status in _MISCONFIGURED:
        return Verdict.MISCONFIGURED
    if 400 <= status < 500:
        return Verdict.CALLER_FAULT
    if 300 <= status < 400:
        # Redirects are not followed: credentials stay with their route, and a vLLM server
        # that redirects is behind a base_url that needs fixing (http -> https, a moved host).
        return Verdict.MISCONFIGURED
    return Verdict.ROUTE_FAILURE


def server_message(body: bytes) -> tuple[str | None, str | None]:
    """(message, type) from an OpenAI/vLLM error body, or (None, None) when there is none."""
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body[:300].decode("utf-8", "replace").strip()
        return (text or None), None
    if not isinstance(data, dict):
        return None, None
    error = data.get("error")
    if isinstance(error, dict):  # vLLM >= 0.6: {"error": {"message", "type", "param", "code"}}
        return _str_or_none(error.get("message")), _str_or_none(error.get("type"))
    if isinstance(error, str):  # the --api-key middleware: {"error": "Unauthorized"}
        return error, None
    if data.get("object") == "error" or "message" in data:  # older flat shape
        return _str_or_none(data.get("message")), _str_or_none(data.get("type"))
    if "detail" in data:  # FastAPI's own 404/405
        return _str_or_none(data.get("detail")), None
    return None, None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def status_error(
    route: str,
    status: int,
    body: bytes,
    attempts: Sequence[Attempt] = (),
    location: str | None = None,
) -> APIStatusError:
    message, error_type = server_message(body)
    if 300 <= status < 400:
        target = without_credentials(location) if location else "elsewhere"
        message = f"redirect to {target} not followed (check the route's base_url)"
    text = f"HTTP {status}" + (f": {message}" if message else "")
    return status_error_class(status)(
        text,
        status_code=status,
        route=route,
        server_message=message,
        error_type=error_type,
        body=body[:2000].decode("utf-8", "replace"),
        attempts=attempts,
    )


def transport_error(route: str, exc: BaseException) -> RouteError:
    """The typed error for an I/O exception (httpx, aiohttp or OS level)."""
    if isinstance(exc, RouteError):
        return exc
    kind = _kind_of(exc)
    detail = str(exc) or type(exc).__name__
    if kind == "timeout":
        return RouteTimeoutError(f"timed out ({detail})", route=route)
    if kind == "connect":
        return RouteConnectionError(f"could not connect ({detail})", route=route)
    return RouteConnectionError(f"connection failed ({detail})", route=route)


def _kind_of(exc: BaseException) -> str:
    # httpx-aiohttp maps aiohttp errors onto httpx ones loosely (a dropped connection becomes
    # ConnectTimeout), so the original aiohttp exception decides when there is one.
    cause = exc.__cause__
    original = cause if cause is not None and type(cause).__module__.startswith("aiohttp") else exc
    if isinstance(original, (TimeoutError, asyncio.TimeoutError, httpx.TimeoutException)):
        return "timeout"
    if isinstance(original, (httpx.ConnectError, ConnectionRefusedError)):
        return "connect"
    if type(original).__name__.startswith("ClientConnector"):
        return "connect"
    return "dropped"


def outcome_name(error: RouteError) -> str:
    if isinstance(error, APIStatusError):
        return "status"
    if isinstance(error, RouteTimeoutError):
        return "timeout"
    if isinstance(error, RouteConnectionError):
        return "connect_error"
    return "invalid_response"


def retry_after_seconds(headers: Mapping[str, str], cap: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), capped; None if absent."""
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, cap))
