"""Senders over httpx: the sync path's own, and any httpx transport handed to the provider.

``HttpxSender`` is the sync engine's sender: one ``httpx.HTTPTransport`` (a connection pool)
per distinct ``verify`` value of the routes, or the transport handed to the provider
(``transport=``: respx, ``httpx.MockTransport``). ``HttpxAsyncSender`` serves an async httpx
transport handed to the provider (``async_transport=``); without one, the async engine uses
aiohttp (``aiohttp_sender.py``). Both talk to the transport directly, below ``httpx.Client``:
the engines do what a client would add (redirects are not followed, no default headers).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator, Mapping

import httpx

from ..config import RouteConfig
from .protocols import Request
from .tls import tls_verify

_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=256, keepalive_expiry=4.0)
# keepalive_expiry stays under uvicorn's 5 s keep-alive (vLLM's server) so that we never reuse
# a connection the server is about to close, which would look like a route failure.

_IO_ERRORS: tuple[type[BaseException], ...] = (httpx.HTTPError, OSError)

_URLS: dict[str, httpx.URL] = {}  # parsed once: a route's URLs are few and parsing is not free
_URLS_KEPT = 1024


def _httpx_request(request: Request) -> httpx.Request:
    url = request.url
    parsed = _URLS.get(url)
    if parsed is None:
        if len(_URLS) > _URLS_KEPT:
            _URLS.clear()
        parsed = _URLS[url] = httpx.URL(url)
    # UTF-8 here: httpx would encode str values as ASCII and raise on anything else.
    encoded = [(name.encode(), value.encode()) for name, value in request.headers.items()]
    timeout = request.timeout
    extensions = {
        "timeout": {
            "connect": request.connect_timeout,
            "read": timeout,
            "write": timeout,
            "pool": timeout,
        }
    }
    return httpx.Request(
        request.method, parsed, headers=encoded, content=request.content, extensions=extensions
    )


class HttpxAnswer:
    """An ``httpx.Response``, as ``protocols.SyncAnswer``."""

    __slots__ = ("_response", "headers", "status_code")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status_code = response.status_code
        self.headers: Mapping[str, str] = response.headers

    def read_declared(self, limit: int) -> bytes | None:
        return None  # httpx bounds each read, not the whole: the engine reads and counts

    def iter_bytes(self) -> Iterator[bytes]:
        return self._response.iter_bytes()

    def close(self) -> None:
        self._response.close()


class HttpxAsyncAnswer:
    """An ``httpx.Response`` from an async transport, as ``protocols.AsyncAnswer``."""

    __slots__ = ("_response", "headers", "status_code")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status_code = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def read_declared(self, limit: int) -> bytes | None:
        return None

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return self._response.aiter_bytes()

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxSender:
    """The sync sender: httpx transports per ``verify`` value, or the one handed in."""

    io_errors = _IO_ERRORS

    def __init__(self, transport: httpx.BaseTransport | None = None) -> None:
        self._given = transport
        self._transports: dict[bool | str, httpx.BaseTransport] = {}
        self._lock = threading.Lock()

    def _transport(self, route: RouteConfig) -> httpx.BaseTransport:
        if self._given is not None:
            return self._given
        transport = self._transports.get(route.verify)
        if transport is None:
            with self._lock:  # threads racing here would each make (and leak) a pool
                transport = self._transports.get(route.verify)
                if transport is None:
                    transport = httpx.HTTPTransport(verify=tls_verify(route), limits=_LIMITS)
                    self._transports[route.verify] = transport
        return transport

    def send(self, request: Request) -> HttpxAnswer:
        transport = self._transport(request.route)
        return HttpxAnswer(transport.handle_request(_httpx_request(request)))

    def close(self) -> None:
        """Close the pools this sender made (a transport handed in belongs to its owner)."""
        with self._lock:
            transports, self._transports = self._transports, {}
        for transport in transports.values():
            transport.close()


class HttpxAsyncSender:
    """The async sender over an httpx transport handed to the provider."""

    io_errors = _IO_ERRORS

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport = transport

    async def send(self, request: Request) -> HttpxAsyncAnswer:
        answer = await self._transport.handle_async_request(_httpx_request(request))
        return HttpxAsyncAnswer(answer)

    async def aclose(self) -> None:
        """Nothing to close: the transport belongs to whoever handed it in."""
