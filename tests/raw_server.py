"""A raw HTTP server for tests: it sends exactly the bytes a script writes, when it writes them.

The fake vLLM server speaks the protocol well; a misbehaving instance or proxy does not. Here
each connection reads one request (request line, headers, a ``Content-Length`` body), hands it
to ``script(request, writer)`` and closes the connection when the script returns, so a test
can send a malformed answer, an endless run of ``102 Processing``, headers trickled a byte at
a time, a body that never ends, or nothing at all. The server runs its own event loop in a
daemon thread on 127.0.0.1 with an ephemeral port, and ``stop()`` (or leaving the ``with``
block) cancels every connection and waits a bounded time for the thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

STOP_TIMEOUT = 5.0


@dataclass
class RawRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Script = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawServer:
    script: Script
    host: str = "127.0.0.1"
    requests: list[RawRequest] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.AbstractServer | None = None
    _thread: threading.Thread | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> RawServer:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="raw-server")
        self._thread.start()
        if not ready.wait(STOP_TIMEOUT):
            raise RuntimeError("raw server did not start")
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            body = await reader.readexactly(length) if length else b""
            request = RawRequest(method, path, headers, body)
            self.requests.append(request)
            await self.script(request, writer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0.01)  # the transports' close callbacks run

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(STOP_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT)
        assert not thread.is_alive(), "raw server did not stop"
        loop.close()

    def __enter__(self) -> RawServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- scripts ------------------------------------------------------------------------------


def response_head(
    status: int = 200,
    headers: Iterable[tuple[str, str]] = (),
    length: int | None = None,
    reason: str = "OK",
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if length is not None:
        lines.append(f"content-length: {length}")
    lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def answer(
    body: bytes | Any,
    status: int = 200,
    content_type: str = "application/json",
    extra: Iterable[tuple[str, str]] = (),
) -> Script:
    """A whole answer at once: ``body`` as is when bytes, else as JSON."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def script(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        head = response_head(status, [("content-type", content_type), *extra], len(data))
        writer.write(head + data)

    return script


def sse(events: Iterable[bytes | Any], pause: float = 0.0, done: bool = True) -> Script:
    """An event stream: each event as ``data: <json>`` (bytes as they are), chunked."""

    def framed(event: bytes | Any) -> bytes:
        payload = event if isinstance(event, bytes) else json.dumps(event).encode()
        return b"data: " + payload + b"\n\n"

    pieces = [framed(event) for event in events]
    if done:
        pieces.append(b"data: [DONE]\n\n")

    async def script(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        head = response_head(200, [("content-type", "text/event-stream")])
        writer.write(head)
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)

    return script


def chat_chunk(content: str | None = None, **delta: Any) -> dict[str, Any]:
    """A vLLM chat stream chunk with ``content`` (or the role-only first chunk)."""
    body = {"role": "assistant", "content": ""} if content is None else {"content": content}
    body.update(delta)
    return {
        "id": "chatcmpl-raw",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": body, "logprobs": None, "finish_reason": None}],
    }


def chat_answer(content: str = "hi") -> dict[str, Any]:
    return {
        "id": "chatcmpl-raw",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
