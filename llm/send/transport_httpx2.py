"""The routing transports for ``httpx2`` clients (openai 3), beside httpx's (``transport.py``).

openai 3 is built on ``httpx2``, httpx's successor under a new name with the same API; it
still accepts a legacy ``httpx.Client`` today, but only through a compatibility check. These
classes put the same routing engine behind ``httpx2.Client`` / ``httpx2.AsyncClient``, with
the same behaviour, through the functions of ``transport.py`` (which take the package as an
argument). Importing this module needs ``httpx2`` installed (openai 3 brings it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import cast

import httpx2

from ..errors import LLMError
from ._async.engine import AsyncEngine
from ._async.stream import AsyncStream
from ._sync.engine import SyncEngine
from ._sync.stream import SyncStream
from .transport import Errors, ahandle, handle

__all__ = [
    "AsyncRoutingTransport2",
    "Routes2TimeoutError",
    "Routes2UnavailableError",
    "RoutingTransport2",
]


class Routes2UnavailableError(httpx2.ConnectError, LLMError):
    """No route could be reached (an httpx2 transport error, for httpx2 clients)."""


class Routes2TimeoutError(httpx2.ReadTimeout, LLMError):
    """The call's deadline passed before any route answered (the SDK's APITimeoutError)."""


_ERRORS: Errors = (Routes2UnavailableError, Routes2TimeoutError)


class RoutingTransport2(httpx2.BaseTransport):
    def __init__(self, engine: SyncEngine) -> None:
        self._engine = engine

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        content = request.read()
        return cast(
            httpx2.Response, handle(httpx2, self._engine, request, content, _SyncBody, _ERRORS)
        )

    def close(self) -> None:
        """Nothing to do: the provider owns the connections (close the provider instead)."""


class AsyncRoutingTransport2(httpx2.AsyncBaseTransport):
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        content = await request.aread()
        answer = await ahandle(httpx2, self._engine, request, content, _AsyncBody, _ERRORS)
        return cast(httpx2.Response, answer)

    async def aclose(self) -> None:
        """Nothing to do: the provider owns the connections (close the provider instead)."""


class _SyncBody(httpx2.SyncByteStream):
    def __init__(self, stream: SyncStream) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream.iter_raw()

    def close(self) -> None:
        self._stream.close()


class _AsyncBody(httpx2.AsyncByteStream):
    def __init__(self, stream: AsyncStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream.aiter_raw():
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()
