"""Active health checks in the background (``llm.health.check_interval`` > 0).

Every ``interval`` seconds a daemon thread looks at every route (``GET /health`` and
``GET /v1/models``, see ``check``) and tells the balancer (and each route's ``max_model_len``,
for ``routing/fit.py``): a healthy route that fails its
check is ejected before a caller's request has to discover it; an ejected route that passes
may take its trial request at once instead of waiting out its cooldown. A passing check never
makes a route healthy by itself: only a real request does.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import RouteConfig
from ..routing.balancer import Balancer
from ..send.protocols import SyncSender
from .background import Background
from .check import CheckSettings
from .run import check_routes


class ActiveChecker(Background):
    def __init__(
        self,
        routes: Sequence[RouteConfig],
        balancer: Balancer,
        sender: SyncSender,
        interval: float,
        settings: CheckSettings,
    ) -> None:
        self.routes = list(routes)
        self.balancer = balancer
        self.sender = sender
        self.interval = interval
        self.settings = settings
        super().__init__("llm-routes-checker", settings.timeout * 2 + 1.0)

    def restarted(self) -> ActiveChecker:
        """A checker like this one, running (in a forked child, where this one's thread
        does not exist)."""
        return ActiveChecker(
            self.routes, self.balancer, self.sender, self.interval, self.settings
        ).start()

    def run_once(self) -> None:
        routes = self.balancer.configs() if self.balancer.groups else self.routes
        for check in check_routes(routes, self.sender, self.settings):
            self.balancer.observe_check(check.route, check.healthy, check.error)
            self.balancer.learn_limit(check.route, check.max_model_len, "models")

    def pause(self) -> float:
        return self.interval
