"""Hedging's decisions without sockets: the delay windows, the budget, saturation, the plan
with two attempts open, the loser's report, a stalled route's ejection through abandoned
attempts, and the config and call keywords that turn it on."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from typing import Any

import pytest
from conftest import EventRecorder, FakeClock, picks, route_config
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from llm import ConfigError, InvalidRequestError
from llm.call.build import chat_spec
from llm.config import HealthConfig, HedgeConfig, RetryConfig, parse_config
from llm.errors import RouteConnectionError
from llm.events import AttemptEnded, AttemptStarted, CallEnded, CallInfo, Hooks
from llm.routing import Balancer, plan_call
from llm.routing.events import HealthChange
from llm.routing.hedge import (
    MEDIAN_FACTOR,
    MIN_SAMPLES,
    WINDOW,
    Hedger,
    LatencyWindow,
    saturated,
)
from llm.routing.load import record_report
from llm.routing.plan import CallPlan

RETRY = RetryConfig(max_retries=2, backoff_initial=0.1, backoff_max=1.0, retry_after_max=5)


def nearest_rank(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    exact = Fraction(str(q)) * len(ordered)  # no floating point in the reference
    return ordered[max(0, math.ceil(exact) - 1)]


# -- the window ---------------------------------------------------------------------------


@given(
    st.lists(st.floats(0.0, 100.0, allow_nan=False), min_size=0, max_size=200),
    st.sampled_from([0.5, 0.9, 0.95, 0.99]),
)
def test_window_is_the_quantile_of_the_last_samples_and_twice_their_median_at_least(
    samples: list[float], q: float
) -> None:
    window = LatencyWindow(q)
    for sample in samples:
        window.add(sample)
    kept = samples[-WINDOW:]
    if len(kept) < MIN_SAMPLES:
        assert window.value() is None
        return
    # the quantile is refreshed every few samples: force a fresh one the way a reader would
    # see it after the window has been read at least once at this size
    window._since = 10**6
    expected = max(nearest_rank(kept, q), MEDIAN_FACTOR * nearest_rank(kept, 0.5))
    assert window.value() == pytest.approx(expected)


def test_window_quantile_is_cached_between_refreshes() -> None:
    window = LatencyWindow(0.5)
    for _ in range(MIN_SAMPLES):
        window.add(1.0)
    assert window.value() == MEDIAN_FACTOR * 1.0
    window.add(50.0)  # one sample: not yet recomputed
    assert window.value() == MEDIAN_FACTOR * 1.0
    for _ in range(MIN_SAMPLES):
        window.add(50.0)
    assert window.value() == MEDIAN_FACTOR * 50.0


# -- the delay ----------------------------------------------------------------------------


def test_delay_uses_the_route_then_the_pool_then_max_delay() -> None:
    hedger = Hedger(HedgeConfig(min_delay=0.01, max_delay=5.0, quantile=0.95))
    assert hedger.delay("a", "m", False) == 5.0  # nothing measured
    for i in range(MIN_SAMPLES):
        hedger.observe("b", "m", 0.1 + i * 0.01, False)
    # "a" has no window of its own: its pool's (all of model m's routes) stands in; twice
    # its median (0.17 s) is more than its 95th percentile (0.25 s)
    assert hedger.delay("a", "m", False) == pytest.approx(0.34)
    for i in range(MIN_SAMPLES):
        hedger.observe("a", "m", 1.0 if i < 8 else 4.0, False)
    assert hedger.delay("a", "m", False) == 4.0  # its own 95th percentile
    # streams wait for the first token: a window of their own
    assert hedger.delay("a", "m", True) == 5.0
    # another model's pool is not this one's
    assert hedger.delay("x", "other", False) == 5.0


def test_delay_is_clamped_between_min_and_max() -> None:
    hedger = Hedger(HedgeConfig(min_delay=0.2, max_delay=1.0))
    for _ in range(MIN_SAMPLES):
        hedger.observe("fast", "m", 0.001, True)
        hedger.observe("slow", "m2", 30.0, True)
    assert hedger.delay("fast", "m", True) == 0.2
    assert hedger.delay("slow", "m2", True) == 1.0


def test_a_retired_route_forgets_its_windows() -> None:
    hedger = Hedger(HedgeConfig(max_delay=9.0))
    for _ in range(MIN_SAMPLES):
        hedger.observe("a", "m", 0.5, False)
    hedger.forget("a")
    assert hedger.delay("a", "m", False) == 1.0  # the pool's window still holds them
    assert hedger.delay("a", "other", False) == 9.0


# -- the budget ---------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    st.floats(0.0, 1.0),
    st.integers(0, 30),
    st.lists(st.booleans(), min_size=1, max_size=400),
)
def test_budget_bounds_hedges_over_every_run_of_calls(
    budget: float, burst: int, wants: list[bool]
) -> None:
    """Over every run of consecutive calls, hedges <= budget x calls + max(1, burst)."""
    hedger = Hedger(HedgeConfig(budget=budget, burst=burst))
    hedged = []
    for want in wants:
        hedger.called()
        hedged.append(want and hedger.take())
    cap = max(1, burst)
    for start in range(len(hedged)):
        total = 0
        for end in range(start, len(hedged)):
            total += hedged[end]
            assert total <= budget * (end - start + 1) + cap + 1e-9


def test_budget_allows_a_burst_then_its_fraction() -> None:
    hedger = Hedger(HedgeConfig(budget=0.1, burst=3))
    taken = 0
    for _ in range(100):
        hedger.called()
        taken += hedger.take()
    # 3 at once, then one per ten calls (the first three calls' share fills no hole)
    assert 3 + 9 <= taken <= 3 + 10
    empty = Hedger(HedgeConfig(budget=0.0, burst=0))
    empty.called()
    assert empty.take() and not empty.take()  # max(1, burst): one in reserve, never more


# -- saturation ---------------------------------------------------------------------------


def test_saturated_by_a_fresh_queue_or_a_full_cache_only(clock: FakeClock) -> None:
    balancer = Balancer([route_config("a")], clock=clock)
    route = balancer.routes["a"]
    assert not saturated(route, clock(), 3.0)  # nothing reported: nothing known
    record_report(route, clock(), waiting=2, running=8)
    assert saturated(route, clock(), 3.0)
    clock.advance(5)
    assert not saturated(route, clock(), 3.0)  # stale
    record_report(route, clock(), waiting=0, running=8, kv_usage=0.97)
    assert saturated(route, clock(), 3.0)
    record_report(route, clock(), waiting=0, running=8, kv_usage=0.5)
    assert not saturated(route, clock(), 3.0)
    assert balancer.saturated(route) is False


# -- the plan with a hedge ----------------------------------------------------------------


def fleet(clock: FakeClock, *names: str, **hedge: Any) -> Balancer:
    config = HedgeConfig(**{"budget": 0.05, "burst": 5, "max_delay": 2.0, **hedge})
    return Balancer(
        [route_config(name) for name in names], clock=clock, rng=random.Random(0), hedge=config
    )


def hedged_plan(balancer: Balancer, **kw: Any) -> CallPlan:
    return plan_call(balancer, route=None, model="m", retry=RETRY, deadline=60, hedge=True, **kw)


def test_a_call_hedges_only_when_asked_and_not_pinned(clock: FakeClock) -> None:
    balancer = fleet(clock, "a", "b")
    plain = plan_call(balancer, route=None, model="m", retry=RETRY, deadline=60)
    route = plain.next()
    assert route is not None
    plain.start(route)
    assert not plain.may_hedge
    pinned = plan_call(balancer, route="a", model="m", retry=RETRY, deadline=60, hedge=True)
    assert not pinned.may_hedge
    plan = hedged_plan(balancer)
    route = plan.next()
    assert route is not None
    plan.start(route)
    assert plan.hedge_delay(route) == 2.0  # nothing measured: max_delay


def test_no_hedge_when_the_deadline_comes_first(clock: FakeClock) -> None:
    balancer = fleet(clock, "a", "b", max_delay=5.0)
    plan = plan_call(balancer, route=None, model="m", retry=RETRY, deadline=3, hedge=True)
    route = plan.next()
    assert route is not None
    plan.start(route)
    assert plan.hedge_delay(route) is None


def test_the_winning_hedge_and_the_abandoned_original(clock: FakeClock) -> None:
    balancer = fleet(clock, "a", "b", "c")
    recorder = EventRecorder()
    balancer.hooks = Hooks([recorder])
    plan = hedged_plan(balancer)
    plan.call, plan.hooks = CallInfo("chat", "m", False, None, clock()), balancer.hooks
    first = plan.next()
    assert first is not None
    started = plan.start(first)
    clock.advance(2.0)
    other = plan.hedge()
    assert other is not None and other is not first
    assert plan.timeout == other.config.timeout
    begun = plan.start(other, hedge=True)
    assert first.in_flight == 1 and other.in_flight == 1
    assert plan.hedge() is None  # one hedge per call
    clock.advance(0.1)
    plan.succeeded(other, begun, 0.1)
    plan.won(other, True)
    plan.abandon(first, started)
    plan.abandon(first, started)  # a second report is ignored
    plan.failed(first, started, RouteConnectionError("late", route=first.name), "connect_error")
    plan.ended()
    assert first.in_flight == 0 and other.in_flight == 0
    assert [(a.route, a.outcome) for a in plan.attempts] == [
        (other.name, "ok"),
        (first.name, "hedge_lost"),
    ]
    assert first.failures == 0 and first.health.healthy  # losing is no failure
    assert (first.hedges_cancelled, other.hedges_started, other.hedges_won) == (1, 1, 1)
    started_events = [e for e in recorder.events if isinstance(e, AttemptStarted)]
    assert [(e.number, e.hedge) for e in started_events] == [(1, False), (2, True)]
    ended = {e.route: e for e in recorder.events if isinstance(e, AttemptEnded)}
    assert (ended[other.name].hedge, ended[other.name].outcome) == (True, "ok")
    assert (ended[first.name].hedge, ended[first.name].outcome) == (False, "hedge_lost")
    assert ended[first.name].retry_reason is None and ended[other.name].retry_reason is None
    call = recorder.events[-1]
    assert isinstance(call, CallEnded)
    assert (call.route, call.hedged, call.hedge_won, call.failover) == (
        other.name,
        True,
        True,
        False,
    )


def test_a_hedge_is_not_a_retry(clock: FakeClock) -> None:
    balancer = fleet(clock, "a", "b", "c")
    plan = plan_call(
        balancer, route=None, model="m", retry=RETRY, deadline=60, max_retries=0, hedge=True
    )
    first = plan.next()
    assert first is not None
    started = plan.start(first)
    other = plan.hedge()
    assert other is not None
    begun = plan.start(other, hedge=True)
    plan.failed(other, begun, RouteConnectionError("x", route=other.name), "connect_error")
    plan.failed(first, started, RouteConnectionError("y", route=first.name), "connect_error")
    assert plan.next() is None  # max_retries=0: one attempt, the hedge aside
    assert len(plan.attempts) == 2


def test_no_hedge_to_a_saturated_route_nor_past_the_budget(clock: FakeClock) -> None:
    balancer = fleet(clock, "a", "b", burst=1, budget=0.0)
    plan = hedged_plan(balancer)
    first = plan.next()
    assert first is not None
    plan.start(first)
    other = next(r for r in balancer.routes.values() if r is not first)
    record_report(other, clock(), waiting=3, running=10)
    assert plan.hedge() is None
    assert balancer.hedger.tokens == 1.0  # nothing spent on a hedge not sent
    clock.advance(10)  # the report is stale: unknown, so not saturated
    assert plan.hedge() is other
    second = hedged_plan(balancer)
    route = second.next()
    assert route is not None
    second.start(route)
    assert second.hedge() is None  # the budget is spent


def test_a_hedge_refused_for_the_budget_is_asked_for_again(clock: FakeClock) -> None:
    balancer = fleet(clock, "a", "b", burst=1, budget=0.5)
    balancer.hedger.tokens = 0.0
    plan = hedged_plan(balancer)
    first = plan.next()
    assert first is not None
    plan.start(first)
    delay = plan.hedge_delay(route=first)  # the call's share: half a hedge
    assert delay is not None
    clock.advance(delay)
    assert plan.hedge() is None and plan.hedge_again(delay)
    other = hedged_plan(balancer)  # another call: the other half
    route = other.next()
    assert route is not None
    other.start(route)
    other.hedge_delay(route)
    clock.advance(delay)
    hedge = plan.hedge()
    assert hedge is not None
    plan.start(hedge, hedge=True)
    assert not plan.hedge_again(delay)  # its one hedge is spent
    late = plan_call(balancer, route=None, model="m", retry=RETRY, deadline=1.0, hedge=True)
    assert not late.hedge_again(2.0)  # past its deadline


def test_no_hedge_when_every_other_route_was_tried(clock: FakeClock) -> None:
    balancer = fleet(clock, "a")
    plan = hedged_plan(balancer)
    route = plan.next()
    assert route is not None
    plan.start(route)
    assert plan.hedge() is None


def test_abandoned_attempts_keep_a_hung_route_quiet_until_it_is_ejected(clock: FakeClock) -> None:
    """A hung route whose attempts are all abandoned to hedges: each loss is no evidence, but
    the quiet spell runs on through them, and a loss after a stall's length ejects it."""
    changes: list[HealthChange] = []
    balancer = Balancer(
        [route_config("hung"), route_config("ok")],
        clock=clock,
        rng=random.Random(0),
        on_health=changes.append,
        hedge=HedgeConfig(burst=50),
    )
    hung, ok = balancer.routes["hung"], balancer.routes["ok"]
    for _ in range(5):  # both measured: about 0.1 s an answer
        for route in (hung, ok):
            started = balancer.dispatch(route)
            clock.advance(0.1)
            balancer.succeeded(route, started, 0.1)
    begun_at = clock()
    outcomes = []
    for _ in range(4):
        started = balancer.dispatch(hung)
        assert hung.busy_since == begun_at  # a new call does not restart the quiet spell
        clock.advance(0.3)  # hedged and lost, over and over; in flight drops to 0 each time
        outcomes.append(balancer.abandon(hung, started))
    assert outcomes[:3] == [None, None, None]  # 0.3 .. 0.9 s: under stall_min (1 s)
    assert outcomes[3] is not None and "stalled" in outcomes[3]  # 1.2 s, the 4th lost
    assert not hung.health.healthy and hung.failures == 1
    assert [c.kind for c in changes] == ["ejected"]
    assert hung.in_flight == 0 and ok.in_flight == 0


