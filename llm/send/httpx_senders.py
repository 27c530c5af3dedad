"""Senders over an httpx transport handed to the provider (``transport=``, ``async_transport=``).

Tests and mocks hand the provider an httpx transport (respx, ``httpx.MockTransport``); the
engines reach it through these senders, as they reach aiohttp (``aiohttp_sender.py``) and
httpcore (``httpcore_sender.py``) otherwise. They talk to the transport directly, below
``httpx.Client``: the engines do what a client would add (redirects are not followed, no
default headers). A transport handed in keeps its own timeouts: ``bounded`` adds nothing, and
the engines' clock checks (``read_body``, a stream's first token) bound what arrives.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping

import httpx

from .protocols import Request

_IO_ERRORS: tuple[type[BaseException], ...] = (httpx.HTTPError, OSError)
_UNBOUNDED = contextlib.nullcontext()

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
    read = request.read_timeout
    extensions = {
        "timeout": {
            "connect": request.connect_timeout,
            "read": read,
            "write": read,
            "pool": request.timeout,
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
    """The sync sender over an httpx transport handed to the provider."""

    io_errors = _IO_ERRORS

    def __init__(self, transport: httpx.BaseTransport) -> None:
        self._transport = transport

    def bounded(self, seconds: float, stream: bool) -> contextlib.nullcontext[None]:
        return _UNBOUNDED

    def send(self, request: Request) -> HttpxAnswer:
        return HttpxAnswer(self._transport.handle_request(_httpx_request(request)))

    def close(self) -> None:
        """Nothing to close: the transport belongs to whoever handed it in."""

    def fork_reset(self) -> None:
        """Nothing to forget: the transport belongs to whoever handed it in."""


class HttpxAsyncSender:
    """The async sender over an httpx transport handed to the provider."""

    io_errors = _IO_ERRORS

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport = transport

    def bounded(self, seconds: float, stream: bool) -> contextlib.nullcontext[None]:
        return _UNBOUNDED

    async def send(self, request: Request) -> HttpxAsyncAnswer:
        answer = await self._transport.handle_async_request(_httpx_request(request))
        return HttpxAsyncAnswer(answer)

    async def aclose(self) -> None:
        """Nothing to close: the transport belongs to whoever handed it in."""

    def fork_reset(self) -> None:
        """Nothing to forget: the transport belongs to whoever handed it in."""
