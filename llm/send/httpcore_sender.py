"""The sync sender: httpcore connection pools whose every wait answers to the attempt's deadline.

How this works
--------------
The sync path talks to httpcore (the connection pool under httpx) directly. httpcore bounds
each socket operation on its own (``connect``, ``read``, ``write``), so a peer that keeps
sending a little, such as a proxy sending ``102 Processing`` forever, headers trickled a byte
at a time, or a body that never ends, could hold a call for ever. Here the pools run over
``_DeadlineBackend``, whose network streams cut every operation down to what is left of the
deadline the caller set with ``bounded(seconds)``. The engines bound an attempt this way from
its connection to its whole answer, or for a stream to its first token; after that a stream's
reads are bounded by the route's own timeout. The deadline lives in a context variable, so
it belongs to the thread (or context) running the attempt. An attempt that a hedge's race
cancels (``race.py``) has its socket shut down from the racing thread.

Answers are decoded here (``decoding.decoded``: gzip and deflate, in pieces a size cap can
count) since httpcore hands out the body as it came. Connection pools are made one per
distinct ``verify`` value of the routes; ``fork_reset`` forgets them in a forked child, which
must never share its parent's sockets.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from ..config import RouteConfig
from .decoding import decoded
from .lifecycle import closed_error
from .protocols import Request
from .race import CURRENT_CANCEL
from .tls import tls_verify

MAX_CONNECTIONS = 1000
MAX_KEEPALIVE = 256
KEEPALIVE_EXPIRY = 4.0  # under uvicorn's 5 s: a connection the server is closing is not reused

_IO_ERRORS: tuple[type[BaseException], ...] = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ProxyError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class _Deadline:
    at: float  # time.monotonic()
    seconds: float


_DEADLINE: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar(
    "llm_routes_deadline", default=None
)


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` for one socket operation, cut to what is left of the deadline."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline.at - time.monotonic()
    if left <= 0:
        raise error(f"no answer within {deadline.seconds:g}s")
    return left if timeout is None or left < timeout else timeout


def _watched(stream: httpcore.NetworkStream) -> None:
    """A hedge's race may cancel this thread's attempt (``race.Cancel``): it may then shut
    down this stream's socket, whose blocked read or write returns at once."""
    cancel = CURRENT_CANCEL.get()
    if cancel is not None and not cancel.watch(stream.get_extra_info("socket")):
        raise httpcore.ReadError("cancelled: another attempt of the call answered first")


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        _watched(self._stream)
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        _watched(self._stream)
        self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, bounded, local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _Bound:
    """``with``: every socket operation of this thread ends by ``seconds`` from now."""

    __slots__ = ("_seconds", "_token")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def __enter__(self) -> None:
        deadline = _Deadline(time.monotonic() + self._seconds, self._seconds)
        self._token = _DEADLINE.set(deadline)

    def __exit__(self, *exc_info: object) -> None:
        _DEADLINE.reset(self._token)


class HttpcoreAnswer:
    """An httpcore response, as ``protocols.SyncAnswer``: headers by lower-cased name."""

    __slots__ = ("_response", "_route", "headers", "status_code")

    def __init__(self, response: httpcore.Response, route: str) -> None:
        self._response = response
        self._route = route
        self.status_code = response.status
        # by name, the last value of a repeated header (none of those read here repeat)
        self.headers: Mapping[str, str] = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in response.headers
        }

    def read_declared(self, limit: int) -> bytes | None:
        return None  # each read is bounded, not the whole: the engine reads and counts

    def iter_bytes(self) -> Iterator[bytes]:
        pieces = self._response.iter_stream()
        return iter(decoded(pieces, self.headers.get("content-encoding"), self._route))

    def close(self) -> None:
        self._response.close()


class HttpcoreSender:
    """The sync sender: a connection pool per ``verify`` value, bounded by ``bounded``."""

    io_errors = _IO_ERRORS

    def __init__(self) -> None:
        self._pools: dict[bool | str, httpcore.ConnectionPool] = {}
        self._lock = threading.Lock()
        self._urls: dict[str, tuple[httpcore.URL, bytes]] = {}
        self._closed = False

    def bounded(self, seconds: float, stream: bool) -> _Bound:
        return _Bound(seconds)

    def _pool(self, route: RouteConfig) -> httpcore.ConnectionPool:
        pool = self._pools.get(route.verify)
        if pool is None:
            with self._lock:  # threads racing here would each make (and leak) a pool
                pool = self._pools.get(route.verify)
                if self._closed:
                    raise closed_error()
                if pool is None:
                    verify = tls_verify(route)
                    pool = httpcore.ConnectionPool(
                        ssl_context=httpx.create_ssl_context(verify=verify),
                        max_connections=MAX_CONNECTIONS,
                        max_keepalive_connections=MAX_KEEPALIVE,
                        keepalive_expiry=KEEPALIVE_EXPIRY,
                        network_backend=_DeadlineBackend(),
                    )
                    self._pools[route.verify] = pool
        return pool

    def _url(self, url: str) -> tuple[httpcore.URL, bytes]:
        """The parsed URL and its ``Host`` header (what httpx.Request would add), kept."""
        known = self._urls.get(url)
        if known is None:
            parsed = httpx.URL(url)  # httpx knows the Host header rules (default ports...)
            host = httpx.Request("GET", parsed).headers["host"].encode("ascii")
            known = self._urls[url] = (httpcore.URL(url), host)
        return known

    def send(self, request: Request) -> HttpcoreAnswer:
        url, host = self._url(request.url)
        # UTF-8 here: a header value the config allows is sent as it is written.
        headers = [(b"host", host)]
        headers.extend((name.encode(), value.encode()) for name, value in request.headers.items())
        content = request.content
        if content is not None:
            headers.append((b"content-length", str(len(content)).encode()))
        read = request.read_timeout
        extensions = {
            "timeout": {
                "connect": request.connect_timeout,
                "read": read,
                "write": read,
                "pool": request.timeout,
            }
        }
        outgoing = httpcore.Request(
            request.method, url, headers=headers, content=content, extensions=extensions
        )
        response = self._pool(request.route).handle_request(outgoing)
        return HttpcoreAnswer(response, request.route.name)

    def close(self) -> None:
        """Close the pools; a request after this raises ``ProviderClosedError``."""
        with self._lock:
            self._closed = True
            pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()

    def fork_reset(self) -> None:
        """In a forked child: forget the parent's pools (their sockets are the parent's;
        nothing is sent on them or closed here) and its lock."""
        self._lock = threading.Lock()
        self._pools = {}
