"""Server-sent events decoder: feed it bytes as they arrive, get complete ``data`` payloads.

Follows the SSE framing rules (LF, CRLF or CR line ends; ``data:`` lines joined by LF; comment
lines and ``event:``/``id:``/``retry:`` fields ignored) and stops at ``data: [DONE]``, after
which ``done`` is true and further input is ignored. vLLM sends exactly ``data: <json>\\n\\n``
per event, so that shape takes a fast path; any split of the input into chunks gives the same
events.
"""

from __future__ import annotations

__all__ = ["OversizedEventError", "SSEDecoder"]

_DONE = b"[DONE]"


class OversizedEventError(ValueError):
    """An event grew past the decoder's ``max_event_bytes`` before it ended."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"an event larger than {limit} bytes")


class SSEDecoder:
    """``max_event_bytes`` bounds what is held for one unfinished event (None: no bound)."""

    __slots__ = ("_buffer", "_max", "_skip_lf", "done")

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._buffer = b""
        self._skip_lf = False
        self._max = max_event_bytes
        self.done = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data payloads of the events that ``chunk`` completes, in order."""
        if self.done or not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            # A CR at the very end may be half of a CRLF: the LF is dropped on the next feed.
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[bytes] = []
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            block = buffer[start:end]
            start = end + 2
            if block.startswith(b"data: ") and b"\n" not in block:
                data: bytes | None = block[6:]
            else:
                data = _parse_block(block)
            if data is None:
                continue
            if data == _DONE:
                self.done = True
                self._buffer = b""
                return events
            events.append(data)
        self._buffer = buffer[start:] if start else buffer
        if self._max is not None and len(self._buffer) > self._max:
            raise OversizedEventError(self._max)
        return events

    @property
    def pending(self) -> bool:
        """True when part of an event has arrived but not its end."""
        return bool(self._buffer.strip())


def _parse_block(block: bytes) -> bytes | None:
    data_lines: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[:1] == b":":
            continue
        field, _, value = line.partition(b":")
        if field == b"data":
            data_lines.append(value[1:] if value[:1] == b" " else value)
    if not data_lines:
        return None
    return b"\n".join(data_lines)
