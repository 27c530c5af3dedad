"""The events a call's plan emits (llm.events), without sockets: a state machine drives plans
with random outcomes and checks the event stream against the plan's own record."""

from __future__ import annotations

import itertools
import random

import pytest
from conftest import FakeClock, route_config
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from llm.config import RetryConfig
from llm.errors import BadRequestError, RouteConnectionError
from llm.events import (
    AttemptEnded,
    AttemptStarted,
    CallEnded,
    CallInfo,
    CallStarted,
    Hook,
    Hooks,
)
from llm.routing import Balancer, plan_call
from llm.routing.plan import outcome_of, server_of

RETRY = RetryConfig(max_retries=3, backoff_initial=0.1, backoff_max=2.0, retry_after_max=10)


class Recorder(Hook):
    def __init__(self) -> None:
        self.events: list[object] = []

    def call_started(self, event: CallStarted) -> None:
        self.events.append(event)

    def attempt_started(self, event: AttemptStarted) -> None:
        event.headers["traceparent"] = f"00-{event.call.id:032x}-{event.number:016x}-01"
        self.events.append(event)

    def attempt_ended(self, event: AttemptEnded) -> None:
        self.events.append(event)

    def call_ended(self, event: CallEnded) -> None:
        self.events.append(event)


def balancer(clock: FakeClock) -> Balancer:
    routes = [route_config("a"), route_config("b"), route_config("fb", model="small")]
    return Balancer(routes, fallback_route="fb", clock=clock, rng=random.Random(0))


class PlanEvents(RuleBasedStateMachine):
    """One call at a time: start it, run attempts that succeed, fail or end neutral, end it."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.balancer = balancer(self.clock)
        self.recorder = Recorder()
        self.balancer.hooks = Hooks([self.recorder])
        self.plan = None
        self.route = None
        self.started = 0.0

    @precondition(lambda self: self.plan is None)
    @rule()
    def begin(self) -> None:
        self.recorder.events.clear()
        plan = plan_call(self.balancer, route=None, model="m", retry=RETRY, deadline=1000.0)
        call = CallInfo("chat", "m", False, None, self.clock())
        hooks = self.balancer.hooks
        hooks.emit(hooks.on_call_started, CallStarted(call))  # as the engine does
        plan.call, plan.hooks = call, hooks
        self.plan = plan

    @precondition(lambda self: self.plan is not None and self.route is None)
    @rule()
    def attempt(self) -> None:
        route = self.plan.next()
        if route is None:
            self.finish(None)
            return
        self.clock.advance(self.plan.delay)
        self.started = self.plan.start(route)
        self.route = route
        assert self.plan.attempt_headers is not None  # what the hook added is sent
        assert self.plan.attempt_headers["traceparent"].endswith(
            f"{len(self.plan.attempts) + 1:016x}-01"
        )

    @precondition(lambda self: self.route is not None)
    @rule(seconds=st.floats(0.001, 2.0), tokens=st.integers(1, 50))
    def succeed(self, seconds: float, tokens: int) -> None:
        self.clock.advance(seconds)
        self.plan.succeeded(
            self.route, self.started, seconds, None, generated=tokens, prompt_tokens=7
        )
        self.route = None
        self.finish(None)

    @precondition(lambda self: self.route is not None)
    @rule(seconds=st.floats(0.001, 2.0))
    def fail(self, seconds: float) -> None:
        self.clock.advance(seconds)
        error = RouteConnectionError("refused", route=self.route.name)
        self.plan.failed(self.route, self.started, error, "connect_error")
        self.route = None

    @precondition(lambda self: self.route is not None)
    @rule()
    def callers_fault(self) -> None:
        error = BadRequestError("bad", status_code=400, route=self.route.name)
        self.plan.finished(self.route, self.started, error, "status", 400)
        self.route = None
        self.finish(error)

    def finish(self, error: BaseException | None) -> None:
        plan = self.plan
        if error is None and not any(a.outcome == "ok" for a in plan.attempts):
            error = plan.exhausted()
        plan.ended(error)
        plan.ended(error)  # a second end emits nothing
        self.check_call(plan, error)
        self.plan = None

    def check_call(self, plan, error) -> None:
        events = self.recorder.events
        assert isinstance(events[0], CallStarted) and isinstance(events[-1], CallEnded)
        assert sum(isinstance(e, CallEnded) for e in events) == 1
        started = [e for e in events if isinstance(e, AttemptStarted)]
        ended = [e for e in events if isinstance(e, AttemptEnded)]
        assert (
            [e.number for e in started]
            == [e.number for e in ended]
            == list(range(1, len(plan.attempts) + 1))
        )
        for began, end, attempt in zip(started, ended, plan.attempts, strict=True):
            assert began.route == end.route == attempt.route
            assert end.outcome == attempt.outcome and end.status_code == attempt.status_code
            assert end.delay_s == began.delay_s >= 0
            assert end.fallback == (attempt.route == "fb")
            assert end.server_address == "127.0.0.1" and end.server_port == 1
        for previous, end in itertools.pairwise(ended):
            assert end.retry_reason == previous.outcome
        last = events[-1]
        assert last.attempts == tuple(plan.attempts)
        assert last.outcome == ("ok" if error is None else type(error).__name__)
        answered = [a.route for a in plan.attempts if a.outcome == "ok"]
        assert last.route == (answered[0] if answered else None)
        assert last.failover == bool(answered and answered[0] != plan.attempts[0].route)
        assert last.fallback == (last.route == "fb")
        if answered:
            assert last.prompt_tokens == 7 and last.completion_tokens == ended[-1].completion_tokens

    @invariant()
    def in_flight_matches_the_open_attempt(self) -> None:
        in_flight = sum(r.in_flight for r in self.balancer.routes.values())
        assert in_flight == (1 if self.route is not None else 0)


TestPlanEvents = PlanEvents.TestCase
TestPlanEvents.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_no_hooks_no_events_and_no_headers(clock: FakeClock) -> None:
    plan = plan_call(balancer(clock), route=None, model="m", retry=RETRY, deadline=10.0)
    route = plan.next()
    assert route is not None
    plan.succeeded(route, plan.start(route), 0.1)
    plan.ended()
    assert plan.call is None and plan.attempt_headers is None


def test_a_hook_that_raises_is_reported_and_the_others_still_run() -> None:
    seen: list[object] = []
    errors: list[tuple[str, str]] = []

    class Broken(Hook):
        def call_started(self, event: CallStarted) -> None:
            raise RuntimeError("boom")

    hooks = Hooks([Broken(), Recorder()], lambda hook, kind, exc: errors.append((kind, str(exc))))
    recorder = hooks.hooks[1]
    event = CallStarted(CallInfo("chat", "m", False, None, 0.0))
    hooks.emit(hooks.on_call_started, event)
    seen.extend(recorder.events)
    assert seen == [event] and errors == [("CallStarted", "boom")]
    assert hooks.on_attempt_ended and not hooks.on_route_health  # only what is overridden
    assert hooks.without_hook(recorder).hooks == hooks.hooks[:1]


@pytest.mark.parametrize(
    ("error", "outcome"),
    [(None, "ok"), (KeyboardInterrupt(), "cancelled"), (ValueError("x"), "ValueError")],
)
def test_outcome_names(error: BaseException | None, outcome: str) -> None:
    assert outcome_of(error) == outcome


def test_server_of() -> None:
    assert server_of("https://h.example/v1") == ("h.example", 443)
    assert server_of("http://[::1]:8000/v1") == ("::1", 8000)
    assert server_of("http://h:99999/v1") == ("h", None)
