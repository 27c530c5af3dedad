"""Load-balancing policies: given a pool, choose one eligible route.

A policy is any object with ``name`` and ``choose(pool, exclude, now, stream)``; it returns a
route of ``pool`` that is available (healthy or free for a trial) and not in ``exclude``, or
None when there is none. Policies are called under the balancer's lock and may keep state in
the pool (the round-robin cursor, an index of its routes) and in the route records (probe
times). Adding a policy is one class plus an entry in ``POLICIES``.

- ``RoundRobin``: the next eligible route after the cursor, so ejected routes are skipped
  without unbalancing the others. Routes with unequal ``weight`` are scheduled earliest
  deadline first (``indexes.DeadlineSchedule``): a route that has had ``k`` picks is due at
  ``(k + 0.5) / weight`` and the eligible route due first gets the pick (pool order on a
  tie), so shares follow the weights, interleaved (weights 1, 2, 3 give ``c b a c b c`` in
  every period). A route that was unavailable when its turn came keeps its place, unless the
  schedule moved past it meanwhile: then it starts again half a turn after the last pick, so
  it does not catch up in a burst.
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
  re-probes of the slow routes). ``picks`` lives in the policy (``since_probe``, per pool).

Neither scans the pool: ``indexes.py`` keeps its routes in heaps (by deadline; by latency, by
time to first token and by last measurement), so a pick costs the same at 100 routes as at 2.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Protocol

from .indexes import DeadlineSchedule, LatencyIndex, since, usable
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
            schedule = pool.index
            if not isinstance(schedule, DeadlineSchedule):
                schedule = pool.index = DeadlineSchedule(pool.routes)
            return schedule.pick(now, exclude)
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
        index = pool.index
        if not isinstance(index, LatencyIndex):
            if len(pool.routes) == 1:  # a pinned route, the fallback: nothing to rank
                route = pool.routes[0]
                return route if usable(route, now) and route not in exclude else None
            index = pool.index = LatencyIndex(pool.routes)
        if index.waiting:
            index.release(now)
        since_probe = self.since_probe
        picks = since_probe.get(pool, 0)
        if index.cold_ttft if stream else index.cold_latency:
            cold = index.coldest(now, exclude, stream)
            if cold is not None:
                since_probe[pool] = picks + 1
                return cold
        best = index.fastest(now, exclude, stream)
        if best is None:
            return None
        stale = index.stalest(now, exclude, best)
        if stale is not best and since(stale) < now - self.reprobe_interval:
            best_score = (best.ttft_ewma if stream else best.latency_ewma) or 0.0
            cost = (stale.ttft_ewma if stream else stale.latency_ewma) or 0.0
            # the re-probe's expected extra cost, within the budget of the picks since the last
            if picks * self.probe_budget * best_score >= cost - best_score:
                stale.last_probe_at = now
                index.probed(stale)
                since_probe[pool] = 0
                return stale
        since_probe[pool] = picks + 1
        return best


POLICIES: dict[str, type[RoundRobin] | type[LeastLatency]] = {
    RoundRobin.name: RoundRobin,
    LeastLatency.name: LeastLatency,
}
