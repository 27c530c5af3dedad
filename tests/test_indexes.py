"""The pools' indexes (llm/routing/indexes.py): parked routes come back the moment they may be
used, exclusions leave no trace, heaps stay the size of the pool, and a route that returns
after a long ejection takes its share without a burst. The policies' rules themselves are
checked pick by pick in test_properties.py and test_policies.py."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import FakeClock, MakeBalancer, picks, route_config

from llm.config import HealthConfig
from llm.routing import Balancer, LeastLatency, Pool, RouteState
from llm.routing.indexes import DeadlineSchedule, LatencyIndex
from llm.routing.state import WARMUP_SAMPLES

HEALTH = HealthConfig(cooldown=5.0, max_cooldown=5.0, stall_factor=0)


def weighted(make_balancer: MakeBalancer, *weights: float) -> tuple[Balancer, Pool]:
    balancer = make_balancer(
        *(route_config(f"r{i}", weight=w) for i, w in enumerate(weights)), health=HEALTH
    )
    pool = balancer.pool("m")
    assert pool is not None and pool.weighted
    return balancer, pool


def fastest_first(
    make_balancer: MakeBalancer, *latencies: float
) -> tuple[Balancer, Pool, list[RouteState]]:
    balancer = make_balancer(
        *(f"r{i}" for i in range(len(latencies))), policy="least_latency", health=HEALTH
    )
    pool = balancer.pool("m")
    assert pool is not None
    routes = list(pool.routes)
    for route, latency in zip(routes, latencies, strict=True):
        for _ in range(WARMUP_SAMPLES):  # past the warm-up: ranked by EWMA, no longer cold
            balancer.succeeded(route, balancer.dispatch(route), latency=latency, ttft=latency)
    return balancer, pool, routes


def eject(balancer: Balancer, route: RouteState) -> None:
    balancer.failed(route, balancer.dispatch(route), "connect error")


# -- parking: an unusable route leaves the heaps and comes back when it may be used --------


def test_an_ejected_fastest_route_is_parked_and_gets_its_trial_when_the_cooldown_ends(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer, pool, (r0, r1, _r2) = fastest_first(make_balancer, 0.01, 0.02, 0.03)
    eject(balancer, r0)
    assert picks(balancer, pool, 3) == ["r1"] * 3
    index = pool.index
    assert isinstance(index, LatencyIndex) and index.parked == {r0}
    clock.advance(r0.health.ejected_until - clock() + 1e-6)
    assert balancer.pick(pool) is r0  # the trial, at the first pick after the cooldown
    assert index.parked == set()
    balancer.dispatch(r0)  # the trial is in flight: r0 is parked again until it ends
    assert balancer.pick(pool) is r1
    assert index.parked == {r0}


@pytest.mark.parametrize("how", ["active check", "forced request"])
def test_a_parked_route_is_back_at_once_when_it_heals_before_its_cooldown_ends(
    make_balancer: MakeBalancer, how: str
) -> None:
    balancer, pool, (r0, r1) = fastest_first(make_balancer, 0.01, 0.02)
    eject(balancer, r0)
    assert balancer.pick(pool) is r1  # r0 parked for 4-5 s of cooldown
    if how == "active check":
        balancer.observe_check("r0", True)  # cooldown over now: the trial may go
    else:  # every route was unavailable once, the caller forced r0, and it answered
        balancer.succeeded(r0, balancer.dispatch(r0), latency=0.01)
    assert balancer.pick(pool) is r0


def test_a_trial_ending_without_a_verdict_frees_the_route_for_the_next_pick(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer, pool, (r0, r1) = fastest_first(make_balancer, 0.01, 0.02)
    eject(balancer, r0)
    clock.advance(10.0)
    assert balancer.pick(pool) is r0
    started = balancer.dispatch(r0)
    assert balancer.pick(pool) is r1  # one trial at a time
    balancer.finished(r0, started)  # the caller cancelled it: no evidence either way
    assert balancer.pick(pool) is r0


def test_weighted_round_robin_parks_an_ejected_route_and_brings_it_back(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer, pool = weighted(make_balancer, 1, 2, 3)
    _r0, _r1, r2 = pool.routes
    eject(balancer, r2)
    assert Counter(picks(balancer, pool, 30)) == {"r0": 10, "r1": 20}
    schedule = pool.index
    assert isinstance(schedule, DeadlineSchedule) and schedule.parked == {r2}
    clock.advance(10.0)
    assert balancer.pick(pool) is r2  # its trial: it was due long ago
    balancer.succeeded(r2, balancer.dispatch(r2))
    assert r2.health.healthy and schedule.parked == set()


def test_a_route_back_from_a_long_ejection_takes_its_share_without_a_burst(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    """Its turns do not pile up while it is away: from its return on, every window of one
    period (sum of weights) holds its weight, give or take one pick."""
    balancer, pool = weighted(make_balancer, 1, 1, 2)
    _r0, _r1, r2 = pool.routes
    eject(balancer, r2)
    picks(balancer, pool, 500)  # 500 picks without r2
    balancer.observe_check("r2", True)
    balancer.succeeded(r2, balancer.dispatch(r2))
    after = picks(balancer, pool, 400)
    for start in range(len(after) - 4):
        assert abs(Counter(after[start : start + 4])["r2"] - 2) <= 1
    assert Counter(after) == pytest.approx({"r0": 100, "r1": 100, "r2": 200}, abs=2)


# -- exclusions and heap sizes ------------------------------------------------------------


@pytest.mark.parametrize("policy", ["weighted", "least_latency"])
def test_excluded_routes_are_put_back_unchanged(make_balancer: MakeBalancer, policy: str) -> None:
    if policy == "weighted":
        balancer, pool = weighted(make_balancer, 1, 2, 3)
    else:
        balancer, pool, _ = fastest_first(make_balancer, 0.01, 0.02, 0.03)
    r0, r1, r2 = pool.routes
    for _ in range(20):
        assert balancer.pick(pool, exclude=[r0, r1]) is r2
    assert balancer.pick(pool, exclude=[r0, r1, r2]) is None
    # nothing was lost from the heaps: each route can still be picked alone
    for route in (r0, r1, r2):
        others = [r for r in (r0, r1, r2) if r is not route]
        assert balancer.pick(pool, exclude=others) is route
    assert not pool.index.parked  # type: ignore[attr-defined]


def test_the_latency_heaps_stay_the_size_of_the_pool(make_balancer: MakeBalancer) -> None:
    rng = random.Random(7)
    balancer, pool, _routes = fastest_first(make_balancer, *(0.01 * (i + 1) for i in range(8)))
    index = pool.index
    assert index is None  # made by the first pick
    for _ in range(5000):
        route = balancer.pick(pool, stream=rng.random() < 0.5)
        assert route is not None
        value = rng.uniform(0.005, 0.1)
        balancer.succeeded(route, balancer.dispatch(route), latency=value, ttft=value / 2)
        index = pool.index
        assert isinstance(index, LatencyIndex)
        for heap in (index.by_latency, index.by_ttft, index.by_since):
            assert len(heap) <= index.limit == 2 * 8 + 8


def test_calls_in_flight_move_a_route_in_the_heaps_and_keep_them_bounded(
    make_balancer: MakeBalancer,
) -> None:
    """Every dispatch and every end re-keys the route (EWMA times calls in flight plus one):
    each pick is the usable route of least such cost (pool order on a tie: ``min`` keeps the
    first), whatever the order of dispatches, samples, ends and ejections, and the heaps stay
    within their limit."""
    rng = random.Random(3)
    latencies = (0.01, 0.013, 0.02, 0.05, 0.011)
    balancer, pool, routes = fastest_first(make_balancer, *latencies)
    assert isinstance(balancer.policy, LeastLatency)
    balancer.policy.reprobe_interval = 1e9  # no re-probes here: the ranking alone
    sent: list[tuple[RouteState, float]] = []
    for _ in range(3000):
        if sent and rng.random() < 0.45:
            route, started = sent.pop(rng.randrange(len(sent)))
            outcome = rng.random()
            if outcome < 0.5:  # a new sample: its EWMA moves too
                value = latencies[routes.index(route)] * rng.uniform(0.5, 2.0)
                balancer.succeeded(route, started, latency=value, ttft=value / 2)
            elif outcome < 0.8:
                balancer.finished(route, started)  # no sample: only its load changes
            else:
                balancer.failed(route, started, "HTTP 503")  # ejected: parked on sight
            continue
        stream = rng.random() < 0.3
        usable = [r for r in routes if r.health.available(balancer.clock())]
        chosen = balancer.pick(pool, stream=stream)
        if not usable:
            assert chosen is None
            balancer.clock.advance(6.0)  # type: ignore[attr-defined]
            continue

        def cost(route: RouteState, stream: bool = stream) -> float:
            ewma = route.ttft_ewma if stream else route.latency_ewma
            assert ewma is not None
            return ewma * (route.in_flight + 1)

        assert chosen is min(usable, key=cost)
        sent.append((chosen, balancer.dispatch(chosen)))
        index = pool.index
        assert isinstance(index, LatencyIndex)
        for heap in (index.by_latency, index.by_ttft, index.by_since):
            assert len(heap) <= index.limit
    assert len(sent) >= 5  # calls did pile up in flight


def test_a_route_in_a_pinned_call_still_moves_in_its_pool_s_index(
    make_balancer: MakeBalancer,
) -> None:
    """A pinned call goes through the route's own one-route pool; what it measures still
    reaches the index of the model's pool."""
    balancer, pool, (r0, r1) = fastest_first(make_balancer, 0.01, 0.5)
    assert balancer.pick(pool) is r0
    pinned = balancer.single("r1")
    for _ in range(30):
        route = balancer.pick(pinned)
        assert route is r1
        balancer.succeeded(r1, balancer.dispatch(r1), latency=0.001)
    assert balancer.pick(pool) is r1
    assert len(r1.watchers) == 1  # only pools of more than one route keep an index


