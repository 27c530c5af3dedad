"""Load-balancing policies: given a pool, choose one eligible route.

A policy is any object with ``name`` and ``choose(pool, exclude, now, stream, tokens)``
(``tokens``: the call's ``max_tokens``, 0 when it names none); it returns a
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
  streams) times its calls in flight plus one (Finagle's peak-EWMA rule: a route's latency
  grows with its queue, and the EWMA only learns it when answers come back, so without the
  factor every call of a burst went to the one route that looked fastest). Routes still
  warming up (fewer than ``WARMUP_SAMPLES`` measurements, whose estimate is the least of
  them so far) come first, least loaded first, but only while they have no call in flight
  (or while no route is measured at all): so a cold start spreads out instead of stampeding
  one route, one slow first answer does not bench a fast route, and a slow route does not
  take every call while its first answers are slow to come back. A route other
  than the fastest whose last measurement and last re-probe are both older than
  ``reprobe_interval`` is *stale*: it gets one request, a re-probe, so a route that became
  fast wins its traffic back. When several are stale, the one measured longest ago goes
  first (pool order on a tie). Re-probes are held to a budget: a stale route is re-probed
  only once ``picks * probe_budget * f >= s - f``, where ``picks`` counts the pool's picks
  since its last re-probe, ``f`` is the fastest route's EWMA and ``s`` the stale one's; so
  re-probes add about ``probe_budget`` (10 %) at most to the mean latency, whatever the
  rate. At a high rate the interval is what spaces them, at a low rate the budget (without
  it, at one call every few seconds most calls were re-probes of the slow routes). ``picks``
  lives in the policy (``since_probe``, per pool).
- ``LeastLoad``: power of two choices on the expected wait. Two distinct usable routes are
  drawn at random and the one with the lower cost wins (the first drawn on a tie). When the
  usable routes are listed (a pool of ``SMALL`` routes or fewer), each is drawn in proportion
  to its speed (weight over seconds per token, ``speeds``): with uniform draws a pair of the
  two slowest routes of four came up one time in six and sent the call to a slow route
  while a fast one idled (6 % of the calls to a quarter-speed instance, where the oracle
  sends 3 %). The cost::

      cost = (estimated load + 1) * seconds per generated token / weight

  The load is the server's last report brought up to date with this client's own calls
  (``load.estimated_load``), or just those when it reports nothing or its report is stale.
  Seconds per token is each route's EWMA (``RouteState.token_time``); when one of the two
  has none yet, both are compared by latency EWMA, and when one has neither, by load alone.
  Two random choices instead of the least loaded of all: load information is always a
  little old, and a whole fleet of clients choosing the argmin of old data herds onto one
  route (Mitzenmacher), while the better of two random routes stays close to the best.

Neither of the first two scans the pool: ``indexes.py`` keeps its routes in heaps (by
deadline; by latency, by time to first token and by last measurement), so a pick costs the
same at 100 routes as at 2; least load draws its two routes at random from a pool of more
than ``SMALL`` routes (up to ``TRIES`` draws each, when some are ejected or excluded) and
lists the usable ones only when that fails, or when the pool is small.
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Container, Sequence
from typing import Protocol

from .indexes import DeadlineSchedule, LatencyIndex, since, usable
from .load import DEFAULT_MAX_AGE, estimated_load
from .state import Pool, RouteState


class Policy(Protocol):
    name: str

    def choose(
        self,
        pool: Pool,
        exclude: Container[RouteState],
        now: float,
        stream: bool,
        tokens: int = 0,
    ) -> RouteState | None: ...


class RoundRobin:
    name = "round_robin"

    def choose(
        self,
        pool: Pool,
        exclude: Container[RouteState],
        now: float,
        stream: bool,
        tokens: int = 0,
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
        # per pool: picks since its last re-probe (a pool that discovery replaced goes)
        self.since_probe: weakref.WeakKeyDictionary[Pool, int] = weakref.WeakKeyDictionary()

    def choose(
        self,
        pool: Pool,
        exclude: Container[RouteState],
        now: float,
        stream: bool,
        tokens: int = 0,
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
        cold = None
        if index.cold_ttft if stream else index.cold_latency:
            cold = index.coldest(now, exclude, stream)
            if cold is not None and not cold.in_flight:  # one warm-up call at a time
                since_probe[pool] = picks + 1
                return cold
        best = index.fastest(now, exclude, stream)
        if best is None:  # nothing measured yet: spread over the routes warming up
            if cold is not None:
                since_probe[pool] = picks + 1
            return cold
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


STREAM_WAIT = 4.0  # a stream's wait for a slot counts this many times: nothing shows meanwhile
TRIES = 8  # random draws for one usable route before least load lists the usable ones
SMALL = 8  # a pool this small is listed at once (as cheap as drawing, and never misses)


class LeastLoad:
    name = "least_load"

    def __init__(self, rng: random.Random, max_age: float = DEFAULT_MAX_AGE) -> None:
        self.rng = rng
        self.max_age = max_age
        self.mean_tokens = 64.0  # moving average of the max_tokens calls ask for

    def choose(
        self,
        pool: Pool,
        exclude: Container[RouteState],
        now: float,
        stream: bool,
        tokens: int = 0,
    ) -> RouteState | None:
        asked = float(tokens) if tokens > 0 else self.mean_tokens
        if tokens > 0:
            self.mean_tokens += 0.05 * (tokens - self.mean_tokens)
        routes = pool.routes
        first = second = None
        if len(routes) > SMALL:
            first = self._draw(routes, now, exclude, None)
            second = None if first is None else self._draw(routes, now, exclude, first)
        if first is None or second is None:  # few usable routes: draw among them
            eligible = [route for route in routes if _open(route, now, exclude)]
            if len(eligible) < 2:
                return eligible[0] if eligible else None
            first, second = self._pair_by_speed(eligible)
        # a route not measured yet takes one call at a time until its first answer tells
        # its speed (a slow instance would otherwise collect a share of calls meanwhile)
        if _learning(second) and not _learning(first):
            return first
        if _learning(first) and not _learning(second):
            return second
        wait = STREAM_WAIT if stream else 1.0
        cost = self.cost
        cheaper = cost(second, first, now, asked, wait) < cost(first, second, now, asked, wait)
        return second if cheaper else first

    def _pair_by_speed(self, eligible: list[RouteState]) -> tuple[RouteState, RouteState]:
        """Two distinct routes of ``eligible``, each drawn in proportion to its speed times its
        weight (``speeds``): a slow route is seldom one of the two, so a pair of slow routes
        seldom forces a call onto one of them while a fast one idles."""
        weights = speeds(eligible)
        random_ = self.rng.random
        total = sum(weights)
        i = _index_at(weights, random_() * total, -1)
        j = _index_at(weights, random_() * (total - weights[i]), i)
        return eligible[i], eligible[j]

    def _draw(
        self,
        routes: Sequence[RouteState],
        now: float,
        exclude: Container[RouteState],
        other_than: RouteState | None,
    ) -> RouteState | None:
        """A usable route drawn at random (not excluded, not ``other_than``): up to ``TRIES``
        draws, so that a pool with some routes ejected costs a few more draws, not a scan."""
        n = len(routes)
        randrange = self.rng.randrange
        for _ in range(TRIES):
            route = routes[randrange(n)]
            if route is not other_than and _open(route, now, exclude):
                return route
        return None

    def cost(
        self, route: RouteState, other: RouteState, now: float, asked: float, wait: float = 1.0
    ) -> float:
        """How long a call asking for ``asked`` tokens would take on ``route``, in units it
        shares with ``other``: the wait for a free slot plus its own tokens, at the route's
        seconds per token. vLLM runs up to ``slots`` calls at once (the most it ever reported
        running; 1 when it never said), so a call waits only for the load beyond them, each
        of those a mean call's worth of tokens shared among the slots; ``wait`` weighs that
        wait (``STREAM_WAIT`` for a stream, whose reader sees nothing until its first token)."""
        tokens = self._tokens(route, now, asked, wait, max(route.slots, other.slots, 1.0))
        if route.token_time is not None and other.token_time is not None:
            return tokens * route.token_time / route.weight
        if route.latency_ewma is not None and other.latency_ewma is not None:
            return tokens * route.latency_ewma / route.weight
        return tokens / route.weight

    def costs(
        self, routes: Sequence[RouteState], now: float, tokens: int, stream: bool
    ) -> list[float]:
        """``cost`` of a call asking for ``tokens`` on each of ``routes``, in units they all
        share (seconds per token if all have one, else latency if all have one, else none)."""
        asked = float(tokens) if tokens > 0 else self.mean_tokens
        wait = STREAM_WAIT if stream else 1.0
        slots = max(1.0, *(route.slots for route in routes))
        times = [route.token_time for route in routes]
        if None in times:
            times = [route.latency_ewma for route in routes]
        if None in times:
            times = [1.0] * len(routes)
        return [
            self._tokens(route, now, asked, wait, slots) * (t or 1.0) / route.weight
            for route, t in zip(routes, times, strict=True)
        ]

    def _tokens(
        self, route: RouteState, now: float, asked: float, wait: float, slots: float
    ) -> float:
        """The call's own tokens plus its wait for a slot, counted in tokens (see ``cost``)."""
        beyond = estimated_load(route, now, self.max_age) + 1.0 - slots
        return asked + (wait * beyond * self.mean_tokens / slots if beyond > 0 else 0.0)


