"""The server's own words in an error object, in each shape vLLM and its neighbours send.

Shapes (byte-exact samples in the project's vllm-protocol-samples.txt):

- nested, vLLM >= 0.6 and OpenAI: ``{"error": {"message", "type", "param", "code"}}``;
- vLLM's ``--api-key`` middleware: ``{"error": "Unauthorized"}``;
- older flat: ``{"object": "error", "message", "type", ...}``;
- FastAPI's own 404/405: ``{"detail": "Not Found"}``.

``error_in`` asks of a decoded answer or stream event that should have been something else
whether it is an error object (only the first three shapes count: a chat completion with a
top-level ``message`` key is not an error). ``server_message`` reads the body of an error
status, whatever it holds (text and HTML pages too, bounded).
"""

from __future__ import annotations

from typing import Any

from .parse import parse_json

_SHOWN_TEXT = 300  # characters of a non-JSON error body kept as its message


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _error_fields(data: dict[Any, Any]) -> tuple[str | None, str | None] | None:
    """(message, type) of an error object in one of the three strict shapes, else None."""
    error = data.get("error")
    if isinstance(error, dict):
        return _text(error.get("message")), _text(error.get("type"))
    if isinstance(error, str):
        return error, None
    if data.get("object") == "error":
        return _text(data.get("message")), _text(data.get("type"))
    return None


def error_in(data: Any) -> tuple[str, str | None] | None:
    """(message, type) when a decoded JSON answer or stream event is an error object."""
    if not isinstance(data, dict):
        return None
    found = _error_fields(data)
    if found is None:
        return None
    message, error_type = found
    return message or "error", error_type


def server_message(body: bytes) -> tuple[str | None, str | None]:
    """(message, type) from the body of an error status, or (None, None) when there is none."""
    try:
        data: Any = parse_json(body)
    except ValueError:
        text = body[:_SHOWN_TEXT].decode("utf-8", "replace").strip()
        return (text or None), None
    if not isinstance(data, dict):
        return None, None
    found = _error_fields(data)
    if found is not None:
        return found
    if "message" in data:  # flat, without "object"
        return _text(data.get("message")), _text(data.get("type"))
    if "detail" in data:
        return _text(data.get("detail")), None
    return None, None
