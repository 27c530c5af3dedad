"""The typed readers that walk raw config data, and the errors they raise.

How this works
--------------
Each reader takes the key path of a value (``llm.routes.a.timeout``) and the raw value, and
returns the value checked and converted, or raises one ``ConfigError`` whose message starts
with that path, says what was expected and what was found, and whose ``key_path`` is that
path (``fail``, ``fail_expected``). A found value is shown as itself, shortened, or, under a
secret key (``api_key``, ``headers``), by its type only (``describe``). An unknown key gets a
did-you-mean hint (``check_keys``, ``did_you_mean``; difflib is imported on first use).

A route's ``base_url`` (``read_base_url``) gives up its ``user:password@``, if any, as the
value of an ``Authorization: Basic`` header; every URL is shown masked (``redact_url``).

Numbers may be given as strings (``"30"``, as ``${VAR}`` produces) and booleans as
``"true"``/``"false"``; booleans are never numbers. A bound on a number or integer is said in
the message (``a positive integer``, ``a number in (0, 1]``).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Collection, Mapping
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError
from .redact import redact_url, split_userinfo

_SECRET_KEYS = frozenset({"api_key", "headers"})


# --------------------------------------------------------------------------- error helpers


def join(path: str, key: object) -> str:
    """The key path of ``key`` under ``path`` (``key`` alone at the top)."""
    return f"{path}.{key}" if path else str(key)


def fail(path: str, message: str) -> NoReturn:
    """Raise ``"<path>: <message>"`` as a ``ConfigError`` whose ``key_path`` is ``path``."""
    raise ConfigError(f"{path}: {message}", path)


def describe(value: object, *, secret: bool = False) -> str:
    """How a found value is shown in a message: the value itself, or only its type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a bool" if secret else f"a bool ({str(value).lower()})"
    if isinstance(value, str):
        if value == "":
            return "an empty string"
        if secret:
            return "a string"
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "...'"
    if isinstance(value, (int, float)):
        if secret:
            return "an integer" if isinstance(value, int) else "a number"
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, (list, tuple)):
        return "a list" if value else "an empty list"
    return f"a {type(value).__name__}"


def _is_secret(path: str) -> bool:
    return any(part in _SECRET_KEYS for part in path.split("."))


def fail_expected(path: str, expected: str, value: object, *, secret: bool = False) -> NoReturn:
    """Raise "expected ..., found ..."; under a secret key the value is shown by type only."""
    secret = secret or _is_secret(path)
    fail(path, f"expected {expected}, found {describe(value, secret=secret)}")


def did_you_mean(word: str, choices: Collection[str]) -> str:
    """ "; did you mean 'x'?" for the closest choice (the first listed on a tie), or ""."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=len(choices))
    if not close:
        return ""

    def score(choice: str) -> float:
        return difflib.SequenceMatcher(None, word, choice).ratio()

    best = score(close[0])
    first = next(choice for choice in choices if choice in close and score(choice) == best)
    return f"; did you mean {first!r}?"


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def fmt_number(number: float) -> str:
    """A bound as a message shows it: ``1`` rather than ``1.0``."""
    return str(int(number)) if float(number).is_integer() else repr(number)


# --------------------------------------------------------------------------- typed readers


def check_keys(
    path: str,
    mapping: Mapping[Any, Any],
    allowed: Collection[str],
    notes: Mapping[str, str] | None = None,
    advice: str = "",
) -> None:
    """Every key of ``mapping`` is one of ``allowed``; else an unknown-key error with a hint.

    ``notes`` replace the did-you-mean hint for particular keys; ``advice`` ends the message.
    """
    for key in mapping:
        if not isinstance(key, str):
            fail_expected(join(path, key), "a string key", key)
        if key in allowed:
            continue
        note = (notes or {}).get(key)
        extra = f"; {note}" if note else did_you_mean(key, allowed)
        allowed_text = ", ".join(sorted(allowed))
        fail(join(path, key), f"unknown key{extra} (allowed: {allowed_text}){advice}")


def read_mapping(path: str, value: object, *, optional: bool = False) -> Mapping[Any, Any]:
    """A mapping; with ``optional``, null reads as an empty mapping."""
    if value is None and optional:
        return {}
    if not isinstance(value, Mapping):
        fail_expected(path, "a mapping", value)
    return value


def read_string(path: str, value: object, *, secret: bool = False) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        fail_expected(path, "a non-empty string", value, secret=secret)
    return value


def _as_number(value: object) -> int | float | None:
    """``value`` as an int or float (numeric strings too); None when it is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip()
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                pass
    return None


def _range_phrase(kind: str, minimum: float | None, exclusive: bool, maximum: float | None) -> str:
    if minimum is None and maximum is None:
        return _a(kind)
    if maximum is None:
        assert minimum is not None
        if minimum == 0 and exclusive:
            return f"a positive {kind}"
        return f"{_a(kind)} {'>' if exclusive else '>='} {fmt_number(minimum)}"
    if minimum is None:
        return f"{_a(kind)} <= {fmt_number(maximum)}"
    return f"{_a(kind)} in {'(' if exclusive else '['}{fmt_number(minimum)}, {fmt_number(maximum)}]"


def _check_range(
    path: str,
    number: float,
    value: object,
    expected: str,
    minimum: float | None,
    exclusive: bool,
    maximum: float | None,
) -> None:
    too_low = minimum is not None and (number <= minimum if exclusive else number < minimum)
    too_high = maximum is not None and number > maximum
    if not math.isfinite(number) or too_low or too_high:
        fail_expected(path, expected, value)


