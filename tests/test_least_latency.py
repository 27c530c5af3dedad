"""Least latency picks the fast route: the targets of the "Performance" issue, asserted.

How this works
--------------
Three routes at 10, 40 and 160 ms (``llm.perf.policy``). The pure simulation (a real Balancer
on a fake clock, no sockets, no sleeping) asserts the targets at 1 and 16 calls in flight
with the default health settings, over about 20 simulated seconds (two re-probe intervals):

- after the warm-up the mean latency is within 1.25x of always choosing the 10 ms route;
- the slower routes are still re-probed: at least once each (at 16 in flight the 40 ms route
  needs none: it has a share of the calls and stays measured), at most once per
  reprobe_interval each, well under 1 % of the calls;
- when the 10 ms route slows to 200 ms the traffic moves within ``concurrency`` calls (1
  sequentially, within 16 at 16 in flight), and from then on the old fast route only gets
  re-probes sequentially, a small share (about 3 %) at 16 in flight.

Least latency weighs each EWMA by the route's calls in flight plus one (peak EWMA), and a
route stays cold (tried first) until its third sample, its estimate the least of those. In
these simulations latencies do not grow with load, so at 16 in flight the weighting spreads
calls that always choosing the fastest would not: the 40 ms route gets about 5 % of phase 1
(a mean of 1.165x instead of 1.01x under the old rule, the plain lowest EWMA) and the
200 ms route keeps about 3 % of phase 2. The tests pin those figures with a margin.

At a low rate (one call every 5 s on average, below the re-probe interval) the same targets
hold thanks to least_latency's probe budget, the move within one window (50 calls). A seeded
random walk compares every pick with the documented rule (re-probes included, which the
state machine of test_properties.py seldom reaches). One small live run (fake vLLM servers
in child processes, 8 calls in flight) asserts the same targets with loose bounds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Container
from dataclasses import dataclass
from functools import cache

import pytest
from conftest import FakeClock, route_config

from llm.config import HealthConfig
from llm.perf import policy as perf
from llm.perf.policy import (
    FAST,
    IN_FLIGHT_MOST,
    PolicyReport,
    PolicyRun,
    moved_after,
    moved_most,
    simulate,
)
from llm.routing import Balancer, LeastLatency, Pool, RouteState
from llm.routing.state import WARMUP_SAMPLES

SLOW = ("b", "c")
# concurrency -> phase 1 (and phase 2) calls: about 20 simulated seconds of traffic
CALLS = {1: 2000, 16: 32000}


@cache
def closed_loop(concurrency: int, seed: int = 0) -> PolicyRun:
    calls = CALLS[concurrency]
    return simulate(concurrency=concurrency, calls=calls, warmup=calls // 20, seed=seed)


@cache
def low_rate(seed: int = 0) -> PolicyRun:
    return simulate(concurrency=1, calls=600, warmup=100, think=5.0, seed=seed)


# -- the definition of "moved" ----------------------------------------------------------


def test_moved_after_is_the_first_call_elsewhere_then_at_most_one_in_any_window() -> None:
    assert moved_after(["a"] * 16 + ["b"] * 100) == 16
    assert moved_after(["a"] + ["b"] * 30 + ["a"] + ["b"] * 60) == 1  # a re-probe is allowed
    # two calls to a within 50: not moved until the second one is behind
    assert moved_after(["a"] + ["b"] * 10 + ["a"] + ["b"] * 10 + ["a"] + ["b"] * 60) == 12
    assert moved_after(["b"] * 5 + ["a"] * 3 + ["b"] * 5, window=4) == 8  # a later burst
    assert moved_after(["b"] * 5 + ["a", "b", "b", "b", "a"], window=4) == 0  # 4 apart: fine
    assert moved_after(["b", "a", "a"]) is None  # never elsewhere after the last burst
    assert moved_after(["a"] * 10) is None
    assert moved_after([]) is None
    # with calls in flight up to `most` of any window are allowed
    spread = ["a"] + ["b"] * 20 + ["a"] + ["b"] * 20 + ["a"] + ["b"] * 60
    assert moved_after(spread) == 22  # a, 20 b, a, 20 b, a: moved after the second a
    assert moved_after(spread, most=3) == 1
    assert moved_after(["a"] * 13 + spread, most=3) == 14
    assert moved_after(["b", "a", "a", "a", "b"], most=2) == 4
    assert moved_after(["b", "a", "a", "b"], most=2) == 0
    with pytest.raises(ValueError, match="most"):
        moved_after(spread, most=0)
    assert (moved_most(1), moved_most(2), moved_most(16)) == (1, IN_FLIGHT_MOST, IN_FLIGHT_MOST)
    assert IN_FLIGHT_MOST == 3


# -- the simulation: the targets ----------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 16])
def test_mean_latency_after_warmup_is_within_1_25x_of_always_fast(concurrency: int) -> None:
    run = closed_loop(concurrency)
    assert run.reference_ms == 10.0 and run.errors == 0
    assert run.ratio <= 1.25  # the target (issue 5)
    if concurrency == 1:
        assert run.ratio <= 1.02  # what it actually achieves: re-probes cost ~1 %, jitter ~0.3 %
        assert run.shares[FAST] >= 0.99
        return
    # 16 in flight: each EWMA is weighted by the route's calls in flight plus one, so a at
    # 10 ms with 4 or more in flight (10 x 5 = 50) costs more than b at 40 ms with none
    # (40 x 1) and b takes a share. These latencies do not grow with load, so the share is
    # pure cost here: measured 1.165 and a 94.5 % (seeds 0-3: 1.1638-1.1656, 94.52-94.55 %;
    # 1.0007 and 99.99 % under the old rule). Bounds both ways: the weighting must spread.
    assert 1.12 <= run.ratio <= 1.20
    assert 0.93 <= run.shares[FAST] <= 0.96
    assert 0.04 <= run.shares["b"] <= 0.07
    assert run.shares["c"] <= 0.001  # 160 ms: a costs that much only with 15 in flight


@pytest.mark.parametrize("concurrency", [1, 16])
def test_slow_routes_are_still_reprobed_and_only_that(concurrency: int) -> None:
    run = closed_loop(concurrency)
    assert run.duration_s >= 2 * run.reprobe_interval  # long enough for two re-probes
    counted = run.calls - run.warmup
    probes = run.probes
    assert probes is not None  # simulated: re-probes are told apart from other calls
    for name in SLOW:
        # at most one re-probe per reprobe_interval (and one at the start of the count)
        assert probes[name] <= run.duration_s / run.reprobe_interval + 1
    assert sum(probes.values()) <= 0.01 * counted
    assert probes["c"] >= 1 and run.reprobes["c"] == probes["c"]  # c: re-probes only
    if concurrency == 1:
        assert probes["b"] >= 1 and run.reprobes == probes  # every other call a re-probe
    else:
        # b's share at 16 in flight (test above) keeps it measured: it is never stale
        assert probes["b"] == 0 and run.reprobes["b"] >= 0.04 * counted


@pytest.mark.parametrize("concurrency", [1, 16])
def test_traffic_moves_within_concurrency_calls_after_the_fast_route_slows(
    concurrency: int,
) -> None:
    """Sequentially: the first answer at 200 ms lifts the EWMA above the 40 ms route's
    (alpha 0.3: 10 + 0.3 * 190 = 67 ms), so only the call sent before it came back went to
    ``a``; from then on ``a`` gets its re-probes, at most one of any 50 calls.

    At 16 in flight the 40 ms route always had a share, so "moved" allows ``a`` up to
    ``IN_FLIGHT_MOST`` (3) of any 50 calls: its slow calls pile up in flight, each weighing
    its EWMA up, and the traffic leaves it within 16 calls (measured 13-15 over seeds 0-9)
    before its first slow answer is back. It keeps a share afterwards, as any route 5x slower
    than the best does under the in-flight weighting: measured 3.2-3.3 %, ``c`` 5.6-5.8 %, a
    mean of 52 ms, 1.3x the 40 ms of always choosing ``b`` (the best achievable: latencies do
    not grow with load here)."""
    run = closed_loop(concurrency)
    assert run.moved_most == moved_most(concurrency)
    assert run.moved_after is not None
    assert 1 <= run.moved_after <= concurrency
    assert run.mean_after_move_ms is not None
    if concurrency == 1:
        assert run.shares_after_move[FAST] <= 0.01  # its re-probes only
        assert run.shares_after_move["b"] >= 0.98
        assert run.mean_after_move_ms <= 1.1 * 40
    else:
        assert run.shares_after_move[FAST] <= 0.05
        assert run.shares_after_move["b"] >= 0.88
        assert run.mean_after_move_ms <= 1.4 * 40


def test_low_rate_keeps_the_targets() -> None:
    """One call every 5 s (below the 10 s interval): without the probe budget two calls in
    three were re-probes (4.6x the fast route's latency); the budget holds them to ~10 %.

    The move takes up to one window of calls here (1 to 25 over ten seeds): after its first
    200 ms answer the old fast route's EWMA is only 67 ms, and the budget, sized by the EWMA,
    lets it be re-probed again after 7 picks; each re-probe lifts the EWMA and spaces the next
    one further, until they are more than 50 calls apart."""
    run = low_rate()
    assert run.ratio <= 1.25
    assert run.ratio <= 1.15
    for name in SLOW:
        assert 1 <= run.reprobes[name] <= 0.02 * (run.calls - run.warmup)
    assert run.moved_after is not None and run.moved_after <= 50
    assert run.shares_after_move[FAST] <= 0.02 and run.shares_after_move["b"] >= 0.95


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_targets_hold_for_other_seeds(seed: int) -> None:
    for concurrency in CALLS:
        run = closed_loop(concurrency, seed)
        assert run.ratio <= 1.25
        assert run.ratio <= (1.02 if concurrency == 1 else 1.20)
        assert run.probes is not None and run.probes["c"] >= 1
        assert all(run.reprobes[name] >= 1 for name in SLOW)
        assert run.moved_after is not None and run.moved_after <= concurrency
    run = low_rate(seed)
    assert run.ratio <= 1.25 and run.moved_after is not None and run.moved_after <= 50


def test_the_simulation_is_deterministic() -> None:
    first = simulate(concurrency=16, calls=600, warmup=50, seed=7)
    again = simulate(concurrency=16, calls=600, warmup=50, seed=7)
    other = simulate(concurrency=16, calls=600, warmup=50, seed=8)
    assert first == again
    assert first.mean_ms != other.mean_ms  # the seed drives the jitter
    assert abs(sum(first.shares.values()) - 1.0) < 1e-3
    assert first.calls == 600 and first.after == 600


class Recording(LeastLatency):
    """least_latency, noting the clock and the calls in flight at every pick."""

    def __init__(self) -> None:
        super().__init__(10.0)
        self.seen: list[tuple[float, int]] = []

    def choose(
        self,
        pool: Pool,
        exclude: Container[RouteState],
        now: float,
        stream: bool,
        tokens: int = 0,
    ) -> RouteState | None:
        self.seen.append((now, sum(r.in_flight for r in pool.routes)))
        return super().choose(pool, exclude, now, stream)


def test_the_simulation_keeps_concurrency_calls_in_flight_in_time_order() -> None:
    recording = Recording()
    run = simulate(concurrency=16, calls=400, warmup=0, after=100, policy=recording)
    assert len(recording.seen) == 500
    times = [now for now, _ in recording.seen]
    assert times == sorted(times) and times[0] == 0.0 and times[-1] > 0.0
    # 16 sent at t = 0, then each answer is reported before the next call is picked
    assert [busy for _, busy in recording.seen[:16]] == list(range(16))
    assert {busy for _, busy in recording.seen[16:]} == {15}
    # the cold start spreads the first 16 (6/5/5); the 17th follows a's first answer (~10 ms):
    # a has one sample, still cold (fewer than 3) like b and c, all three with 5 in flight:
    # a, by pool order (under the old rule a was measured and b, unmeasured, got it)
    cold = simulate(concurrency=16, calls=16, warmup=0, after=0)
    assert cold.shares == {"a": 0.375, "b": 0.3125, "c": 0.3125}
    cold = simulate(concurrency=16, calls=17, warmup=0, after=0)
    assert cold.shares == {"a": round(7 / 17, 4), "b": round(5 / 17, 4), "c": round(5 / 17, 4)}
    assert run.moved_after == 13


def test_close_routes_share_calls_in_flight_and_the_faster_takes_them_one_at_a_time() -> None:
    """Routes at 10 and 12 ms in the closed loop: at 16 in flight the in-flight weighting
    spreads the calls over both (10 x (k + 1) against 12 x (j + 1): about 9 and 7 in flight);
    one at a time, the 10 ms route takes every call but b's re-probes."""
    latencies = {"a": 0.010, "b": 0.012}
    burst = simulate(concurrency=16, calls=4000, warmup=200, after=0, latencies=latencies)
    # throughputs 9 / 10 ms and 7 / 12 ms: a's share about 0.9 / (0.9 + 0.583) = 61 %
    assert 0.55 <= burst.shares["a"] <= 0.65 and 0.35 <= burst.shares["b"] <= 0.45
    sequential = simulate(concurrency=1, calls=2000, warmup=100, after=0, latencies=latencies)
    assert sequential.shares["a"] >= 0.998
    assert sequential.probes is not None and sequential.reprobes == sequential.probes


def test_the_policy_can_be_swapped_to_compare() -> None:
    """The simulation takes any policy: a round robin spreads the traffic evenly and pays for
    it (mean (10 + 40 + 160) / 3 = 70 ms), which is what least_latency is measured against."""
    run = simulate(concurrency=1, calls=900, warmup=0, after=0, policy="round_robin")
    assert run.shares == {"a": 0.3333, "b": 0.3333, "c": 0.3333}
    assert 6.5 <= run.ratio <= 7.5


# -- the rule, pick by pick ----------------------------------------------------------------


@dataclass
class Seen:
    """What the walk knows of one route, kept by the walk itself: its modelled EWMAs and
    sample counts, when it was last measured and re-probed, its calls in flight."""

    latency: float | None = None
    latency_samples: int = 0
    ttft: float | None = None
    ttft_samples: int = 0
    last_sample_at: float = float("-inf")
    probe_at: float = float("-inf")
    in_flight: int = 0

    def sample(self, latency: float, ttft: float, now: float, alpha: float) -> None:
        self.latency_samples += 1
        self.latency = smoothed(self.latency, latency, self.latency_samples, alpha)
        self.ttft_samples += 1
        self.ttft = smoothed(self.ttft, ttft, self.ttft_samples, alpha)
        self.last_sample_at = now


def smoothed(old: float | None, sample: float, n: int, alpha: float) -> float:
    """The EWMA after the ``n``-th sample: the least sample so far during the warm-up (the
    first WARMUP_SAMPLES), then ``old + alpha * (sample - old)``."""
    if n <= WARMUP_SAMPLES:
        return sample if old is None else min(old, sample)
    assert old is not None
    return old + alpha * (sample - old)


def expected_pick(
    candidates: list[RouteState],
    seen: dict[str, Seen],
    now: float,
    stream: bool,
    since_probe: int,
    interval: float,
    budget: float,
) -> tuple[RouteState, bool]:
    """README "Routing policies", least_latency: the route with fewer than WARMUP_SAMPLES
    samples (of latency; of time to first token for streams) with the fewest in flight (pool
    order) first, if it has none in flight; else the best route is the lowest EWMA times
    calls in flight plus one among the measured ones (pool order on a tie), or that warming
    up route when none is measured; and the stale route (not the best, measured in either
    kind; last sample and last re-probe older than the interval) measured longest ago goes
    first when picks since the last re-probe * budget * the best's EWMA >= its EWMA - the
    best's (raw EWMAs, none counting as 0); else the best."""

    def score(route: RouteState) -> float | None:
        known = seen[route.name]
        return known.ttft if stream else known.latency

    def samples(route: RouteState) -> int:
        known = seen[route.name]
        return known.ttft_samples if stream else known.latency_samples

    def cost(route: RouteState) -> float:
        ewma = score(route)
        assert ewma is not None
        return ewma * (seen[route.name].in_flight + 1)

    cold = [r for r in candidates if samples(r) < WARMUP_SAMPLES]
    first_cold = min(cold, key=lambda r: seen[r.name].in_flight) if cold else None
    if first_cold is not None and seen[first_cold.name].in_flight == 0:
        return first_cold, False
    measured = [r for r in candidates if score(r) is not None]
    if not measured:
        assert first_cold is not None
        return first_cold, False
    best = min(measured, key=cost)

    def since(route: RouteState) -> float:
        known = seen[route.name]
        return max(known.last_sample_at, known.probe_at)

    def any_sample(route: RouteState) -> bool:
        return seen[route.name].latency is not None or seen[route.name].ttft is not None

    stale = [
        r for r in candidates if r is not best and any_sample(r) and since(r) < now - interval
    ]
    if stale:
        oldest = min(stale, key=since)
        stale_ewma, best_ewma = score(oldest) or 0.0, score(best)
        assert best_ewma is not None
        if since_probe * budget * best_ewma >= stale_ewma - best_ewma:
            return oldest, True
    return best, False


@pytest.mark.parametrize("seed", range(6))
def test_every_pick_follows_the_documented_rule(seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock(100.0)
    interval = rng.choice([0.5, 2.0, 10.0])
    names = [f"r{i}" for i in range(rng.randint(2, 5))]
    balancer = Balancer(
        [route_config(name) for name in names],
        policy="least_latency",
        # the policy's own rule: stall avoidance (tests/test_balancer.py) is a layer above it
        health=HealthConfig(reprobe_interval=interval, stall_factor=0),
        clock=clock,
        rng=random.Random(seed),
    )
    policy = balancer.policy
    assert isinstance(policy, LeastLatency)
    pool = balancer.pool("m")
    assert pool is not None
    base = {name: rng.choice([0.01, 0.012, 0.04, 0.16, 0.5]) for name in names}
    seen = {name: Seen() for name in names}
    since_probe = 0
    in_flight: list[tuple[RouteState, float]] = []
    probes = cold_picks = weighed = 0
    for _ in range(4000):
        clock.advance(rng.choice([0.0, 0.0, 0.001, 0.01, 0.3, 3.0, 12.0]))
        if in_flight and rng.random() < 0.5:
            route, started = in_flight.pop(rng.randrange(len(in_flight)))
            known = seen[route.name]
            known.in_flight -= 1
            # now and then a slow first answers (the client's own setup): the warm-up's case
            slow_start = known.latency_samples == 0 and rng.random() < 0.5
            latency = base[route.name] * rng.uniform(0.8, 1.2) * (10.0 if slow_start else 1.0)
            if rng.random() < 0.1:
                balancer.succeeded(route, started)  # no sample
            else:
                balancer.succeeded(route, started, latency=latency, ttft=latency / 4)
                known.sample(latency, latency / 4, clock(), balancer.alpha)
            assert (route.latency_ewma, route.ttft_ewma) == (known.latency, known.ttft)
            assert (route.latency_samples, route.ttft_samples) == (
                known.latency_samples,
                known.ttft_samples,
            )
            continue
        stream = rng.random() < 0.3
        exclude = set(rng.sample(pool.routes, rng.randint(0, 1)))
        candidates = [r for r in pool.routes if r not in exclude]
        expected, reprobe = expected_pick(
            candidates, seen, clock(), stream, since_probe, interval, policy.probe_budget
        )
        chosen = balancer.pick(pool, exclude, stream)
        assert chosen is expected
        assert chosen.last_probe_at == (clock() if reprobe else seen[chosen.name].probe_at)
        if reprobe:
            seen[chosen.name].probe_at = clock()
            probes += 1
        elif any(
            (seen[r.name].ttft_samples if stream else seen[r.name].latency_samples) < WARMUP_SAMPLES
            for r in candidates
        ):
            cold_picks += 1
        else:
            ewma = {r: seen[r.name].ttft if stream else seen[r.name].latency for r in candidates}
            weighed += chosen is not min(candidates, key=lambda r: ewma[r] or 0.0)
        since_probe = 0 if reprobe else since_probe + 1
        assert policy.since_probe[pool] == since_probe
        in_flight.append((chosen, balancer.dispatch(chosen)))
        seen[chosen.name].in_flight += 1
    # the walk reaches the re-probes, the warm-up, and picks where the calls in flight (not
    # the lowest EWMA alone) decide
    assert probes >= 5 and cold_picks >= 5 and weighed >= 5, (probes, cold_picks, weighed)


def test_the_probe_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="probe_budget"):
        LeastLatency(10.0, probe_budget=0.0)
    assert LeastLatency(10.0).probe_budget == 0.1


# -- output --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report() -> PolicyReport:
    return perf.run_all(live=False)


def test_render_markdown_has_the_section_and_a_row_per_run(report: PolicyReport) -> None:
    text = perf.render_markdown(report)
    assert text.startswith("## Least latency picks the fast route\n")
    rows = [line for line in text.splitlines() if line.startswith("| simulated")]
    assert len(rows) == len(report.simulated) == 3
    # the ratio of the sequential run, seed 0: 1.010 before the warm-up rule, whose longer
    # warm-up (3 calls each to b and c) shifts the re-probes onto other jitter draws
    assert "| 1.012 |" in rows[0]
    # 16 in flight, seed 0: ratio, shares, calls to b/c, re-probes of b/c, moved after
    assert "| 1.165 | 94.5 / 5.5 / 0.0 | 1663 / 2 | 0 / 2 | 13 |" in rows[1]
    header = next(line for line in text.splitlines() if line.startswith("| run"))
    assert header.count("|") == rows[0].count("|")
    assert "moved after" in header and "| re-probes of b/c |" in header
    assert "calls in flight plus one" in text  # the rule, stated
    # the reading quotes the 16-in-flight run's own figures
    assert "At 16 in flight the mean is 1.165x always choosing `a`" in text
    assert "moves after 13 calls" in text and "keeps 3.3 % of the calls (1.6 in 50)" in text
    assert "1.30x the 40 ms of always choosing `b`" in text


def test_json_round_trips_and_main_prints_both(
    report: PolicyReport, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert PolicyReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    calls: list[bool] = []

    def run_all(*, live: bool = True, seed: int = 0) -> PolicyReport:
        calls.append(live)
        return report

    monkeypatch.setattr(perf, "run_all", run_all)
    assert perf.main(["--no-live", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    sixteen = printed["simulated"][1]
    assert sixteen["moved_after"] == 13 and sixteen["moved_most"] == IN_FLIGHT_MOST
    assert sixteen["probes"] == {"b": 0, "c": 2}
    assert perf.main(["--no-live"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("run") and len(table) == 2 + len(report.simulated)
    assert calls == [False, False]


# -- live ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_live_least_latency_picks_the_fast_route_and_moves() -> None:
    """Three fake vLLM servers in child processes, 8 calls in flight, 300 calls per phase, a
    0.5 s re-probe interval so that re-probes happen within the run. Loose bounds: the
    latencies here include this machine's CPU contention, which grows with the calls in
    flight, so the in-flight weighting gives b a larger share than in the simulation (four
    runs: a 88.8-90.8 % and b 9 % of phase 1, ratio 1.17-1.21; after the move a 3.4-3.8 %,
    b 91-92 %, moved after 6-8 calls; the simulation at 8 in flight: a 96.5 %)."""
    concurrency = 8
    run = perf.measure_live(
        concurrency=concurrency, calls=300, after=300, warmup=50, reprobe_interval=0.5
    )
    counted = run.calls - run.warmup
    assert run.errors == 0
    assert run.moved_most == IN_FLIGHT_MOST
    assert run.ratio <= 1.5, run
    assert run.shares[FAST] >= 0.8, run
    assert run.reprobes["b"] <= 0.2 * counted, run  # b's share: the in-flight weighting's
    assert 1 <= run.reprobes["c"] <= 0.04 * counted, run  # c (160 ms): its re-probes
    assert run.moved_after is not None and run.moved_after <= 2 * concurrency, run
    assert run.shares_after_move[FAST] <= 0.08, run
    assert run.shares_after_move["b"] >= 0.85, run
