"""Content-Encoding, undone a bounded piece at a time.

The senders ask for no compression (no ``Accept-Encoding``), but a proxy in front of vLLM may
compress anyway. ``decoded`` turns the raw pieces of a body into its decoded pieces for the
encodings a ``Content-Encoding`` header lists (``gzip``, ``x-gzip``, ``deflate``; several
layers, such as ``gzip, gzip``, undone in reverse order). No single step inflates more than
``PIECE`` bytes, so the size cap of the reader (``read_body``, or the stream's event cap)
counts what the body inflates to before it is held in memory: a 590-byte answer that inflates
to 500 MiB is refused after the cap, not after 500 MiB. An encoding it does not know leaves
the body as it came (the JSON decoder will then refuse it, and the route fails over), as
aiohttp does.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

from ..errors import InvalidResponseError

PIECE = 64 * 1024  # the most one decompression step may produce
_WBITS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}


def encodings(header: str | None) -> list[str]:
    """The codings of a ``Content-Encoding`` header, in the order they were applied."""
    if not header:
        return []
    return [coding.strip().lower() for coding in header.split(",") if coding.strip()]


def decoded(pieces: Iterable[bytes], header: str | None, route: str) -> Iterable[bytes]:
    """The body's pieces with every coding of ``header`` undone (the same pieces when none)."""
    codings = encodings(header)
    if not codings or codings == ["identity"]:
        return pieces
    result: Iterable[bytes] = pieces
    for coding in reversed(codings):
        if coding == "identity":
            continue
        wbits = _WBITS.get(coding)
        if wbits is None:  # unknown: left as it came, the body then fails as not JSON
            return pieces
        result = _inflate(result, wbits, route)
    return result


def _inflate(pieces: Iterable[bytes], wbits: int, route: str) -> Iterator[bytes]:
    decompressor = zlib.decompressobj(wbits)
    try:
        for piece in pieces:
            data = piece
            while data:
                out = decompressor.decompress(data, PIECE)
                if out:
                    yield out
                data = decompressor.unconsumed_tail
        while True:  # what the decompressor still holds
            out = decompressor.decompress(b"", PIECE)
            if not out:
                break
            yield out
    except zlib.error as exc:
        problem = f"a body that cannot be decompressed ({exc})"
        raise InvalidResponseError(problem, route=route) from None