def read_number(
    path: str,
    value: object,
    *,
    minimum: float | None = None,
    exclusive: bool = False,
    maximum: float | None = None,
    expected: str | None = None,
) -> float:
    """A finite number in range; ``exclusive`` makes ``minimum`` a strict bound."""
    expected = expected or _range_phrase("number", minimum, exclusive, maximum)
    number = _as_number(value)
    if number is None:
        fail_expected(path, expected, value)
    _check_range(path, number, value, expected, minimum, exclusive, maximum)
    return float(number)


def read_integer(
    path: str,
    value: object,
    *,
    minimum: float | None = None,
    exclusive: bool = False,
    maximum: float | None = None,
) -> int:
    """An integer in range (floats such as 1.5 or 2.0 are rejected)."""
    expected = _range_phrase("integer", minimum, exclusive, maximum)
    number = _as_number(value)
    if not isinstance(number, int):
        fail_expected(path, expected, value)
    _check_range(path, number, value, expected, minimum, exclusive, maximum)
    return number


def read_bool(path: str, value: object) -> bool:
    """true/false, or the strings "true"/"false" (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    fail_expected(path, "true or false", value)


def read_choice(path: str, value: object, choices: Collection[str], what: str) -> str:
    """One of ``choices``; the message lists them and suggests the closest."""
    listed = ", ".join(choices)
    if not isinstance(value, str) or value not in choices:
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        fail(path, f"expected {what} (one of: {listed}), found {describe(value)}{hint}")
    return value


_URL_EXPECTED = "an http:// or https:// URL with a host"


def read_url(path: str, value: object, *, shown: str | None = None) -> str:
    """An http(s) URL with a host; trailing slashes removed. A message shows ``shown`` (the URL
    as written, masked, when ``value`` is what is left of it), else ``value`` masked."""
    expected = _URL_EXPECTED
    text = read_string(path, value).strip()
    shown = redact_url(text) if shown is None else shown
    if "://" not in text:
        # Suggest a scheme only where adding one could give a URL (not for 'not a url').
        hint = "" if any(c.isspace() for c in text) else f"; did you mean 'http://{shown}'?"
        fail(path, f"expected {expected}, found {describe(shown)} (no scheme{hint})")
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        fail_expected(path, expected, shown)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        fail_expected(path, f"{expected} and a valid port", shown)
    if not parts.hostname or any(c.isspace() for c in text):
        fail_expected(path, expected, shown)
    return text.rstrip("/")


def read_base_url(path: str, value: object) -> tuple[str, str | None]:
    """A route's URL (``read_url``) without its ``user:password@``, and the ``Authorization``
    value that userinfo stands for (``Basic base64(user:password)``, each part percent-decoded
    first), or None when it has none. The userinfo ends at the last ``@`` whose remainder
    parses as ``host[:port][/path]`` (``redact.split_userinfo``); a URL that the ordinary
    reading (userinfo before the first ``/``) would split elsewhere is refused as ambiguous
    rather than sent to a host the writer may not have meant."""
    text = read_string(path, value).strip()
    split = split_userinfo(text)
    if split is None:
        return read_url(path, text), None
    url, userinfo = split
    if _read_otherwise(text, userinfo):
        fail(
            path,
            f"expected {_URL_EXPECTED}, found {describe(redact_url(text))}, whose '@' after "
            "the host could end a user name and password or be part of the path (write an "
            "'@' of the path, user name or password as %40, a '/' of a password as %2F)",
        )
    url = read_url(path, url, shown=redact_url(text))
    user, _, password = userinfo.partition(":")
    user, password = unquote(user), unquote(password)
    if not user and not password:
        return url, None
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return url, f"Basic {token}"


def _read_otherwise(url: str, userinfo: str) -> bool:
    """True when ``urlsplit`` (userinfo before the first ``/``) reads ``url`` as a valid host
    and port with another userinfo than ``userinfo``, or none."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    if not parts.hostname:
        return False
    ordinary, at, _ = parts.netloc.rpartition("@")
    return not at or ordinary != userinfo


def read_json(path: str, value: object) -> Any:
    """A deep copy of a JSON-compatible value (what a request body can carry)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            fail_expected(path, "a finite number", value)
        return value
    if isinstance(value, (list, tuple)):
        return [read_json(f"{path}[{i}]", item) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                fail_expected(join(path, key), "a string key", key)
            out[key] = read_json(join(path, key), item)
        return out
    fail_expected(path, "a JSON value (string, number, bool, null, list or mapping)", value)


def read_string_list(path: str, value: object) -> list[str]:
    if not isinstance(value, (list, tuple)):
        fail_expected(path, "a list of strings", value)
    return [read_string(f"{path}[{i}]", item) for i, item in enumerate(value)]


def read_stop(path: str, value: object) -> str | list[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                fail_expected(f"{path}[{i}]", "a string", item)
        return list(value)
    fail_expected(path, "a string or a list of strings", value)


def read_string_or_mapping(path: str, value: object) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return read_json(path, value)
    fail_expected(path, "a string or a mapping", value)


def read_typed_mapping(path: str, value: object) -> Any:
    return read_json(path, read_mapping(path, value))


def read_typed_list(path: str, value: object) -> Any:
    if not isinstance(value, (list, tuple)):
        fail_expected(path, "a list", value)
    return read_json(path, value)


def read_typed_string(path: str, value: object) -> str:
    if not isinstance(value, str):
        fail_expected(path, "a string", value)
    return value
