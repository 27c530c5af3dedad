"""Load-balancing policies: given a pool, choose one eligible route.

A policy is any object with ``name`` and ``choose(pool, exclude, now, stream)``; it returns a
route of ``pool`` that is available (healthy or free for a trial) and not in ``exclude``, or
None when there is none. Policies are called under the balancer's lock and may keep state in
the pool (the round-robin cursor) and in the route records (smooth-weighted counters, probe
times). Adding a policy is one class plus an entry in ``POLICIES``.

- ``RoundRobin``: the next eligible route after the cursor, so ejected routes are skipped
  without unbalancing the others. Routes with unequal ``weight`` use smooth weighted round
  robin (nginx's algorithm): the same spread, interleaved rather than in bursts.
- ``LeastLatency``: the route with the lowest EWMA of latency (time to first token for
  streams). Routes with no measurement yet come first, least loaded first, so a cold start
  spreads out instead of stampeding one route. A route whose last measurement is older than
  ``reprobe_interval`` gets one request now and then, so a route that became fast wins its
  traffic back.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Protocol

from .state import Pool, RouteState


class Policy(Protocol):
    name: str

    def choose(
        self, pool: Pool, exclude: Container[RouteState], now: float, stream: bool
    ) -> RouteState | None: ...


class RoundRobin:
    name = "round_robin"

    def choose(
        self, pool: Pool, exclude: Container[RouteState], now: float, stream: bool
    ) -> RouteState | None:
        if pool.weighted:
            return self._choose_weighted(pool, exclude, now)
        routes = pool.routes
        n = len(routes)
        start = pool.cursor
        for step in range(n):
            position = (start + step) % n
            route = routes[position]
            if route.health.available(now) and route not in exclude:
                pool.cursor = position + 1
                return route
        return None

    @staticmethod
    def _choose_weighted(
        pool: Pool, exclude: Container[RouteState], now: float
    ) -> RouteState | None:
        best: RouteState | None = None
        total = 0.0
        for route in pool.routes:
            if not route.health.available(now) or route in exclude:
                continue
            route.current_weight += route.weight
            total += route.weight
            if best is None or route.current_weight > best.current_weight:
                best = route
        if best is not None:
            best.current_weight -= total
        return best


class LeastLatency:
    name = "least_latency"

    def __init__(self, reprobe_interval: float = 10.0) -> None:
        self.reprobe_interval = reprobe_interval

    def choose(
        self, pool: Pool, exclude: Container[RouteState], now: float, stream: bool
    ) -> RouteState | None:
        best: RouteState | None = None
        best_score = float("inf")
        cold: RouteState | None = None
        stale: RouteState | None = None
        reprobe_before = now - self.reprobe_interval
        for route in pool.routes:
            if not route.health.available(now) or route in exclude:
                continue
            score = route.ttft_ewma if stream else route.latency_ewma
            if score is None:
                if cold is None or route.in_flight < cold.in_flight:
                    cold = route
                continue
            if (
                stale is None
                and route.last_sample_at < reprobe_before
                and route.last_probe_at < reprobe_before
            ):
                stale = route
            if score < best_score:
                best, best_score = route, score
        if cold is not None:
            return cold
        if stale is not None and stale is not best:
            stale.last_probe_at = now
            return stale
        return best


POLICIES: dict[str, type[RoundRobin] | type[LeastLatency]] = {
    RoundRobin.name: RoundRobin,
    LeastLatency.name: LeastLatency,
}
