"""Load-balancing policies, driven through the Balancer with a fake clock."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from conftest import FakeClock, MakeBalancer, picks, route_config

from llm.config import HealthConfig
from llm.routing import Balancer, LeastLatency, Pool, RoundRobin, RouteState
from llm.routing.state import WARMUP_SAMPLES


def eject(balancer: Balancer, route: RouteState) -> None:
    started = balancer.dispatch(route)
    balancer.failed(route, started, "boom")
    assert not route.health.available(balancer.clock())


def measure(
    balancer: Balancer, route: RouteState, latency: float | None, ttft: float | None = None
) -> None:
    started = balancer.dispatch(route)
    balancer.succeeded(route, started, latency=latency, ttft=ttft)


def warm(
    balancer: Balancer, route: RouteState, latency: float | None, ttft: float | None = None
) -> None:
    """``route`` measured WARMUP_SAMPLES times alike: past its warm-up, least latency ranks it
    by EWMA (``latency``, ``ttft``) instead of trying it first as a cold route."""
    for _ in range(WARMUP_SAMPLES):
        measure(balancer, route, latency, ttft)


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
    a, b, c = (fastest.routes[n] for n in "abc")
    warm(fastest, a, 0.01)
    warm(fastest, b, 0.02)
    # c is cold: it gets the traffic although the others are fast
    assert picks(fastest, pool, 3) == ["c", "c", "c"]
    # ... and stays cold, however slow, until it has WARMUP_SAMPLES (3) samples
    measure(fastest, c, 5.0)
    measure(fastest, c, 5.0)
    assert c.latency_samples == 2 and picks(fastest, pool, 2) == ["c", "c"]
    measure(fastest, c, 5.0)
    assert picks(fastest, pool, 2) == ["a", "a"]  # warm and slow: ranked by its EWMA


def test_least_latency_a_route_with_fewer_than_three_samples_is_still_cold(
    fastest: Balancer,
) -> None:
    """Cold means fewer than WARMUP_SAMPLES samples, not none: a route warming up is tried
    first (fewest in flight first, pool order on a tie) while it has no call in flight; with
    one in flight it waits for that answer, and the cheapest measured route takes the call."""
    pool = fastest.pool("m")
    assert pool is not None
    a, b, c = (fastest.routes[n] for n in "abc")
    warm(fastest, a, 0.001)  # warm and by far the fastest
    measure(fastest, b, 0.5)  # one sample
    for _ in range(2):
        measure(fastest, c, 0.5)  # two samples
    assert fastest.pick(pool) is b  # both cold, none in flight: pool order
    started_b = fastest.dispatch(b)
    assert fastest.pick(pool) is c  # b is busy warming up: the next cold one
    fastest.dispatch(c)
    assert fastest.pick(pool) is a  # both busy warming up: the cheapest measured one
    fastest.finished(b, started_b)  # b's call ends without a sample: b is free again
    assert fastest.pick(pool) is b
    measure(fastest, c, 0.5)  # c's third sample: c is warm, b still cold
    assert fastest.pick(pool) is b
    assert fastest.pick(pool, exclude=[b]) is a  # no cold route left: the cheapest warm one


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
        warm(fastest, fastest.routes[name], latency)
    assert picks(fastest, pool, 5) == ["b"] * 5
    assert fastest.pick(pool, exclude=[fastest.routes["b"]]) is fastest.routes["c"]
    eject(fastest, fastest.routes["b"])
    assert fastest.pick(pool) is fastest.routes["c"]


def test_least_latency_stream_uses_ttft(fastest: Balancer) -> None:
    pool = fastest.pool("m")
    assert pool is not None
    warm(fastest, fastest.routes["a"], latency=0.1, ttft=0.9)
    warm(fastest, fastest.routes["b"], latency=0.9, ttft=0.1)
    warm(fastest, fastest.routes["c"], latency=0.5, ttft=0.5)
    assert fastest.pick(pool, stream=False) is fastest.routes["a"]
    assert fastest.pick(pool, stream=True) is fastest.routes["b"]


def test_least_latency_stream_route_without_ttft_counts_as_cold(fastest: Balancer) -> None:
    pool = fastest.pool("m")
    assert pool is not None
    a, b, c = (fastest.routes[n] for n in "abc")
    warm(fastest, a, latency=0.1, ttft=0.1)
    warm(fastest, b, latency=0.1, ttft=0.2)
    warm(fastest, c, latency=0.5)  # never streamed
    assert fastest.pick(pool, stream=True) is c
    assert fastest.pick(pool, stream=False) is a  # a and b tie: pool order
    # two time-to-first-token samples are still its warm-up (counted apart from latency)
    measure(fastest, c, latency=None, ttft=0.9)
    measure(fastest, c, latency=None, ttft=0.9)
    assert (c.latency_samples, c.ttft_samples) == (3, 2)
    assert fastest.pick(pool, stream=True) is c
    measure(fastest, c, latency=None, ttft=0.9)
    assert fastest.pick(pool, stream=True) is a


def test_least_latency_reprobes_a_stale_route_once_per_interval(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer = make_balancer("a", "b", policy="least_latency")  # reprobe_interval 10
    pool = balancer.pool("m")
    assert pool is not None
    a, b = balancer.routes["a"], balancer.routes["b"]
    warm(balancer, a, 0.1)
    warm(balancer, b, 0.105)  # a re-probe of b costs next to nothing: the interval rules
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
    warm(balancer, a, 0.1)
    warm(balancer, b, 0.5)
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
        warm(balancer, balancer.routes[name], value)
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
    warm(balancer, a, 0.1)  # the fastest, first in pool order, and stale below
    warm(balancer, c, 0.1001)  # measured before b
    clock.advance(1.0)
    warm(balancer, b, 0.1001)
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
    warm(balancer, a, 0.1)
    warm(balancer, b, 1.0)  # b was slow...
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


# -- least latency: the warm-up and the calls in flight ---------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_least_latency_a_slow_first_answer_does_not_bench_a_fast_route(
    make_balancer: MakeBalancer, clock: FakeClock, seed: int
) -> None:
    """The 2 ms / 60 ms case: the fast route's first answer takes 100 ms (the client's own
    setup: connection, TLS), every later one 2 ms; the other route answers in 60 ms. Under the
    old rule (argmin of EWMA, cold = no sample yet) the fast route's EWMA started at 100 ms and
    the 60 ms route took every call: a re-probe needs the route stale (10 s) and then about
    0.04 / (0.1 * 0.06) = 7 picks. With the warm-up its estimate is the least of its first
    three answers, 2 ms. Variations by seed: pool order, latencies jittered by +-10 %, think
    time between calls, and the slow route's own first answer slowed by a setup (80 ms, still
    below the fast route's 100: under the old rule the 60 ms route took all 60 calls in each
    of the 20 variations) or not."""
    rng = random.Random(seed)
    order = ("fast", "slow") if seed % 2 == 0 else ("slow", "fast")
    balancer = make_balancer(*order, policy="least_latency", seed=seed)
    pool = balancer.pool("m")
    assert pool is not None
    first = {"fast": 0.1, "slow": 0.06 if seed % 4 < 2 else 0.08}
    steady = {"fast": 0.002, "slow": 0.06}
    think = rng.choice([0.0, 0.001, 0.05])
    answered: Counter[str] = Counter()

    def call() -> str:
        route = balancer.pick(pool)
        assert route is not None
        started = balancer.dispatch(route)
        nominal = (steady if answered[route.name] else first)[route.name]
        latency = nominal * rng.uniform(0.9, 1.1)
        clock.advance(latency)
        balancer.succeeded(route, started, latency=latency)
        answered[route.name] += 1
        clock.advance(think)
        return route.name

    # the warm-up: both routes cold (none in flight) until their third answer, pool order
    warmup = [call() for _ in range(2 * WARMUP_SAMPLES)]
    assert warmup == [order[0]] * 3 + [order[1]] * 3
    fast = balancer.routes["fast"]
    assert fast.latency_ewma is not None and fast.latency_ewma <= 0.0022  # not 100 ms
    names = [call() for _ in range(60)]
    assert names.count("fast") >= 57


def test_least_latency_spreads_calls_in_flight_and_sends_one_at_a_time_to_the_fastest(
    make_balancer: MakeBalancer,
) -> None:
    """Routes at 10 and 12 ms. One call at a time: every call goes to the 10 ms route. 16
    calls in flight: each pick weighs a route's EWMA by its calls in flight plus one, so the
    costs run 10, 20, 30 ... ms against 12, 24, 36 ... ms and the 16 calls take the 16 least
    of them: 9 to a (10 .. 90) and 7 to b (12 .. 84), in turn."""
    balancer = make_balancer("a", "b", policy="least_latency")
    pool = balancer.pool("m")
    assert pool is not None
    a, b = balancer.routes["a"], balancer.routes["b"]
    warm(balancer, a, 0.010)
    warm(balancer, b, 0.012)
    sequential = []
    for _ in range(50):
        route = balancer.pick(pool)
        assert route is not None
        sequential.append(route.name)
        measure(balancer, route, 0.010 if route is a else 0.012)
    assert sequential == ["a"] * 50
    in_flight = []
    started = []
    for _ in range(16):
        route = balancer.pick(pool)
        assert route is not None
        started.append((route, balancer.dispatch(route)))  # no answer yet
        in_flight.append(route.name)
    assert Counter(in_flight) == {"a": 9, "b": 7}
    assert in_flight[:8] == ["a", "b"] * 4  # 10 < 12 < 20 < 24 < 30 < 36 < 40 < 48
    assert (a.in_flight, b.in_flight) == (9, 7)
    assert balancer.pick(pool) is b  # the 17th: b 12 x 8 = 96 ms < a 10 x 10 = 100 ms
    route, at = started[0]
    assert route is a
    balancer.succeeded(a, at, latency=0.010)  # a's answers bring its cost down: 10 x 9 = 90
    assert balancer.pick(pool) is a
