"""Showing configuration values without their secrets: the one place that knows how.

How this works
--------------
- ``redact_url``: a ``base_url`` with its ``user:password@`` masked (``RouteConfig.shown_url``,
  config error messages).
- ``without_credentials``: a URL a server sent (a redirect's ``Location``) fit for an error:
  no ``user:password@``, no query string, no fragment, any of which may carry a secret.
- ``secret_forms`` and ``scrub``: a route's ``api_key`` and header values in every form a
  library's message may quote them (as is, stripped, escaped as in the repr of a str or of
  bytes), and a text with each of those forms replaced by ``***``. Forms are tried longest
  first, so that no secret is left half-replaced; forms shorter than 4 characters are left
  alone (masking them would garble the text and hide nothing).

Pure string work: ``urllib.parse`` and ``re`` only, no HTTP client.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from .model import RouteConfig

MASK = "***"
_NOT_SECRET = frozenset({"", "EMPTY"})  # api_key values that stand for "no key"
_SHORTEST_FORM = 4


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced, for messages."""
    return re.sub(r"(?<=://)[^/@]*@", "***@", url)


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
        values.extend(route.headers.values())
    forms: set[str] = set()
    for value in values:
        escaped_bytes = repr(value.encode("utf-8", "replace"))[2:-1]
        forms.update((value, value.strip(), repr(value)[1:-1], escaped_bytes))
    return sorted((form for form in forms if len(form) >= _SHORTEST_FORM), key=len, reverse=True)


def scrub(text: str, forms: Iterable[str]) -> str:
    """``text`` with each of ``forms`` (from ``secret_forms``) replaced by ``***``."""
    for form in forms:
        text = text.replace(form, MASK)
    return text
