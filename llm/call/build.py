"""A call's arguments -> a ``CallSpec``: the body to send and how to route it.

The body is the config's ``params``, overlaid with the call's keywords (a keyword set to None
removes a config default; ``extra_body={...}`` is merged as it is), overlaid with the call's
own payload (``messages`` or ``prompt``); ``model`` is left out (each route supplies its own)
and ``stream`` follows the method. The control keywords (``route``, ``model``, ``deadline``,
``max_retries``, ``session``, ``hedge``) steer the call instead. Everything is checked here,
before any I/O (``validate``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidRequestError
from .spec import AnswerKind, CallSpec
from .validate import (
    CONTROL_KEYS,
    check_controls,
    check_keyword,
    check_messages,
    extra_body,
    shown,
)

CHAT_PATH = "/chat/completions"
COMPLETIONS_PATH = "/completions"


def build_spec(
    params: Mapping[str, Any],
    path: str,
    payload: Mapping[str, Any],
    options: Mapping[str, Any],
    *,
    stream: bool,
    expect: AnswerKind = "chat",
) -> CallSpec:
    body = dict(params)
    extra: Mapping[str, Any] | None = None
    for key, value in options.items():
        if key in CONTROL_KEYS:
            continue
        if value is None:
            body.pop(key, None)
            continue
        if key == "extra_body":
            extra = extra_body(value)
            continue
        check_keyword(key, value)
        body[key] = value
    if extra:
        body.update(extra)
    body.update(payload)
    body.pop("model", None)
    if stream:
        body["stream"] = True
        body.setdefault("stream_options", {"include_usage": True})
    else:
        body.pop("stream", None)
        body.pop("stream_options", None)
    if not options:  # the common call: the config's defaults and nothing else
        return CallSpec(path=path, body=body, stream=stream, expect=expect)
    check_controls(options)
    return CallSpec(
        path=path,
        body=body,
        stream=stream,
        expect=expect,
        model=options.get("model"),
        route=options.get("route"),
        deadline=options.get("deadline"),
        max_retries=options.get("max_retries"),
        session=options.get("session"),
        hedge=options.get("hedge"),
    )


def chat_spec(
    params: Mapping[str, Any],
    messages: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any],
    *,
    stream: bool,
) -> CallSpec:
    check_messages(messages)
    return build_spec(params, CHAT_PATH, {"messages": list(messages)}, options, stream=stream)


def completion_spec(
    params: Mapping[str, Any], prompt: Any, options: Mapping[str, Any], *, stream: bool
) -> CallSpec:
    if not isinstance(prompt, (str, list)) or not prompt:
        raise InvalidRequestError(f"prompt must be a non-empty string or list, got {shown(prompt)}")
    payload = {"prompt": prompt}
    return build_spec(
        params, COMPLETIONS_PATH, payload, options, stream=stream, expect="completion"
    )
