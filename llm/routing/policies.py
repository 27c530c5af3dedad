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
  spreads out instead of stampeding one route. A route other than the fastest whose last
  measurement and last re-probe are both older than ``reprobe_interval`` is *stale*: it gets
  one request, a re-probe, so a route that became fast wins its traffic back. When several
  are stale, the one measured longest ago goes first (pool order on a tie). Re-probes are
  held to a budget: a stale route is re-probed only once ``picks * probe_budget * f >= s - f``,
  where ``picks`` counts the pool's picks since its last re-probe, ``f`` is the fastest
  route's EWMA and ``s`` the stale one's; so re-probes add about ``probe_budget`` (10 %) at
  most to the mean latency, whatever the rate. At a high rate the interval is what spaces
  them, at a low rate the budget (without it, at one call every few seconds most calls were
  re-probes of the slow routes). ``picks`` lives in the policy (``since_probe``, per pool);
  a pick stays one pass over the pool.
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
            health = route.health
            if (health.healthy or health.available(now)) and route not in exclude:
                pool.cursor = position + 1
                return route
        return None

    @staticmethod
    def _choose_weighted(
        pool: Pool, exclude: Container[RouteState], now: float
    ) -> RouteState | None:
        best: RouteState | None = None
        best_weight = 0.0
        total = 0.0
        for route in pool.routes:
            health = route.health
            if (not health.healthy and not health.available(now)) or route in exclude:
                continue
            weight = route.weight
            current = route.current_weight + weight
            route.current_weight = current
            total += weight
            if best is None or current > best_weight:
                best, best_weight = route, current
        if best is not None:
            best.current_weight -= total
        return best


class LeastLatency:
    name = "least_latency"

    def __init__(self, reprobe_interval: float = 10.0, probe_budget: float = 0.1) -> None:
        if probe_budget <= 0:
            raise ValueError("probe_budget must be positive")
        self.reprobe_interval = reprobe_interval
        self.probe_budget = probe_budget
        # per pool: picks since its last re-probe (pools live as long as their balancer)
        self.since_probe: dict[Pool, int] = {}

    def choose(
        self, pool: Pool, exclude: Container[RouteState], now: float, stream: bool
    ) -> RouteState | None:
        best: RouteState | None = None
        best_score = float("inf")
        cold: RouteState | None = None
        # the two stale routes measured (or re-probed) longest ago: one is not the fastest
        stale: RouteState | None = None
        stale_next: RouteState | None = None
        reprobe_before = now - self.reprobe_interval
        for route in pool.routes:
            health = route.health
            if (not health.healthy and not health.available(now)) or route in exclude:
                continue
            score = route.ttft_ewma if stream else route.latency_ewma
            if score is None:
                if cold is None or route.in_flight < cold.in_flight:
                    cold = route
                continue
            if route.last_sample_at < reprobe_before and route.last_probe_at < reprobe_before:
                if stale is None or _since(route) < _since(stale):
                    stale, stale_next = route, stale
                elif stale_next is None or _since(route) < _since(stale_next):
                    stale_next = route
            if score < best_score:
                best, best_score = route, score
        since_probe = self.since_probe
        picks = since_probe.get(pool, 0)
        if cold is not None:
            since_probe[pool] = picks + 1
            return cold
        if best is None:
            return None
        if stale is best:
            stale = stale_next
        if stale is not None:
            cost = (stale.ttft_ewma if stream else stale.latency_ewma) or 0.0
            # the re-probe's expected extra cost, within the budget of the picks since the last
            if picks * self.probe_budget * best_score >= cost - best_score:
                stale.last_probe_at = now
                since_probe[pool] = 0
                return stale
        since_probe[pool] = picks + 1
        return best


def _since(route: RouteState) -> float:
    """When the route was last measured or re-probed."""
    return max(route.last_sample_at, route.last_probe_at)


POLICIES: dict[str, type[RoundRobin] | type[LeastLatency]] = {
    RoundRobin.name: RoundRobin,
    LeastLatency.name: LeastLatency,
}
