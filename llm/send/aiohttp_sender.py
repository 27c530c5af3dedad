"""The async sender: aiohttp sessions, one per TLS setting and event loop.

How this works
--------------
The async path talks to aiohttp directly, for calls and active checks alike. Going through
httpx instead (an ``httpx.Request`` built per attempt, handed to an adapter, whose answer is
adapted again and read through httpx's byte streams) cost more CPU per call than routing,
retries and JSON together: see docs/performance.md.

``AiohttpSender.send`` sends the request and wraps aiohttp's response in an
``AiohttpAnswer``, which has what ``protocols.AsyncAnswer`` asks for. A whole answer must come
within the attempt's timeout (a trickling server cannot hold it); a stream may run on, as long
as no read waits longer than that. No ``Accept-Encoding`` is sent: vLLM need not compress what
it sends over a local network (and the body cap counts what arrives).

Sessions belong to the event loop that made them; on another loop new ones are made (see the
README). aiohttp is imported when the first session is made, not with ``llm``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from functools import cache
from typing import TYPE_CHECKING, Any

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # aiohttp depends on it before 3.11
    from async_timeout import timeout as _timeout

from ..config import RouteConfig
from .lifecycle import closed_error
from .protocols import Request
from .tls import tls_verify

if TYPE_CHECKING:
    import aiohttp

_UNBOUNDED: AbstractAsyncContextManager[None] = contextlib.nullcontext()


class _AttemptBound:
    """``async with``: the task is cancelled ``seconds`` from now, and that cancellation
    turns into a ``TimeoutError`` saying so (``asyncio.timeout``, or async-timeout on 3.10)."""

    __slots__ = ("_seconds", "_timeout")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    async def __aenter__(self) -> None:
        self._timeout = _timeout(self._seconds)
        await self._timeout.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self._timeout.__aexit__(*exc_info)
        except asyncio.TimeoutError:
            raise asyncio.TimeoutError(f"no answer within {self._seconds:g}s") from None


MAX_CONNECTIONS = 1000
KEEPALIVE_EXPIRY = 4.0  # under uvicorn's 5 s: a connection the server is closing is not reused
_TIMEOUTS_KEPT = 256  # attempts late in a deadline have odd timeouts: keep the cache small


@cache
def _io_errors() -> tuple[type[BaseException], ...]:
    import aiohttp

    return (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class AiohttpAnswer:
    """An aiohttp response, as ``protocols.AsyncAnswer``."""

    __slots__ = ("_response", "headers", "status_code")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code: int = response.status
        self.headers: Mapping[str, str] = response.headers  # case-insensitive

    async def read_declared(self, limit: int) -> bytes | None:
        response = self._response
        length = response.content_length
        if length is None or length > limit or "Content-Encoding" in response.headers:
            return None  # a compressed length says nothing of the decoded size
        return await response.read()

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return self._response.content.iter_any()

    async def aclose(self) -> None:
        # Back to the pool when read to the end; closed when not (aiohttp decides).
        self._response.release()


class AiohttpSender:
    """Requests over aiohttp: a session per ``verify`` value, timeouts cached."""

    def __init__(self) -> None:
        self._sessions: dict[bool | str, aiohttp.ClientSession] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[tuple[float, float, bool], aiohttp.ClientTimeout] = {}
        self._closed = False

    @property
    def io_errors(self) -> tuple[type[BaseException], ...]:
        return _io_errors()

    def _session(self, route: RouteConfig) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._sessions = {}
            self._loop = loop
        session = self._sessions.get(route.verify)
        if session is None:
            if self._closed:
                raise closed_error()
            import aiohttp

            verify = tls_verify(route)
            connector = aiohttp.TCPConnector(
                limit=MAX_CONNECTIONS,
                keepalive_timeout=KEEPALIVE_EXPIRY,
                ssl=verify if verify is not True else True,
            )
            session = aiohttp.ClientSession(
                connector=connector, skip_auto_headers=("Accept-Encoding",)
            )
            self._sessions[route.verify] = session
        return session

    def _timeout(self, request: Request) -> aiohttp.ClientTimeout:
        """A whole answer: ``total``. A stream: each read (``bounded`` holds the way to its
        first token)."""
        stream, connect = request.stream, request.connect_timeout
        seconds = request.read_timeout if stream else request.timeout
        key = (seconds, connect, stream)
        timeout = self._timeouts.get(key)
        if timeout is None:
            import aiohttp

            if len(self._timeouts) > _TIMEOUTS_KEPT:
                self._timeouts.clear()
            if stream:
                timeout = aiohttp.ClientTimeout(sock_read=seconds, sock_connect=connect)
            else:
                timeout = aiohttp.ClientTimeout(total=seconds, sock_connect=connect)
            self._timeouts[key] = timeout
        return timeout

    def bounded(self, seconds: float, stream: bool) -> AbstractAsyncContextManager[None]:
        # a whole answer is bounded by aiohttp's total timeout already
        return _AttemptBound(seconds) if stream else _UNBOUNDED

    async def send(self, request: Request) -> AiohttpAnswer:
        response = await self._session(request.route).request(
            request.method,
            request.url,
            data=request.content,
            headers=request.headers,
            timeout=self._timeout(request),
            allow_redirects=False,
        )
        return AiohttpAnswer(response)

    async def aclose(self) -> None:
        """Close the sessions; a request after this raises ``ProviderClosedError``."""
        self._closed = True
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    def fork_reset(self) -> None:
        """In a forked child: forget the parent's sessions (their sockets are the parent's,
        their event loop is not running here)."""
        self._sessions = {}
        self._loop = None
