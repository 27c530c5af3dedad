"""A non-streamed answer's body: usable JSON of the right shape, or what is wrong with it.

``decode_answer`` takes the bytes of a 2xx answer and the kind of answer the call expects
(``chat``, ``completion``; None for any JSON object, as for other endpoints through the SDK
path). Anything else is a problem text, which the sender turns into an
``InvalidResponseError``: the route is ejected and the call moves on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..call.spec import AnswerKind
from ..errors import InvalidResponseError, RouteTimeoutError
from .error_body import error_in
from .parse import NestedTooDeeply, parse_json, snippet
from .shapes import answer_problem


def decode_answer(content: bytes, kind: AnswerKind | None) -> tuple[Any, str | None]:
    """(data, None) for a usable JSON answer, else (None, what is wrong with it)."""
    if not content:
        return None, "an empty body"
    try:
        data = parse_json(content)
    except NestedTooDeeply as exc:
        return None, str(exc)
    except ValueError:
        return None, f"a body that is not JSON: {snippet(content)!r}"
    if not isinstance(data, dict):
        return None, f"a JSON {type(data).__name__} instead of an object"
    if kind is None:
        return data, None
    if type(data.get("choices")) is not list:
        found = error_in(data)
        if found is not None:
            return None, f"an error in the body: {found[0]}"
    problem = answer_problem(data, kind)
    if problem is not None:
        return None, f"a malformed answer ({problem})"
    return data, None


def declared_oversized(headers: Mapping[str, str], limit: int) -> bool:
    """Does the answer declare a length over ``limit``?"""
    declared = headers.get("content-length")
    return declared is not None and declared.isdigit() and int(declared) > limit


def oversized(
    route: str, limit: int, what: str = "answer", cap: str = "max_response_bytes"
) -> InvalidResponseError:
    return InvalidResponseError(f"{what} larger than {cap} ({limit} bytes): refused", route=route)


def prompt_counts(usage: object) -> tuple[int, int]:
    """A usage block's prompt tokens and, of those, the tokens the server found in its prefix
    cache (``prompt_tokens_details.cached_tokens``: vLLM sends it when started with
    ``--enable-prompt-tokens-details``); 0 for what it does not say, or says absurdly."""
    if not isinstance(usage, dict):
        return 0, 0
    prompt = usage.get("prompt_tokens")
    if type(prompt) is not int or not 0 < prompt < 1 << 40:
        return 0, 0
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return prompt, cached if type(cached) is int and 0 < cached <= prompt else 0


def too_long(route: str, timeout: float, what: str = "answer not complete") -> RouteTimeoutError:
    return RouteTimeoutError(f"{what} within {timeout:g}s", route=route)