def _learning(route: RouteState) -> bool:
    """Not measured yet (no answer has told its speed) and already busy with a call."""
    return route.in_flight > 0 and route.token_time is None and route.latency_ewma is None


def speeds(routes: Sequence[RouteState]) -> list[float]:
    """Each route's weight over its seconds per token (or, unless every route has that, over
    its latency EWMA; unless every route has that, its weight alone). A route not measured
    yet counts as fast as the fastest measured one, so that it gets measured."""
    times: list[float | None] = [route.token_time for route in routes]
    if None in times:
        latencies = [route.latency_ewma for route in routes]
        if None not in latencies:
            times = latencies
    known = [route.weight / t for route, t in zip(routes, times, strict=True) if t]
    top = max(known) if known else 1.0
    return [
        (route.weight / t if t else top) if known else route.weight
        for route, t in zip(routes, times, strict=True)
    ]


def _index_at(speeds: list[float], point: float, skip: int) -> int:
    """The index whose stretch of the line of ``speeds`` (laid end to end, ``skip`` left out)
    holds ``point``; the last one left on a rounding overshoot."""
    last = -1
    for index, speed in enumerate(speeds):
        if index == skip:
            continue
        last = index
        point -= speed
        if point < 0:
            return index
    return last


def _open(route: RouteState, now: float, exclude: Container[RouteState]) -> bool:
    return usable(route, now) and route not in exclude


POLICIES: dict[str, type[RoundRobin] | type[LeastLatency] | type[LeastLoad]] = {
    RoundRobin.name: RoundRobin,
    LeastLatency.name: LeastLatency,
    LeastLoad.name: LeastLoad,
}
