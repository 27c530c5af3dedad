"""Property-based tests of the routing layer (hypothesis), and a thread-safety test.

- A rule-based state machine drives one Balancer (round robin, weighted round robin, least
  latency) with any sequence of picks (with and without exclude sets, plain and stream),
  forced picks, dispatches, pinned calls, successes (with and without latency samples,
  through and past each route's warm-up), failures (connect
  error, 5xx, a misconfigured 401, a 429 with Retry-After), finished/abandoned attempts,
  active-check verdicts and clock moves (often zero: events at the same clock tick are the
  hard case). A model kept by the test, in event order, says what must happen; invariants
  compare it with the balancer after every step.
- ``@given`` tests for the pure pieces: ``cooldown_for``, ``backoff_delay``, round-robin and
  weighted fairness (earliest deadline first), least-latency choice, and ``CallPlan``
  (Retry-After, deadline).
- Two example tests pin the bugs the state machine found (events at one clock reading; one
  trial at a time with forced requests).
- 64 threads hammering one Balancer with the real clock: counters add up exactly.

No sockets, no sleeping (the FakeClock is injected), seeded randomness, derandomized hypothesis.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

from conftest import FakeClock, picks, route_config
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from llm.config import HealthConfig, RetryConfig
from llm.errors import RouteConnectionError
from llm.routing import (
    Balancer,
    CallPlan,
    LeastLatency,
    Pool,
    RouteState,
    State,
    backoff_delay,
)
from llm.routing.health import cooldown_for
from llm.routing.indexes import DeadlineSchedule
from llm.routing.state import WARMUP_SAMPLES

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True)
STATEFUL = settings(
    max_examples=60,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,
    # no explain phase: it traces every line (sys.settrace before Python 3.12) and turns a
    # failure report into minutes
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)

PROBE_BUDGET = 0.1  # LeastLatency's default
WARM_LATENCIES = [0.002, 0.01, 0.012, 0.02, 0.05, 0.2]
JITTER = 0.2  # cooldown_for's default: a cooldown is jittered down by at most 20 %
INF = float("inf")


class FixedRandom(random.Random):
    """rng.random() always returns ``value``."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def slack(*values: float) -> float:
    """Rounding allowance for ``(now + d) - now`` against ``d``: a few ulps of the sum."""
    return 4 * math.ulp(max(abs(v) for v in values))


# -- pure functions ----------------------------------------------------------------------


