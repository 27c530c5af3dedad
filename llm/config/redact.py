"""Showing configuration values without their secrets: the one place that knows how.

How this works
--------------
- ``split_userinfo``: a URL's ``user:password@`` and the URL without it. The userinfo ends at
  the last ``@`` after ``://`` whose remainder parses as ``host[:port][/path]``, so a user name
  with an ``@`` or a password with a ``/`` need no percent-encoding
  (``http://us@er:p/ss@host:8000/v1``: ``us@er:p/ss``, ``http://host:8000/v1``). The config
  turns it into an ``Authorization: Basic`` header at load (``readers.read_base_url``).
- ``redact_url``: a URL with everything between ``://`` (or its start, when it has none) and
  its last ``@`` masked (``RouteConfig.shown_url``, config error messages). That masks a
  userinfo of any shape, whether or not the rest parses; a path holding an ``@`` is masked
  too, which hides nothing secret but leaks nothing either.
- ``without_credentials``: a URL a server sent (a redirect's ``Location``) fit for an error:
  no ``user:password@``, no query string, no fragment, any of which may carry a secret.
- ``secret_forms`` and ``scrub``: a route's ``api_key`` and header values (and a Basic
  credential's user:password) in every form a library's message may quote them (as is,
  stripped, escaped as in the repr of a str or of bytes), and a text with each of those forms
  replaced by ``***``. ``Redactor`` holds the forms of a whole config: the balancer's masks
  every error it records, the probes' every check. Forms are tried longest
  first, so that no secret is left half-replaced; forms shorter than 4 characters are left
  alone (masking them would garble the text and hide nothing).

Pure string work: ``urllib.parse`` only, no HTTP client.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from .model import RouteConfig

E = TypeVar("E", bound=BaseException)

MASK = "***"
_NOT_SECRET = frozenset({"", "EMPTY"})  # api_key values that stand for "no key"
_SHORTEST_FORM = 4


def redact_url(url: str) -> str:
    """``url`` with everything between ``://`` (or its start) and its last ``@`` replaced by
    ``***``, for messages: no ``user:password@`` is shown, however it is written."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    at = rest.rfind("@")
    if at < 0:
        return url
    return f"{head}{sep}{MASK}{rest[at:]}"


def split_userinfo(url: str) -> tuple[str, str] | None:
    """``(url without its userinfo, the userinfo as written)``, or None when ``url`` has none.

    The userinfo is what precedes the last ``@`` after ``://`` whose remainder parses as
    ``host[:port][/path]`` (a host, a valid port if any, no ``@`` before the path). One pass
    over the URL, from its end: each ``@`` is tried with the host part that follows it."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return None
    delimiter = len(rest)  # the first '/', '?' or '#' right of the position looked at
    next_at = len(rest)  # the first '@' right of it
    for index in range(len(rest) - 1, -1, -1):
        char = rest[index]
        if char in "/?#":
            delimiter = index
        elif char == "@":
            if next_at >= delimiter and _is_host_port(scheme, rest[index + 1 : delimiter]):
                return f"{scheme}{sep}{rest[index + 1 :]}", rest[:index]
            next_at = index
    return None


def _is_host_port(scheme: str, authority: str) -> bool:
    """``authority`` is ``host[:port]``: a host, and a port in range if there is one."""
    if not authority:
        return False
    try:
        parts = urlsplit(f"{scheme}://{authority}")
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return bool(parts.hostname)


def without_credentials(url: str) -> str:
    """``url`` to show in an error: no ``user:password@``, no query string, no fragment;
    "an invalid location" when it cannot be parsed."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return "an invalid location"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "an invalid location"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def secret_forms(routes: Iterable[RouteConfig]) -> list[str]:
    """Every ``api_key`` (but "" and "EMPTY") and header value of ``routes``, in each form a
    message may quote it: as is, stripped, escaped as in a str repr and in a bytes repr.
    Only forms of 4 characters or more, longest first."""
    values: list[str] = []
    for route in routes:
        if route.api_key not in _NOT_SECRET:
            values.append(route.api_key)
        for value in route.headers.values():
            values.append(value)
            values.extend(_basic_credentials(value))
    forms: set[str] = set()
    for value in values:
        escaped_bytes = repr(value.encode("utf-8", "replace"))[2:-1]
        forms.update((value, value.strip(), repr(value)[1:-1], escaped_bytes))
    return sorted((form for form in forms if len(form) >= _SHORTEST_FORM), key=len, reverse=True)


def _basic_credentials(value: str) -> list[str]:
    """``user:password`` and the password of a ``Basic`` credential (a base_url's userinfo
    becomes one at load): a server may echo them decoded."""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token:
        return []
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return []
    return [decoded, decoded.partition(":")[2]]


def scrub(text: str, forms: Iterable[str]) -> str:
    """``text`` with each of ``forms`` (from ``secret_forms``) replaced by ``***``."""
    for form in forms:
        text = text.replace(form, MASK)
    return text


class Redactor:
    """Every form of every secret of a set of routes, and the one way texts are masked with
    them: every text that leaves the library through an error, a log line, ``stats()`` or a
    report passes ``text`` (or ``error``, which masks an error's texts in place)."""

    __slots__ = ("forms",)

    def __init__(self, routes: Iterable[RouteConfig]) -> None:
        self.forms = tuple(secret_forms(routes))

    def text(self, text: str) -> str:
        return scrub(text, self.forms) if self.forms else text

    def error(self, error: E) -> E:
        """``error`` with its message (and a status error's server message and body) masked."""
        if self.forms:
            error.args = tuple(self.text(a) if isinstance(a, str) else a for a in error.args)
            for name in ("server_message", "body"):
                value = getattr(error, name, None)
                if isinstance(value, str):
                    setattr(error, name, self.text(value))
        return error