def test_a_route_that_lost_a_race_unanswered_is_suspect_until_it_answers(
    clock: FakeClock,
) -> None:
    """After a lost race, new calls go elsewhere (each would wait for a hedge on a hung
    server); after a stall's length of quiet one call probes it; an answer clears it."""
    balancer = fleet(clock, "x", "y")
    x, y = balancer.routes["x"], balancer.routes["y"]
    pool = balancer.pool("m")
    assert pool is not None
    for route in (x, y):  # measured: 0.1 s an answer
        for _ in range(3):
            started = balancer.dispatch(route)
            clock.advance(0.1)
            balancer.succeeded(route, started, 0.1)
    started = balancer.dispatch(x)
    clock.advance(0.3)
    assert balancer.abandon(x, started) is None  # lost a race: no failure...
    assert set(picks(balancer, pool, 6)) == {"y"}  # ...but suspect: round robin steps around it
    clock.advance(1.0)  # quiet for a stall's length, nothing in flight: one call may probe it
    assert "x" in set(picks(balancer, pool, 2))
    probe = balancer.dispatch(x)
    assert set(picks(balancer, pool, 4)) == {"y"}
    clock.advance(0.1)
    balancer.succeeded(x, probe, 0.1)  # it answered: no longer suspect
    assert x.abandoned == 0
    assert set(picks(balancer, pool, 4)) == {"x", "y"}


