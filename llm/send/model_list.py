"""``GET /v1/models`` through the routing transport: the whole fleet's models, not one route's.

A client (``client.models.list()`` in the OpenAI SDK) asking the routing transport for the
model list would otherwise get the list of whichever route the default pool picked: one
model, when the config serves two. So ``listing_specs`` turns that request into one call per
model of the config (each routed within its own pool, with failover, never to the fallback),
and ``merged_listing`` joins the answers into one OpenAI-shaped list: every entry of every
answering pool, the first of each id kept, in config order. A pool that fails is left out (as
``provider.list_models()`` leaves out routes that do not answer); when every pool fails, the
first failure is the answer. vLLM has no ``GET /v1/models/{id}`` (``client.models.retrieve``):
the transport answers it with ``id``'s entry from the list of the pool serving ``id``, or
vLLM's own 404 shape.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from ..call.spec import CallSpec
from ..config import LLMConfig
from ..errors import Attempt, LLMError, NoRouteError, NotFoundError
from ..results import Reply

__all__ = ["Listed", "Listing", "listing_of", "merged_listing"]

Listed = Reply | LLMError  # what one pool answered


@dataclass(frozen=True, slots=True)
class Listing:
    """The calls that answer a model-list request, and the one id asked for (retrieve)."""

    calls: list[CallSpec]
    wanted: str | None = None


def listing_of(config: LLMConfig, spec: CallSpec) -> Listing | None:
    """For ``GET /models``: one call per model the config serves; for ``GET /models/{id}``:
    one call to ``id``'s pool; for anything else ``None``."""
    endpoint = spec.path.split("?", 1)[0].rstrip("/")
    if spec.method != "GET" or spec.route is not None:
        return None
    if endpoint == "/models":
        models = dict.fromkeys(route.model for route in config.routes.values())
        return Listing([_listing_call(spec, model) for model in models])
    if endpoint.startswith("/models/") and len(endpoint) > len("/models/"):
        wanted = endpoint[len("/models/") :]
        if all(route.model != wanted for route in config.routes.values()):
            served = ", ".join(dict.fromkeys(route.model for route in config.routes.values()))
            raise NoRouteError(f"no route serves model {wanted!r} (served: {served})")
        return Listing([_listing_call(spec, wanted)], wanted)
    return None


def _listing_call(spec: CallSpec, model: str) -> CallSpec:
    return dataclasses.replace(spec, path="/models", model=model, fallback=False)


def merged_listing(
    answers: list[Listed], wanted: str | None = None
) -> tuple[bytes, list[Attempt]] | LLMError:
    """The joined list's body (or ``wanted``'s entry) and every attempt made; the first error
    when no pool answered a model list."""
    seen: dict[str, dict[str, Any]] = {}
    attempts: list[Attempt] = []
    first_error: LLMError | None = None
    listed = False
    for answer in answers:
        if isinstance(answer, LLMError):
            first_error = first_error or answer
            attempts.extend(getattr(answer, "attempts", ()))
            continue
        attempts.extend(answer.attempts)
        entries = answer.data.get("data") if isinstance(answer.data, dict) else None
        if not isinstance(entries, list):
            continue
        listed = True
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                seen.setdefault(entry["id"], entry)
    if not listed and first_error is not None:
        return first_error
    if wanted is None:
        return json.dumps({"object": "list", "data": list(seen.values())}).encode(), attempts
    if wanted in seen:
        return json.dumps(seen[wanted]).encode(), attempts
    message = f"The model `{wanted}` does not exist."
    error = {"message": message, "type": "NotFoundError", "param": "model", "code": 404}
    return NotFoundError(
        message, status_code=404, body=json.dumps({"error": error}), attempts=attempts
    )