@PROPERTY
@given(
    consecutive=st.integers(1, 10**6),
    base=st.floats(1e-3, 100.0),
    factor=st.floats(1.0, 100.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_cooldown_is_positive_capped_and_jittered_down_from_the_doubling(
    consecutive: int, base: float, factor: float, seed: int
) -> None:
    cap = base * factor
    cooldown = cooldown_for(consecutive, base, cap, random.Random(seed))
    raw = min(cap, base * 2.0 ** min(consecutive - 1, 64))  # base >= 1e-3: 2**32 reaches cap
    assert 0.0 < cooldown <= cap
    assert (1.0 - JITTER) * raw <= cooldown <= raw


@PROPERTY
@given(
    consecutive=st.integers(1, 200),
    base=st.floats(1e-3, 100.0),
    factor=st.floats(1.0, 100.0),
    draw=st.floats(0.0, 1.0, exclude_max=True),
)
def test_cooldown_never_shrinks_with_more_consecutive_ejections(
    consecutive: int, base: float, factor: float, draw: float
) -> None:
    cap = base * factor
    rng = FixedRandom(draw)  # the same jitter draw for both
    assert cooldown_for(consecutive + 1, base, cap, rng) >= cooldown_for(
        consecutive, base, cap, rng
    )


@PROPERTY
@given(
    retry_number=st.integers(0, 10**4),
    initial=st.floats(1e-4, 10.0),
    maximum=st.floats(1e-4, 100.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_backoff_is_never_negative_never_above_the_cap_and_at_least_half_the_ceiling(
    retry_number: int, initial: float, maximum: float, seed: int
) -> None:
    retry = RetryConfig(backoff_initial=initial, backoff_max=maximum)
    delay = backoff_delay(retry_number, retry, random.Random(seed))
    ceiling = min(maximum, initial * 2.0 ** min(retry_number, 64))
    assert 0.0 <= delay <= maximum
    assert 0.5 * ceiling <= delay <= ceiling
    # and it never shrinks from one repeat to the next (same jitter draw)
    draw = random.Random(seed).random()
    assert backoff_delay(retry_number + 1, retry, FixedRandom(draw)) >= backoff_delay(
        retry_number, retry, FixedRandom(draw)
    )


# -- the balancer as a state machine -----------------------------------------------------

FAILURES = [
    # (reason, loud, carries a Retry-After)
    ("connect error", False, False),
    ("timeout", False, False),
    ("HTTP 503: Service Unavailable", False, False),
    ("HTTP 401: Unauthorized", True, False),  # misconfigured: ejected, logged loudly
    ("HTTP 429: Too Many Requests", False, True),
]


@dataclass
class Sent:
    """One dispatched attempt, not yet reported."""

    route: RouteState
    started: float
    epoch: int  # the model's ejection count of the route at dispatch time


@dataclass
class Model:
    """What the test knows about one route, in event order (not clock order)."""

    healthy: bool = True
    epoch: int = 0  # bumped by every ejection; attempts of older epochs no longer count
    consecutive: int = 0
    ejected_until: float = -INF
    retry_after_until: float = -INF
    requests: int = 0
    successes: int = 0
    failures: int = 0
    latency: float | None = None
    ttft: float | None = None
    latency_samples: int = 0
    ttft_samples: int = 0
    last_sample_at: float = -INF
    last_probe_at: float = -INF


def smoothed(old: float | None, sample: float, n: int, alpha: float) -> float:
    """The EWMA after the ``n``-th sample, as documented (state.py, balancer.py): during the
    warm-up (the first WARMUP_SAMPLES samples) the least sample so far, then
    ``old + alpha * (sample - old)``."""
    if n <= WARMUP_SAMPLES:
        return sample if old is None else min(old, sample)
    assert old is not None
    return old + alpha * (sample - old)


class BalancerMachine(RuleBasedStateMachine):
    """The balancer against a model: health transitions, cooldowns, picks, counters.

    The rules asserted (README "Routing policies" and "Failure handling", health.py):

    - a failure of an attempt dispatched after the route's last ejection ejects it (again):
      cooldown in (0, max_cooldown], at least min(Retry-After, max_cooldown), and otherwise
      base * 2^(consecutive-1) capped, jittered down by at most 20 %;
    - a report of an attempt dispatched before the last ejection changes no health state;
    - a success of an attempt dispatched after the ejection (the trial) heals the route and
      resets its consecutive count; a healthy route's consecutive count is 0;
    - pick returns only an available route not excluded: healthy, or its cooldown over and no
      trial of it in flight (one trial at a time); None only when there is no such route;
    - when nothing is available, force returns the route ready first (cooldown or Retry-After);
    - in-flight, request, success and failure counters match the attempts exactly;
    - each EWMA (latency, time to first token, counted apart) is the least of the first
      WARMUP_SAMPLES samples, then ``old + alpha * (sample - old)`` (``smoothed``);
    - round robin takes the next candidate after the cursor; least latency follows
      ``expected_fastest`` exactly (warm-up, EWMA times calls in flight, re-probes).
    """

    POLICY = "round_robin"
    WEIGHTS: tuple[float, ...] = (1, 1, 1, 1)
    REPROBE = 4.0

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(1000.0)
        self.sent: list[Sent] = []
        self.finished = Counter[str]()
        self.cursor = 0
        self.since_probe = 0
        self.setup(1.0, 4.0, 0)  # replaced by the drawn setup before the first rule

    @initialize(
        base=st.sampled_from([0.5, 1.0, 5.0]),
        factor=st.sampled_from([1.0, 3.0, 16.0]),
        seed=st.integers(0, 2**32 - 1),
        warm=st.lists(st.none() | st.sampled_from(WARM_LATENCIES), min_size=5, max_size=5),
    )
    def setup(
        self, base: float, factor: float, seed: int, warm: list[float | None] | None = None
    ) -> None:
        # The policies' own rules; stall avoidance, a layer above them, has its properties below.
        self.health = HealthConfig(
            cooldown=base, max_cooldown=base * factor, reprobe_interval=self.REPROBE, stall_factor=0
        )
        configs = [route_config(f"r{i}", weight=w) for i, w in enumerate(self.WEIGHTS)]
        self.balancer = Balancer(
            configs,
            policy=self.POLICY,
            health=self.health,
            clock=self.clock,
            rng=random.Random(seed),
        )
        pool = self.balancer.pool("m")
        assert pool is not None
        self.pool: Pool = pool
        self.routes = list(pool.routes)
        self.model = {r.name: Model() for r in self.routes}
        self.since_probe = 0  # least latency: picks since the pool's last re-probe
        # some routes start past their warm-up (three answers, the least of them counts), at
        # close latencies, so that least latency's weighting by calls in flight decides picks
        for route, latency in zip(self.routes, warm or (), strict=False):
            if latency is not None:
                for factor_ in (1.5, 1.0, 1.2):
                    self.dispatch(route)
                    self.answered(self.sent.pop(), latency * factor_, latency * factor_ / 4)

    # -- the model's view ----------------------------------------------------------------

    def in_flight(self, route: RouteState) -> int:
        return sum(1 for s in self.sent if s.route is route)

    def available(self, route: RouteState, now: float) -> bool:
        m = self.model[route.name]
        if m.healthy:
            return True
        trial_busy = any(s.route is route and s.epoch == m.epoch for s in self.sent)
        return now >= m.ejected_until and not trial_busy

    def ready_at(self, route: RouteState) -> float:
        m = self.model[route.name]
        return max(m.ejected_until, m.retry_after_until)

    def eject(self, route: RouteState, now: float, retry_after: float | None) -> None:
        """The model's ejection, and the checks of the cooldown the balancer chose."""
        m = self.model[route.name]
        m.healthy = False
        m.epoch += 1
        m.consecutive += 1
        health = route.health
        cap = self.health.max_cooldown
        hint = min(retry_after or 0.0, cap)
        raw = min(cap, self.health.cooldown * 2.0 ** (m.consecutive - 1))
        cooldown = health.ejected_until - now
        tol = slack(now, health.ejected_until)
        assert 0.0 < cooldown <= cap + tol
        assert cooldown >= hint - tol  # never shorter than an honoured Retry-After
        assert (1.0 - JITTER) * raw - tol <= cooldown <= max(raw, hint) + tol
        m.ejected_until = health.ejected_until

    # -- rules ---------------------------------------------------------------------------

    @rule(dt=st.sampled_from([0.0, 0.0, 0.0, 1e-6, 0.3, 1.0, 2.5, 6.0, 40.0, 500.0]))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule(exclude=st.sets(st.integers(0, 3), max_size=3), stream=st.booleans(), send=st.booleans())
    def pick(self, exclude: set[int], stream: bool, send: bool) -> None:
        excluded = [r for i, r in enumerate(self.routes) if i in exclude]
        now = self.clock()
        available = [r for r in self.routes if self.available(r, now)]
        candidates = [r for r in available if r not in excluded]
        expected, reprobe = self.expected_pick(candidates, now, stream)
        route = self.balancer.pick(self.pool, excluded, stream)
        if not candidates:
            assert route is None
        else:
            assert route is not None and route in candidates
            m = self.model[route.name]
            assert m.healthy or now >= m.ejected_until  # never while its cooldown runs
            if expected is not None:
                assert route is expected, (route.name, expected.name)
            if self.POLICY == "round_robin":
                self.cursor = self.routes.index(route) + 1
            if reprobe:
                m.last_probe_at = now
            self.since_probe = 0 if reprobe else self.since_probe + 1
        if route is None and not excluded:
            assert not available
            # Every route is ejected (or busy with its trial): the one ready first is tried.
            route = self.balancer.force(self.routes)
            assert route is not None
            assert self.ready_at(route) == min(self.ready_at(r) for r in self.routes)
        if route is not None and send:
            self.dispatch(route)

    def expected_pick(
        self, candidates: list[RouteState], now: float, stream: bool
    ) -> tuple[RouteState | None, bool]:
        """The policy's exact choice among ``candidates`` when the test knows it (else None),
        and whether that choice is a least-latency re-probe."""
        if not candidates:
            return None, False
        if self.POLICY == "round_robin" and len(set(self.WEIGHTS)) == 1:
            # the next candidate at or after the cursor, in pool order
            n = len(self.routes)
            for step in range(n):
                route = self.routes[(self.cursor + step) % n]
                if route in candidates:
                    return route, False
        if self.POLICY == "least_latency":
            return self.expected_fastest(candidates, now, stream)
        return None, False  # weighted: membership here, shares in the @given tests below

    def expected_fastest(
        self, candidates: list[RouteState], now: float, stream: bool
    ) -> tuple[RouteState, bool]:
        """least_latency, as documented: the route still warming up (fewer than
        WARMUP_SAMPLES samples of the kind that counts: latency, or time to first token for
        streams) with the fewest in flight (pool order) first, if it has none in flight;
        else the best route is the one of lowest EWMA times its calls in flight plus one
        among the measured ones (pool order breaks ties), or that warming-up route when none
        is measured; and a re-probe of the stale route (measured in either kind, last sample
        and last re-probe both older than reprobe_interval, not the best) measured longest
        ago (pool order on a tie) goes first if the picks since the pool's last re-probe pay
        for it: picks * probe_budget * best EWMA >= its EWMA (0 when none) - best EWMA (raw
        EWMAs, no in-flight factor); else the best."""

        def score(route: RouteState) -> float | None:
            m = self.model[route.name]
            return m.ttft if stream else m.latency

        def samples(route: RouteState) -> int:
            m = self.model[route.name]
            return m.ttft_samples if stream else m.latency_samples

        def cost(route: RouteState) -> float:
            ewma = score(route)
            assert ewma is not None  # measured
            return ewma * (self.in_flight(route) + 1)

        def since(route: RouteState) -> float:
            m = self.model[route.name]
            return max(m.last_sample_at, m.last_probe_at)

        def any_sample(route: RouteState) -> bool:
            m = self.model[route.name]
            return m.latency is not None or m.ttft is not None

        cold = [r for r in candidates if samples(r) < WARMUP_SAMPLES]
        first_cold = min(cold, key=self.in_flight) if cold else None
        if first_cold is not None and self.in_flight(first_cold) == 0:
            return first_cold, False
        measured = [r for r in candidates if score(r) is not None]
        if not measured:
            assert first_cold is not None
            return first_cold, False
        best = min(measured, key=cost)
        horizon = now - self.REPROBE
        stale_routes = [
            r for r in candidates if r is not best and any_sample(r) and since(r) < horizon
        ]
        stale = min(stale_routes, key=since, default=None)
        if stale is not None:
            best_score, stale_score = score(best), score(stale) or 0.0
            assert best_score is not None
            if self.since_probe * PROBE_BUDGET * best_score >= stale_score - best_score:
                return stale, True
        return best, False

    def dispatch(self, route: RouteState) -> None:
        m = self.model[route.name]
        now = self.clock()
        started = self.balancer.dispatch(route)
        # the clock's reading, or a few float steps past an ejection at this same reading
        assert now <= started <= now + 1e-9
        m.requests += 1
        self.sent.append(Sent(route, started, m.epoch))

    @precondition(lambda self: bool(self.sent))
    @rule(
        index=st.integers(0, 50),
        latency=st.none() | st.sampled_from([0.01, 0.05, 0.05, 0.2, 1.0]),
        ttft=st.none() | st.sampled_from([0.005, 0.02, 0.1]),
    )
    def succeed(self, index: int, latency: float | None, ttft: float | None) -> None:
        self.answered(self.sent.pop(index % len(self.sent)), latency, ttft)

    @rule(n=st.integers(2, 8), stream=st.booleans())
    def burst(self, n: int, stream: bool) -> None:
        """``n`` calls picked and sent in a row, none answered yet: many in flight at once."""
        for _ in range(n):
            self.pick(set(), stream, True)

    @rule(
        index=st.integers(0, 4),
        latencies=st.lists(st.sampled_from(WARM_LATENCIES), min_size=3, max_size=3),
        stream=st.booleans(),
    )
    def pinned_calls(self, index: int, latencies: list[float], stream: bool) -> None:
        """Three calls pinned to one route (no pick), each answered before the next: a route
        gets through its warm-up in one step, so the machine reaches warm routes."""
        route = self.routes[index % len(self.routes)]
        for latency in latencies:
            self.dispatch(route)
            sent = self.sent.pop()
            self.answered(sent, latency, latency / 4 if stream else None)

    def answered(self, sent: Sent, latency: float | None, ttft: float | None) -> None:
        """``sent`` succeeded: the balancer's report and the model's."""
        route, m = sent.route, self.model[sent.route.name]
        was_trial = not m.healthy and sent.epoch == m.epoch
        before = (route.health.ejected_until, route.health.ejections)
        self.balancer.succeeded(route, sent.started, latency=latency, ttft=ttft)
        m.successes += 1
        if was_trial:
            m.healthy = True
            m.consecutive = 0
            assert route.health.state(self.clock()) is State.HEALTHY
            assert route.health.consecutive_ejections == 0
        assert (route.health.ejected_until, route.health.ejections) == before
        alpha = self.health.ewma_alpha
        if latency is not None:
            m.latency_samples += 1
            m.latency = smoothed(m.latency, latency, m.latency_samples, alpha)
        if ttft is not None:
            m.ttft_samples += 1
            m.ttft = smoothed(m.ttft, ttft, m.ttft_samples, alpha)
        if latency is not None or ttft is not None:
            m.last_sample_at = self.clock()

    @precondition(lambda self: bool(self.sent))
    @rule(
        index=st.integers(0, 50),
        failure=st.sampled_from(FAILURES),
        retry_after=st.sampled_from([0.0, 0.5, 3.0, 10.0, 100.0]),
    )
    def fail(self, index: int, failure: tuple[str, bool, bool], retry_after: float) -> None:
        reason, loud, has_retry_after = failure
        hint = retry_after if has_retry_after else None
        sent = self.sent.pop(index % len(self.sent))
        route, m = sent.route, self.model[sent.route.name]
        health = route.health
        before = (
            health.healthy,
            health.ejected_until,
            health.ejections,
            health.consecutive_ejections,
        )
        now = self.clock()
        self.balancer.failed(route, sent.started, reason, hint, loud)
        m.failures += 1
        if hint is not None:
            m.retry_after_until = now + hint
        assert route.retry_after_until == m.retry_after_until
        assert route.last_error == reason
        if sent.epoch == m.epoch:
            self.eject(route, now, hint)
        else:  # in flight before the last ejection: already accounted for
            after = (
                health.healthy,
                health.ejected_until,
                health.ejections,
                health.consecutive_ejections,
            )
            assert after == before

    @precondition(lambda self: bool(self.sent))
    @rule(index=st.integers(0, 50))
    def finish(self, index: int) -> None:
        """A 400 or a cancelled/abandoned attempt: no evidence about the route."""
        sent = self.sent.pop(index % len(self.sent))
        health = sent.route.health
        before = (health.healthy, health.ejected_until, health.ejections)
        self.balancer.finished(sent.route, sent.started)
        self.finished[sent.route.name] += 1
        assert (health.healthy, health.ejected_until, health.ejections) == before

    @rule(index=st.integers(0, 3), healthy=st.booleans())
    def active_check(self, index: int, healthy: bool) -> None:
        route = self.routes[index % len(self.routes)]
        m = self.model[route.name]
        now = self.clock()
        self.balancer.observe_check(route.name, healthy, None if healthy else "HTTP 503")
        if healthy and not m.healthy:
            m.ejected_until = min(m.ejected_until, now)  # the trial may go at once
        elif not healthy and m.healthy:
            self.eject(route, now, None)

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def counters_and_states_match_the_model(self) -> None:
        now = self.clock()
        stats = self.balancer.stats()
        for route in self.routes:
            m, health = self.model[route.name], route.health
            in_flight = self.in_flight(route)
            assert route.in_flight == in_flight >= 0
            assert (route.requests, route.successes, route.failures) == (
                m.requests,
                m.successes,
                m.failures,
            )
            assert route.requests == (
                route.successes + route.failures + self.finished[route.name] + in_flight
            )
            assert health.healthy is m.healthy
            assert health.ejections == m.epoch
            assert health.consecutive_ejections == m.consecutive
            if m.healthy:
                assert m.consecutive == 0
                assert health.state(now) is State.HEALTHY
            else:
                assert health.ejected_until == m.ejected_until
                expected = State.EJECTED if now < m.ejected_until else State.PROBING
                assert health.state(now) is expected
            assert health.available(now) is self.available(route, now)
            assert route.latency_ewma == m.latency and route.ttft_ewma == m.ttft
            assert (route.latency_samples, route.ttft_samples) == (
                m.latency_samples,
                m.ttft_samples,
            )
            assert route.last_probe_at == m.last_probe_at
            assert route.last_sample_at == m.last_sample_at
            snap = stats[route.name]
            assert snap["in_flight"] == in_flight and snap["state"] == health.state(now).value
            assert snap["latency_ewma_ms"] == (
                None if m.latency is None else round(m.latency * 1e3, 3)
            )
            assert snap["ttft_ewma_ms"] == (None if m.ttft is None else round(m.ttft * 1e3, 3))
            assert snap["tokens_in_flight"] == 0 and snap["ms_per_token"] is None
            assert snap["load"]["estimate"] == in_flight  # no load report: its own calls
            assert 0.0 <= snap["cooldown_remaining_s"] <= self.health.max_cooldown + slack(now)

    def teardown(self) -> None:
        # Report every attempt still in flight (success, failure, finished in turn):
        # afterwards nothing is in flight and the counters add up.
        for i, sent in enumerate(self.sent):
            if i % 3 == 0:
                self.balancer.succeeded(sent.route, sent.started)
            elif i % 3 == 1:
                self.balancer.failed(sent.route, sent.started, "connect error")
            else:
                self.balancer.finished(sent.route, sent.started)
                self.finished[sent.route.name] += 1
        self.sent.clear()
        for route in self.routes:
            assert route.in_flight == 0
            assert route.requests == route.successes + route.failures + self.finished[route.name]


class WeightedMachine(BalancerMachine):
    WEIGHTS = (1, 2, 3)


class LeastLatencyMachine(BalancerMachine):
    POLICY = "least_latency"
    WEIGHTS = (1, 1, 1, 1, 1)  # five: heaps of more than a couple of entries


TestRoundRobinMachine = BalancerMachine.TestCase
TestRoundRobinMachine.settings = STATEFUL
TestWeightedMachine = WeightedMachine.TestCase
TestWeightedMachine.settings = STATEFUL
TestLeastLatencyMachine = LeastLatencyMachine.TestCase
TestLeastLatencyMachine.settings = STATEFUL


# -- helpers for the example-driven properties -------------------------------------------


def make(
    clock: FakeClock, weights: list[float], policy: str = "round_robin", **health: float
) -> tuple[Balancer, Pool, list[RouteState]]:
    balancer = Balancer(
        [route_config(f"r{i}", weight=w) for i, w in enumerate(weights)],
        policy=policy,
        health=HealthConfig(**{"cooldown": 5.0, "max_cooldown": 60.0, **health}),
        clock=clock,
        rng=random.Random(0),
    )
    pool = balancer.pool("m")
    assert pool is not None
    return balancer, pool, list(pool.routes)


def eject(balancer: Balancer, route: RouteState) -> None:
    balancer.failed(route, balancer.dispatch(route), "connect error")
    assert not route.health.available(balancer.clock())


def recover(balancer: Balancer, route: RouteState) -> None:
    """An active check passes, the trial goes at once and succeeds."""
    balancer.observe_check(route.name, True)
    balancer.succeeded(route, balancer.dispatch(route))
    assert route.health.healthy


def deadlines(pool: Pool) -> dict[RouteState, float]:
    """When each route not parked is next due in a weighted pool (earliest deadline first)."""
    schedule = pool.index
    if schedule is None:  # no pick yet: every route is due half a turn from the start
        return {r: 0.5 / r.weight for r in pool.routes}
    assert isinstance(schedule, DeadlineSchedule)
    return {entry[2]: entry[0] for entry in schedule.heap}


# -- regressions the state machine found ------------------------------------------------


def test_requests_and_an_ejection_at_the_same_clock_reading_keep_their_order() -> None:
    """A coarse clock gives a burst and the ejection it causes the same reading: the burst's
    other failures must not count as further ejections, nor its successes heal the route;
    requests sent after the ejection (same reading) are new evidence."""
    clock = FakeClock(5.0)  # never moves
    balancer, _, (a, _b) = make(clock, [1.0, 1.0])
    burst = [balancer.dispatch(a) for _ in range(3)]
    balancer.failed(a, burst[0], "connect error")
    balancer.failed(a, burst[1], "connect error")  # same burst: already accounted for
    assert (a.health.ejections, a.health.consecutive_ejections) == (1, 1)
    balancer.succeeded(a, burst[2])  # sent before the ejection: does not heal
    assert not a.health.healthy
    forced = balancer.dispatch(a)  # sent after the ejection, same reading
    balancer.failed(a, forced, "connect error")
    assert (a.health.ejections, a.health.consecutive_ejections) == (2, 2)
    # the same with an active check: a request sent before a failing check does not heal
    b = balancer.routes["r1"]
    before_check = balancer.dispatch(b)
    balancer.observe_check("r1", False, "HTTP 503")
    balancer.succeeded(b, before_check)
    assert not b.health.healthy
    balancer.observe_check("r1", True)  # the trial may go at once
    trial = balancer.dispatch(b)
    balancer.succeeded(b, trial)
    assert b.health.healthy and b.health.consecutive_ejections == 0


def test_a_route_takes_one_trial_at_a_time_even_with_forced_requests() -> None:
    """With every route ejected, two calls force the same route; when one of them ends
    without evidence the other is still its trial, so pick must not add a third request."""
    clock = FakeClock()
    balancer, pool, (a,) = make(clock, [1.0])
    eject(balancer, a)
    first = balancer.dispatch(a)  # both forced while the cooldown runs
    second = balancer.dispatch(a)
    clock.now = a.health.ejected_until
    assert balancer.pick(pool) is None
    balancer.finished(a, first)
    assert balancer.pick(pool) is None  # the second is still in flight
    balancer.finished(a, second)
    assert balancer.pick(pool) is a  # now the slot is free
    balancer.succeeded(a, balancer.dispatch(a))
    assert a.health.healthy


# -- fairness of round robin -------------------------------------------------------------


@PROPERTY
@given(n=st.integers(1, 6), k=st.integers(1, 12), data=st.data())
def test_round_robin_gives_each_usable_route_exactly_k_of_k_times_n_picks(
    n: int, k: int, data: st.DataObject
) -> None:
    clock = FakeClock()
    balancer, pool, routes = make(clock, [1.0] * n)
    # any history: picks with exclude sets move the cursor anywhere
    for exclude in data.draw(st.lists(st.sets(st.integers(0, n - 1)), max_size=8)):
        balancer.pick(pool, [routes[i] for i in exclude])
    ejected = data.draw(st.sets(st.integers(0, n - 1), max_size=n - 1))
    for i in ejected:
        eject(balancer, routes[i])
    usable = {r.name for i, r in enumerate(routes) if i not in ejected}
    names = picks(balancer, pool, k * len(usable))
    assert Counter(names) == dict.fromkeys(usable, k)  # ejected routes get nothing
    # in turn, not in bursts: every window of len(usable) picks holds each usable route once
    for start in range(len(names) - len(usable) + 1):
        assert set(names[start : start + len(usable)]) == usable


@PROPERTY
@given(
    weights=st.lists(st.integers(1, 6), min_size=2, max_size=5),
    k=st.integers(1, 4),
    data=st.data(),
)
def test_weighted_round_robin_is_exact_per_period_and_close_in_every_prefix(
    weights: list[int], k: int, data: st.DataObject
) -> None:
    clock = FakeClock()
    balancer, pool, routes = make(clock, [float(w) for w in weights])
    ejected = data.draw(st.sets(st.integers(0, len(weights) - 1), max_size=len(weights) - 1))
    for i in ejected:
        eject(balancer, routes[i])
    share = {r.name: weights[i] for i, r in enumerate(routes) if i not in ejected}
    total = sum(share.values())
    names = picks(balancer, pool, k * total)
    # each period of sum(weights) picks gives each usable route exactly its weight
    assert Counter(names) == {name: k * w for name, w in share.items()}
    # in every prefix each route is close to its exact share: |picks - t * w / W| < 1 for two
    # routes, below usable - 1 for more (each route's picks trail its deadlines by < 1 turn)
    bound = max(1, len(share) - 1)
    seen = Counter[str]()
    for t, name in enumerate(names, start=1):
        seen[name] += 1
        for other, w in share.items():
            assert abs(seen[other] - t * w / total) < bound


@PROPERTY
@given(
    weights=st.lists(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0, 7.0]), min_size=2, max_size=5),
    history=st.lists(
        st.tuples(st.sampled_from(["pick", "eject", "recover"]), st.sets(st.integers(0, 4))),
        max_size=30,
    ),
)
def test_weighted_round_robin_skips_ejected_routes_without_unbalancing_the_rest(
    weights: list[float], history: list[tuple[str, set[int]]]
) -> None:
    """After any history of picks, ejections and recoveries, the routes still usable share
    the picks by weight: the gap to the exact share stays below a constant fixed by their
    deadlines at the start (it does not grow with the number of picks)."""
    clock = FakeClock()
    balancer, pool, routes = make(clock, weights)
    for action, indexes in history:
        chosen = [routes[i] for i in sorted(indexes) if i < len(routes)]
        if action == "pick":
            balancer.pick(pool, chosen)
        for route in chosen:
            if action == "eject" and route.health.healthy:
                eject(balancer, route)
            elif action == "recover" and not route.health.healthy:
                recover(balancer, route)
    usable = [r for r in routes if r.health.available(clock())]
    if not usable:
        recover(balancer, routes[0])
        usable = [routes[0]]
    total = sum(r.weight for r in usable)
    # Earliest deadline first: each usable route is due at its deadline, then every 1/weight.
    # Routes whose deadlines start at most `spread` apart drift from their exact shares by at
    # most weight * spread plus one pick of each route, whatever the number of picks.
    due = deadlines(pool)
    spread = max(due[r] for r in usable) - min(due[r] for r in usable)
    bound = max(r.weight for r in usable) * spread + len(usable) + 1e-9
    seen = Counter[str]()
    for t, name in enumerate(picks(balancer, pool, 60 * len(usable)), start=1):
        seen[name] += 1
        for route in usable:
            assert abs(seen[route.name] - t * route.weight / total) <= bound
    assert set(seen) == {r.name for r in usable}


@PROPERTY
@given(
    weights=st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0, 7.0]), min_size=2, max_size=5),
    history=st.lists(
        st.tuples(
            st.sampled_from(["pick", "send", "eject", "check", "advance", "end"]),
            st.integers(0, 4),
            st.sampled_from(["success", "failure", "neutral"]),
        ),
        max_size=40,
    ),
)
def test_weighted_round_robin_never_loses_a_route(
    weights: list[float], history: list[tuple[str, int, str]]
) -> None:
    """Whatever happened (ejections, trials in flight and how they ended, active checks, time
    passing), once every route is usable again each of them is picked within a bounded number
    of picks: no route stays parked off the schedule."""
    clock = FakeClock()
    balancer, pool, routes = make(clock, weights)
    sent: list[tuple[RouteState, float]] = []
    for action, index, outcome in history:
        route = routes[index % len(routes)]
        if action == "pick":
            balancer.pick(pool)
        elif action == "send" and (picked := balancer.pick(pool)) is not None:
            sent.append((picked, balancer.dispatch(picked)))
        elif action == "eject":
            eject(balancer, route)
        elif action == "check":
            balancer.observe_check(route.name, index % 2 == 0, "check")
        elif action == "advance":
            clock.advance(2.5)
        elif action == "end" and sent:
            ended, started = sent.pop(index % len(sent))
            if outcome == "success":
                balancer.succeeded(ended, started)
            elif outcome == "failure":
                balancer.failed(ended, started, "HTTP 503")
            else:
                balancer.finished(ended, started)
    for ended, started in sent:
        balancer.finished(ended, started)
    clock.advance(120.0)  # past every cooldown: each route may take a trial
    assert all(r.health.available(clock()) for r in routes)
    total = sum(weights)
    bound = math.ceil(2 * total / min(weights)) + len(routes)
    seen: set[RouteState] = set()
    for _ in range(bound):
        route = balancer.pick(pool)
        assert route is not None
        balancer.succeeded(route, balancer.dispatch(route))  # trials pass: routes heal
        seen.add(route)
    assert seen == set(routes)