def test_stall_factor_zero_turns_suspicion_off(clock: FakeClock) -> None:
    balancer = Balancer(
        [route_config("x"), route_config("y")],
        clock=clock,
        health=HealthConfig(stall_factor=0),
        hedge=HedgeConfig(),
    )
    x = balancer.routes["x"]
    pool = balancer.pool("m")
    assert pool is not None
    started = balancer.dispatch(x)
    clock.advance(5)
    assert balancer.abandon(x, started) is None
    assert set(picks(balancer, pool, 4)) == {"x", "y"}


def test_one_long_answer_lost_to_a_hedge_is_no_stall(clock: FakeClock) -> None:
    balancer = fleet(clock, "a", "b")
    a, b = balancer.routes["a"], balancer.routes["b"]
    for route in (a, b):
        started = balancer.dispatch(route)
        clock.advance(0.1)
        balancer.succeeded(route, started, 0.1)
    clock.advance(10)
    started = balancer.dispatch(a)
    clock.advance(5.0)  # 50 times the usual, but alone: a long answer, not a hung server
    assert balancer.abandon(a, started) is None
    assert a.health.healthy and a.failures == 0


def test_an_answer_ends_the_quiet_spell(clock: FakeClock) -> None:
    balancer = fleet(clock, "slow", "b")
    slow = balancer.routes["slow"]
    started = balancer.dispatch(slow)
    clock.advance(0.5)
    assert balancer.abandon(slow, started) is None
    assert slow.abandoned == 1
    started = balancer.dispatch(slow)
    clock.advance(0.2)
    balancer.succeeded(slow, started, 0.2)
    assert not slow.abandoned
    clock.advance(5)
    started = balancer.dispatch(slow)
    assert slow.busy_since == clock()


