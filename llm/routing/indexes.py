"""Per-pool indexes, so that a policy picks without looking at every route of the pool.

How this works
--------------
A pick must cost the same with 100 routes as with 2. Instead of scanning the pool, the
weighted round robin and least latency policies keep its routes in binary heaps (``heapq``,
entries ``(key, position in the pool, route)``, so ties go to pool order): a pick looks at the
top of a heap and a report pushes one entry.

*Lazy entries.* A route's key changes by pushing a new entry; an entry whose key is no longer
the route's current one is dropped when it reaches the top. A heap that grows past twice the
pool is rebuilt from the routes' current keys, so heaps stay O(n) and the work per pick is a
constant few entries, amortised.

*Parking.* A route that cannot take a request (ejected, or probing with its trial in flight)
is parked when it reaches the top of a heap: its entries leave the heaps and it waits in a heap
of its own, keyed by when it may be usable again (the end of its cooldown; for a busy trial,
the moment it was parked, so it is looked at again on the next pick). Every pick first brings
back the routes whose time has come. The balancer calls ``changed(route, ...)`` when a route's
measurements change, when it heals and when an active check ends its cooldown early, so a
parked route never waits past the moment it became usable.

*Exclusions.* Routes in the caller's ``exclude`` (those a call already tried) are set aside for
one pick and put back unchanged.

The policies in ``policies.py`` define the rules; this module only makes them cheap. The
property tests check each pick against the rule stated there, route by route.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from heapq import heapify, heappop, heappush, heapreplace
from typing import Protocol

from .state import WARMUP_SAMPLES, RouteState

Entry = tuple[float, int, RouteState]


def latency_cost(route: RouteState) -> float | None:
    """Least latency's key: the latency EWMA times the calls in flight plus this one."""
    ewma = route.latency_ewma
    return None if ewma is None else ewma * (route.in_flight + 1)


def ttft_cost(route: RouteState) -> float | None:
    """The same for streams, with the time to first token."""
    ewma = route.ttft_ewma
    return None if ewma is None else ewma * (route.in_flight + 1)


class Watcher(Protocol):
    """What the balancer tells a pool's index about one of its routes."""

    def changed(self, route: RouteState, latency: bool = False, ttft: bool = False) -> None: ...

    def loaded(self, route: RouteState) -> None:
        """Its count of calls in flight changed."""


def usable(route: RouteState, now: float) -> bool:
    """May a request go to ``route`` now without forcing? (``RouteHealth.available``, with
    the common case, healthy, answered without a call)"""
    health = route.health
    return health.healthy or health.available(now)


class Parking:
    """The routes of a pool that are out of the heaps until they may be usable again."""

    def __init__(self, routes: Sequence[RouteState]) -> None:
        self.routes = tuple(routes)
        self.position = {route: i for i, route in enumerate(self.routes)}
        self.parked: set[RouteState] = set()
        self.waiting: list[Entry] = []  # (when to look again, position, route)
        self.limit = 2 * len(self.routes) + 8  # a heap longer than this is rebuilt
        for route in self.routes:
            route.watchers = (*route.watchers, self)

    def park(self, route: RouteState, now: float) -> None:
        if route in self.parked:
            return
        self.parked.add(route)
        health = route.health
        ready = health.ejected_until if health.ejected_until > now else now
        heappush(self.waiting, (ready, self.position[route], route))

    def release(self, now: float) -> None:
        """Bring back the parked routes whose time has come (called first in every pick)."""
        waiting = self.waiting
        while waiting and waiting[0][0] <= now:
            route = heappop(waiting)[2]
            if route in self.parked:
                self.parked.discard(route)
                self.enter(route)

    def changed(self, route: RouteState, latency: bool = False, ttft: bool = False) -> None:
        if route in self.parked:  # it may be usable now; if not, it is parked again on sight
            self.parked.discard(route)
            self.enter(route)

    def loaded(self, route: RouteState) -> None:
        pass

    def enter(self, route: RouteState) -> None:
        """Put ``route`` (back) into the index's heaps with its current keys."""
        raise NotImplementedError


