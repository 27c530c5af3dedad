"""A whole answer body, read under a size cap and a time bound.

A server may send more than ``max_response_bytes`` (the cap counts what arrives, after any
decompression) or trickle its bytes so that no single read ever times out: either way the
read ends with a typed error (``InvalidResponseError``, ``RouteTimeoutError``), never with
the memory or the time of the caller. Written once, for async; ``scripts/unasync.py`` writes
the sync twin from it.
"""

from __future__ import annotations

from collections.abc import Callable

from ...judge.answers import declared_oversized, oversized, too_long
from ..protocols import AsyncAnswer


async def read_body(
    answer: AsyncAnswer,
    route: str,
    limit: int,
    clock: Callable[[], float],
    started: float,
    timeout: float,
    cap: str = "max_response_bytes",
) -> bytes:
    """The whole body of ``answer``: at most ``limit`` bytes (the setting named ``cap``),
    complete within ``timeout`` seconds of ``started`` (both readings of ``clock``)."""
    whole = await answer.read_declared(limit)
    if whole is not None:
        return whole
    if declared_oversized(answer.headers, limit):
        raise oversized(route, limit, cap=cap)
    deadline = started + timeout
    parts: list[bytes] = []
    size = 0
    async for chunk in answer.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise oversized(route, limit, cap=cap)
        parts.append(chunk)
        if clock() > deadline:  # a server trickling bytes never trips a read timeout
            raise too_long(route, timeout)
    return b"".join(parts)
