"""CallPlan: which route each attempt of a call goes to, and how long to wait before it."""

from __future__ import annotations

import random

import pytest
from conftest import FakeClock, MakeBalancer, route_config

from llm.config import HealthConfig, RetryConfig
from llm.errors import (
    AllRoutesFailedError,
    BadRequestError,
    RateLimitError,
    RouteConnectionError,
    ServerError,
)
from llm.routing import Balancer, CallPlan, RouteState, backoff_delay, plan_call

RETRY = RetryConfig(max_retries=3, backoff_initial=0.1, backoff_max=2.0, retry_after_max=10)


def make_plan(
    balancer: Balancer,
    *,
    pinned: str | None = None,
    fallback: str | None = None,
    retry: RetryConfig = RETRY,
    deadline: float = 100.0,
    max_retries: int | None = None,
) -> CallPlan:
    pool = balancer.single(pinned) if pinned else balancer.pool("m")
    assert pool is not None
    return CallPlan(
        balancer,
        pool,
        balancer.single(fallback) if fallback else None,
        retry=retry,
        deadline=deadline,
        max_retries=max_retries,
    )


def fail(plan: CallPlan, route: RouteState, clock: FakeClock, **kw: object) -> None:
    """Attempt ``route`` now (after the plan's delay) and have it fail with a connect error."""
    clock.advance(plan.delay)
    started = plan.start(route)
    clock.advance(0.01)
    error = RouteConnectionError("refused", route=route.name)
    plan.failed(route, started, error, "connect_error", **kw)  # type: ignore[arg-type]


def run_failing(plan: CallPlan, clock: FakeClock) -> list[tuple[str, float]]:
    """Drive the plan to its end with every attempt failing: [(route, delay)]."""
    seen = []
    while (route := plan.next()) is not None:
        seen.append((route.name, plan.delay))
        fail(plan, route, clock)
        assert len(seen) < 100
    return seen


def eject(balancer: Balancer, name: str) -> RouteState:
    route = balancer.routes[name]
    balancer.failed(route, balancer.dispatch(route), "down")
    return route


@pytest.fixture
def balancer(make_balancer: MakeBalancer) -> Balancer:
    return make_balancer("a", "b", "c", "fb", fallback_route="fb")


