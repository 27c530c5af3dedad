"""The headers every request to a route carries: calls and active checks alike."""

from __future__ import annotations

from ..config import RouteConfig

_FIXED = {
    "accept": "application/json",
    "content-type": "application/json",
    "user-agent": "llm-routes",
}


def route_headers(route: RouteConfig) -> dict[str, str]:
    """The route's headers, names lower-cased. The ``api_key`` goes as ``Authorization:
    Bearer ...`` unless the route's own ``headers`` set an Authorization, which then replaces
    it rather than being sent beside it."""
    headers = dict(_FIXED)
    extra = {name.lower(): value for name, value in route.headers.items()}
    if route.api_key and "authorization" not in extra:
        headers["authorization"] = "Bearer " + route.api_key
    headers.update(extra)
    return headers
