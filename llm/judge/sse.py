"""Server-sent events decoder: feed it bytes as they arrive, get complete ``data`` payloads.

Follows the SSE framing rules (LF, CRLF or CR line ends; ``data:`` lines joined by LF; comment
lines and ``event:``/``id:``/``retry:`` fields ignored) and stops at ``data: [DONE]``, after
which ``done`` is true and further input is ignored. vLLM sends exactly ``data: <json>\\n\\n``
per event, so that shape takes a fast path; any split of the input into chunks gives the same
events.

The work is linear in the input, however it is split: the pieces of an event that has not
ended yet are held in a list, never copied into a growing buffer, with their total length
checked against ``max_event_bytes`` on every feed; a feed searches only its own bytes for the
blank line that ends an event (plus the one place such a blank line can straddle two feeds: a
held event ending in LF and a feed starting with LF); an event's pieces are joined once, when
it ends. Pieces shorter than ``_SMALL`` are gathered into one bytearray, so that a stream
trickled in tiny pieces holds little more memory than its bytes.
"""

from __future__ import annotations

__all__ = ["OversizedEventError", "SSEDecoder"]

_DONE = b"[DONE]"
_SMALL = 4096  # a held piece shorter than this is gathered with its neighbours


class OversizedEventError(ValueError):
    """An event grew past the decoder's ``max_event_bytes`` before it ended."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"an event larger than {limit} bytes")


class SSEDecoder:
    """``max_event_bytes`` bounds what is held for one unfinished event (None: no bound)."""

    __slots__ = ("_max", "_pieces", "_size", "_skip_lf", "done")

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._pieces: list[bytes | bytearray] = []  # the unfinished event, in order
        self._size = 0  # their total length
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
        if not chunk:  # it was the LF of a CRLF
            return []
        events: list[bytes] = []
        start = 0
        if self._pieces:
            # The held event ends in this chunk or not at all: only the chunk is searched,
            # and the one blank line that may begin in the held bytes.
            if chunk[:1] == b"\n" and self._pieces[-1][-1:] == b"\n":
                block = self._release(b"")[:-1]
                start = 1
            else:
                end = chunk.find(b"\n\n")
                if end < 0:
                    self._hold(chunk)
                    return events
                block = self._release(chunk[:end])
                start = end + 2
            if self._dispatch(block, events):
                return events
        while True:
            end = chunk.find(b"\n\n", start)
            if end < 0:
                break
            block = chunk[start:end]
            start = end + 2
            if block[:6] == b"data: " and b"\n" not in block:  # vLLM's shape, at once
                data = block[6:]
                if data != _DONE:
                    events.append(data)
                    continue
            if self._dispatch(block, events):
                return events
        if start < len(chunk):
            self._hold(chunk[start:] if start else chunk)
        return events

    @property
    def pending(self) -> bool:
        """True when part of an event has arrived but not its end."""
        return any(piece.strip() for piece in self._pieces)

    def _dispatch(self, block: bytes, events: list[bytes]) -> bool:
        """Add the data of the event ``block`` to ``events``; True when it is ``[DONE]``."""
        if block.startswith(b"data: ") and b"\n" not in block:
            data: bytes | None = block[6:]
        else:
            data = _parse_block(block)
        if data is None:
            return False
        if data == _DONE:
            self.done = True
            self._pieces = []
            self._size = 0
            return True
        events.append(data)
        return False

    def _hold(self, piece: bytes) -> None:
        """Keep ``piece`` of the unfinished event; refuse the event once it outgrows the bound."""
        pieces = self._pieces
        last = pieces[-1] if pieces else None
        if len(piece) >= _SMALL:
            pieces.append(piece)
        elif isinstance(last, bytearray) and len(last) < _SMALL:
            last += piece
        else:
            pieces.append(bytearray(piece))
        self._size += len(piece)
        if self._max is not None and self._size > self._max:
            raise OversizedEventError(self._max)

    def _release(self, last: bytes) -> bytes:
        """The held pieces and ``last`` joined: one copy of the whole event. Nothing is held
        afterwards."""
        self._pieces.append(last)
        block = b"".join(self._pieces)
        self._pieces = []
        self._size = 0
        return block


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