# -- backoff -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_number", "ceiling"),
    [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.6), (5, 2.0), (6, 2.0), (60, 2.0)],
)
def test_backoff_delay_is_capped_exponential_between_half_and_all(
    retry_number: int, ceiling: float
) -> None:
    rng = random.Random(retry_number)
    delays = [backoff_delay(retry_number, RETRY, rng) for _ in range(1000)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert min(delays) < 0.55 * ceiling and max(delays) > 0.95 * ceiling


# -- the first attempt -------------------------------------------------------------------


def test_first_attempt_with_every_route_ejected_goes_to_the_one_ready_first(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer = make_balancer("a", "b", "c")
    clock.now = 0.0
    for name in "bca":  # ejected at 0, 1, 2: b is ready first (cooldown 4..5)
        eject(balancer, name)
        clock.advance(1.0)
    plan = make_plan(balancer)
    route = plan.next()
    assert route is balancer.routes["b"]
    assert plan.delay == 0.0
    assert plan.timeout == 5.0


def test_first_attempt_with_the_fallback_ejected_too(balancer: Balancer, clock: FakeClock) -> None:
    eject(balancer, "fb")
    clock.advance(2.0)
    for name in "abc":
        eject(balancer, name)
    plan = make_plan(balancer, fallback="fb")
    assert plan.next() is balancer.routes["fb"]  # its cooldown ends first
    assert plan.delay == 0.0


@pytest.mark.parametrize("deadline", [0.0, -5.0])
def test_first_attempt_happens_even_with_no_time_left(
    make_balancer: MakeBalancer, clock: FakeClock, deadline: float
) -> None:
    balancer = make_balancer("a", "b")
    eject(balancer, "a")
    eject(balancer, "b")
    plan = make_plan(balancer, deadline=deadline)
    route = plan.next()
    assert route is not None
    assert plan.delay == 0.0
    assert 0 < plan.timeout <= 0.01
    fail(plan, route, clock)
    assert plan.next() is None  # but no second one


# -- order of the attempts ---------------------------------------------------------------


def test_fresh_routes_then_fallback_then_repeats_with_backoff(
    balancer: Balancer, clock: FakeClock
) -> None:
    plan = make_plan(balancer, fallback="fb", max_retries=7)
    seen = run_failing(plan, clock)
    assert len(seen) == 8
    names = [name for name, _ in seen]
    delays = [delay for _, delay in seen]
    assert sorted(names[:3]) == ["a", "b", "c"]  # each pool route once, at once
    assert names[3] == "fb"  # then the fallback, at once
    assert delays[:4] == [0.0] * 4
    # then repeats, with growing jittered backoff
    for k, delay in enumerate(delays[4:]):
        ceiling = min(2.0, 0.1 * 2**k)
        assert ceiling / 2 <= delay <= ceiling
    assert plan.repeats == 4
    assert [a.route for a in plan.attempts] == names


def test_fresh_routes_skip_ejected_ones(balancer: Balancer, clock: FakeClock) -> None:
    eject(balancer, "b")
    plan = make_plan(balancer, fallback="fb", max_retries=3)
    seen = run_failing(plan, clock)
    names = [name for name, _ in seen]
    assert sorted(names[:2]) == ["a", "c"]
    assert names[2] == "fb"
    assert seen[3][1] > 0  # the 4th attempt is a repeat, with a delay


def test_a_success_ends_nothing_but_is_recorded(balancer: Balancer, clock: FakeClock) -> None:
    plan = make_plan(balancer)
    route = plan.next()
    assert route is not None
    started = plan.start(route)
    assert route.in_flight == 1
    clock.advance(0.25)
    plan.succeeded(route, started, latency=0.25)
    assert route.in_flight == 0 and route.successes == 1
    assert len(plan.attempts) == 1
    attempt = plan.attempts[0]
    assert (attempt.route, attempt.outcome, attempt.status_code, attempt.error) == (
        route.name,
        "ok",
        None,
        None,
    )
    assert attempt.latency_s == pytest.approx(0.25)


def test_a_recovered_route_is_preferred_over_forcing_on_repeats(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer = make_balancer("a", "b")
    plan = make_plan(balancer, max_retries=5)
    first = plan.next()
    assert first is not None
    fail(plan, first, clock)
    second = plan.next()
    assert second is not None and second is not first
    fail(plan, second, clock)
    # one cooldown ends: that route is available again (probing) and gets the repeat
    ready, other = sorted((first, second), key=lambda r: r.health.ejected_until)
    clock.now = ready.health.ejected_until
    assert not other.health.available(clock.now)
    assert plan.next() is ready
    assert 0.05 <= plan.delay <= 0.1


@pytest.mark.parametrize("max_retries", [0, 1, 2, 5])
def test_max_retries_bounds_the_attempts(
    balancer: Balancer, clock: FakeClock, max_retries: int
) -> None:
    plan = make_plan(balancer, fallback="fb", max_retries=max_retries)
    assert len(run_failing(plan, clock)) == 1 + max_retries
    assert len(plan.attempts) == 1 + max_retries


def test_max_retries_defaults_to_the_retry_config(balancer: Balancer, clock: FakeClock) -> None:
    retry = RetryConfig(max_retries=2, backoff_initial=0.1, backoff_max=2.0)
    plan = make_plan(balancer, retry=retry)
    assert len(run_failing(plan, clock)) == 3


def test_pinned_route_is_retried_with_backoff(balancer: Balancer, clock: FakeClock) -> None:
    plan = make_plan(balancer, pinned="b", max_retries=4)
    seen = run_failing(plan, clock)
    assert [name for name, _ in seen] == ["b"] * 5
    assert seen[0][1] == 0.0
    for k, (_, delay) in enumerate(seen[1:]):
        ceiling = min(2.0, 0.1 * 2**k)
        assert ceiling / 2 <= delay <= ceiling


def test_repeat_waits_at_least_the_retry_after(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer = make_balancer("a")
    plan = make_plan(balancer, pinned="a")
    route = plan.next()
    assert route is not None
    started = plan.start(route)
    error = RateLimitError("HTTP 429", status_code=429, route="a")
    plan.failed(route, started, error, "status", status_code=429, retry_after=3.0)
    clock.advance(1.0)
    assert plan.next() is route
    assert plan.delay == pytest.approx(2.0)  # retry_after_until - now, above the backoff


# -- deadline and timeout ----------------------------------------------------------------


def test_timeout_is_the_route_timeout_or_what_is_left_of_the_deadline(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer = make_balancer(route_config("a", timeout=5.0), route_config("b", timeout=5.0))
    plan = make_plan(balancer, deadline=7.0)
    first = plan.next()
    assert first is not None and plan.timeout == 5.0
    clock.advance(4.0)
    started = plan.start(first)
    plan.failed(first, started, RouteConnectionError("x", route=first.name), "connect_error")
    second = plan.next()
    assert second is not None and second is not first
    assert plan.timeout == pytest.approx(3.0)


def test_timeout_accounts_for_the_delay(make_balancer: MakeBalancer, clock: FakeClock) -> None:
    balancer = make_balancer(route_config("a", timeout=50.0))
    retry = RetryConfig(max_retries=3, backoff_initial=2.0, backoff_max=2.0)
    plan = make_plan(balancer, retry=retry, deadline=10.0)
    route = plan.next()
    assert route is not None and plan.timeout == 10.0
    fail(plan, route, clock)  # now = 0.01
    assert plan.next() is route
    assert 1.0 <= plan.delay <= 2.0
    assert plan.timeout == pytest.approx(10.0 - 0.01 - plan.delay)


def test_a_delay_past_the_deadline_ends_the_plan(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer = make_balancer("a")
    retry = RetryConfig(max_retries=3, backoff_initial=2.0, backoff_max=2.0)
    plan = make_plan(balancer, retry=retry, deadline=0.9)  # backoff is 1..2 s
    route = plan.next()
    assert route is not None
    fail(plan, route, clock)
    assert plan.next() is None
    assert len(plan.attempts) == 1


def test_a_retry_after_past_the_deadline_ends_the_plan(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer = make_balancer("a")
    plan = make_plan(balancer, deadline=5.0)
    route = plan.next()
    assert route is not None
    started = plan.start(route)
    error = RateLimitError("HTTP 429", status_code=429, route="a")
    plan.failed(route, started, error, "status", status_code=429, retry_after=8.0)
    assert plan.next() is None


def test_no_attempt_after_the_deadline_even_to_a_fresh_route(
    balancer: Balancer, clock: FakeClock
) -> None:
    plan = make_plan(balancer, fallback="fb", deadline=1.0)
    route = plan.next()
    assert route is not None
    fail(plan, route, clock)
    clock.advance(1.0)
    assert plan.next() is None


# -- reporting and the final error ------------------------------------------------------


def test_failed_ejects_the_route_and_finished_does_not(
    balancer: Balancer, clock: FakeClock
) -> None:
    plan = make_plan(balancer)
    first = plan.next()
    assert first is not None
    fail(plan, first, clock)
    assert not first.health.healthy and first.failures == 1 and first.in_flight == 0
    assert first.last_error is not None and "refused" in first.last_error

    second = plan.next()
    assert second is not None and second is not first
    started = plan.start(second)
    error = BadRequestError("HTTP 400: bad", status_code=400, route=second.name)
    plan.finished(second, started, error, "status", 400)
    assert second.health.healthy and second.failures == 0 and second.in_flight == 0
    assert plan.attempts[-1].outcome == "status" and plan.attempts[-1].status_code == 400
    assert plan.last_error is error


def test_exhausted_lists_the_attempts_in_order(balancer: Balancer, clock: FakeClock) -> None:
    plan = make_plan(balancer, fallback="fb", max_retries=3)
    errors = []
    order: list[str] = []
    while (route := plan.next()) is not None:
        clock.advance(plan.delay)
        started = plan.start(route)
        clock.advance(0.5)
        if len(order) % 2:
            error: ServerError | RouteConnectionError = ServerError(
                "HTTP 502: bad gateway", status_code=502, route=route.name
            )
            plan.failed(route, started, error, "status", status_code=502)
        else:
            error = RouteConnectionError("could not connect (refused)", route=route.name)
            plan.failed(route, started, error, "connect_error")
        errors.append(error)
        order.append(route.name)
    assert order[3] == "fb"
    exc = plan.exhausted()
    assert isinstance(exc, AllRoutesFailedError)
    assert [a.route for a in exc.attempts] == order
    assert [a.outcome for a in exc.attempts] == ["connect_error", "status"] * 2
    assert [a.status_code for a in exc.attempts] == [None, 502, None, 502]
    assert exc.attempts[0].error == "could not connect (refused)"
    assert exc.attempts[1].error == "HTTP 502: bad gateway"
    assert all(a.latency_s == pytest.approx(0.5) for a in exc.attempts)
    assert exc.last_error is errors[-1]
    assert exc.routes == list(dict.fromkeys(order))
    text = str(exc)
    assert "4 attempt(s)" in text and "bad gateway" in text
    for name in order:
        assert name in text


def test_exhausted_without_attempts(balancer: Balancer) -> None:
    exc = make_plan(balancer).exhausted()
    assert exc.attempts == () and exc.last_error is None
    assert "no attempt could be made" in str(exc)


def test_plan_ejection_reaches_the_balancer_stats(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer = make_balancer("a", health=HealthConfig(cooldown=5, max_cooldown=60))
    plan = make_plan(balancer, pinned="a")
    route = plan.next()
    assert route is not None
    fail(plan, route, clock)
    stats = balancer.stats()["a"]
    assert stats["state"] == "ejected" and stats["failures"] == 1 and stats["in_flight"] == 0


def test_a_call_that_must_keep_its_model_never_gets_the_fallback(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    """An SDK call to /v1/embeddings (say) is not answered by the fallback's other model."""
    balancer = make_balancer("a", "b", route_config("fb", model="small"), fallback_route="fb")
    usual = plan_call(balancer, route=None, model="m", retry=RetryConfig(), deadline=10)
    kept = plan_call(
        balancer, route=None, model="m", retry=RetryConfig(), deadline=10, fallback=False
    )
    assert usual.fallback is not None and usual.fallback.routes[0].name == "fb"
    assert kept.fallback is None and kept.pinned
    assert "fb" in {name for name, _ in run_failing(usual, clock)}
    assert {name for name, _ in run_failing(kept, clock)} == {"a", "b"}
