"""Is a decoded answer or stream chunk shaped as the protocol says? Every one is asked before use.

What the library (and its caller) reads of an answer must be what the OpenAI protocol
promises: anything else is the route's fault, an ``InvalidResponseError`` that ejects it and
moves the call on, never a ``TypeError`` in the caller's hands. The rules are those of
vLLM's answers (samples in the project's vllm-protocol-samples.txt), kept loose where servers
legitimately differ (a missing field is fine where the protocol allows it to be absent):

- a chat answer: ``choices`` a list of objects, each with an object ``message`` (or none)
  whose ``content``, ``reasoning``, ``reasoning_content`` and ``refusal`` are strings or null
  and whose ``tool_calls`` is null or a list of tool calls; ``finish_reason`` a string or
  null; ``usage`` an object or null; ``model`` a string or null;
- a text completion: the same, with a string (or null) ``text`` in place of ``message``;
- a tool call: an object whose ``function``, if present, is an object with string (or null)
  ``name`` and ``arguments``; ``id`` and ``type`` strings or null; ``index`` an integer;
- a stream chunk: ``choices`` a list of objects, each with an integer ``index`` (or none) and,
  for chat, an object ``delta`` (or none) shaped like a message with tool-call fragments;
  ``usage`` an object or null.

Each function returns None for a good shape, else a short text naming the first problem
(``choices[0].message.tool_calls``: a number instead of a list).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..call.spec import AnswerKind

_TEXT_FIELDS = ("content", "reasoning", "reasoning_content", "refusal")
_NAMES = {
    bool: "a bool",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


def _kind(value: Any) -> str:
    return _NAMES.get(type(value), type(value).__name__)


def _wrong(where: str, value: Any, wanted: str) -> str:
    return f"{where}: {_kind(value)} instead of {wanted}"


def answer_problem(data: Mapping[str, Any], kind: AnswerKind) -> str | None:
    """What is wrong with a decoded non-streamed answer of ``kind``, or None."""
    choices = data.get("choices")
    if type(choices) is not list:
        return _wrong("choices", choices, "a list")
    for position, choice in enumerate(choices):
        if type(choice) is not dict:
            return _wrong(f"choices[{position}]", choice, "an object")
        if kind == "chat":
            message = choice.get("message")
            if message is not None:
                if type(message) is not dict:
                    return _wrong(f"choices[{position}].message", message, "an object")
                problem = _message_problem(message, f"choices[{position}].message", False)
                if problem is not None:
                    return problem
        else:
            text = choice.get("text")
            if text is not None and type(text) is not str:
                return _wrong(f"choices[{position}].text", text, "a string")
        finish = choice.get("finish_reason")
        if finish is not None and type(finish) is not str:
            return _wrong(f"choices[{position}].finish_reason", finish, "a string")
    return _top_problem(data)


def chunk_problem(event: Mapping[str, Any], kind: AnswerKind | None) -> str | None:
    """What is wrong with a decoded stream chunk, or None (no ``choices`` reads as none).
    Every event of every stream comes here: the common chunk takes a few type checks."""
    choices = event.get("choices", ())
    if type(choices) is not list and choices != ():
        return _wrong("choices", choices, "a list")
    for position, choice in enumerate(choices):
        if type(choice) is not dict:
            return _wrong(f"choices[{position}]", choice, "an object")
        index = choice.get("index", 0)
        if type(index) is not int:
            return _wrong(f"choices[{position}].index", index, "an integer")
        delta = choice.get("delta")
        if delta is not None:
            if type(delta) is not dict:
                return _wrong(f"choices[{position}].delta", delta, "an object")
            for name, value in delta.items():
                if value is None or type(value) is str:
                    continue
                where = f"choices[{position}].delta.{name}"
                if name == "tool_calls":
                    problem = _tool_calls_problem(value, where, True)
                    if problem is not None:
                        return problem
                elif name in _TEXT_FIELDS:
                    return _wrong(where, value, "a string")
        elif kind != "chat":
            text = choice.get("text")
            if text is not None and type(text) is not str:
                return _wrong(f"choices[{position}].text", text, "a string")
        finish = choice.get("finish_reason")
        if finish is not None and type(finish) is not str:
            return _wrong(f"choices[{position}].finish_reason", finish, "a string")
    return _top_problem(event)


def _top_problem(data: Mapping[str, Any]) -> str | None:
    usage = data.get("usage")
    if usage is not None and type(usage) is not dict:
        return _wrong("usage", usage, "an object")
    model = data.get("model")
    if model is not None and type(model) is not str:
        return _wrong("model", model, "a string")
    return None


def _message_problem(message: dict[str, Any], where: str, fragment: bool) -> str | None:
    for name in _TEXT_FIELDS:
        value = message.get(name)
        if value is not None and type(value) is not str:
            return _wrong(f"{where}.{name}", value, "a string")
    calls = message.get("tool_calls")
    if calls is None:
        return None
    return _tool_calls_problem(calls, f"{where}.tool_calls", fragment)


def _tool_calls_problem(calls: Any, where: str, fragment: bool) -> str | None:
    if type(calls) is not list:
        return _wrong(where, calls, "a list")
    for position, call in enumerate(calls):
        problem = _tool_call_problem(call, f"{where}[{position}]", fragment)
        if problem is not None:
            return problem
    return None


def _tool_call_problem(call: Any, where: str, fragment: bool) -> str | None:
    if type(call) is not dict:
        return _wrong(where, call, "an object")
    for name in ("id", "type"):
        value = call.get(name)
        if value is not None and type(value) is not str:
            return _wrong(f"{where}.{name}", value, "a string")
    if fragment:
        index = call.get("index", 0)
        if type(index) is not int:
            return _wrong(f"{where}.index", index, "an integer")
    function = call.get("function")
    if function is None:
        return None
    if type(function) is not dict:
        return _wrong(f"{where}.function", function, "an object")
    for name in ("name", "arguments"):
        value = function.get(name)
        if value is not None and type(value) is not str:
            return _wrong(f"{where}.function.{name}", value, "a string")
    return None