class _CountingRoutes(tuple[RouteState, ...]):
    """A pool's routes that count every read."""

    reads = 0

    def __getitem__(self, index: Any) -> Any:
        self.reads += 1
        return super().__getitem__(index)

    def __iter__(self) -> Iterator[RouteState]:
        self.reads += 1
        return super().__iter__()


def test_a_cold_start_with_calls_in_flight_does_not_read_the_pool(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    """Least latency at a cold start: every route unmeasured and busy. Neither the policy nor
    the stall check (which holds an unmeasured route to the pool's slowest average, but only
    once it has been quiet for stall_min) goes through the pool's routes per pick."""
    balancer = make_balancer(
        *(f"r{i}" for i in range(50)), policy="least_latency", health=HealthConfig()
    )
    pool = balancer.pool("m")
    assert pool is not None
    for _ in range(100):  # two calls in flight on every route, none answered yet
        route = balancer.pick(pool)
        assert route is not None
        balancer.dispatch(route)
    counted = _CountingRoutes(pool.routes)
    pool.routes = counted
    for _ in range(200):
        clock.advance(0.001)
        assert balancer.pick(pool) is not None
    assert counted.reads == 0
    clock.advance(5.0)  # now quiet for longer than stall_min: the stall check does look
    balancer.pick(pool)
    assert counted.reads > 0
