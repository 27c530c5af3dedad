"""What a stream's events carry, and whether a stream is one at all.

vLLM streams chat and text completions as server-sent events, ``data: <json chunk>`` each,
ended by ``data: [DONE]`` (``sse.SSEDecoder`` does the framing). Here:

- ``stream_problem``: an answer to a stream request that is not an event stream;
- ``events_of``: the decoded chunks a piece of the body completes; a chunk that is not JSON,
  not an object, an error object or not shaped as a chunk (``shapes.chunk_problem``) raises
  ``InvalidResponseError``;
- ``carries_payload``: does a chunk carry something for the caller (a token, a tool call, an
  ending, usage)? Until one does, the stream may still fail over to another route: vLLM's
  first chunk carries only the role.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..call.spec import AnswerKind
from ..errors import InvalidResponseError
from .answers import oversized
from .error_body import error_in
from .parse import loads, snippet
from .shapes import chunk_problem
from .sse import OversizedEventError, SSEDecoder


def stream_problem(headers: Mapping[str, str]) -> str | None:
    """What is wrong with a 2xx answer to a stream request, or None."""
    content_type = headers.get("content-type", "")
    if "text/event-stream" not in content_type:
        return f"content-type {content_type or 'missing'!r} instead of an event stream"
    return None


def events_of(
    decoder: SSEDecoder, chunk: bytes, route: str, kind: AnswerKind | None
) -> list[dict[str, Any]]:
    """The events that ``chunk`` completes, decoded and checked; a broken event raises."""
    try:
        payloads = decoder.feed(chunk)
    except OversizedEventError as exc:
        raise oversized(route, exc.limit, "stream event") from None
    events: list[dict[str, Any]] = []
    for data in payloads:
        try:
            event = loads(data)  # parse_json without a call more: every event comes here
        except RecursionError:
            deep = "stream event: JSON nested too deeply to read"
            raise InvalidResponseError(deep, route=route) from None
        except ValueError:
            raise InvalidResponseError(
                f"stream event is not JSON: {snippet(data)!r}", route=route
            ) from None
        if type(event) is not dict:
            raise InvalidResponseError("stream event is not a JSON object", route=route)
        if "choices" not in event:  # a chunk has choices (maybe []): is it an error object?
            found = error_in(event)
            if found is not None:
                raise InvalidResponseError(f"server error in stream: {found[0]}", route=route)
        problem = chunk_problem(event, kind)
        if problem is not None:
            raise InvalidResponseError(f"malformed stream event ({problem})", route=route)
        events.append(event)
    return events


def carries_payload(event: Mapping[str, Any]) -> bool:
    """Does a stream event carry something for the caller (a token, a tool call, an ending)?"""
    choices = event.get("choices")
    if not choices:
        return bool(event.get("usage"))
    for choice in choices:
        if choice.get("finish_reason") is not None or choice.get("text"):
            return True
        delta = choice.get("delta")
        if delta and (
            delta.get("content")
            or delta.get("reasoning")
            or delta.get("reasoning_content")
            or delta.get("tool_calls")
            or delta.get("function_call")
        ):
            return True
    return False
