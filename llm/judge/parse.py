"""Reading JSON from the network: the one decoder every answer, event and error body goes through.

A structure nested too deeply to parse (thousands of ``[``) makes Python's decoder raise
``RecursionError``; here it is a ``ValueError`` like any other bad JSON (``NestedTooDeeply``),
so that it is judged as a garbage answer rather than escaping as a crash. Sizes are bounded
before this (``max_response_bytes`` for bodies, the same for one stream event).
"""

from __future__ import annotations

import json
from typing import Any

_SNIPPET = 80  # bytes of a broken body quoted in a problem text

loads = json.loads  # raw: RecursionError for deep nesting (parse_json turns it into ValueError)


class NestedTooDeeply(ValueError):
    """JSON nested deeper than the decoder can go (Python's recursion limit)."""


def parse_json(data: bytes | str) -> Any:
    """Decoded JSON from the network; ``ValueError`` for anything that is not usable JSON."""
    try:
        return loads(data)
    except RecursionError:
        raise NestedTooDeeply("JSON nested too deeply to read") from None


def snippet(content: bytes) -> str:
    """The start of some bytes from the network, as text fit for a message."""
    return content[:_SNIPPET].decode("utf-8", "replace")