# -- least latency -----------------------------------------------------------------------

LATENCY = st.sampled_from([0.01, 0.02, 0.05, 0.1, 0.5]) | st.floats(0.001, 5.0)


@PROPERTY
@given(
    samples=st.lists(
        st.lists(LATENCY, min_size=WARMUP_SAMPLES, max_size=WARMUP_SAMPLES + 3),
        min_size=2,
        max_size=5,
    ),
    stream=st.booleans(),
    data=st.data(),
)
def test_least_latency_picks_the_lowest_ewma_and_reprobes_a_stale_route_once(
    samples: list[list[float]], stream: bool, data: st.DataObject
) -> None:
    """Rule: with every usable route past its warm-up (at least WARMUP_SAMPLES samples) and
    measured within reprobe_interval, and no call in flight, the pick is the lowest EWMA (time
    to first token for streams), the first in pool order on a tie. Once the other
    routes' measurements are older than reprobe_interval, each of them gets one pick (a
    re-probe, in pool order as they were measured at the same time), each as soon as the
    picks since the last re-probe pay for it (picks * probe_budget * fastest EWMA >= its EWMA
    minus the fastest's), then the fastest gets the traffic again."""
    n = len(samples)
    clock = FakeClock()
    balancer, pool, routes = make(
        clock, [1.0] * n, "least_latency", reprobe_interval=10.0, cooldown=1e3, max_cooldown=1e3
    )  # ejected routes stay ejected throughout
    policy = balancer.policy
    assert isinstance(policy, LeastLatency) and policy.probe_budget == PROBE_BUDGET
    for route, values in zip(routes, samples, strict=True):
        expected: float | None = None
        expected_ttft: float | None = None
        for count, value in enumerate(values, start=1):
            started = balancer.dispatch(route)
            balancer.succeeded(route, started, latency=value, ttft=value / 2)
            expected = smoothed(expected, value, count, balancer.alpha)
            expected_ttft = smoothed(expected_ttft, value / 2, count, balancer.alpha)
        assert (route.latency_ewma, route.ttft_ewma) == (expected, expected_ttft)
    ejected = data.draw(st.sets(st.integers(0, n - 1), max_size=n - 1))
    for i in ejected:
        eject(balancer, routes[i])
    usable = [r for i, r in enumerate(routes) if i not in ejected]
    excluded = data.draw(st.sets(st.sampled_from(usable), max_size=len(usable) - 1))
    candidates = [r for r in usable if r not in excluded]

    def ewma(route: RouteState) -> float:
        value = route.ttft_ewma if stream else route.latency_ewma
        assert value is not None
        return value

    best = min(candidates, key=ewma)
    clock.advance(data.draw(st.floats(0.0, 9.9)))
    for _ in range(3):
        assert balancer.pick(pool, excluded, stream) is best
    # time passes; only the fastest keeps being measured
    clock.advance(10.5)
    balancer.succeeded(best, balancer.dispatch(best), latency=ewma(best), ttft=ewma(best))
    for stale in [r for r in candidates if r is not best]:  # each re-probed once, in turn
        cost = ewma(stale) - ewma(best)
        needed = 0  # the fewest picks since the last re-probe that pay for this one
        while needed * PROBE_BUDGET * ewma(best) < cost:
            needed = max(needed + 1, math.ceil(cost / (PROBE_BUDGET * ewma(best))) - 1)
        since = policy.since_probe.get(pool, 0)
        if needed - since > 3:  # skip most of a long wait, keep its last picks
            policy.since_probe[pool] = since = needed - 3
        for _ in range(max(0, needed - since)):
            assert balancer.pick(pool, excluded, stream) is best
        assert balancer.pick(pool, excluded, stream) is stale
        assert policy.since_probe[pool] == 0
    assert balancer.pick(pool, excluded, stream) is best
    assert balancer.pick(pool, excluded, stream) is best


