"""What an exception from an HTTP library means: the typed error of a call, the text of a check.

The senders use httpcore (sync), aiohttp (async) and httpx (transports handed in). Their
exceptions, and the OS errors under them, are read here and nowhere else:

- ``route_failure``: whether an exception raised during an attempt is the route's failure,
  and which (the engines and streams ask it, and nothing else);
- ``transport_error``: the ``RouteError`` an I/O exception stands for: ``RouteTimeoutError`` for a
  timeout, ``RouteConnectionError`` for a connection that could not be made ("could not
  connect") or that failed under way ("connection failed"). Routing and judging see only
  these types.
- ``describe_failure``: the short, key-free text an active check reports ("connection
  refused", "no answer within 2s", "TLS error: ...").

An httpx transport over aiohttp (httpx-aiohttp, handed in as ``async_transport``) maps
aiohttp's errors onto httpx's loosely (a dropped connection becomes ``ConnectTimeout``), so
when an httpx error has an aiohttp cause, the cause decides (``_original``).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Iterator

import httpcore
import httpx

from ..errors import LLMError, RouteConnectionError, RouteError, RouteTimeoutError
from .tls import UnusableCABundle

_TEXT = 160  # characters of an unknown exception's message kept in a check's text


def _original(exc: BaseException) -> BaseException:
    """``exc``, or the aiohttp exception an httpx one was made from."""
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.startswith("aiohttp"):
        return cause
    return exc


_TIMEOUTS = (TimeoutError, asyncio.TimeoutError, httpx.TimeoutException, httpcore.TimeoutException)
_CONNECT_FAILURES = (httpx.ConnectError, httpcore.ConnectError, ConnectionRefusedError)
_CONNECT_TIMEOUTS = (httpx.ConnectTimeout, httpcore.ConnectTimeout)
_BAD_HEADERS = (httpx.LocalProtocolError, httpcore.LocalProtocolError, UnicodeError)


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, _TIMEOUTS)


def _is_connect_failure(exc: BaseException) -> bool:
    """The connection was never made (refused, no route, bad TLS, a name not found...)."""
    return isinstance(exc, _CONNECT_FAILURES) or type(exc).__name__.startswith(
        "ClientConnector"  # aiohttp's, without importing aiohttp
    )


def route_failure(
    route: str, exc: BaseException, io_errors: tuple[type[BaseException], ...]
) -> RouteError | None:
    """The route's failure that ``exc``, raised during an attempt on ``route``, stands for: the
    library's own ``RouteError`` (a limit of the read, a CA bundle that cannot be used) or an
    I/O error of the sender's library (``io_errors``). None for anything else (a cancellation,
    a bug): not the route's fault, and the caller lets it propagate."""
    if isinstance(exc, RouteError):
        return exc
    if isinstance(exc, io_errors):
        return transport_error(route, exc)
    return None


def transport_error(route: str, exc: BaseException) -> RouteError:
    """The typed error for an I/O exception (httpx, aiohttp or OS level)."""
    if isinstance(exc, RouteError):
        return exc
    original = _original(exc)
    detail = str(exc) or type(exc).__name__
    if _is_timeout(original):
        return RouteTimeoutError(f"timed out ({detail})", route=route)
    if _is_connect_failure(original):
        return RouteConnectionError(f"could not connect ({detail})", route=route)
    return RouteConnectionError(f"connection failed ({detail})", route=route)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes / contexts, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def describe_failure(exc: BaseException, timeout: float) -> str:
    """A short text for an exception raised while checking a route. It may quote the
    exception's own message: the caller masks the route's secrets in it."""
    if isinstance(exc, UnusableCABundle):
        return f"cannot use verify {exc.path!r}: {exc.reason}"
    if isinstance(exc, LLMError):
        return Exception.__str__(exc)
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
        if isinstance(link, _BAD_HEADERS) or (
            type(link) is ValueError and "header" in str(link).lower()
        ):
            return (
                "the request was not sent: an api_key or header value is not a valid "
                "HTTP header value"
            )
    original = _original(exc)
    if _is_timeout(original):
        name = type(original).__name__
        if isinstance(original, _CONNECT_TIMEOUTS) or "ConnectionTimeout" in name:
            return f"could not connect within {timeout:g}s"
        return f"no answer within {timeout:g}s"
    for link in links:
        if isinstance(link, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return "connection dropped"
    remote = (httpx.RemoteProtocolError, httpcore.RemoteProtocolError)
    if isinstance(exc, remote) and "without sending" in str(exc):
        return "connection closed without an answer"
    for link in links:
        if isinstance(link, OSError) and link.strerror:
            return f"could not connect ({link.strerror})"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= _TEXT else text[: _TEXT - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
