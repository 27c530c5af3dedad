"""A non-streamed answer's body: usable JSON, or what is wrong with it; and the limits on it.

``decode_answer`` takes the bytes of a 2xx answer and the key it must carry (``choices`` for
chat and text completions; None for any JSON object, as for other endpoints through the SDK
path). Anything else is a problem text, which the sender turns into an
``InvalidResponseError``: the route is ejected and the call moves on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidResponseError, RouteTimeoutError
from .error_body import error_in

_SNIPPET = 80  # bytes of a broken body quoted in the problem text

loads = json.loads


def decode_answer(content: bytes, expect: str | None) -> tuple[Any, str | None]:
    """(data, None) for a usable JSON answer, else (None, what is wrong with it)."""
    if not content:
        return None, "an empty body"
    try:
        data = loads(content)
    except (ValueError, UnicodeDecodeError):
        return None, f"a body that is not JSON: {snippet(content)!r}"
    if not isinstance(data, dict):
        return None, f"a JSON {type(data).__name__} instead of an object"
    if expect is not None and not isinstance(data.get(expect), list):
        found = error_in(data)
        if found is not None:
            return None, f"an error in the body: {found[0]}"
        return None, f"a JSON object without {expect!r}"
    return data, None


def snippet(content: bytes) -> str:
    """The start of some bytes from the network, as text fit for a message."""
    return content[:_SNIPPET].decode("utf-8", "replace")


def declared_oversized(headers: Mapping[str, str], limit: int) -> bool:
    """Does the answer declare a length over ``limit``?"""
    declared = headers.get("content-length")
    return declared is not None and declared.isdigit() and int(declared) > limit


def oversized(route: str, limit: int, what: str = "answer") -> InvalidResponseError:
    return InvalidResponseError(
        f"{what} larger than max_response_bytes ({limit} bytes): refused", route=route
    )


def too_long(route: str, timeout: float, what: str = "answer not complete") -> RouteTimeoutError:
    return RouteTimeoutError(f"{what} within {timeout:g}s", route=route)
