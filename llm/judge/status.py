"""What a status code means, and the typed error an error status becomes.

- ``verdict_for_status``: a success; the request's fault (raised at once, the route stays
  healthy); the route's failure (ejected, the call moves on); or a misconfigured route (the
  same, reported loudly): 401/403/404 and redirects, which no retry will cure.
- ``status_error``: the ``APIStatusError`` subclass for an error status, carrying the server's
  own message (``error_body.server_message``) and a bounded copy of the body.
- ``retry_after_seconds``: a Retry-After header (seconds or an HTTP date), capped.
- ``outcome_name``: how an attempt that failed with a given error is recorded.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping, Sequence
from enum import Enum

from ..config.redact import without_credentials
from ..errors import (
    APIStatusError,
    Attempt,
    RouteConnectionError,
    RouteError,
    RouteTimeoutError,
    status_error_class,
)
from .error_body import server_message

_SHOWN_BODY = 2000  # characters of an error body kept on the error


class Verdict(Enum):
    OK = "ok"
    CALLER_FAULT = "caller_fault"
    ROUTE_FAILURE = "route_failure"
    MISCONFIGURED = "misconfigured"


_MISCONFIGURED = frozenset({401, 403, 404})
_ROUTE_FAILURE_4XX = frozenset({408, 425, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})


def verdict_for_status(status: int, other_endpoint: bool = False) -> Verdict:
    """What ``status`` says of the route. ``other_endpoint``: the call was to an endpoint other
    than (chat) completions (an SDK call to /v1/embeddings, /v1/responses...), whose 404 means
    the server lacks it: the request's fault, not the route's (a route whose model is missing
    is found by its checks of /v1/models)."""
    if 200 <= status < 300:
        return Verdict.OK
    if status == 404 and other_endpoint:
        return Verdict.CALLER_FAULT
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


def status_error(
    route: str,
    status: int,
    body: bytes,
    attempts: Sequence[Attempt] = (),
    location: str | None = None,
) -> APIStatusError:
    """The typed error for an error status; ``location`` is a redirect's target."""
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
        body=body[:_SHOWN_BODY].decode("utf-8", "replace"),
        attempts=attempts,
    )


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
