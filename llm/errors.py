"""The exception tree of llm-routes.

Every error the library raises is an ``LLMError``; no raw httpx or aiohttp exception
escapes a provider call. Errors that come from talking to a route name the route and carry
the attempts made so far, so a caller can see what was tried::

    LLMError
    ├── ConfigError                 bad config: names the key path, expected and found
    │   └── UnknownProviderError    provider name not known; lists the known ones
    ├── InvalidRequestError         a call the library refuses before any network I/O
    │   └── ContextWindowError      it fits no route's max_model_len (.prompt_tokens, .limits)
    ├── NoRouteError                pinned route / requested model not configured
    ├── ProviderClosedError         a call after close(), or one that close() had to end
    └── RouteError                  something went wrong talking to a route (has .route)
        ├── APIStatusError          the server answered with an error status (.status_code,
        │   │                       .server_message: the server's own words)
        │   ├── BadRequestError     400 / 422 and other 4xx: the request's fault, not retried
        │   ├── AuthenticationError 401 / 403: the route is misconfigured (key)
        │   ├── NotFoundError       404: the route is misconfigured (model name, base_url)
        │   ├── RateLimitError      429
        │   └── ServerError         5xx
        ├── RouteConnectionError    could not connect / connection dropped
        ├── RouteTimeoutError       no answer within the time allowed
        ├── InvalidResponseError    the server answered 2xx with something unusable
        ├── StreamInterruptedError  a stream broke after events reached the caller
        └── AllRoutesFailedError    every attempt failed; .attempts says how, .last_error why

``Attempt`` records one try: route, outcome, HTTP status, error text and seconds spent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "APIStatusError",
    "AllRoutesFailedError",
    "Attempt",
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "ContextWindowError",
    "InvalidRequestError",
    "InvalidResponseError",
    "LLMError",
    "NoRouteError",
    "NotFoundError",
    "ProviderClosedError",
    "RateLimitError",
    "RouteConnectionError",
    "RouteError",
    "RouteTimeoutError",
    "ServerError",
    "StreamInterruptedError",
    "UnknownProviderError",
    "status_error_class",
]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one call on one route."""

    route: str
    outcome: str  # "ok", "connect_error", "timeout", "status", "invalid_response", "stream_cut"
    status_code: int | None = None
    error: str | None = None
    latency_s: float = 0.0

    def describe(self) -> str:
        text = f"{self.route}: {self.outcome}"
        if self.status_code is not None:
            text += f" {self.status_code}"
        if self.error:
            text += f" ({self.error})"
        return text


class LLMError(Exception):
    """Root of every error raised by llm-routes."""


class ConfigError(LLMError):
    """The configuration is invalid. ``key_path`` names the offending key (``llm.routes.a``)."""

    def __init__(self, message: str, key_path: str | None = None) -> None:
        self.key_path = key_path
        super().__init__(message)


class UnknownProviderError(ConfigError):
    """No provider is registered under the requested name."""


class InvalidRequestError(LLMError):
    """The call itself is invalid (empty messages, unserialisable params, ...)."""


class ContextWindowError(InvalidRequestError):
    """The call fits no route it could go to: its estimated ``prompt_tokens`` plus its
    ``max_tokens`` exceed every route's ``max_model_len`` (``limits``: route -> window).
    Raised before anything is sent."""

    def __init__(
        self,
        message: str,
        *,
        prompt_tokens: int = 0,
        max_tokens: int = 0,
        limits: dict[str, int | None] | None = None,
    ) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.limits = dict(limits or {})


class NoRouteError(LLMError):
    """The call names a route or model that no configured route serves."""


class ProviderClosedError(LLMError):
    """The provider was closed: a call after ``close()``, or one still running when
    ``close()`` stopped waiting. No route is to blame."""


class RouteError(LLMError):
    """Something went wrong while talking to ``route``."""

    def __init__(
        self,
        message: str,
        *,
        route: str | None = None,
        attempts: Sequence[Attempt] = (),
    ) -> None:
        self.route = route
        self.attempts: tuple[Attempt, ...] = tuple(attempts)
        super().__init__(message)

    def __str__(self) -> str:
        base = super().__str__()
        if self.route and f"route {self.route!r}" not in base:
            base = f"route {self.route!r}: {base}"
        if len(self.attempts) > 1:
            base += " [attempts: " + "; ".join(a.describe() for a in self.attempts) + "]"
        return base


class APIStatusError(RouteError):
    """The server answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        route: str | None = None,
        server_message: str | None = None,
        error_type: str | None = None,
        body: str | None = None,
        attempts: Sequence[Attempt] = (),
    ) -> None:
        self.status_code = status_code
        self.server_message = server_message
        self.error_type = error_type
        self.body = body
        super().__init__(message, route=route, attempts=attempts)


class BadRequestError(APIStatusError):
    """400, 422 or another 4xx that is the request's fault: not retried, route stays healthy."""


class AuthenticationError(APIStatusError):
    """401 / 403: the route's credentials are wrong."""


class NotFoundError(APIStatusError):
    """404: the route's model name or base_url is wrong."""


class RateLimitError(APIStatusError):
    """429: the server asked us to slow down."""


class ServerError(APIStatusError):
    """5xx: the server failed."""


class RouteConnectionError(RouteError):
    """Could not connect to the route, or the connection dropped before an answer."""


class RouteTimeoutError(RouteError):
    """The route did not answer within the time allowed."""


class InvalidResponseError(RouteError):
    """The route answered 2xx with a body that is not a usable OpenAI-shaped response."""


class StreamInterruptedError(RouteError):
    """A stream broke after some of its events had reached the caller."""


class AllRoutesFailedError(RouteError):
    """Every attempt of a call failed. ``last_error`` is the error of the final attempt."""

    def __init__(
        self,
        message: str,
        *,
        attempts: Sequence[Attempt],
        last_error: LLMError | None = None,
    ) -> None:
        self.last_error = last_error
        routes = list(dict.fromkeys(a.route for a in attempts))
        super().__init__(message, route=routes[-1] if routes else None, attempts=attempts)
        self.routes = routes

    def __str__(self) -> str:
        text = Exception.__str__(self)
        if self.attempts:
            text += " [attempts: " + "; ".join(a.describe() for a in self.attempts) + "]"
        return text


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The error class for an HTTP error status."""
    if status_code in (401, 403):
        return AuthenticationError
    if status_code == 404:
        return NotFoundError
    if status_code == 429:
        return RateLimitError
    if status_code >= 500:
        return ServerError
    if 400 <= status_code < 500:
        return BadRequestError
    return APIStatusError