class DeadlineSchedule(Parking):
    """Weighted round robin as earliest deadline first: a route that has had ``turns`` picks
    is next due at ``(turns + 0.5) / weight``, and the pick is the usable route due first.
    Computing each deadline afresh (rather than adding ``1 / weight`` up) keeps equal
    deadlines equal, so the order repeats exactly, period after period. A route that comes
    back from parking keeps its turns unless it fell behind the schedule's clock (the
    deadline of the last pick): then it starts again from there, half a turn on."""

    def __init__(self, routes: Sequence[RouteState]) -> None:
        super().__init__(routes)
        self.now = 0.0  # the deadline of the last pick: the schedule's own clock
        self.held: dict[RouteState, float] = {}  # parked routes' turns
        self.heap: list[tuple[float, int, RouteState, float]] = [
            (0.5 / route.weight, i, route, 0.0) for i, route in enumerate(self.routes)
        ]
        heapify(self.heap)

    def enter(self, route: RouteState) -> None:
        weight = route.weight
        turns = max(self.held.pop(route, 0.0), self.now * weight)
        heappush(self.heap, ((turns + 0.5) / weight, self.position[route], route, turns))

    def pick(self, now: float, exclude: Container[RouteState]) -> RouteState | None:
        if self.waiting:
            self.release(now)
        heap = self.heap
        aside: list[tuple[float, int, RouteState, float]] = []
        chosen: RouteState | None = None
        while heap:
            deadline, position, route, turns = heap[0]
            if not usable(route, now):
                heappop(heap)
                self.held[route] = turns
                self.park(route, now)
            elif route in exclude:
                aside.append(heappop(heap))
            else:
                turns += 1.0
                heapreplace(heap, ((turns + 0.5) / route.weight, position, route, turns))
                self.now = deadline
                chosen = route
                break
        for entry in aside:
            heappush(heap, entry)
        return chosen


