# Generated from llm/probes/_async/look.py by scripts/unasync.py: do not edit.
# Edit the async file, then run `python scripts/unasync.py` (CI runs it with --check).
"""One look at one route: ``GET /health``, then ``GET /v1/models``, each bounded in time and size.

Both requests carry what calls carry (the route's key and headers: a proxy in front of vLLM
may want them) and go through the provider's own sender. Each, from connecting to its last
byte, is held to ``timeout`` (``sender.bounded``) and ``limit`` bytes (``read_body``); any
failure becomes the check's ``error`` (``check.failed_check``), never an exception, and the
``error`` is masked of every secret of the config. Written
once, for async; ``scripts/unasync.py`` writes the sync twin from it.
"""

from __future__ import annotations

import time

from ...call.headers import route_headers
from ...config import RouteConfig
from ...send._sync.read import read_body
from ...send.protocols import Request, SyncSender
from ..check import (
    CAP,
    CheckPaths,
    CheckSettings,
    RouteCheck,
    elapsed_ms,
    failed_check,
    judge_check,
    new_check,
)


def check_route(
    sender: SyncSender, route: RouteConfig, settings: CheckSettings
) -> RouteCheck:
    check = new_check(route)
    timeout, limit = settings.timeout, settings.limit
    headers = route_headers(route)
    times = (timeout, timeout, timeout)  # the whole request, connecting, each read
    clock = time.perf_counter
    started = clock()
    paths = CheckPaths.of(route)
    step, first = paths.health, True
    try:
        with sender.bounded(timeout, False):
            health = sender.send(
                Request(route, "GET", paths.health_url, headers, None, *times)
            )
            try:
                read_body(health, route.name, limit, clock, started, timeout, CAP)
            finally:
                health.close()
        check.health_ms = elapsed_ms(started)
        step, first = paths.models, False
        models_started = clock()
        with sender.bounded(timeout, False):
            models = sender.send(
                Request(route, "GET", paths.models_url, headers, None, *times)
            )
            try:
                body = read_body(
                    models, route.name, limit, clock, models_started, timeout, CAP
                )
            finally:
                models.close()
        check.models_ms = elapsed_ms(models_started)
        check.latency_ms = elapsed_ms(started)
        content_type = models.headers.get("content-type")
        judge_check(check, health.status_code, models.status_code, body, content_type, paths)
    except Exception as exc:  # noqa: BLE001 - a check reports every failure, never raises
        failed_check(check, exc, timeout, step, first)
    redact = settings.redact  # a server's or a library's words: masked
    if check.error is not None:
        check.error = redact.text(check.error)
    check.models = [redact.text(model) for model in check.models]
    return check