@PROPERTY
@given(
    routes=st.lists(
        st.tuples(
            st.lists(st.tuples(LATENCY, st.booleans()), max_size=WARMUP_SAMPLES + 2),
            st.integers(0, 6),  # calls in flight
        ),
        min_size=2,
        max_size=6,
    ),
    stream=st.booleans(),
    exclude=st.sets(st.integers(0, 5), max_size=4),
)
def test_least_latency_tries_routes_warming_up_first_then_weighs_each_ewma_by_calls_in_flight(
    routes: list[tuple[list[tuple[float, bool]], int]], stream: bool, exclude: set[int]
) -> None:
    """Rule, re-probes aside (every route measured just now): of the routes with fewer than
    WARMUP_SAMPLES samples of the kind that counts (latency; time to first token for streams)
    the one with fewest calls in flight (pool order on a tie) comes first if it has none in
    flight; else the lowest EWMA times calls in flight plus one among the measured routes,
    pool order on a tie (that warming-up route when none is measured). Each EWMA is the
    least of the first WARMUP_SAMPLES samples, then the usual moving average. Each sample has
    a latency, and a time to first token (a quarter of it) when drawn so."""
    clock = FakeClock()
    balancer, pool, states = make(clock, [1.0] * len(routes), "least_latency", stall_factor=0)
    alpha = balancer.alpha
    model: dict[str, tuple[float | None, int, float | None, int]] = {}
    for route, (samples, _in_flight) in zip(states, routes, strict=True):
        latency: float | None = None
        ttft: float | None = None
        counts = [0, 0]
        for value, with_ttft in samples:
            started = balancer.dispatch(route)
            balancer.succeeded(route, started, latency=value, ttft=value / 4 if with_ttft else None)
            counts[0] += 1
            latency = smoothed(latency, value, counts[0], alpha)
            if with_ttft:
                counts[1] += 1
                ttft = smoothed(ttft, value / 4, counts[1], alpha)
        assert (route.latency_ewma, route.ttft_ewma) == (latency, ttft)
        model[route.name] = (latency, counts[0], ttft, counts[1])
    for route, (_samples, in_flight) in zip(states, routes, strict=True):
        for _ in range(in_flight):
            balancer.dispatch(route)
    excluded = [r for i, r in enumerate(states) if i in exclude]
    candidates = [r for r in states if r not in excluded]

    def ewma(route: RouteState) -> float | None:
        latency, _, ttft, _ = model[route.name]
        return ttft if stream else latency

    def samples_of(route: RouteState) -> int:
        _, latencies, _, ttfts = model[route.name]
        return ttfts if stream else latencies

    def cost(route: RouteState) -> float:
        value = ewma(route)
        assert value is not None
        return value * (route.in_flight + 1)

    cold = [r for r in candidates if samples_of(r) < WARMUP_SAMPLES]
    first_cold = min(cold, key=lambda r: r.in_flight) if cold else None
    measured = [r for r in candidates if ewma(r) is not None]
    if not candidates:
        expected = None
    elif first_cold is not None and first_cold.in_flight == 0:
        expected = first_cold  # one warm-up call at a time
    elif measured:
        expected = min(measured, key=cost)
    else:
        expected = first_cold
    assert balancer.pick(pool, excluded, stream) is expected


