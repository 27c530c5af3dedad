"""Load-balancing policies, driven through the Balancer with a fake clock."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from conftest import FakeClock, MakeBalancer, picks, route_config

from llm.config import HealthConfig
from llm.routing import Balancer, LeastLatency, Pool, RoundRobin, RouteState


def eject(balancer: Balancer, route: RouteState) -> None:
    started = balancer.dispatch(route)
    balancer.failed(route, started, "boom")
    assert not route.health.available(balancer.clock())


def measure(
    balancer: Balancer, route: RouteState, latency: float | None, ttft: float | None = None
) -> None:
    started = balancer.dispatch(route)
    balancer.succeeded(route, started, latency=latency, ttft=ttft)


def probes_of_b(balancer: Balancer, pool: Pool, clock: FakeClock, calls: int) -> list[int]:
    """One call a second for ``calls`` seconds: route a answers in 0.1 s every time, b's
    re-probes never answer. The seconds at which b was picked."""
    a, b = balancer.routes["a"], balancer.routes["b"]
    seconds = []
    for t in range(1, calls + 1):
        clock.advance(1.0)
        route = balancer.pick(pool)
        assert route is not None
        if route is a:
            measure(balancer, a, 0.1)
        else:
            seconds.append(t)
            balancer.dispatch(b)  # the probe is in flight, no sample
            balancer.finished(b, clock())
    return seconds


def max_run(sequence: list[str]) -> int:
    return max(len(list(group)) for _, group in itertools.groupby(sequence))


# -- round robin -------------------------------------------------------------------------


def test_policy_names_and_default() -> None:
    assert RoundRobin.name == "round_robin"
    assert LeastLatency.name == "least_latency"
    assert isinstance(Balancer([]).policy, RoundRobin)
    with pytest.raises(ValueError, match="unknown lb_policy"):
        Balancer([], policy="random")


def test_round_robin_is_exactly_even(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer("a", "b", "c")
    pool = balancer.pool("m")
    assert pool is not None and not pool.weighted
    names = picks(balancer, pool, 300)
    assert Counter(names) == {"a": 100, "b": 100, "c": 100}
    assert names[:6] == ["a", "b", "c", "a", "b", "c"]


def test_round_robin_skips_an_ejected_route_without_unbalancing(
    make_balancer: MakeBalancer,
) -> None:
    balancer = make_balancer("a", "b", "c")
    pool = balancer.pool("m")
    assert pool is not None
    eject(balancer, balancer.routes["b"])
    names = picks(balancer, pool, 300)
    assert Counter(names) == {"a": 150, "c": 150}
    assert max_run(names) == 1


def test_round_robin_honours_exclude(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer("a", "b", "c")
    pool = balancer.pool("m")
    assert pool is not None
    a, b, c = (balancer.routes[n] for n in "abc")
    assert set(picks(balancer, pool, 50, exclude=[a])) == {"b", "c"}
    assert set(picks(balancer, pool, 50, exclude={a, c})) == {"b"}
    assert balancer.pick(pool, exclude=[a, b, c]) is None


def test_round_robin_returns_none_when_every_route_is_ejected(
    make_balancer: MakeBalancer,
) -> None:
    balancer = make_balancer("a", "b")
    pool = balancer.pool("m")
    assert pool is not None
    for route in pool.routes:
        eject(balancer, route)
    assert balancer.pick(pool) is None
    assert not balancer.available(pool)


@pytest.mark.parametrize("weights", [(1, 2, 3), (1, 1, 2), (3, 1, 1), (2, 5, 1)])
def test_weighted_round_robin_shares_and_smoothness(
    make_balancer: MakeBalancer, weights: tuple[int, ...]
) -> None:
    names_ = ["a", "b", "c"]
    balancer = make_balancer(
        *(route_config(n, weight=w) for n, w in zip(names_, weights, strict=True))
    )
    pool = balancer.pool("m")
    assert pool is not None and pool.weighted
    period = sum(weights)
    names = picks(balancer, pool, period * 100)
    assert Counter(names) == {n: w * 100 for n, w in zip(names_, weights, strict=True)}
    # Smooth: every window of one period holds exactly the weights (no bursts).
    expected = {n: w for n, w in zip(names_, weights, strict=True) if w}
    for start in range(len(names) - period):
        assert Counter(names[start : start + period]) == expected


@pytest.mark.parametrize("weights", [(1, 2, 3), (1, 1, 2)])
def test_weighted_round_robin_interleaves(
    make_balancer: MakeBalancer, weights: tuple[int, ...]
) -> None:
    balancer = make_balancer(
        *(route_config(n, weight=w) for n, w in zip("abc", weights, strict=True))
    )
    pool = balancer.pool("m")
    assert pool is not None
    names = picks(balancer, pool, 120)
    assert max_run(names) <= 2


def test_weighted_round_robin_order_is_the_documented_one(make_balancer: MakeBalancer) -> None:
    # README "Routing policies": weights 1, 2, 3 give c b a c b c in every period
    balancer = make_balancer(
        *(route_config(n, weight=w) for n, w in zip("abc", (1, 2, 3), strict=True))
    )
    pool = balancer.pool("m")
    assert pool is not None
    assert "".join(picks(balancer, pool, 18)) == "cbacbc" * 3


def test_weighted_round_robin_skips_an_ejected_route(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer(
        *(route_config(n, weight=w) for n, w in zip("abc", (1, 2, 3), strict=True))
    )
    pool = balancer.pool("m")
    assert pool is not None
    eject(balancer, balancer.routes["c"])
    names = picks(balancer, pool, 300)
    assert Counter(names) == {"a": 100, "b": 200}
    assert balancer.pick(pool, exclude=[balancer.routes["a"], balancer.routes["b"]]) is None


# -- least latency -----------------------------------------------------------------------


@pytest.fixture
def fastest(make_balancer: MakeBalancer) -> Balancer:
    return make_balancer(
        "a", "b", "c", policy="least_latency", health=HealthConfig(reprobe_interval=10.0)
    )


def test_least_latency_is_built_with_the_configured_reprobe_interval(
    make_balancer: MakeBalancer,
) -> None:
    balancer = make_balancer("a", policy="least_latency", health=HealthConfig(reprobe_interval=3))
    assert isinstance(balancer.policy, LeastLatency)
    assert balancer.policy.reprobe_interval == 3


def test_least_latency_unmeasured_routes_first(fastest: Balancer) -> None:
    pool = fastest.pool("m")
    assert pool is not None
    a, b = fastest.routes["a"], fastest.routes["b"]
    measure(fastest, a, 0.01)
    measure(fastest, b, 0.02)
    # c is cold: it gets the traffic although the others are fast
    assert picks(fastest, pool, 3) == ["c", "c", "c"]


def test_least_latency_cold_start_spreads_by_in_flight(fastest: Balancer) -> None:
    pool = fastest.pool("m")
    assert pool is not None
    chosen = []
    for _ in range(3):
        route = fastest.pick(pool)
        assert route is not None
        fastest.dispatch(route)  # still in flight, no measurement yet
        chosen.append(route.name)
    assert sorted(chosen) == ["a", "b", "c"]
    # a second in flight on a and b: c (one in flight) is least loaded
    fastest.dispatch(fastest.routes["a"])
    fastest.dispatch(fastest.routes["b"])
    assert fastest.pick(pool) is fastest.routes["c"]


def test_least_latency_lowest_ewma_wins(fastest: Balancer) -> None:
    pool = fastest.pool("m")
    assert pool is not None
    for name, latency in zip("abc", (0.3, 0.1, 0.2), strict=True):
        measure(fastest, fastest.routes[name], latency)
    assert picks(fastest, pool, 5) == ["b"] * 5
    assert fastest.pick(pool, exclude=[fastest.routes["b"]]) is fastest.routes["c"]
    eject(fastest, fastest.routes["b"])
    assert fastest.pick(pool) is fastest.routes["c"]


def test_least_latency_stream_uses_ttft(fastest: Balancer) -> None:
    pool = fastest.pool("m")
    assert pool is not None
    measure(fastest, fastest.routes["a"], latency=0.1, ttft=0.9)
    measure(fastest, fastest.routes["b"], latency=0.9, ttft=0.1)
    measure(fastest, fastest.routes["c"], latency=0.5, ttft=0.5)
    assert fastest.pick(pool, stream=False) is fastest.routes["a"]
    assert fastest.pick(pool, stream=True) is fastest.routes["b"]


def test_least_latency_stream_route_without_ttft_counts_as_cold(fastest: Balancer) -> None:
    pool = fastest.pool("m")
    assert pool is not None
    measure(fastest, fastest.routes["a"], latency=0.1, ttft=0.1)
    measure(fastest, fastest.routes["b"], latency=0.1, ttft=0.2)
    measure(fastest, fastest.routes["c"], latency=0.5)  # never streamed
    assert fastest.pick(pool, stream=True) is fastest.routes["c"]
    assert fastest.pick(pool, stream=False) in (fastest.routes["a"], fastest.routes["b"])


def test_least_latency_reprobes_a_stale_route_once_per_interval(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer = make_balancer("a", "b", policy="least_latency")  # reprobe_interval 10
    pool = balancer.pool("m")
    assert pool is not None
    a, b = balancer.routes["a"], balancer.routes["b"]
    measure(balancer, a, 0.1)
    measure(balancer, b, 0.105)  # a re-probe of b costs next to nothing: the interval rules
    # t = 1 .. 30, a's measurements stay fresh, b's probe never answers; b's last sample is
    # at 0: probed once when 10 s had passed (t=11), then at t=22
    assert probes_of_b(balancer, pool, clock, 30) == [11, 22]


def test_least_latency_reprobes_a_slow_route_within_the_budget(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    """At a low rate the probe budget, not the interval, spaces the re-probes: b is 0.4 s
    slower than a, so a re-probe waits for 0.4 / (0.1 * 0.1) = 40 picks since the last one."""
    balancer = make_balancer("a", "b", policy="least_latency")  # reprobe_interval 10
    pool = balancer.pool("m")
    assert pool is not None
    assert isinstance(balancer.policy, LeastLatency) and balancer.policy.probe_budget == 0.1
    a, b = balancer.routes["a"], balancer.routes["b"]
    measure(balancer, a, 0.1)
    measure(balancer, b, 0.5)
    # one call a second: stale from t=11, but 40 picks first (t=1..40); then stale again
    # after t=51, 40 more picks
    assert probes_of_b(balancer, pool, clock, 100) == [41, 82]


def test_least_latency_low_traffic_stays_on_the_fast_route(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    """One call every 5 s is slower than reprobe_interval / 2: under the interval alone two
    calls in three were re-probes of the slow routes. The budget keeps the mean within ~10 %."""
    balancer = make_balancer("a", "b", "c", policy="least_latency")
    pool = balancer.pool("m")
    assert pool is not None
    latency = {"a": 0.01, "b": 0.04, "c": 0.16}
    for name, value in latency.items():
        measure(balancer, balancer.routes[name], value)
    names = []
    for _ in range(600):
        clock.advance(5.0)
        route = balancer.pick(pool)
        assert route is not None
        names.append(route.name)
        measure(balancer, route, latency[route.name])
    mean = sum(latency[name] for name in names) / len(names)
    assert mean <= 1.12 * latency["a"]
    counts = Counter(names)
    assert counts["b"] >= 2 and counts["c"] >= 2  # both still re-probed, in turn


def test_least_latency_a_stale_fastest_route_does_not_block_the_reprobes(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer = make_balancer("a", "b", "c", policy="least_latency")
    pool = balancer.pool("m")
    assert pool is not None
    a, b, c = (balancer.routes[n] for n in "abc")
    measure(balancer, a, 0.1)  # the fastest, first in pool order, and stale below
    measure(balancer, c, 0.1001)  # measured before b
    clock.advance(1.0)
    measure(balancer, b, 0.1001)
    clock.advance(20.0)  # every route is stale
    # a re-probe costs 0.0001 s: one pick at 0.1 s pays for it (0.1 * 0.1 >= 0.0001); the
    # stale route measured longest ago goes first (c), then b; a takes the picks in between
    assert picks(balancer, pool, 6) == ["a", "c", "a", "b", "a", "a"]


def test_least_latency_route_that_became_faster_wins_the_traffic_back(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer = make_balancer("a", "b", policy="least_latency")  # alpha 0.3, reprobe 10 s
    pool = balancer.pool("m")
    assert pool is not None
    a, b = balancer.routes["a"], balancer.routes["b"]
    measure(balancer, a, 0.1)
    measure(balancer, b, 1.0)  # b was slow...
    latency = {"a": 0.1, "b": 0.01}  # ...and is now much faster than a
    names = []
    for _ in range(500):
        clock.advance(1.0)
        route = balancer.pick(pool)
        assert route is not None
        names.append(route.name)
        measure(balancer, route, latency[route.name])
    # b is not tried before its measurement is stale and the probe budget allows it (90 picks
    # at 0.1 s pay for the 0.9 s its EWMA says the probe costs); at one call a second the
    # budget rules, so b needs several re-probes, each cheaper, to win the traffic back
    assert names.index("b") == 90
    assert b.latency_ewma is not None and a.latency_ewma is not None
    assert b.latency_ewma < a.latency_ewma
    # b has the traffic; a only gets its periodic re-probe
    tail = Counter(names[-200:])
    assert tail["b"] >= 190
    assert 1 <= tail["a"] <= 10
