"""Balancer: pools, the pick/report protocol, counters, EWMA, force, stats, thread safety."""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Iterator

import pytest
from conftest import FakeClock, MakeBalancer, route_config
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

from llm.config import HealthConfig
from llm.routing import Balancer, HealthChange, RouteState
from llm.routing.state import WARMUP_SAMPLES
from llm.send.log import log_health_change

SECRET = "sk-secret-123"

SNAPSHOT_KEYS = {
    "tokens",
    "route",
    "base_url",
    "model",
    "state",
    "requests",
    "successes",
    "failures",
    "in_flight",
    "latency_ewma_ms",
    "ttft_ewma_ms",
    "ejections",
    "consecutive_ejections",
    "cooldown_remaining_s",
    "last_error",
    "tokens_in_flight",
    "ms_per_token",
    "load",
    "max_model_len",
    "max_model_len_source",
    "affinity",
    "hedges",
    "discovered_by",
}


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    logger.enable("llm")
    sink = logger.add(lines.append, level="INFO", format="{level} {message}")
    try:
        yield lines
    finally:
        logger.remove(sink)
        logger.disable("llm")


# -- pools -------------------------------------------------------------------------------


def test_pools_by_model_leave_out_the_fallback(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer(
        "a",
        route_config("g", model="m2"),
        "b",
        "fb",
        route_config("solo", model="m3"),
        fallback_route="fb",
    )
    pool = balancer.pool("m")
    assert pool is not None
    assert [r.name for r in pool.routes] == ["a", "b"]  # config order, no fallback
    assert pool.names == frozenset({"a", "b"})
    assert pool.model == "m"
    assert balancer.pool("m") is pool  # cached
    m2 = balancer.pool("m2")
    assert m2 is not None and [r.name for r in m2.routes] == ["g"]
    assert balancer.pool("nope") is None
    assert balancer.models() == ["m", "m2", "m3"]


def test_the_fallback_is_the_pool_of_its_model_when_it_is_the_only_route(
    make_balancer: MakeBalancer,
) -> None:
    balancer = make_balancer("a", route_config("fb", model="big"), fallback_route="fb")
    pool = balancer.pool("big")
    assert pool is not None and [r.name for r in pool.routes] == ["fb"]
    main = balancer.pool("m")
    assert main is not None and "fb" not in main.names


def test_unknown_fallback_route_is_a_key_error(make_balancer: MakeBalancer) -> None:
    with pytest.raises(KeyError):
        make_balancer("a", fallback_route="nope")


def test_single_route_pool(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer("a", "b", "fb", fallback_route="fb")
    single = balancer.single("b")
    assert [r.name for r in single.routes] == ["b"]
    assert single.routes[0] is balancer.routes["b"]
    assert single.names == frozenset({"b"})
    assert balancer.single("b") is single
    assert [r.name for r in balancer.single("fb").routes] == ["fb"]
    with pytest.raises(KeyError):
        balancer.single("nope")


def test_pool_is_weighted_only_when_weights_differ(make_balancer: MakeBalancer) -> None:
    same = make_balancer(route_config("a", weight=2), route_config("b", weight=2)).pool("m")
    mixed = make_balancer(route_config("a", weight=1), route_config("b", weight=2)).pool("m")
    assert same is not None and not same.weighted
    assert mixed is not None and mixed.weighted


# -- reporting ---------------------------------------------------------------------------


def test_counters_and_in_flight_stay_exact(make_balancer: MakeBalancer, clock: FakeClock) -> None:
    balancer = make_balancer("a")
    route = balancer.routes["a"]
    starts = [balancer.dispatch(route) for _ in range(4)]
    assert route.in_flight == 4 and route.requests == 4
    clock.advance(1.0)
    balancer.succeeded(route, starts[0], latency=1.0)
    assert route.in_flight == 3 and route.successes == 1
    balancer.finished(route, starts[1])
    assert route.in_flight == 2
    balancer.failed(route, starts[2], "connect error")
    assert route.in_flight == 1 and route.failures == 1
    balancer.failed(route, starts[3], "timeout")  # in flight before the ejection
    assert route.in_flight == 0
    assert (route.requests, route.successes, route.failures) == (4, 1, 2)
    assert route.health.ejections == 1


def test_tokens_in_flight_and_done_stay_exact(make_balancer: MakeBalancer) -> None:
    """Each report gives back the tokens its dispatch asked for, however the call ended."""
    balancer = make_balancer("a")
    route = balancer.routes["a"]
    starts = [balancer.dispatch(route, tokens) for tokens in (100, 20, 3)]
    assert route.tokens_in_flight == 123 and balancer.stats()["a"]["tokens_in_flight"] == 123
    balancer.succeeded(route, starts[0], latency=0.5, tokens=100)
    assert (route.tokens_in_flight, route.in_flight, route.done) == (23, 2, 1)
    balancer.finished(route, starts[1], tokens=20)
    assert (route.tokens_in_flight, route.in_flight, route.done) == (3, 1, 2)
    balancer.failed(route, starts[2], "timeout", tokens=3)
    assert (route.tokens_in_flight, route.in_flight, route.done) == (0, 0, 3)
    assert route.requests - route.done == route.in_flight


def test_dispatch_returns_the_clock_time(make_balancer: MakeBalancer, clock: FakeClock) -> None:
    balancer = make_balancer("a")
    clock.advance(42.5)
    assert balancer.dispatch(balancer.routes["a"]) == 42.5


def test_ewma_with_alpha(make_balancer: MakeBalancer, clock: FakeClock) -> None:
    balancer = make_balancer("a", health=HealthConfig(ewma_alpha=0.25))
    route = balancer.routes["a"]
    assert route.latency_ewma is None and route.ttft_ewma is None
    # the first WARMUP_SAMPLES (3) samples are a warm-up: the least so far; from the 4th on
    # new = old + alpha * (sample - old)
    steps = [
        (2.0, 2.0),  # the first sample as is
        (4.0, 2.0),  # warm-up: a larger sample does not raise it
        (1.0, 1.0),  # warm-up: the least so far
        (3.0, 1.5),  # 1 + 0.25 * (3 - 1)
        (0.0, 1.125),  # 1.5 + 0.25 * (0 - 1.5)
        (2.125, 1.375),
    ]
    for n, (latency, expected) in enumerate(steps, start=1):
        clock.advance(1.0)
        balancer.succeeded(route, balancer.dispatch(route), latency=latency)
        assert route.latency_ewma == pytest.approx(expected)
        assert route.latency_samples == n
        assert route.last_sample_at == clock.now
    assert route.ttft_ewma is None and route.ttft_samples == 0  # latency samples only
    # time to first token has a warm-up of its own, however many latency samples came before
    for ttft, expected in [(0.4, 0.4), (0.2, 0.2), (0.3, 0.2), (0.6, 0.3)]:
        balancer.succeeded(route, balancer.dispatch(route), latency=None, ttft=ttft)
        assert route.ttft_ewma == pytest.approx(expected)
    assert route.ttft_samples == 4
    assert route.latency_ewma == pytest.approx(1.375) and route.latency_samples == 6


def test_the_warm_up_keeps_the_least_of_the_first_three_samples(
    make_balancer: MakeBalancer,
) -> None:
    """A slow first answer (the client's own setup: connection, TLS) does not stick: the
    estimate during the warm-up is the least sample so far; the 4th sample is averaged in."""
    balancer = make_balancer("a")  # ewma_alpha 0.3
    route = balancer.routes["a"]
    assert WARMUP_SAMPLES == 3
    for latency, expected in [(0.1, 0.1), (0.002, 0.002), (0.003, 0.002)]:
        balancer.succeeded(route, balancer.dispatch(route), latency=latency, ttft=latency)
        assert route.latency_ewma == expected and route.ttft_ewma == expected
    balancer.succeeded(route, balancer.dispatch(route), latency=0.01, ttft=0.01)
    assert route.latency_ewma == pytest.approx(0.002 + 0.3 * (0.01 - 0.002))  # 0.0044
    assert route.ttft_ewma == pytest.approx(0.0044)
    assert (route.latency_samples, route.ttft_samples) == (4, 4)
    # a success without a measurement is no sample: it neither counts nor moves the EWMA
    balancer.succeeded(route, balancer.dispatch(route))
    assert route.latency_samples == 4 and route.latency_ewma == pytest.approx(0.0044)
    assert balancer.stats()["a"]["latency_ewma_ms"] == 4.4


def test_success_without_a_sample_does_not_refresh_last_sample_at(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer = make_balancer("a")
    route = balancer.routes["a"]
    balancer.succeeded(route, balancer.dispatch(route), latency=0.1)
    clock.advance(5.0)
    balancer.succeeded(route, balancer.dispatch(route))
    assert route.last_sample_at == 0.0
    assert route.latency_ewma == pytest.approx(0.1)


def test_failed_sets_last_error_and_ejects(make_balancer: MakeBalancer, clock: FakeClock) -> None:
    balancer = make_balancer("a", "b")
    a = balancer.routes["a"]
    started = balancer.dispatch(a)
    clock.advance(0.5)
    balancer.failed(a, started, "HTTP 502: bad gateway")
    assert a.last_error == "HTTP 502: bad gateway"
    assert not a.health.healthy
    assert 4.0 <= a.health.ejected_until - clock.now <= 5.0  # cooldown 5, jittered down
    assert a.retry_after_until == float("-inf")
    pool = balancer.pool("m")
    assert pool is not None
    assert {balancer.pick(pool).name for _ in range(10)} == {"b"}  # type: ignore[union-attr]


def test_failed_with_retry_after(make_balancer: MakeBalancer, clock: FakeClock) -> None:
    balancer = make_balancer("a")
    a = balancer.routes["a"]
    clock.advance(10.0)
    balancer.failed(a, balancer.dispatch(a), "429", retry_after=20.0)
    assert a.retry_after_until == 30.0
    assert a.health.ejected_until >= 30.0  # the cooldown honours the hint


def test_finished_does_not_eject(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer("a")
    a = balancer.routes["a"]
    balancer.finished(a, balancer.dispatch(a))
    assert a.health.healthy and a.failures == 0 and a.last_error is None


def test_trial_slot_through_the_balancer(make_balancer: MakeBalancer, clock: FakeClock) -> None:
    balancer = make_balancer("a")
    a = balancer.routes["a"]
    pool = balancer.pool("m")
    assert pool is not None
    balancer.failed(a, balancer.dispatch(a), "down")
    assert balancer.pick(pool) is None
    clock.now = a.health.ejected_until
    assert balancer.pick(pool) is a
    started = balancer.dispatch(a)  # the trial
    assert balancer.pick(pool) is None and not balancer.available(pool)
    balancer.succeeded(a, started, latency=0.1)
    assert balancer.pick(pool) is a
    assert a.health.healthy and a.health.consecutive_ejections == 0


def test_force_returns_the_route_ready_first(make_balancer: MakeBalancer, clock: FakeClock) -> None:
    balancer = make_balancer("a", "b", "c", health=HealthConfig(cooldown=5, max_cooldown=8))
    a, b, c = (balancer.routes[n] for n in "abc")
    balancer.failed(a, balancer.dispatch(a), "down")  # ready at <= 5
    clock.advance(1.0)
    balancer.failed(b, balancer.dispatch(b), "down")  # ready at <= 6
    clock.advance(1.0)
    balancer.failed(c, balancer.dispatch(c), "down")  # ready at <= 7
    assert balancer.force([a, b, c]) is a
    assert balancer.force([c, b]) is b
    assert balancer.force([]) is None


def test_force_honours_retry_after_beyond_the_cooldown(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer = make_balancer("a", "b", health=HealthConfig(cooldown=5, max_cooldown=8))
    a, b = balancer.routes["a"], balancer.routes["b"]
    balancer.failed(a, balancer.dispatch(a), "429", retry_after=50.0)
    assert a.health.ejected_until == pytest.approx(8.0)  # the hint, capped at max_cooldown
    assert a.retry_after_until == 50.0
    clock.advance(5.0)
    balancer.failed(b, balancer.dispatch(b), "down")
    assert a.health.ejected_until < b.health.ejected_until <= 10.0
    # a's cooldown ends first, but its Retry-After is honoured: b is ready first
    assert balancer.force([a, b]) is b
    assert balancer.force([a]) is a


# -- stats -------------------------------------------------------------------------------


def test_stats_count_prompt_and_cached_tokens(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer("a", "b")
    a = balancer.routes["a"]
    assert balancer.stats()["a"]["tokens"] == {"prompt": 0, "cached": 0, "cache_hit_rate": None}
    balancer.succeeded(a, balancer.dispatch(a), 0.1, prompt_tokens=422, cached_tokens=0)
    balancer.succeeded(a, balancer.dispatch(a), 0.1, prompt_tokens=422, cached_tokens=384)
    balancer.succeeded(a, balancer.dispatch(a), 0.1)  # an answer without usage
    assert balancer.stats()["a"]["tokens"] == {
        "prompt": 844,
        "cached": 384,
        "cache_hit_rate": round(384 / 844, 4),
    }
    assert balancer.stats()["b"]["tokens"]["prompt"] == 0


def test_stats_snapshot_shows_state_transitions(
    make_balancer: MakeBalancer, clock: FakeClock
) -> None:
    balancer = make_balancer("a", "b")
    stats = balancer.stats()
    assert list(stats) == ["a", "b"]
    assert set(stats["a"]) == SNAPSHOT_KEYS
    assert stats["a"]["route"] == "a"
    assert stats["a"]["model"] == "m"
    assert stats["a"]["base_url"] == "http://127.0.0.1:1/a/v1"
    assert stats["a"]["state"] == "healthy"
    assert stats["a"]["cooldown_remaining_s"] == 0.0
    assert stats["a"]["latency_ewma_ms"] is None
    assert stats["a"]["tokens_in_flight"] == 0 and stats["a"]["ms_per_token"] is None
    assert stats["a"]["load"] == {
        "estimate": 0.0,
        "reported_waiting": None,
        "reported_running": None,
        "kv_cache_usage": None,
        "slots": None,
        "report_source": None,
        "report_age_s": None,
        "report_fresh": False,
    }

    a = balancer.routes["a"]
    balancer.succeeded(a, balancer.dispatch(a), latency=0.25, ttft=0.125)
    balancer.failed(a, balancer.dispatch(a), "connect error")
    until = a.health.ejected_until
    snap = balancer.stats()["a"]
    assert snap["state"] == "ejected"
    assert snap["cooldown_remaining_s"] == pytest.approx(until)
    assert snap["latency_ewma_ms"] == 250.0 and snap["ttft_ewma_ms"] == 125.0
    assert (snap["requests"], snap["successes"], snap["failures"]) == (2, 1, 1)
    assert snap["in_flight"] == 0 and snap["tokens_in_flight"] == 0
    assert snap["ejections"] == 1 and snap["consecutive_ejections"] == 1
    assert snap["last_error"] == "connect error"

    clock.advance(until / 2)
    assert balancer.stats()["a"]["cooldown_remaining_s"] == pytest.approx(until / 2)
    clock.now = until
    snap = balancer.stats()["a"]
    assert snap["state"] == "probing" and snap["cooldown_remaining_s"] == 0.0
    balancer.succeeded(a, balancer.dispatch(a), latency=0.25)
    snap = balancer.stats()["a"]
    assert snap["state"] == "healthy"
    assert snap["consecutive_ejections"] == 0 and snap["ejections"] == 1
    assert balancer.stats()["b"]["state"] == "healthy"


def test_stats_and_repr_never_show_the_api_key(make_balancer: MakeBalancer) -> None:
    balancer = make_balancer(route_config("a", api_key=SECRET, headers={"x-api-key": SECRET}), "b")
    a = balancer.routes["a"]
    balancer.failed(a, balancer.dispatch(a), "HTTP 401: Unauthorized", loud=True)
    assert SECRET not in repr(balancer.stats())
    assert SECRET not in repr(balancer.routes)
    assert SECRET not in repr(a.config)
    assert SECRET not in repr(balancer.pool("m"))
    assert repr(a) == "<RouteState a ejected>"


def test_ejection_recovery_and_misconfiguration_are_logged(
    make_balancer: MakeBalancer, clock: FakeClock, log_lines: list[str]
) -> None:
    balancer = make_balancer("a", on_health=log_health_change)  # as every provider does
    a = balancer.routes["a"]
    balancer.failed(a, balancer.dispatch(a), "HTTP 401: Unauthorized", loud=True)
    assert any(line.startswith("ERROR") and "misconfigured" in line for line in log_lines)
    assert any(line.startswith("WARNING") and "route a ejected" in line for line in log_lines)
    clock.now = a.health.ejected_until
    balancer.succeeded(a, balancer.dispatch(a))
    assert any("route a is healthy again" in line for line in log_lines)


def test_health_changes_go_to_the_listener_and_the_balancer_itself_stays_silent(
    make_balancer: MakeBalancer, clock: FakeClock, log_lines: list[str]
) -> None:
    changes: list[HealthChange] = []
    balancer = make_balancer("a", "b", on_health=changes.append)
    a, b = balancer.routes["a"], balancer.routes["b"]
    balancer.failed(a, balancer.dispatch(a), "HTTP 401: Unauthorized", loud=True)
    balancer.failed(b, balancer.dispatch(b), "connect error")
    balancer.failed(b, balancer.dispatch(b), "late")  # ejected already, probing later
    clock.now = a.health.ejected_until
    balancer.succeeded(a, balancer.dispatch(a))
    balancer.observe_check("b", healthy=True)  # an ejected route passing a check: no change
    balancer.observe_check("a", healthy=False, reason="/health answered HTTP 503")
    kinds = [(c.kind, c.route, c.by_check) for c in changes]
    assert kinds == [
        ("misconfigured", "a", False),
        ("ejected", "a", False),
        ("ejected", "b", False),
        ("ejected", "b", False),
        ("recovered", "a", False),
        ("ejected", "a", True),
    ]
    assert changes[0].reason == "HTTP 401: Unauthorized"
    assert changes[2].cooldown_s is not None and 0 < changes[2].cooldown_s <= 5
    assert changes[-1].reason == "/health answered HTTP 503"
    assert log_lines == []  # no listener that logs: nothing logged, whatever happened


# -- thread safety -----------------------------------------------------------------------


def test_concurrent_pick_dispatch_report_keeps_counters_exact() -> None:
    ticks = itertools.count()
    balancer = Balancer(
        [route_config(n) for n in "abcd"],
        health=HealthConfig(cooldown=0.05, max_cooldown=0.2),
        clock=lambda: next(ticks) * 1e-4,  # a moving fake clock (thread-safe in CPython)
        rng=random.Random(7),
    )
    pool = balancer.pool("m")
    assert pool is not None
    threads_n, iterations = 64, 500
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads_n)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            barrier.wait()
            for _ in range(iterations):
                route = balancer.pick(pool) or balancer.force(pool.routes)
                assert route is not None
                started = balancer.dispatch(route)
                if rng.random() < 0.2:
                    balancer.failed(route, started, "boom")
                else:
                    balancer.succeeded(route, started, latency=rng.random())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    routes: list[RouteState] = list(balancer.routes.values())
    assert all(r.in_flight == 0 for r in routes)
    assert all(r.requests == r.successes + r.failures for r in routes)
    assert sum(r.requests for r in routes) == threads_n * iterations
    assert sum(r.failures for r in routes) > 0
    assert all(r.requests > 0 for r in routes)


# -- stall avoidance ---------------------------------------------------------------------------


def measured(
    balancer: Balancer, name: str, latency: float, samples: int = WARMUP_SAMPLES
) -> RouteState:
    """Route ``name`` after ``samples`` answers in ``latency`` (by default past the warm-up:
    least latency ranks it by its EWMA, no longer as a cold route)."""
    route = balancer.routes[name]
    for _ in range(samples):
        balancer.succeeded(route, balancer.dispatch(route), latency)
    return route


def test_a_route_gone_quiet_with_calls_in_flight_gets_no_new_calls(
    make_balancer: MakeBalancer, clock: FakeClock
):
    balancer = make_balancer("a", "b", health=HealthConfig(stall_factor=4, stall_min=1.0))
    pool = balancer.pool("m")
    a, b = measured(balancer, "a", 0.1), measured(balancer, "b", 0.1)
    started = balancer.dispatch(a)  # a hangs on this one
    clock.advance(0.9)  # quiet for less than max(1.0, 4 x 0.1): nothing changes yet
    assert [balancer.pick(pool).name for _ in range(4)] == ["a", "b", "a", "b"]
    clock.advance(0.2)  # quiet for 1.1 s: a is stalled
    assert [balancer.pick(pool).name for _ in range(4)] == ["b", "b", "b", "b"]
    assert a.health.healthy  # avoided, not ejected
    assert balancer.pick(pool, exclude=[b]) is a  # nothing else to take the call
    balancer.failed(b, balancer.dispatch(b), "down")  # b ejected: a is all there is
    assert balancer.pick(pool) is a
    balancer.succeeded(a, started, 1.2)  # its call ended: a is no longer quiet
    assert not balancer._stalled(a, clock())


def test_stall_needs_calls_in_flight_and_a_measured_latency(
    make_balancer: MakeBalancer, clock: FakeClock
):
    balancer = make_balancer("a", "b", health=HealthConfig(stall_factor=4, stall_min=0.5))
    a, b = balancer.routes["a"], balancer.routes["b"]
    balancer.dispatch(a)  # unmeasured: a first call may take long
    clock.advance(100)
    assert not balancer._stalled(a, clock())
    measured(balancer, "b", 0.05)
    clock.advance(100)  # b idle (nothing in flight): quiet, but not stalled
    assert b.in_flight == 0
    assert balancer.pick(balancer.pool("m"), exclude=[a]) is b


def test_stall_avoidance_can_be_turned_off(make_balancer: MakeBalancer, clock: FakeClock):
    balancer = make_balancer("a", "b", health=HealthConfig(stall_factor=0))
    pool = balancer.pool("m")
    a = measured(balancer, "a", 0.01)
    measured(balancer, "b", 0.01)
    balancer.dispatch(a)
    clock.advance(60)
    assert [balancer.pick(pool).name for _ in range(4)] == ["a", "b", "a", "b"]


def test_least_latency_skips_its_fastest_route_once_it_stalls(
    make_balancer: MakeBalancer, clock: FakeClock
):
    balancer = make_balancer(
        "fast", "slow", policy="least_latency", health=HealthConfig(stall_min=0.2)
    )
    pool = balancer.pool("m")
    fast, slow = measured(balancer, "fast", 0.01), measured(balancer, "slow", 0.1)
    balancer.dispatch(fast)
    assert balancer.pick(pool) is fast
    clock.advance(0.3)  # the fastest route has answered nothing for 0.3 s: hung
    assert balancer.pick(pool) is slow


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    policy=st.sampled_from(["round_robin", "least_latency"]),
    routes=st.lists(
        st.tuples(
            st.sampled_from([0.01, 0.1, 1.0]),  # its latency
            st.integers(0, 3),  # calls in flight
            st.sampled_from([0.0, 0.5, 2.0, 10.0]),  # then quiet for this long
        ),
        min_size=2,
        max_size=5,
    ),
    picks=st.integers(1, 6),
)
def test_a_stalled_route_is_picked_only_when_every_other_is_stalled(policy, routes, picks):
    clock = FakeClock(100.0)
    names = [f"r{i}" for i in range(len(routes))]
    balancer = Balancer(
        [route_config(name) for name in names],
        policy=policy,
        health=HealthConfig(stall_factor=4, stall_min=0.5),
        clock=clock,
        rng=random.Random(0),
    )
    pool = balancer.pool("m")
    for name, (latency, _in_flight, _quiet) in zip(names, routes, strict=True):
        measured(balancer, name, latency)
    quiet_until = {}
    for name, (_latency, in_flight, quiet) in zip(names, routes, strict=True):
        for _ in range(in_flight):
            balancer.dispatch(balancer.routes[name])
        quiet_until[name] = quiet
    clock.advance(max(quiet_until.values()))
    for _ in range(picks):
        chosen = balancer.pick(pool)
        assert chosen is not None
        if balancer._stalled(chosen, clock()):
            assert all(balancer._stalled(r, clock()) for r in pool.routes)