# -- the call plan: backoff, Retry-After, deadline ---------------------------------------


@PROPERTY
@given(data=st.data())
def test_call_plan_waits_at_least_the_retry_after_and_keeps_within_the_deadline(
    data: st.DataObject,
) -> None:
    draw = data.draw
    retry = RetryConfig(
        max_retries=draw(st.integers(0, 6)),
        backoff_initial=draw(st.sampled_from([0.05, 0.1, 0.5, 1.0])),
        backoff_max=draw(st.sampled_from([0.2, 1.0, 2.0, 5.0])),
        retry_after_max=draw(st.sampled_from([1.0, 5.0, 10.0])),
    )
    timeouts = draw(st.lists(st.sampled_from([0.5, 5.0, 30.0]), min_size=1, max_size=4))
    with_fallback = draw(st.booleans())
    configs = [route_config(f"r{i}", timeout=t) for i, t in enumerate(timeouts)]
    if with_fallback:
        configs.append(route_config("fb", timeout=draw(st.sampled_from([0.5, 5.0]))))
    clock = FakeClock(100.0)
    cooldown = draw(st.sampled_from([0.5, 2.0, 5.0]))
    balancer = Balancer(
        configs,
        health=HealthConfig(cooldown=cooldown, max_cooldown=cooldown * 4),
        fallback_route="fb" if with_fallback else None,
        clock=clock,
        rng=random.Random(draw(st.integers(0, 2**32 - 1))),
    )
    pool = balancer.pool("m")
    assert pool is not None
    fallback = balancer.single("fb") if with_fallback else None
    everyone = list(balancer.routes.values())
    retry_after = st.none() | st.floats(0.0, retry.retry_after_max)
    # other calls have already ejected some routes, some with a Retry-After
    for i in draw(st.sets(st.integers(0, len(everyone) - 1))):
        route = everyone[i]
        balancer.failed(route, balancer.dispatch(route), "HTTP 429", draw(retry_after))
    clock.advance(draw(st.sampled_from([0.0, 0.3, 3.0])))
    deadline = draw(st.sampled_from([-1.0, 0.0, 0.5, 2.0, 10.0, 60.0]))
    plan = CallPlan(balancer, pool, fallback, retry=retry, deadline=deadline)
    assert plan.deadline_at == clock() + deadline

    succeeded = False
    while (route := plan.next()) is not None:
        now, made, delay = clock(), len(plan.attempts), plan.delay
        assert made < 1 + retry.max_retries
        assert delay >= 0.0 and plan.timeout > 0.0
        assert plan.timeout <= route.config.timeout
        repeat = delay > 0.0
        if not repeat and made:
            assert route not in plan.tried  # failover goes at once to a route not yet tried
        if repeat:
            ceiling = min(retry.backoff_max, retry.backoff_initial * 2.0 ** (plan.repeats - 1))
            waited_for = route.retry_after_until - now
            assert delay >= waited_for  # never sooner than the route's Retry-After
            assert 0.5 * ceiling <= delay <= max(ceiling, waited_for)
        if made:  # every attempt after the first fits in the deadline
            assert now + delay < plan.deadline_at
            assert plan.timeout <= plan.deadline_at - now - delay
        clock.advance(delay)
        started = plan.start(route)
        clock.advance(min(draw(st.sampled_from([0.0, 0.01, 0.4, 3.0, 100.0])), plan.timeout))
        if made:
            assert clock() <= plan.deadline_at + slack(plan.deadline_at)
        if draw(st.integers(0, 4)) == 0:
            plan.succeeded(route, started, latency=clock() - started)
            succeeded = True
            break
        error = RouteConnectionError("HTTP 503", route=route.name)
        plan.failed(route, started, error, "status", status_code=503, retry_after=draw(retry_after))

    assert 1 <= len(plan.attempts) <= 1 + retry.max_retries  # the first attempt always happens
    if not succeeded and len(plan.attempts) < 1 + retry.max_retries:
        # it gave up early only because the next wait could not end before the deadline
        now = clock()
        longest = max([retry.backoff_max] + [r.retry_after_until - now for r in everyone])
        assert plan.deadline_at - now <= longest


