"""TLS settings of a route, as the HTTP clients take them.

A route's ``verify`` is true, false, or the path of a CA bundle (a file or a folder); the
senders keep one connection pool per distinct value.
"""

from __future__ import annotations

import os
import ssl

from ..config import RouteConfig
from ..errors import RouteConnectionError


class UnusableCABundle(RouteConnectionError):
    """A route's ``verify`` names a CA bundle that cannot be read or used."""

    def __init__(self, route: RouteConfig, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"cannot use llm.routes.{route.name}.verify {path!r}: {reason}", route=route.name
        )


def tls_verify(route: RouteConfig) -> bool | ssl.SSLContext:
    """What the HTTP clients get for a route's ``verify``: a CA bundle path becomes an SSL
    context (httpx no longer takes a path). A path that cannot be used is the route's failure,
    an ``UnusableCABundle`` naming the key, so calls fail over to the other routes."""
    verify = route.verify
    if not isinstance(verify, str):
        return verify
    try:
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UnusableCABundle(route, verify, reason) from None
