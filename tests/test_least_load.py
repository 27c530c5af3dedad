"""least_load and the load estimate it rests on, without sockets.

How this works
--------------
``routing.load`` turns a server's report plus this client's own counters into an estimate;
the tests drive a real ``Balancer`` on a fake clock. ``LeastLoad`` draws two routes with the
balancer's (seeded) random source; the state machine at the end replays the same draws on a
twin ``random.Random`` and checks every pick against the rule of ``policies.py``, written
out again here: two distinct usable routes, the lower ``(load + 1) * unit / weight`` wins.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from conftest import FakeClock, route_config
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from llm.config import HealthConfig
from llm.routing import Balancer, LeastLoad, RouteState
from llm.routing.load import estimated_load, record_report

QUIET = HealthConfig(stall_factor=0)  # the policy's own rule: stall avoidance is a layer above


def balancer_of(*names: str, clock: FakeClock, seed: int = 0, **kwargs: float) -> Balancer:
    configs = [route_config(name, weight=kwargs.get(f"weight_{name}", 1.0)) for name in names]
    return Balancer(
        configs,
        policy="least_load",
        health=QUIET,
        clock=clock,
        rng=random.Random(seed),
        load_max_age=3.0,
    )


# -- the estimate ----------------------------------------------------------------------------


def test_without_a_report_the_load_is_our_own_calls_in_flight() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of("a", clock=clock)
    a = balancer.routes["a"]
    assert estimated_load(a, clock()) == 0
    balancer.dispatch(a)
    balancer.dispatch(a)
    assert estimated_load(a, clock()) == 2


def test_a_report_is_brought_up_to_date_with_what_we_sent_and_got_back_since() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of("a", clock=clock)
    a = balancer.routes["a"]
    started = balancer.dispatch(a)
    balancer.observe_load("a", waiting=5.0, running=8.0)  # others' calls: 12 besides ours
    assert estimated_load(a, clock()) == 13
    for _ in range(3):
        balancer.dispatch(a)  # sent since: +3
    assert estimated_load(a, clock()) == 16
    balancer.succeeded(a, started, 0.1)  # got back since: -1
    assert estimated_load(a, clock()) == 15
    assert balancer.stats()["a"]["load"]["estimate"] == 15


def test_the_estimate_is_never_below_our_own_calls_in_flight() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of("a", clock=clock)
    a = balancer.routes["a"]
    for _ in range(4):
        balancer.dispatch(a)
    balancer.observe_load("a", waiting=0.0, running=1.0)  # a lagging server
    assert estimated_load(a, clock()) == 4


def test_a_stale_report_is_ignored_and_a_fresh_one_is_not() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of("a", clock=clock)
    a = balancer.routes["a"]
    balancer.observe_load("a", waiting=20.0, running=8.0)
    clock.advance(2.9)
    assert estimated_load(a, clock(), max_age=3.0) == 28
    clock.advance(0.2)
    assert estimated_load(a, clock(), max_age=3.0) == 0
    snapshot = balancer.stats()["a"]["load"]
    assert snapshot["report_fresh"] is False and snapshot["estimate"] == 0


def test_an_orca_report_has_no_running_count_so_the_metrics_one_or_our_own_stands_in() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of("a", clock=clock)
    a = balancer.routes["a"]
    first = balancer.dispatch(a)
    second = balancer.dispatch(a)
    balancer.succeeded(a, first, 0.1, waiting=3.0, kv_usage=0.5)  # ORCA: 3 waiting
    # no running count known: our own one call in flight at the report stands in
    assert estimated_load(a, clock()) == 3 + 1
    assert a.kv_usage == 0.5 and a.report_source == "orca"
    balancer.observe_load("a", waiting=3.0, running=6.0)
    balancer.succeeded(a, second, 0.1, waiting=2.0)
    # a fresh /metrics running count (6) stands in while it is fresh
    assert estimated_load(a, clock()) == 2 + 6
    clock.advance(3.5)
    third = balancer.dispatch(a)
    balancer.succeeded(a, third, 0.1, waiting=1.0)  # ORCA fresh, /metrics running stale
    assert estimated_load(a, clock()) == 1 + 0


@pytest.mark.parametrize(
    ("waiting", "running"),
    [(math.nan, None), (-1.0, None), (math.inf, None), (None, None), (None, math.nan)],
)
def test_nonsense_in_a_report_is_not_kept(waiting: float | None, running: float | None) -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of("a", clock=clock)
    a = balancer.routes["a"]
    balancer.dispatch(a)
    balancer.observe_load("a", waiting, running)
    assert a.report_source is None
    assert estimated_load(a, clock()) == 1
    record_report(a, clock(), 2.0, math.nan, kv_usage=7.0)  # kv outside 0..1 is dropped
    assert a.report_running is None and a.kv_usage is None and estimated_load(a, clock()) == 3


def test_tokens_asked_are_counted_in_flight_and_released_by_every_ending() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of("a", clock=clock)
    a = balancer.routes["a"]
    one = balancer.dispatch(a, 100)
    two = balancer.dispatch(a, 50)
    three = balancer.dispatch(a, 7)
    assert a.tokens_in_flight == 157
    balancer.succeeded(a, one, 0.1, None, 100)
    balancer.failed(a, two, "boom", tokens=50)
    balancer.finished(a, three, 7)
    assert a.tokens_in_flight == 0 and a.in_flight == 0 and a.done == 3 == a.requests


def test_seconds_per_token_come_from_answers_and_from_streams_after_their_first_token() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of("a", clock=clock)
    a = balancer.routes["a"]
    balancer.succeeded(a, balancer.dispatch(a), 1.0, generated=100)
    assert a.token_time == pytest.approx(0.01)
    # a stream: 21 tokens in 2.5 s, the first after 0.5 s: 20 tokens in 2 s. Still the
    # warm-up (the first WARMUP_SAMPLES answers): the least so far stands
    balancer.succeeded(a, balancer.dispatch(a), 2.5, 0.5, generated=21)
    assert a.token_time == pytest.approx(0.01)
    balancer.succeeded(a, balancer.dispatch(a), 1.0)  # no count: no token sample
    assert a.token_time == pytest.approx(0.01)
    balancer.succeeded(a, balancer.dispatch(a), 2.5, 0.5, generated=21)  # warmed up: EWMA
    assert a.token_time == pytest.approx(0.01 + 0.3 * (0.1 - 0.01))
    assert balancer.stats()["a"]["ms_per_token"] == pytest.approx(37.0)


# -- the policy ------------------------------------------------------------------------------


def loaded(balancer: Balancer, name: str, calls: int) -> None:
    route = balancer.routes[name]
    for _ in range(calls):
        balancer.dispatch(route)


def test_of_two_routes_the_less_loaded_always_wins() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of("a", "b", clock=clock)
    pool = balancer.pool("m")
    assert pool is not None
    loaded(balancer, "a", 3)
    picks = Counter(balancer.pick(pool).name for _ in range(50))  # type: ignore[union-attr]
    assert picks == {"b": 50}


def test_the_most_loaded_of_four_never_gets_a_call_and_shares_follow_the_ranks() -> None:
    """Ranks 1..4 by cost: the better of two random routes is rank k with probability
    2 (n - k) / (n (n - 1)): 1/2, 1/3, 1/6, 0."""
    clock = FakeClock(10.0)
    balancer = balancer_of("a", "b", "c", "d", clock=clock, seed=3)
    pool = balancer.pool("m")
    assert pool is not None
    for name, calls in (("a", 0), ("b", 1), ("c", 2), ("d", 3)):
        loaded(balancer, name, calls)
    picks = Counter(balancer.pick(pool).name for _ in range(6000))  # type: ignore[union-attr]
    assert picks["d"] == 0
    assert picks["a"] / 6000 == pytest.approx(1 / 2, abs=0.03)
    assert picks["b"] / 6000 == pytest.approx(1 / 3, abs=0.03)
    assert picks["c"] / 6000 == pytest.approx(1 / 6, abs=0.03)


def test_a_slower_route_costs_more_per_call_in_flight() -> None:
    """b generates tokens four times slower: one call on a (cost 2 x 0.01) beats none on b
    (1 x 0.04); three on a (4 x 0.01) tie with none on b, and the first drawn wins a tie."""
    clock = FakeClock(10.0)
    balancer = balancer_of("a", "b", clock=clock)
    a, b = balancer.routes["a"], balancer.routes["b"]
    balancer.succeeded(a, balancer.dispatch(a), 1.0, generated=100)
    balancer.succeeded(b, balancer.dispatch(b), 4.0, generated=100)
    pool = balancer.pool("m")
    assert pool is not None
    loaded(balancer, "a", 1)
    assert {balancer.pick(pool).name for _ in range(20)} == {"a"}  # type: ignore[union-attr]
    loaded(balancer, "a", 3)  # 4 in flight: 5 x 0.01 > 1 x 0.04
    assert {balancer.pick(pool).name for _ in range(20)} == {"b"}  # type: ignore[union-attr]


def test_slow_routes_are_seldom_drawn_so_a_slow_pair_seldom_takes_a_call() -> None:
    """Four idle routes at speeds 1, 1, 0.5, 0.25 (seconds per token 0.01 ... 0.04): the
    cheaper of two always wins, so a slow route only takes a call when both drawn are slow.
    Drawn uniformly that pair came up 1 time in 6; drawn by speed (0.36, 0.36, 0.18, 0.09)
    about 1 in 26."""
    clock = FakeClock(10.0)
    balancer = balancer_of("a", "b", "c", "d", clock=clock, seed=5)
    for name, per_token in zip("abcd", (0.01, 0.01, 0.02, 0.04), strict=True):
        route = balancer.routes[name]
        balancer.succeeded(route, balancer.dispatch(route), per_token * 100, generated=100)
    pool = balancer.pool("m")
    assert pool is not None
    picks = Counter(balancer.pick(pool).name for _ in range(6000))  # type: ignore[union-attr]
    assert picks["d"] == 0
    assert 0.025 <= picks["c"] / 6000 <= 0.055  # 0.038 expected; uniform draws: 0.167


def test_a_long_call_takes_a_fast_route_with_a_free_slot_and_a_short_one_overflows() -> None:
    """vLLM runs 8 calls at once here (it said so: 8 running). A fast route (10 ms a token)
    with 6 calls has free slots: a call there waits for none of them. An idle route four
    times slower takes a long call four times as long, so the fast one gets it; only when
    the fast route is full and has a queue does a short call go to the slow one."""
    clock = FakeClock(10.0)
    balancer = balancer_of("fast", "slow", clock=clock)
    fast, slow = balancer.routes["fast"], balancer.routes["slow"]
    balancer.succeeded(fast, balancer.dispatch(fast), 1.0, generated=100)
    balancer.succeeded(slow, balancer.dispatch(slow), 4.0, generated=100)
    pool = balancer.pool("m")
    assert pool is not None
    balancer.observe_load("fast", waiting=0.0, running=8.0)  # it has 8 slots
    balancer.observe_load("fast", waiting=0.0, running=6.0)  # 6 calls now
    balancer.observe_load("slow", waiting=0.0, running=0.0)
    assert balancer.pick(pool, tokens=160) is fast  # 160 x 0.01 < 160 x 0.04
    assert balancer.pick(pool, tokens=16) is fast
    # full, and 8 more waiting: (8 + 1) / 8 of a mean call ahead of it
    balancer.observe_load("fast", waiting=8.0, running=8.0)
    assert balancer.pick(pool, tokens=16) is slow  # (16 + 72) x 0.01 > 16 x 0.04
    assert balancer.pick(pool, tokens=160) is fast  # (160 + 72) x 0.01 < 160 x 0.04
    assert balancer.stats()["fast"]["load"]["slots"] == 8.0


def measured_alike(balancer: Balancer) -> None:
    for route in balancer.routes.values():
        balancer.succeeded(route, balancer.dispatch(route), 1.0, generated=100)


def test_weights_divide_the_cost() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of("a", "b", clock=clock, weight_a=3.0)
    measured_alike(balancer)
    pool = balancer.pool("m")
    assert pool is not None
    loaded(balancer, "a", 2)  # (2 + 1) / 3 = 1 against (0 + 1) / 1: a tie
    loaded(balancer, "a", 1)  # (3 + 1) / 3 > 1: b
    assert {balancer.pick(pool).name for _ in range(20)} == {"b"}  # type: ignore[union-attr]
    balancer2 = balancer_of("a", "b", clock=clock, weight_a=3.0)
    measured_alike(balancer2)
    pool2 = balancer2.pool("m")
    assert pool2 is not None
    loaded(balancer2, "a", 1)  # (1 + 1) / 3 < 1: a
    assert {balancer2.pick(pool2).name for _ in range(20)} == {"a"}  # type: ignore[union-attr]


def test_without_token_counts_latency_is_the_unit_and_without_either_load_alone() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of("a", "b", clock=clock)
    a, b = balancer.routes["a"], balancer.routes["b"]
    pool = balancer.pool("m")
    assert pool is not None
    balancer.succeeded(a, balancer.dispatch(a), 0.01)
    loaded(balancer, "a", 1)
    # b has no measurement: load alone (2 against 1)
    assert {balancer.pick(pool).name for _ in range(20)} == {"b"}  # type: ignore[union-attr]
    balancer.succeeded(b, balancer.dispatch(b), 1.0)
    # both measured by latency: 2 x 0.01 against 1 x 1.0
    assert {balancer.pick(pool).name for _ in range(20)} == {"a"}  # type: ignore[union-attr]


def test_excluded_and_ejected_routes_are_never_picked() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of("a", "b", "c", clock=clock)
    pool = balancer.pool("m")
    assert pool is not None
    a, b, c = (balancer.routes[name] for name in "abc")
    balancer.failed(a, balancer.dispatch(a), "down")
    assert {balancer.pick(pool, {b}).name for _ in range(30)} == {"c"}  # type: ignore[union-attr]
    assert balancer.pick(pool, {b, c}) is None
    loaded(balancer, "b", 5)
    assert {balancer.pick(pool).name for _ in range(30)} == {"c"}  # type: ignore[union-attr]


def test_a_route_not_measured_yet_takes_one_call_at_a_time() -> None:
    """Until its first answer tells its speed, a route takes one call at a time: a slow
    instance does not collect a share of the calls while its first answer is on the way."""
    clock = FakeClock(10.0)
    balancer = balancer_of("known", "new", clock=clock)
    known, new = balancer.routes["known"], balancer.routes["new"]
    balancer.succeeded(known, balancer.dispatch(known), 1.0, generated=100)
    pool = balancer.pool("m")
    assert pool is not None
    loaded(balancer, "known", 5)
    first = balancer.pick(pool, tokens=100)
    assert first is new  # idle and unknown: worth learning
    started = balancer.dispatch(new)
    assert {balancer.pick(pool).name for _ in range(20)} == {"known"}  # type: ignore[union-attr]
    balancer.succeeded(new, started, 0.5, generated=100)  # fast, as it turns out
    assert balancer.pick(pool) is new


def test_a_pinned_route_is_picked_alone() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of("a", "b", clock=clock)
    single = balancer.single("b")
    assert balancer.pick(single) is balancer.routes["b"]
    assert balancer.pick(single, {balancer.routes["b"]}) is None


def test_the_policy_is_made_from_the_config_name() -> None:
    balancer = balancer_of("a", clock=FakeClock())
    assert isinstance(balancer.policy, LeastLoad) and balancer.policy.max_age == 3.0


# -- the rule, pick by pick -----------------------------------------------------------------


def expected_pick(
    routes: list[RouteState],
    exclude: set[RouteState],
    now: float,
    rng: random.Random,
    asked: float = 64.0,
    mean: float = 64.0,
    slots: dict[str, float] | None = None,
    wait: float = 1.0,
) -> RouteState | None:
    """policies.py, LeastLoad, written out again: in a pool of more than 8 routes, two
    distinct usable routes, each drawn with up to 8 draws on the pool (the second one other
    than the first); in a smaller pool, or when that fails, two index draws on the usable
    routes. The lower cost wins, the first drawn on a tie."""

    def ok(route: RouteState) -> bool:
        return (route.health.healthy or route.health.available(now)) and route not in exclude

    def draw_one(other_than: RouteState | None) -> RouteState | None:
        if len(routes) <= 8:
            return None
        for _ in range(8):
            route = routes[rng.randrange(len(routes))]
            if route is not other_than and ok(route):
                return route
        return None

    first = draw_one(None)
    second = None if first is None else draw_one(first)  # no draw at all in a small pool
    if first is not None and second is not None:
        pair = (first, second)
    else:
        eligible = [r for r in routes if ok(r)]
        if len(eligible) < 2:
            return eligible[0] if eligible else None
        # in proportion to speed: weight / seconds per token (else / latency, else 1)
        if all(r.token_time for r in eligible):
            speeds = [r.weight / (r.token_time or 1) for r in eligible]
        elif all(r.latency_ewma for r in eligible):
            speeds = [r.weight / (r.latency_ewma or 1) for r in eligible]
        elif any(r.token_time for r in eligible) and not all(r.latency_ewma for r in eligible):
            top = max(r.weight / r.token_time for r in eligible if r.token_time)
            speeds = [r.weight / r.token_time if r.token_time else top for r in eligible]
        else:
            speeds = [r.weight for r in eligible]
        i = pick_index(speeds, rng.random() * sum(speeds), -1)
        j = pick_index(speeds, rng.random() * (sum(speeds) - speeds[i]), i)
        pair = (eligible[i], eligible[j])
    first, second = pair

    def learning(route: RouteState) -> bool:
        return route.in_flight > 0 and route.token_time is None and route.latency_ewma is None

    if learning(second) and not learning(first):
        return first
    if learning(first) and not learning(second):
        return second

    def cost(route: RouteState, other: RouteState) -> float:
        # the call's own tokens, plus the mean call's share of the load beyond the slots
        known = slots or {}
        room = max(known.get(route.name, 0.0), known.get(other.name, 0.0), 1.0)
        beyond = estimated_load(route, now, 3.0) + 1 - room
        tokens = asked + (wait * beyond * mean / room if beyond > 0 else 0.0)
        if route.token_time is not None and other.token_time is not None:
            return tokens * route.token_time / route.weight
        if route.latency_ewma is not None and other.latency_ewma is not None:
            return tokens * route.latency_ewma / route.weight
        return tokens / route.weight

    return second if cost(second, first) < cost(first, second) else first


def pick_index(speeds: list[float], point: float, skip: int) -> int:
    for index, speed in enumerate(speeds):
        if index != skip:
            point -= speed
            if point < 0:
                return index
    return max(i for i in range(len(speeds)) if i != skip)


class LeastLoadMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(100.0)
        self.seed = 0
        self.balancer: Balancer | None = None
        self.twin = random.Random()
        self.in_flight: list[tuple[RouteState, float, int]] = []
        self.mean = 64.0  # the policy's moving average of the max_tokens asked
        self.slots: dict[str, float] = {}  # the most each route reported running

    @rule(
        n=st.sampled_from([2, 3, 5, 9, 12]),
        seed=st.integers(0, 1000),
        weights=st.lists(st.sampled_from([1.0, 1.0, 2.0, 0.5]), min_size=12, max_size=12),
    )
    def start(self, n: int, seed: int, weights: list[float]) -> None:
        if self.balancer is not None:
            return
        configs = [route_config(f"r{i}", weight=weights[i]) for i in range(n)]
        self.balancer = Balancer(
            configs,
            policy="least_load",
            health=QUIET,
            clock=self.clock,
            rng=random.Random(seed),
            load_max_age=3.0,
        )
        self.twin = random.Random(random.Random(seed).getrandbits(64))  # the policy's own

    @rule(
        exclude_one=st.booleans(),
        which=st.integers(0, 11),
        tokens=st.integers(0, 300),
        stream=st.booleans(),
    )
    def pick_and_send(self, exclude_one: bool, which: int, tokens: int, stream: bool) -> None:
        balancer = self.balancer
        if balancer is None:
            return
        pool = balancer.pool("m")
        assert pool is not None
        routes = list(pool.routes)
        exclude = {routes[which % len(routes)]} if exclude_one else set()
        asked = float(tokens) if tokens else self.mean
        wait = 4.0 if stream else 1.0  # a stream's wait for a slot weighs 4 times
        if tokens:  # the policy's moving average takes this call in before it compares
            self.mean += 0.05 * (tokens - self.mean)
        expected = expected_pick(
            routes, exclude, self.clock(), self.twin, asked, self.mean, self.slots, wait
        )
        chosen = balancer.pick(pool, exclude, stream, tokens)
        assert chosen is expected
        if chosen is not None:
            self.in_flight.append((chosen, balancer.dispatch(chosen, tokens), tokens))

    @rule(
        index=st.integers(0, 100),
        outcome=st.sampled_from(["ok", "ok", "tokens", "fail", "neutral"]),
        latency=st.floats(0.001, 5.0),
        waiting=st.one_of(st.none(), st.floats(0, 50)),
    )
    def end_one(self, index: int, outcome: str, latency: float, waiting: float | None) -> None:
        balancer = self.balancer
        if balancer is None or not self.in_flight:
            return
        route, started, tokens = self.in_flight.pop(index % len(self.in_flight))
        if outcome == "ok":
            balancer.succeeded(route, started, latency, None, tokens, waiting=waiting)
        elif outcome == "tokens":
            balancer.succeeded(route, started, latency, None, tokens, generated=1 + tokens)
        elif outcome == "fail":
            balancer.failed(route, started, "boom", tokens=tokens)
        else:
            balancer.finished(route, started, tokens)

    @rule(which=st.integers(0, 11), waiting=st.floats(0, 40), running=st.floats(0, 16))
    def metrics(self, which: int, waiting: float, running: float) -> None:
        balancer = self.balancer
        if balancer is None:
            return
        names = list(balancer.routes)
        name = names[which % len(names)]
        balancer.observe_load(name, waiting, running)
        self.slots[name] = max(self.slots.get(name, 0.0), running)

    @rule(seconds=st.sampled_from([0.0, 0.1, 1.0, 2.5, 6.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def counts_are_exact(self) -> None:
        balancer = self.balancer
        if balancer is None:
            return
        for route in balancer.routes.values():
            mine = [t for r, _, t in self.in_flight if r is route]
            assert route.in_flight == len(mine) == route.requests - route.done
            assert route.tokens_in_flight == sum(mine)
            assert estimated_load(route, self.clock(), 3.0) >= route.in_flight


TestLeastLoadMachine = LeastLoadMachine.TestCase
TestLeastLoadMachine.settings = settings(max_examples=60, stateful_step_count=60, deadline=None)
