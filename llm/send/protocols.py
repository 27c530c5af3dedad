"""The sender abstraction: what the engines and the probes need of an HTTP client.

A *sender* sends one ``Request`` to one route and hands back an *answer*: the status, the
headers, and the body read at once or piece by piece. The engines, the streams and the active
checks are written against these protocols only, so each twin (async and sync) has a single
loop whatever carries the bytes:

- async: ``AiohttpSender`` (``aiohttp_sender.py``), or ``HttpxAsyncSender`` over an httpx
  transport handed to the provider (``httpx_senders.py``; tests and mocks);
- sync: ``HttpcoreSender`` (``httpcore_sender.py``), or ``HttpxSender`` over an httpx
  transport handed to the provider.

``bounded`` holds everything an attempt waits on to one deadline (a peer sending a little
at a time must not hold it longer). ``io_errors`` is the tuple of exception types that mean
an I/O failure for this sender's library (``failures.transport_error`` reads them); anything
else raised while sending (a cancellation, a bug) is not the route's fault and propagates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from ..config import RouteConfig


@dataclass(slots=True)
class Request:
    """One request to one route. ``timeout`` bounds the whole answer (the sender's own
    bound, or ``bounded``); ``read_timeout`` each read of a stream after its first token;
    ``connect_timeout`` the connection. Redirects are never followed."""

    route: RouteConfig
    method: str
    url: str
    headers: Mapping[str, str]
    content: bytes | None
    timeout: float
    connect_timeout: float
    read_timeout: float
    stream: bool = False


SyncSleep = Callable[[float], None]
AsyncSleep = Callable[[float], Awaitable[None]]


class AsyncAnswer(Protocol):
    status_code: int
    headers: Mapping[str, str]  # case-insensitive

    async def read_declared(self, limit: int) -> bytes | None:
        """The whole body at once when the sender can bound that read (a declared length
        within ``limit``, under the attempt's total timeout); else None."""

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""

    async def aclose(self) -> None:
        """Release the connection (to the pool when the body was read to its end)."""


class SyncAnswer(Protocol):
    status_code: int
    headers: Mapping[str, str]

    def read_declared(self, limit: int) -> bytes | None: ...

    def iter_bytes(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class AsyncSender(Protocol):
    @property
    def io_errors(self) -> tuple[type[BaseException], ...]: ...

    def bounded(self, seconds: float, stream: bool) -> AbstractAsyncContextManager[None]:
        """``async with``: every wait of the sends and reads inside it (connecting, interim
        answers, headers, the body, a stream's first token) ends within ``seconds``, with
        one of ``io_errors``."""

    async def send(self, request: Request) -> AsyncAnswer: ...

    async def aclose(self) -> None: ...

    def fork_reset(self) -> None:
        """In a forked child: forget every connection (they are the parent's)."""


class SyncSender(Protocol):
    @property
    def io_errors(self) -> tuple[type[BaseException], ...]: ...

    def bounded(self, seconds: float, stream: bool) -> AbstractContextManager[None]: ...

    def send(self, request: Request) -> SyncAnswer: ...

    def close(self) -> None: ...

    def fork_reset(self) -> None: ...