# -- thread safety -----------------------------------------------------------------------

THREADS = 64
ITERATIONS = 250


def test_64_threads_hammering_one_balancer_keep_every_counter_exact() -> None:
    for policy in ("round_robin", "least_latency"):
        hammer(policy)


def hammer(policy: str) -> None:
    weights = (1.0, 2.0, 1.0, 3.0, 1.0)
    balancer = Balancer(
        [route_config(f"r{i}", weight=w) for i, w in enumerate(weights)],
        policy=policy,
        health=HealthConfig(cooldown=0.002, max_cooldown=0.01, reprobe_interval=0.005),
        clock=time.monotonic,  # the real clock: states change while the threads run
        rng=random.Random(1),
    )
    pool = balancer.pool("m")
    assert pool is not None
    routes = list(pool.routes)
    errors: list[BaseException] = []
    tallies: list[dict[str, Counter[str]]] = []
    barrier = threading.Barrier(THREADS)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        tally: dict[str, Counter[str]] = {
            k: Counter() for k in ("requests", "successes", "failures", "finished")
        }
        try:
            barrier.wait(timeout=30)
            for i in range(ITERATIONS):
                exclude = rng.sample(routes, rng.randint(1, 3)) if rng.random() < 0.3 else []
                route = balancer.pick(pool, exclude, stream=rng.random() < 0.2)
                assert route is None or route not in exclude
                route = route or balancer.pick(pool) or balancer.force(routes)
                assert route is not None
                started = balancer.dispatch(route)
                tally["requests"][route.name] += 1
                draw = rng.random()
                if draw < 0.6:
                    latency = rng.uniform(0.001, 0.05)
                    balancer.succeeded(route, started, latency=latency, ttft=latency / 3)
                    tally["successes"][route.name] += 1
                elif draw < 0.85:
                    hint = rng.choice([None, None, 0.0, 0.003])
                    balancer.failed(route, started, "HTTP 503", hint, loud=draw > 0.84)
                    tally["failures"][route.name] += 1
                else:
                    balancer.finished(route, started)
                    tally["finished"][route.name] += 1
                if i % 50 == 0:
                    balancer.stats()
                    balancer.observe_check(rng.choice(routes).name, rng.random() < 0.5, "x")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            tallies.append(tally)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    end = time.monotonic() + 60.0
    for thread in threads:
        thread.join(timeout=max(0.0, end - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "threads still running after 60 s"
    assert errors == []
    assert len(tallies) == THREADS

    total: dict[str, Counter[str]] = {
        k: sum((t[k] for t in tallies), Counter()) for k in tallies[0]
    }
    assert sum(total["requests"].values()) == THREADS * ITERATIONS
    stats = balancer.stats()
    for route in routes:
        name = route.name
        assert route.in_flight == 0 and stats[name]["in_flight"] == 0
        assert route.requests == total["requests"][name]
        assert route.successes == total["successes"][name]
        assert route.failures == total["failures"][name]
        assert route.requests == (route.successes + route.failures + total["finished"][name])
        assert not route.health.trial_in_flight  # no trial slot left taken
    # the run really exercised failures and ejections on every route
    assert all(r.requests > 0 and r.failures > 0 and r.health.ejections > 0 for r in routes)
