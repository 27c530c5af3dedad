"""The async engine's own HTTP sender: aiohttp sessions, one per TLS setting and event loop.

How this works
--------------
The async hot path talks to aiohttp directly. Going through httpx instead (an
``httpx.Request`` built per attempt, handed to httpx-aiohttp, whose answer is adapted into an
``httpx.Response`` read through httpx's byte streams) cost more CPU per call than routing,
retries and JSON together: see docs/performance.md. ``NativeSender.send`` posts the encoded
body and returns a ``NativeResponse``, which has the few attributes of ``httpx.Response`` the
engine reads (``status_code``, ``headers``, ``aiter_bytes``/``aiter_raw``, ``aclose``), so the
engine's loops serve both kinds of answer.

httpx still carries the async path where httpx belongs: an httpx transport given to the
provider (respx or ``httpx.MockTransport`` in tests) and the active checks use it, and
``provider.async_http_client()`` hands httpx clients to the OpenAI SDK.

Sessions belong to the event loop that made them; on another loop new ones are made (see the
README). aiohttp is imported when the first session is made, not with ``llm``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from .config import RouteConfig

if TYPE_CHECKING:
    import aiohttp

MAX_CONNECTIONS = 1000
KEEPALIVE_EXPIRY = 4.0  # under uvicorn's 5 s: a connection the server is closing is not reused


class NativeResponse:
    """An aiohttp answer, shaped like the part of ``httpx.Response`` the engine reads."""

    __slots__ = ("_response", "headers", "status_code")
    is_stream_consumed = False
    content = b""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code: int = response.status
        self.headers: Mapping[str, str] = response.headers  # case-insensitive

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return self._response.content.iter_any()

    def aiter_raw(self) -> AsyncIterator[bytes]:
        return self._response.content.iter_any()

    async def read_declared(self, limit: int) -> bytes | None:
        """The whole body when its declared length is within ``limit``, else None (the engine
        then reads it piece by piece, counting). The attempt's total timeout bounds the wait."""
        response = self._response
        length = response.content_length
        if length is None or length > limit or "Content-Encoding" in response.headers:
            return None  # a compressed length says nothing of the decoded size
        return await response.read()

    async def aclose(self) -> None:
        # Back to the pool when read to the end; closed when not (aiohttp decides).
        self._response.release()


class NativeSender:
    """POSTs over aiohttp: sessions per ``verify`` value, timeouts and headers cached."""

    def __init__(self, tls: Any) -> None:
        self._tls = tls  # RouteConfig -> bool | ssl.SSLContext (the engine's tls_verify)
        self._sessions: dict[bool | str, aiohttp.ClientSession] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[tuple[float, float, bool], aiohttp.ClientTimeout] = {}

    def _session(self, route: RouteConfig) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._sessions = {}
            self._loop = loop
        session = self._sessions.get(route.verify)
        if session is None:
            import aiohttp

            verify = self._tls(route)
            connector = aiohttp.TCPConnector(
                limit=MAX_CONNECTIONS,
                keepalive_timeout=KEEPALIVE_EXPIRY,
                ssl=verify if verify is not True else True,
            )
            # No Accept-Encoding: vLLM need not compress what it sends over a local network.
            session = aiohttp.ClientSession(
                connector=connector, skip_auto_headers=("Accept-Encoding",)
            )
            self._sessions[route.verify] = session
        return session

    def _timeout(self, seconds: float, connect: float, stream: bool) -> aiohttp.ClientTimeout:
        """A whole answer must come within ``seconds`` (a trickling server cannot hold it); a
        stream may run on, as long as no read waits longer than ``seconds``."""
        key = (seconds, connect, stream)
        timeout = self._timeouts.get(key)
        if timeout is None:
            import aiohttp

            if len(self._timeouts) > 256:  # attempts late in a deadline vary: keep it small
                self._timeouts.clear()
            if stream:
                timeout = aiohttp.ClientTimeout(sock_read=seconds, sock_connect=connect)
            else:
                timeout = aiohttp.ClientTimeout(total=seconds, sock_connect=connect)
            self._timeouts[key] = timeout
        return timeout

    def send(
        self,
        route: RouteConfig,
        url: str,
        headers: Mapping[str, str],
        content: bytes | None,
        timeout: float,
        connect_timeout: float,
        stream: bool,
    ) -> Awaitable[aiohttp.ClientResponse]:
        """The POST, to be awaited once; the engine wraps the answer in a ``NativeResponse``.
        (Not a coroutine of its own: one frame less on every call.)"""
        return self._session(route).post(
            url,
            data=content,
            headers=headers,
            timeout=self._timeout(timeout, connect_timeout, stream),
            allow_redirects=False,
        )

    async def aclose(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()
