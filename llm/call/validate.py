"""Checks of a call before any I/O: messages, body keywords, control keywords.

Cheap by design (a loop of type checks, no JSON round trip): they catch the mistakes a caller
makes (a malformed message, a value that is not JSON, a string where a number belongs, a typo
in a keyword that a server would silently ignore) and leave ranges and meaning to the server,
whose 400 becomes a ``BadRequestError`` without ejecting the route. Values nested inside lists
and mappings are judged by the JSON encoder, which the engine runs before sending. Every
problem is an ``InvalidRequestError`` naming the keyword or message position.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..config.body_keys import BODY_KEYS, SERVER_KEYS
from ..errors import InvalidRequestError

# Keywords that steer the call rather than the body.
CONTROL_KEYS = frozenset({"route", "model", "deadline", "max_retries", "session", "hedge"})


def check_controls(options: Mapping[str, Any]) -> None:
    """``route``, ``model``, ``session``, ``deadline``, ``max_retries`` and ``hedge`` have
    usable values."""
    for key in ("route", "model"):
        name = options.get(key)
        if name is not None and not isinstance(name, str):
            raise InvalidRequestError(f"{key} must be a string, got {shown(name)}")
    session = options.get("session")
    if session is not None and not (isinstance(session, str) and session):
        raise InvalidRequestError(
            f"session must be a non-empty string (an affinity key), got {shown(session)}"
        )
    deadline = options.get("deadline")
    if deadline is not None and not (_is_number(deadline) and 0 < deadline < math.inf):
        raise InvalidRequestError(
            f"deadline must be a positive number of seconds, got {shown(deadline)}"
        )
    max_retries = options.get("max_retries")
    if max_retries is not None and not (_is_int(max_retries) and max_retries >= 0):
        raise InvalidRequestError(f"max_retries must be an integer >= 0, got {shown(max_retries)}")
    hedge = options.get("hedge")
    if hedge is not None and not isinstance(hedge, bool):
        raise InvalidRequestError(f"hedge must be True or False, got {shown(hedge)}")


_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_ROLE_SET = frozenset(_ROLES)
_NEEDS_CONTENT = frozenset({"system", "developer", "user"})


def check_messages(messages: Any) -> None:
    if type(messages) is not list and (
        isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence)
    ):
        raise InvalidRequestError(
            "messages must be a list of {'role': ..., 'content': ...} mappings, "
            f"got {shown(messages)}"
        )
    if not messages:
        raise InvalidRequestError("messages is empty: give at least one message")
    for position, message in enumerate(messages):
        # type() first: the ABC isinstance costs several times more, and messages are dicts.
        if type(message) is not dict and not isinstance(message, Mapping):
            raise InvalidRequestError(
                f"messages[{position}] must be a mapping with a 'role', got {shown(message)}"
            )
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLE_SET:  # a str Enum passes too
            _check_role(position, message)
        content = message.get("content")
        if type(content) is str:
            continue
        if content is None:
            if role in _NEEDS_CONTENT:
                raise InvalidRequestError(
                    f"messages[{position}] ({role}) has no 'content': give a string "
                    "or a list of content parts"
                )
        elif not isinstance(content, str):
            _check_parts(position, content)


def _check_parts(position: int, content: Any) -> None:
    if not isinstance(content, (list, tuple)):
        raise InvalidRequestError(
            f"messages[{position}].content must be a string or a list of content parts, "
            f"got {shown(content)}"
        )
    for index, part in enumerate(content):
        if not isinstance(part, Mapping):
            raise InvalidRequestError(
                f"messages[{position}].content[{index}] must be a content part such as "
                f"{{'type': 'text', 'text': ...}}, got {shown(part)}"
            )


def _check_role(position: int, message: Mapping[Any, Any]) -> None:
    """A role other than the usual ones passes (vLLM chat templates know more, such as
    ``ipython``) unless it is missing, not a string, or a near miss of a usual one."""
    allowed = ", ".join(_ROLES)
    if "role" not in message:
        raise InvalidRequestError(f"messages[{position}] has no 'role' (one of: {allowed})")
    role = message["role"]
    if isinstance(role, str) and role:
        close = difflib.get_close_matches(role.lower(), _ROLES, n=1, cutoff=0.75)
        if not close:
            return
        hint = f"; did you mean {close[0]!r}?"
    else:
        hint = ""
    raise InvalidRequestError(
        f"messages[{position}] has an unknown role {shown(role)}{hint} (one of: {allowed})"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(key: str, value: Any) -> None:
    if not (_is_int(value) and value > 0):
        raise InvalidRequestError(f"{key} must be an integer > 0, got {shown(value)}")


def _non_negative_int(key: str, value: Any) -> None:
    if not (_is_int(value) and value >= 0):
        raise InvalidRequestError(f"{key} must be an integer >= 0, got {shown(value)}")


def _any_int(key: str, value: Any) -> None:
    if not _is_int(value):
        raise InvalidRequestError(f"{key} must be an integer, got {shown(value)}")


def _finite_number(key: str, value: Any) -> None:
    if not (_is_number(value) and math.isfinite(value)):
        raise InvalidRequestError(f"{key} must be a finite number, got {shown(value)}")


# The body keys whose type is checked at call time, by their kind in the body-key table: the
# same for chat and completions, and the ones most often given the wrong type (a string from
# an env var, a float, a bool). Ranges are the server's to judge, but for counts.
_CHECKS_BY_KIND: dict[str, Callable[[str, Any], None]] = {
    "count": _positive_int,
    "count0": _non_negative_int,
    "integer": _any_int,
    "number": _finite_number,
}
KEYWORD_CHECKS: dict[str, Callable[[str, Any], None]] = {
    name: _CHECKS_BY_KIND[key.kind]
    for name, key in BODY_KEYS.items()
    if key.kind in _CHECKS_BY_KIND
}

# Keywords that are never body keys: what to do instead.
_RESERVED_KEYWORDS = {
    "timeout": "the per-attempt timeout is set in the config; give deadline= (seconds for "
    "all attempts of this call)",
    "connect_timeout": "it is set in the config (llm.params.connect_timeout)",
    "max_response_bytes": "it is set in the config (llm.params.max_response_bytes)",
    "stream": "streaming is chosen by the method: stream(), astream(), stream_events()",
    "api_key": "keys are set per route in the config",
    "messages": "messages are the first argument of chat() / stream()",
    "prompt": "the prompt is the first argument of complete()",
}

_KNOWN_KEYWORDS = frozenset((*BODY_KEYS, *SERVER_KEYS))
_HINT_CHOICES = (*BODY_KEYS, *sorted(CONTROL_KEYS), "extra_body")

_JSON_TYPES = frozenset({str, int, float, bool, list, dict, tuple})


def check_keyword(key: str, value: Any) -> None:
    """A call keyword headed for the body: a known name (or no near miss of one), a JSON
    value at the top, and for the keys of ``KEYWORD_CHECKS`` the right type."""
    if key not in _KNOWN_KEYWORDS:
        problem = _unknown_keyword(key)
        if problem is not None:
            raise InvalidRequestError(problem)
    kind = type(value)
    if kind not in _JSON_TYPES and not isinstance(value, (str, int, float, list, tuple, Mapping)):
        # int and float subclasses (IntEnum, numpy.float64) encode as numbers: let them pass.
        raise InvalidRequestError(
            f"{key}: {shown(value)} is not JSON-serialisable "
            "(give a string, number, bool, list or dict)"
        )
    if kind is float and not math.isfinite(value):
        raise InvalidRequestError(f"{key} must be a finite number, got {shown(value)}")
    check = KEYWORD_CHECKS.get(key)
    if check is not None:
        check(key, value)


@functools.lru_cache(maxsize=512)
def _unknown_keyword(key: str) -> str | None:
    """Why an unknown keyword is refused, or None: it goes to the body as documented.

    Refused: the names of settings that are not per call, and near misses of a known keyword
    (``temprature``), which a server would silently ignore."""
    note = _RESERVED_KEYWORDS.get(key)
    if note is not None:
        return f"{key}= is not a call keyword: {note}"
    close = difflib.get_close_matches(key, _HINT_CHOICES, n=1, cutoff=0.8)
    if not close:
        return None
    return (
        f"unknown keyword {key!r}; did you mean {close[0]!r}? "
        "(to send a server-specific key as it is, use extra_body={...})"
    )


def extra_body(value: Any) -> Mapping[str, Any]:
    """``extra_body=``: keys merged into the body as they are, unchecked (JSON still)."""
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"extra_body must be a mapping, got {shown(value)}")
    for key in value:
        if not isinstance(key, str) or not key:
            raise InvalidRequestError(
                f"extra_body keys must be non-empty strings, got {shown(key)}"
            )
    return value


def shown(value: object) -> str:
    """A value as an error message shows it: short literals as such, anything else by type."""
    if value is None or _is_number(value):
        return repr(value)
    if isinstance(value, bool):
        return f"a bool ({value})"
    if isinstance(value, str):
        if not value:
            return "an empty string"
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "...'"
    if isinstance(value, Mapping):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, (list, tuple)):
        return "a list" if value else "an empty list"
    name = type(value).__name__
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"