def test_stats_show_hedges(clock: FakeClock) -> None:
    balancer = fleet(clock, "a", "b")
    plan = hedged_plan(balancer)
    first = plan.next()
    assert first is not None
    started = plan.start(first)
    other = plan.hedge()
    assert other is not None
    begun = plan.start(other, hedge=True)
    plan.succeeded(first, started, 0.3)
    plan.won(first, False)
    plan.abandon(other, begun)
    stats = balancer.stats()
    assert stats[first.name]["hedges"] == {"started": 0, "won": 0, "cancelled": 0}
    assert stats[other.name]["hedges"] == {"started": 1, "won": 0, "cancelled": 1}


# -- a state machine: two attempts open, reported in any order ----------------------------


class HedgedCalls(RuleBasedStateMachine):
    """Calls that hedge, with reports in random order: every attempt is reported once, the
    routes' in-flight counts are exact, and no call has more than one hedge."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.balancer = fleet(self.clock, "a", "b", "c", burst=3, budget=0.2)
        self.recorder = EventRecorder()
        self.balancer.hooks = Hooks([self.recorder])
        self.plan: CallPlan | None = None
        self.open: list[tuple[Any, float, bool]] = []  # (route, started, hedge)
        self.won: bool | None = None
        self.calls = 0
        self.hedges = 0

    @precondition(lambda self: self.plan is None)
    @rule()
    def begin(self) -> None:
        self.plan = hedged_plan(self.balancer)
        self.plan.call = CallInfo("chat", "m", False, None, self.clock())
        self.plan.hooks = self.balancer.hooks
        self.recorder.events.clear()
        route = self.plan.next()
        assert route is not None
        self.open = [(route, self.plan.start(route), False)]
        self.won = None  # the winner was a hedge (None: no winner yet)
        self.plan.hedge_delay(route)
        self.calls += 1

    @precondition(lambda self: self.plan is not None and len(self.open) == 1)
    @rule(wait=st.floats(0.0, 3.0))
    def hedge(self, wait: float) -> None:
        assert self.plan is not None
        self.clock.advance(wait)
        route = self.plan.hedge()
        if route is not None:
            assert route not in [r for r, _, _ in self.open]
            self.open.append((route, self.plan.start(route, hedge=True), True))
            self.hedges += 1

    @precondition(lambda self: self.plan is not None and self.open)
    @rule(data=st.data(), how=st.sampled_from(["ok", "fail", "neutral"]))
    def report(self, data: st.DataObject, how: str) -> None:
        assert self.plan is not None
        index = data.draw(st.integers(0, len(self.open) - 1))
        route, started, hedge = self.open.pop(index)
        self.clock.advance(0.05)
        if how == "ok":
            self.plan.succeeded(route, started, 0.05)
            self.plan.won(route, hedge)
            self.won = hedge
            for other, begun, _ in self.open:  # the race's losers
                self.plan.abandon(other, begun)
            self.open = []
        elif how == "fail":
            self.plan.failed(route, started, RouteConnectionError("x", route=route.name), "x")
        else:
            self.plan.finished(route, started)
        if not self.open:  # the engine ends a call without an answer with what it raised
            self.plan.ended(None if self.won is not None else self.plan.exhausted())
            self.check_events(self.plan)
            self.plan = None

    def check_events(self, plan: CallPlan) -> None:
        """Each attempt started once and ended once, hedge flags agreeing, one CallEnded."""
        events = self.recorder.events
        started = [e for e in events if isinstance(e, AttemptStarted)]
        ended = [e for e in events if isinstance(e, AttemptEnded)]
        assert sorted(e.number for e in started) == list(range(1, plan.begun + 1))
        assert sorted(e.number for e in ended) == list(range(1, plan.begun + 1))
        flags = {e.number: e.hedge for e in started}
        assert all(e.hedge == flags[e.number] for e in ended)
        assert sum(flags.values()) == plan.hedges
        (call,) = [e for e in events if isinstance(e, CallEnded)]
        assert call.hedged == (plan.hedges > 0)
        lost = [e for e in ended if e.outcome in ("hedge_lost", "stalled")]
        assert not lost or self.won is not None  # only a winner makes losers
        assert call.hedge_won == bool(self.won)
        if self.won is None:
            assert call.route is None and call.outcome != "ok"

    @invariant()
    def in_flight_is_what_is_open(self) -> None:
        for route in self.balancer.routes.values():
            expected = sum(1 for r, _, _ in self.open if r is route)
            assert route.in_flight == expected

    @invariant()
    def each_attempt_reported_once(self) -> None:
        plan = self.plan
        if plan is not None:
            assert len(plan.attempts) + len(self.open) == plan.begun
            assert plan.hedges <= 1

    @invariant()
    def the_budget_holds(self) -> None:
        assert self.hedges <= 0.2 * self.calls + 3 + 1e-9


TestHedgedCalls = HedgedCalls.TestCase
TestHedgedCalls.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


# -- configuration and call keywords ------------------------------------------------------


def config(**hedge: Any) -> Any:
    routes = {"a": {"base_url": "http://127.0.0.1:1/v1", "model": "m"}}
    return parse_config({"llm": {"routes": routes, "hedge": hedge}})


def test_hedge_config_defaults_and_values() -> None:
    assert config().hedge == HedgeConfig()
    parsed = config(enabled=True, quantile=0.9, min_delay=0.1, max_delay=3, budget=0.1, burst=4)
    assert parsed.hedge == HedgeConfig(True, 0.9, 0.1, 3.0, 0.1, 4)


@pytest.mark.parametrize(
    ("hedge", "path"),
    [
        ({"enabled": "yes"}, "llm.hedge.enabled"),
        ({"quantile": 1.5}, "llm.hedge.quantile"),
        ({"quantile": 0}, "llm.hedge.quantile"),
        ({"min_delay": 2, "max_delay": 1}, "llm.hedge.max_delay"),
        ({"budget": -0.1}, "llm.hedge.budget"),
        ({"burst": 2.5}, "llm.hedge.burst"),
        ({"delay": 1}, "llm.hedge"),
    ],
)
def test_hedge_config_errors_name_the_key(hedge: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(**hedge)
    assert caught.value.key_path is not None and caught.value.key_path.startswith(path)


def test_hedge_call_keyword() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert chat_spec({}, messages, {"hedge": True}, stream=False).hedge is True
    assert chat_spec({}, messages, {}, stream=False).hedge is None
    assert "hedge" not in (chat_spec({}, messages, {"hedge": False}, stream=False).body or {})
    with pytest.raises(InvalidRequestError, match="hedge must be True or False"):
        chat_spec({}, messages, {"hedge": "yes"}, stream=False)


def test_a_fleet_that_never_hedges_measures_nothing_for_it(clock: FakeClock) -> None:
    balancer = fleet(clock, "a", "b")  # enabled: False (the default)
    a = balancer.routes["a"]
    for _ in range(MIN_SAMPLES):
        balancer.succeeded(a, balancer.dispatch(a), 0.1)
    assert balancer.hedger.delay("a", "m", False) == 2.0  # max_delay: nothing kept
    plan = hedged_plan(balancer)  # a call asks to hedge: from now on, answers are kept
    route = plan.next()
    assert route is not None
    plan.start(route)
    plan.hedge_delay(route)
    for _ in range(MIN_SAMPLES):
        balancer.succeeded(a, balancer.dispatch(a), 0.1)
    assert balancer.hedger.delay("a", "m", False) == pytest.approx(0.2)  # twice the median
    enabled = Balancer([route_config("a")], clock=clock, hedge=HedgeConfig(enabled=True))
    assert enabled.hedger.active
