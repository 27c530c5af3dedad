"""What one look at a route found: ``RouteCheck``, and the verdict on what was answered.

A check is a look, not traffic: it does not move a route's health by itself (a server can
answer /health while its model fails); the background checker tells the balancer what it saw.
A check never raises: every failure becomes a short ``error`` text ("connection refused", "no
answer within 2s", "/health answered HTTP 503", "model 'x' not served (serves: y)", ...),
with every form of every secret of the config masked in it (``CheckSettings.redact``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..config import RouteConfig
from ..config.redact import Redactor
from ..judge.parse import parse_json
from ..send.failures import describe_failure

_STATUS_HINTS = {
    401: " (check the route's api_key)",
    403: " (check the route's api_key)",
    404: " (check the route's base_url)",
}
_MEDIA_TYPE_SHOWN = 60
CHECK_LIMIT = 4 * 1024 * 1024  # bytes of a /health or /v1/models answer worth reading
CAP = "the check's size cap"


def check_limit(max_response_bytes: int) -> int:
    """How much of a /health or /v1/models answer a check reads at most."""
    return min(max_response_bytes, CHECK_LIMIT)


@dataclass(frozen=True, slots=True)
class CheckSettings:
    """How a look at a route is made: each request's ``timeout``, the ``limit`` of an
    answer's bytes, and the ``redact`` that masks every secret of the config in its text."""

    timeout: float
    limit: int
    redact: Redactor


@dataclass(slots=True)
class RouteCheck:
    """What one look at one route found.

    ``latency_ms`` is the whole check (both requests, set when both were answered);
    ``health_ms`` and ``models_ms`` time ``GET /health`` and ``GET /v1/models`` on their own
    (each set once that request was answered, whatever its status).
    """

    route: str
    base_url: str
    model: str
    healthy: bool = False
    latency_ms: float | None = None
    models: list[str] = field(default_factory=list)
    max_model_len: int | None = None
    error: str | None = None
    health_ms: float | None = None
    models_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_check(route: RouteConfig) -> RouteCheck:
    return RouteCheck(route.name, route.shown_url, route.model)


@dataclass(frozen=True, slots=True)
class CheckPaths:
    """The two requests of a check, as URLs, and as the paths its texts name: a ``base_url``
    ``http://h:8000/v1`` gives ``/health`` and ``/v1/models``, ``http://h:8000/openai`` gives
    ``/health`` and ``/openai/models`` (``/health`` sits beside a trailing ``/v1`` only)."""

    health_url: str
    models_url: str
    health: str
    models: str
    lacks_v1: bool  # base_url does not end in /v1: the usual cause of a 404 on models

    @classmethod
    def of(cls, route: RouteConfig) -> CheckPaths:
        health_url = route.server_url + "/health"
        models_url = route.base_url + "/models"
        return cls(
            health_url,
            models_url,
            _path(health_url),
            _path(models_url),
            not route.base_url.endswith("/v1"),
        )


def _path(url: str) -> str:
    return urlsplit(url).path or "/"


def elapsed_ms(since: float) -> float:
    """Milliseconds since a reading of ``time.perf_counter``, rounded for reports."""
    return round((time.perf_counter() - since) * 1000.0, 2)


def _media_type(content_type: str | None) -> str:
    """``text/html; charset=utf-8`` -> ``text/html``, printable and short; '' when absent."""
    media = (content_type or "").split(";", 1)[0].strip()
    media = "".join(ch for ch in media if ch.isprintable())
    return media[:_MEDIA_TYPE_SHOWN]


def judge_check(
    check: RouteCheck,
    health_status: int,
    models_status: int,
    body: bytes,
    content_type: str | None = None,
    paths: CheckPaths | None = None,
) -> None:
    """Fill in ``check`` from the two statuses and the models body; texts name ``paths``
    (default: ``/health`` and ``/v1/models``)."""
    health_path = "/health" if paths is None else paths.health
    models_path = "/v1/models" if paths is None else paths.models
    if health_status != 200:
        check.error = f"{health_path} answered HTTP {health_status}"
        return
    if models_status != 200:
        hint = _STATUS_HINTS.get(models_status, "")
        if models_status == 404 and paths is not None and paths.lacks_v1:
            hint = " (check the route's base_url: vLLM's ends in /v1)"
        check.error = f"{models_path} answered HTTP {models_status}{hint}"
        return
    try:
        data = parse_json(body)
        entries = data["data"]
        if not isinstance(entries, list):
            raise TypeError("data is not a list")
        models = [entry["id"] for entry in entries]
        if not all(isinstance(model, str) for model in models):
            raise TypeError("a model id is not a string")
        check.models = models
    except (ValueError, KeyError, TypeError):
        what = _media_type(content_type) or ("empty body" if not body.strip() else "")
        check.error = f"{models_path} answered something that is not a model list" + (
            f" ({what})" if what else ""
        )
        return
    for entry in entries:
        if entry.get("id") == check.model and isinstance(entry.get("max_model_len"), int):
            check.max_model_len = entry["max_model_len"]
    if check.model not in check.models:
        served = ", ".join(check.models) if check.models else "no model"
        check.error = f"model {check.model!r} not served (serves: {served})"
        return
    check.healthy = True


def failed_check(
    check: RouteCheck, exc: BaseException, timeout: float, step: str, first: bool = True
) -> None:
    """``check`` failed at ``step`` with ``exc``: say why (masked later, with every text).
    A failure of the ``first`` request is the route's failure and says only why."""
    reason = describe_failure(exc, timeout)
    check.error = reason if first else f"{step}: {reason}"
