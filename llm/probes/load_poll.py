"""vLLM's ``/metrics`` load gauges, polled in the background for the routes in use.

How this works
--------------
A streamed answer carries no load report, so the routes' own word on their queues comes from
``GET /metrics`` (``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
``vllm:kv_cache_usage_perc``; parsed by ``judge.load_report.parse_metrics``). A daemon thread
reads it every ``interval`` seconds, jittered by ±20 % so that many app replicas started
together do not poll in step, for each route that had a call in the last ``IDLE`` seconds
(a route nobody uses needs no load figures; its first call is decided by its own in-flight
count). The routes are read at once, a thread each (at most 8), each read held to
``timeout`` seconds and ``CHECK_LIMIT`` bytes like an active check; a read that fails, or a
text with no load gauge in it (a server other than vLLM), leaves the route's load to this
client's own counts (``routing.load``), and the route is polled less often after each such
miss in a row (every 2, 4, 8 ... rounds, at most every ``MAX_SKIP`` rounds): a server without
``/metrics`` costs a request a minute, not one a second. A poll never touches a route's
health: a server whose ``/metrics`` is slow or missing may still answer calls well.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ..call.headers import route_headers
from ..config import RouteConfig
from ..judge.load_report import LoadReport, parse_metrics
from ..routing.balancer import Balancer
from ..send._sync.read import read_body
from ..send.protocols import Request, SyncSender
from .background import Background
from .check import CHECK_LIMIT

IDLE = 60.0  # seconds without a call after which a route is not polled
MAX_SKIP = 60  # rounds: how rarely a route that keeps giving no report is still polled
JITTER = 0.2
_MAX_THREADS = 8


def poll_route(
    sender: SyncSender, route: RouteConfig, timeout: float, limit: int = CHECK_LIMIT
) -> LoadReport | None:
    """The load ``route``'s ``/metrics`` reports now, or None (no answer, not vLLM's)."""
    headers = route_headers(route)
    clock = time.perf_counter
    started = clock()
    try:
        with sender.bounded(timeout, False):
            url = route.server_url + "/metrics"
            answer = sender.send(Request(route, "GET", url, headers, None, *(timeout,) * 3))
            try:
                if answer.status_code != 200:
                    return None
                body = read_body(answer, route.name, limit, clock, started, timeout)
            finally:
                answer.close()
    except Exception:  # noqa: BLE001 - a poll is advice: its failure only means no report
        return None
    return parse_metrics(body, route.model)


class LoadPoller(Background):
    """The background thread that keeps the balancer's load reports fresh."""

    def __init__(
        self,
        routes: Sequence[RouteConfig],
        balancer: Balancer,
        sender: SyncSender,
        interval: float,
        timeout: float,
        rng: random.Random | None = None,
    ) -> None:
        self.routes = list(routes)
        self.balancer = balancer
        self.sender = sender
        self.interval = interval
        self.timeout = timeout
        self.rng = rng or random.Random()
        self._misses: dict[str, int] = {}  # reads in a row that gave no report
        self._wait: dict[str, int] = {}  # rounds to skip before the next read
        super().__init__("llm-routes-load", timeout + 1.0)

    def restarted(self) -> LoadPoller:
        """A poller like this one, running (in a forked child)."""
        return LoadPoller(
            self.routes, self.balancer, self.sender, self.interval, self.timeout
        ).start()

    def in_use(self) -> list[RouteConfig]:
        """The routes with a call in flight or ended in the last ``IDLE`` seconds."""
        names = set(self.balancer.in_use(IDLE))
        routes = self.balancer.configs() if self.balancer.groups else self.routes
        return [route for route in routes if route.name in names]

    def due(self) -> list[RouteConfig]:
        """The routes in use whose turn it is (a route that gave no report waits longer)."""
        routes = []
        wait = self._wait
        for route in self.in_use():
            left = wait.get(route.name, 0)
            if left > 0:
                wait[route.name] = left - 1
            else:
                routes.append(route)
        return routes

    def run_once(self) -> int:
        """Poll the routes due once; the number of load reports taken."""
        routes = self.due()
        if not routes:
            return 0
        with ThreadPoolExecutor(max_workers=min(_MAX_THREADS, len(routes))) as pool:
            reports = list(pool.map(self._poll, routes))
        taken = 0
        for route, report in zip(routes, reports, strict=True):
            name = route.name
            if report is None:
                misses = self._misses[name] = self._misses.get(name, 0) + 1
                self._wait[name] = min(2 ** min(misses, 8), MAX_SKIP) - 1
                continue
            self._misses.pop(name, None)
            self.balancer.observe_load(name, report.waiting, report.running, report.kv_usage)
            taken += 1
        return taken

    def _poll(self, route: RouteConfig) -> LoadReport | None:
        return poll_route(self.sender, route, self.timeout)

    def pause(self) -> float:
        return self.interval * (1 + JITTER * (2 * self.rng.random() - 1))
