"""Optional active health checks in the background (``llm.health.check_interval`` > 0).

Every ``interval`` seconds a daemon thread looks at every route (``GET /health`` and
``GET /v1/models``, see ``checks``) and tells the balancer: a healthy route that fails its
check is ejected before a caller's request has to discover it; an ejected route that passes
may take its trial request at once instead of waiting out its cooldown. A passing check never
makes a route healthy by itself: only a real request does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import httpx

from .checks import check_routes
from .config import RouteConfig
from .routing.balancer import Balancer


class ActiveChecker:
    def __init__(
        self,
        routes: Sequence[RouteConfig],
        balancer: Balancer,
        transport_for: Callable[[RouteConfig], httpx.BaseTransport],
        interval: float,
        timeout: float,
    ) -> None:
        self.routes = list(routes)
        self.balancer = balancer
        self.transport_for = transport_for
        self.interval = interval
        self.timeout = timeout
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm-routes-checker", daemon=True)

    def start(self) -> ActiveChecker:
        self._thread.start()
        return self

    def run_once(self) -> None:
        for check in check_routes(self.routes, self.transport_for, self.timeout):
            self.balancer.observe_check(check.route, check.healthy, check.error)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.run_once()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout * 2 + 1.0)
