"""A minimal, fast HTTP/1.1 server protocol (asyncio.Protocol) for the fake vLLM.

How this works
--------------
One :class:`HttpConnection` per TCP connection. ``data_received`` appends to a
buffer and parses as many complete requests as are available (request line,
headers, then a ``Content-Length`` or chunked body). Each request is handed to
the application (``App.handle``), which either answers synchronously (the fast
path: the whole response goes out in one ``transport.write``) or returns a
coroutine; the connection then runs it as a task and stops parsing further
(pipelined) requests until it finishes, so responses are never interleaved.
A third way needs no task: the application calls :meth:`HttpConnection.hold`
(parsing stops; a callback runs if the peer goes away first) and answers later
from elsewhere on the loop, then calls :meth:`HttpConnection.release`.

Keep-alive follows HTTP/1.1 rules (``Connection: close`` / HTTP/1.0). When the
peer goes away, the in-flight task is cancelled. Write flow control is exposed
through :meth:`HttpConnection.drain`. Responses mimic uvicorn's header order:
``date``, ``server: uvicorn``, extra headers, ``content-length``,
``content-type``, ``vary: Origin`` and, for streams, ``transfer-encoding:
chunked``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024

_REASONS: dict[int, str] = {s.value: s.phrase for s in HTTPStatus}
_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    """RFC 7231 date, cached per second."""
    global _date_cache
    now = int(time.time())
    cached = _date_cache
    if cached[0] != now:
        cached = (now, formatdate(now, usegmt=True))
        _date_cache = cached
    return cached[1]


def reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


class Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path", "target", "version")

    def __init__(
        self, method: str, target: str, version: str, headers: dict[str, str], body: bytes
    ) -> None:
        self.method = method
        self.target = target
        self.path = target.split("?", 1)[0]
        self.version = version
        self.headers = headers
        self.body = body
        conn = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            self.keep_alive = "keep-alive" in conn
        else:
            self.keep_alive = "close" not in conn


class App(Protocol):
    def handle(self, conn: HttpConnection, req: Request) -> Coroutine[Any, Any, None] | None: ...

    def connection_opened(self, conn: HttpConnection) -> None: ...

    def connection_closed(self, conn: HttpConnection) -> None: ...


class _BadRequest(Exception):
    def __init__(self, status: int = 400, text: str = "Invalid HTTP request received.") -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def _parse_chunked(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a complete chunked body from buf[start:]; None if incomplete."""
    pos = start
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if len(buf) - pos > 1024:
                raise _BadRequest()
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _BadRequest() from None
        pos = eol + 2
        if size == 0:
            if buf[pos : pos + 2] == b"\r\n":
                return bytes(out), pos + 2
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                return None
            return bytes(out), end + 4
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise _BadRequest()
        pos += size + 2
        if len(out) > MAX_BODY:
            raise _BadRequest(413, "Request Entity Too Large")


class HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 connection; see the module docstring."""

    def __init__(
        self, app: App, loop: asyncio.AbstractEventLoop, idle_timeout: float | None = None
    ) -> None:
        self.app = app
        self.loop = loop
        self.idle_timeout = idle_timeout
        self._idle_handle: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.keep_alive = True
        self._head: tuple[str, str, str, dict[str, str], str, int] | None = None
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._processing = False
        self._held: Callable[[], None] | None = None

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.app.connection_opened(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.buf += data
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        if self.task is None and self._held is None and not self._processing:
            self._process()

    def eof_received(self) -> bool | None:
        # Half-closed peer: nothing more to read; close our side too.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        task = self.task
        if task is not None and not task.done():
            task.cancel()
        held, self._held = self._held, None
        if held is not None:
            held()
        self._wake_drainers()
        self.app.connection_closed(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drainers()

    # ------------------------------------------------------------------ flow control

    @property
    def paused(self) -> bool:
        return self._paused

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def drain(self) -> None:
        if not self._paused or self.closing:
            return
        fut: asyncio.Future[None] = self.loop.create_future()
        self._drain_waiters.append(fut)
        await fut

    async def flush(self, timeout: float = 1.0) -> None:
        """Wait (bounded) until the transport's write buffer is empty."""
        t = self.transport
        deadline = self.loop.time() + timeout
        while (
            t is not None
            and not t.is_closing()
            and t.get_write_buffer_size() > 0
            and self.loop.time() < deadline
        ):
            await asyncio.sleep(0.005)

    # ------------------------------------------------------------------ parsing

    def _process(self) -> None:
        self._processing = True
        try:
            while not self.closing and self.task is None and self._held is None:
                try:
                    req = self._parse()
                except _BadRequest as exc:
                    self.keep_alive = False
                    body = exc.text.encode()
                    self.send(exc.status, body, "text/plain; charset=utf-8", vary=False)
                    self.close()
                    return
                if req is None:
                    if not self.buf and self._head is None:
                        self._arm_idle()
                    return
                self.keep_alive = req.keep_alive
                coro = self.app.handle(self, req)
                if coro is not None:
                    if self.closing:
                        coro.close()
                        return
                    task = self.loop.create_task(coro)
                    self.task = task
                    task.add_done_callback(self._task_done)
                    return
                if self._held is not None:
                    return
                if not self.keep_alive:
                    self.close()
                    return
        finally:
            self._processing = False

    def _parse(self) -> Request | None:
        buf = self.buf
        if self._head is None:
            # tolerate stray CRLFs between requests (RFC 9112 section 2.2)
            while buf[:2] == b"\r\n":
                del buf[:2]
            idx = buf.find(b"\r\n\r\n")
            if idx < 0:
                if len(buf) > MAX_HEAD:
                    raise _BadRequest(431, "Request Header Fields Too Large")
                return None
            lines = bytes(buf[:idx]).decode("latin-1").split("\r\n")
            del buf[: idx + 4]
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                raise _BadRequest()
            method, target, version = parts
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep or not name or name != name.strip():
                    raise _BadRequest()
                key = name.lower()
                value = value.strip()
                if key in headers:
                    headers[key] = f"{headers[key]}, {value}"
                else:
                    headers[key] = value
            te = headers.get("transfer-encoding")
            if te is not None and "chunked" in te.lower():
                mode, length = "chunked", 0
            else:
                cl = headers.get("content-length")
                mode = "length"
                if cl is None:
                    length = 0
                else:
                    try:
                        length = int(cl)
                    except ValueError:
                        raise _BadRequest() from None
                    if length < 0:
                        raise _BadRequest()
                    if length > MAX_BODY:
                        raise _BadRequest(413, "Request Entity Too Large")
            self._head = (method, target, version, headers, mode, length)
            if headers.get("expect", "").lower() == "100-continue" and (
                mode == "chunked" or len(buf) < length
            ):
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        method, target, version, headers, mode, length = self._head
        if mode == "length":
            if len(buf) < length:
                return None
            body = bytes(buf[:length])
            del buf[:length]
        else:
            res = _parse_chunked(buf, 0)
            if res is None:
                return None
            body, consumed = res
            del buf[:consumed]
        self._head = None
        return Request(method, target, version, headers, body)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self.task is task:
            self.task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            print(f"fake vLLM: handler error: {exc!r}", file=sys.stderr)
            self.abort()
            return
        self._answered()

    def _answered(self) -> None:
        """The current request is answered: go on with the connection."""
        if self.closing:
            return
        if not self.keep_alive:
            self.close()
            return
        if self.buf and not self._processing:
            self._process()
        elif not self.buf:
            self._arm_idle()

    # ------------------------------------------------------------------ held requests

    def hold(self, on_lost: Callable[[], None]) -> None:
        """The request being handled will be answered later, without a task: parsing stops
        until :meth:`release`; ``on_lost`` runs (once) if the connection is lost before."""
        self._held = on_lost

    def release(self) -> None:
        """The held request is answered: go on (keep-alive, pipelined requests, idle timer)."""
        if self._held is None:
            return
        self._held = None
        self._answered()

    # ------------------------------------------------------------------ idle timeout

    def _arm_idle(self) -> None:
        """uvicorn-like keep-alive timeout: close a connection idle for idle_timeout s."""
        if self.idle_timeout is None or self.closing:
            return
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        self._idle_handle = self.loop.call_later(self.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        self._idle_handle = None
        if self.task is None and self._held is None and not self.buf and self._head is None:
            self.close()

    # ------------------------------------------------------------------ writing

    def _write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not self.closing and not t.is_closing():
            t.write(data)

    def head(
        self,
        status: int,
        content_type: str | None,
        length: int | None,
        extra: Iterable[tuple[str, str]] = (),
        *,
        vary: bool = True,
        server: str = "uvicorn",
    ) -> str:
        parts = [
            f"HTTP/1.1 {status} {reason(status)}\r\ndate: {http_date()}\r\nserver: {server}\r\n"
        ]
        for k, v in extra:
            parts.append(f"{k}: {v}\r\n")
        if length is not None:
            parts.append(f"content-length: {length}\r\n")
        if content_type is not None:
            parts.append(f"content-type: {content_type}\r\n")
        if vary:
            parts.append("vary: Origin\r\n")
        if length is None:
            parts.append("transfer-encoding: chunked\r\n")
        if not self.keep_alive:
            parts.append("connection: close\r\n")
        parts.append("\r\n")
        return "".join(parts)

    def send(
        self,
        status: int,
        body: bytes,
        content_type: str | None = "application/json",
        extra: Iterable[tuple[str, str]] = (),
        *,
        vary: bool = True,
    ) -> None:
        """A complete response with content-length, in one write."""
        self._write(
            self.head(status, content_type, len(body), extra, vary=vary).encode("latin-1") + body
        )

    def send_raw(self, data: bytes) -> None:
        self._write(data)

    def start_stream(self, status: int, content_type: str) -> None:
        self._write(self.head(status, content_type, None).encode("latin-1"))

    def send_chunk(self, data: bytes) -> None:
        if data:
            self._write(b"%x\r\n%b\r\n" % (len(data), data))

    def end_stream(self) -> None:
        self._write(b"0\r\n\r\n")

    def close(self) -> None:
        self.closing = True
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def abort(self) -> None:
        self.closing = True
        t = self.transport
        if t is not None:
            with contextlib.suppress(Exception):
                t.abort()