class LatencyIndex(Parking):
    """The routes of a pool by latency EWMA and by time to first token EWMA, each times the
    calls in flight plus one (``latency_cost``, ``ttft_cost``), and by when each was last
    measured or re-probed, plus those still warming up (for least latency)."""

    def __init__(self, routes: Sequence[RouteState]) -> None:
        super().__init__(routes)
        self.by_latency: list[Entry] = []
        self.by_ttft: list[Entry] = []
        self.by_since: list[Entry] = []
        # routes still warming up (fewer than WARMUP_SAMPLES measurements), in pool order
        self.cold_latency = [r for r in self.routes if r.latency_samples < WARMUP_SAMPLES]
        self.cold_ttft = [r for r in self.routes if r.ttft_samples < WARMUP_SAMPLES]
        for route in self.routes:
            self.enter(route)

    def enter(self, route: RouteState) -> None:
        self._push_costs(route)
        if route.latency_ewma is not None or route.ttft_ewma is not None:
            heappush(self.by_since, (since(route), self.position[route], route))
        self._bound()

    def changed(self, route: RouteState, latency: bool = False, ttft: bool = False) -> None:
        if latency and route.latency_samples >= WARMUP_SAMPLES and route in self.cold_latency:
            self.cold_latency.remove(route)
        if ttft and route.ttft_samples >= WARMUP_SAMPLES and route in self.cold_ttft:
            self.cold_ttft.remove(route)
        if route in self.parked:
            self.parked.discard(route)
            self.enter(route)
            return
        self._push_costs(route)
        if latency or ttft:
            heappush(self.by_since, (since(route), self.position[route], route))
        self._bound()

    def loaded(self, route: RouteState) -> None:
        if route in self.parked:
            return  # it comes back with its current keys
        self._push_costs(route)
        self._bound()

    def probed(self, route: RouteState) -> None:
        """``last_probe_at`` or ``last_sample_at`` of ``route`` moved."""
        heappush(self.by_since, (since(route), self.position[route], route))
        self._bound()

    def _push_costs(self, route: RouteState) -> None:
        position = self.position[route]
        latency, ttft = latency_cost(route), ttft_cost(route)
        if latency is not None:
            heappush(self.by_latency, (latency, position, route))
        if ttft is not None:
            heappush(self.by_ttft, (ttft, position, route))

    def _bound(self) -> None:
        """Rebuild the heaps once one holds more than ``limit`` entries (stale ones)."""
        limit = self.limit
        if len(self.by_latency) > limit or len(self.by_ttft) > limit or len(self.by_since) > limit:
            self._rebuild()

    def _rebuild(self) -> None:
        """Every heap from the current keys of the routes not parked (drops stale entries)."""
        present = [(i, r) for i, r in enumerate(self.routes) if r not in self.parked]
        self.by_latency[:] = [
            (cost, i, r) for i, r in present if (cost := latency_cost(r)) is not None
        ]
        self.by_ttft[:] = [(cost, i, r) for i, r in present if (cost := ttft_cost(r)) is not None]
        self.by_since[:] = [
            (since(r), i, r)
            for i, r in present
            if r.latency_ewma is not None or r.ttft_ewma is not None
        ]
        for heap in (self.by_latency, self.by_ttft, self.by_since):
            heapify(heap)

    def coldest(
        self, now: float, exclude: Container[RouteState], stream: bool
    ) -> RouteState | None:
        """The usable route still warming up with the fewest requests in flight (pool order
        on a tie), or None."""
        chosen: RouteState | None = None
        for route in self.cold_ttft if stream else self.cold_latency:
            if (
                usable(route, now)
                and route not in exclude
                and (chosen is None or route.in_flight < chosen.in_flight)
            ):
                chosen = route
        return chosen

    def fastest(
        self, now: float, exclude: Container[RouteState], stream: bool
    ) -> RouteState | None:
        """The usable route with the lowest EWMA times calls in flight plus one (pool order
        on a tie), or None."""
        if stream:
            return self._first(self.by_ttft, ttft_cost, now, exclude, None)
        return self._first(self.by_latency, latency_cost, now, exclude, None)

    def stalest(
        self, now: float, exclude: Container[RouteState], fastest: RouteState
    ) -> RouteState:
        """The usable route other than ``fastest`` measured or re-probed longest ago (pool
        order on a tie); ``fastest`` itself when there is no other."""
        return self._first(self.by_since, since, now, exclude, fastest) or fastest

    def _first(
        self,
        heap: list[Entry],
        key: Callable[[RouteState], float | None],
        now: float,
        exclude: Container[RouteState],
        other_than: RouteState | None,
    ) -> RouteState | None:
        """The route of the first entry of ``heap`` that holds its current ``key``, is usable
        and is neither excluded nor ``other_than``; None when there is none."""
        aside: list[Entry] = []
        chosen: RouteState | None = None
        while heap:
            value, _, route = heap[0]
            if value != key(route):
                heappop(heap)  # an older key of the route
            elif not usable(route, now):
                heappop(heap)
                self.park(route, now)
            elif route is other_than or route in exclude:
                aside.append(heappop(heap))
            else:
                chosen = route
                break
        for entry in aside:
            heappush(heap, entry)
        return chosen


def since(route: RouteState) -> float:
    """When the route was last measured or re-probed."""
    sampled, probed = route.last_sample_at, route.last_probe_at
    return sampled if sampled > probed else probed


class Either:
    """``in``: in either of two collections (the caller's exclusions, routes set aside)."""

    __slots__ = ("first", "second")

    def __init__(self, first: Container[RouteState], second: Container[RouteState]) -> None:
        self.first = first
        self.second = second

    def __contains__(self, route: object) -> bool:
        return route in self.first or route in self.second
