"""What one call asks for, and its body as bytes for a given route.

``CallSpec`` is the engines' input: a path under the route's ``base_url``, a JSON body without
``model`` (the route supplies it), and how to route it (model pool, pinned route, stream).
``BodyEncoder`` encodes the body once per distinct (model, send_model) of the routes a call
visits, so a call that stays in its pool encodes exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import RouteConfig

AnswerKind = Literal["chat", "completion"]  # what a 2xx answer must be shaped as

# allow_nan=False: NaN and Infinity are not JSON (RFC 8259); a server that parses them anyway
# would sample with them. The engine turns the ValueError into an InvalidRequestError.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


@dataclass(slots=True)
class CallSpec:
    path: str
    body: dict[str, Any] | None = None
    method: str = "POST"
    stream: bool = False
    model: str | None = None
    route: str | None = None
    expect: AnswerKind | None = "chat"  # the answer's shape (None: any JSON object)
    deadline: float | None = None
    max_retries: int | None = None
    raw_body: bytes | None = None  # the body exactly as a client sent it (OpenAI SDK path)
    raw_model: str | None = None  # the model named inside raw_body
    headers: Mapping[str, str] = field(default_factory=dict)
    session: str | None = None  # an explicit affinity key (call/affinity.py)
    fallback: bool = True  # may go on to the fallback route (another model) when the pool fails
    hedge: bool | None = None  # may hedge (llm.hedge); None: as the config says


class BodyEncoder:
    """Request bytes for a route: the body with that route's model (or none), encoded once."""

    __slots__ = ("_cache", "spec")

    def __init__(self, spec: CallSpec) -> None:
        self.spec = spec
        self._cache: dict[str | None, bytes] = {}

    def for_route(self, route: RouteConfig) -> bytes | None:
        spec = self.spec
        if spec.body is None and spec.raw_body is None:
            return None
        model = route.model if route.send_model else None
        cached = self._cache.get(model)
        if cached is not None:
            return cached
        if spec.raw_body is not None and model == spec.raw_model:
            encoded = spec.raw_body
        else:
            body = spec.body if spec.body is not None else {}
            encoded = _dumps({"model": model, **body} if model is not None else body).encode()
        self._cache[model] = encoded
        return encoded
