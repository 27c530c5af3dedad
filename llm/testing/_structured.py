"""Structured output for the fake: a JSON document of the shape ``response_format`` asks for.

How this works
--------------
vLLM constrains decoding to a grammar when a chat call carries ``response_format``
(``json_object``: any JSON object; ``json_schema``: a document valid against the schema), so
even a random-weight model answers valid JSON. The fake cannot decode, so it builds one
document per schema, deterministically: every property of an object, one item of an array
(or ``minItems``), the first of an ``enum`` / ``anyOf`` / ``oneOf``, ``const`` as given, the
``minimum`` of a number when there is one, ``$ref`` into ``$defs`` / ``definitions``.
:func:`document_pieces` splits the text into token-sized pieces, so the answer streams and
counts its tokens as any other.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["document_pieces", "example_for"]

PIECE_CHARS = 4
_MAX_DEPTH = 16


def _resolve(schema: Any, root: Any) -> Any:
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node = root
    for part in ref[2:].split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def example_for(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A value valid against ``schema`` (the common JSON Schema keywords; see the module)."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return example_for(options[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {str(k): example_for(v, root, depth + 1) for k, v in properties.items()}
    if kind == "array":
        count = schema.get("minItems")
        count = count if isinstance(count, int) and count > 0 else 1
        return [example_for(schema.get("items"), root, depth + 1) for _ in range(count)]
    if kind == "boolean":
        return True
    if kind == "integer":
        low = schema.get("minimum")
        return int(low) if isinstance(low, (int, float)) else 42
    if kind == "number":
        low = schema.get("minimum")
        return float(low) if isinstance(low, (int, float)) else 4.2
    if kind == "null":
        return None
    length = schema.get("minLength")
    return "x" * length if isinstance(length, int) and length > 0 else "fake"


def document_pieces(response_format: Any) -> list[str] | None:
    """The pieces of the JSON answer ``response_format`` asks for; None when it asks for
    none (absent, ``text``, or a shape the fake does not know)."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        document: Any = {"answer": "fake"}
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        document = example_for(schema if isinstance(schema, dict) else {"type": "object"})
    else:
        return None
    text = json.dumps(document, ensure_ascii=False)
    return [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]
