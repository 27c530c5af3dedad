"""Least latency picks the fast route: a simulation and a live run of the policy.

How this works
--------------
Three routes of one model answer in 10, 40 and 160 ms (``a``, ``b``, ``c``). Calls go through
a real :class:`~llm.routing.Balancer` with the ``least_latency`` policy, in two phases:

1. ``calls`` calls, the first ``warmup`` of which are not counted: the mean latency of the
   rest, its ratio to always choosing ``a``, each route's share, the calls ``b`` and ``c``
   still got, and (simulated) how many of those were re-probes;
2. ``a`` slows to 200 ms and ``after`` more calls follow: how many calls it took for the
   traffic to move, and the shares from then on.

Least latency picks the lowest EWMA times the route's calls in flight plus one (Finagle's
peak EWMA): with one call at a time that is the lowest EWMA, so the slower routes only get
their re-probes; with calls in flight a route's cost grows with its queue, so ``a`` at 10 ms
with 4 calls in flight (10 x 5 = 50) costs more than ``b`` at 40 ms with none (40 x 1), and
``b`` takes a share. Real servers slow down with their queue, which is what the rule is for;
here latencies do not grow with load, so that share is pure cost: at 16 in flight the mean is
about 1.17x always choosing ``a`` (1.00x under the old rule, the plain lowest EWMA, which sent
a whole burst to one route), still within the 1.25x target.

"Moved" is defined on the calls of phase 2 in dispatch order: ``moved_after`` is the index
of the first call that went to another route and from which on ``a`` gets at most
``moved_most`` of any ``WINDOW`` (50) consecutive calls, i.e. the number of calls made since
the slowdown before the traffic had moved (None: it never did). ``moved_most`` is one (a
re-probe) for sequential calls; with calls in flight it is ``IN_FLIGHT_MOST`` (3, 6 %),
because the in-flight weighting keeps giving a slower route a small share (``b``, 4x slower
than ``a``, has about 5 % of phase 1 at 16 in flight; ``a`` at 200 ms, 5x slower than ``b``,
keeps about 3 % of phase 2, 1.6 calls in 50). The shares after the move are those of the
calls from ``moved_after`` on, re-probes of ``a`` included.

:func:`simulate` is pure and deterministic: a fake clock, a seeded ``random.Random``, no
sockets and no sleeping. ``concurrency`` workers each make a call, wait for its answer, think
for ``think`` seconds (exponentially distributed, 0: none) and make the next one. Calls in
flight sit in an event queue ordered by completion time, so ``dispatch`` and ``succeeded``
reach the balancer in the order a real client would report them, with the clock at the
completion time. A call's latency is its route's (200 ms for ``a`` once phase 2 has begun),
jittered uniformly by +-10 %; the 10 ms reference is the nominal one. The slowdown happens
while calls are in flight: those already sent to ``a`` keep their 10 ms. A pick that moved
the route's ``last_probe_at`` was a re-probe (``PolicyRun.probes``).

:func:`measure_live` does the same for real: three fake vLLM servers in child processes
(``llm.testing.chaos.FakeProcess``), so that their timers run in other processes and the
latencies measured here are the servers' plus the HTTP round trip, not the client's own CPU
contention (an in-process fake shares the client's GIL). Async workers (``concurrency`` in
flight) call through a provider with ``lb_policy: least_latency``. Phase 1 runs to its end,
then ``a`` is told to answer in 200 ms (``/_fake/control``) and phase 2 starts, so no call in
flight straddles the change. The reference is measured, not nominal: as many calls through a
provider with route ``a`` only, in batches taking turns with phase 1's (three rounds, which
goes first alternating), so that both see the same machine. At 16 in flight on a small
machine the client's and the servers' CPU, not the routing, sets much of the latency, and it
drifts from one second to the next. Each run has fresh providers.

:func:`run_all` runs the standard set; :func:`render_markdown` turns it into the section
"Least latency picks the fast route" of docs/performance.md; ``python -m llm.perf.policy``
prints a table (``--json``: the figures as JSON; ``--markdown``: the section; ``--no-live``:
the simulation only).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..config import HealthConfig, RouteConfig, parse_config
from ..errors import LLMError
from ..providers.vllm_openai import VLLMOpenAIProvider
from ..routing import Balancer, Policy, RouteState
from ..testing.chaos import FakeProcess

__all__ = [
    "FAST",
    "IN_FLIGHT_MOST",
    "LATENCIES",
    "SLOWED",
    "WINDOW",
    "PolicyReport",
    "PolicyRun",
    "main",
    "measure_live",
    "moved_after",
    "moved_most",
    "render_markdown",
    "render_text",
    "run_all",
    "simulate",
    "summarize",
]

LATENCIES: Mapping[str, float] = {"a": 0.010, "b": 0.040, "c": 0.160}
FAST = "a"  # the route that is fast in phase 1 and slows down in phase 2
SLOWED = 0.200  # its latency in phase 2
JITTER = 0.10  # simulated latencies are uniform in +-10 % of the route's
WINDOW = 50  # the old fast route gets at most one of these once the traffic moved...
IN_FLIGHT_MOST = 3  # ...or this many with calls in flight (see the module docstring)
MODEL = "tiny"
MESSAGES = [{"role": "user", "content": "least latency"}]
DEFAULTS = HealthConfig()  # reprobe_interval 10 s, ewma_alpha 0.3


@dataclass(frozen=True)
class PolicyRun:
    """The figures of one run (simulated or live) of both phases."""

    mode: str  # "simulated" or "live"
    concurrency: int
    think_s: float  # mean think time between a worker's calls (simulated runs)
    reprobe_interval: float
    ewma_alpha: float
    calls: int  # phase 1, warm-up included
    warmup: int
    duration_s: float  # of phase 1: simulated, or wall clock
    mean_ms: float  # phase 1 after the warm-up
    reference_ms: float  # always choosing ``a``: nominal (simulated) or measured (live)
    ratio: float  # mean_ms / reference_ms
    shares: dict[str, float]  # phase 1 after the warm-up
    reprobes: dict[str, int]  # calls to the other routes after the warm-up (all of them)
    after: int  # phase 2 calls
    moved_after: int | None  # see the module docstring
    shares_after_move: dict[str, float]
    mean_after_move_ms: float | None
    errors: int = 0  # calls that failed (live)
    moved_most: int = 1  # calls ``a`` may still get of any ``WINDOW`` once moved
    probes: dict[str, int] | None = None  # the true re-probes among ``reprobes`` (simulated)


@dataclass
class PolicyReport:
    """Every run of :func:`run_all`, with what they were run on."""

    latencies_ms: dict[str, float]
    slowed_ms: float
    window: int
    simulated: list[PolicyRun] = field(default_factory=list)
    live: list[PolicyRun] = field(default_factory=list)
    note: str = ""
    cpus: int | None = None  # of the machine that ran them

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyReport:
        return cls(
            latencies_ms=dict(data["latencies_ms"]),
            slowed_ms=float(data["slowed_ms"]),
            window=int(data["window"]),
            simulated=[PolicyRun(**run) for run in data.get("simulated", ())],
            live=[PolicyRun(**run) for run in data.get("live", ())],
            note=str(data.get("note", "")),
            cpus=data.get("cpus"),
        )


# -- the figures, from the calls --------------------------------------------------------


def moved_most(concurrency: int) -> int:
    """How many of any ``WINDOW`` calls the old fast route may still get once the traffic
    moved: one (a re-probe) sequentially, ``IN_FLIGHT_MOST`` with calls in flight (see the
    module docstring)."""
    return 1 if concurrency <= 1 else IN_FLIGHT_MOST


def moved_after(
    routes: Sequence[str | None], old: str = FAST, window: int = WINDOW, most: int = 1
) -> int | None:
    """The index of the first call not sent to ``old`` from which on ``old`` never gets more
    than ``most`` of any ``window`` consecutive calls, or None when there is no such call."""
    if most < 1:
        raise ValueError("most must be at least 1")
    hits = [i for i, route in enumerate(routes) if route == old]
    # a window starting at j holds most + 1 of them iff some most + 1 in a row span less than
    # window: then every j up to the first of those is a bad start; the move begins after
    # the last such
    last_bad = max(
        (hits[k] for k in range(len(hits) - most) if hits[k + most] - hits[k] < window),
        default=-1,
    )
    return next((k for k in range(last_bad + 1, len(routes)) if routes[k] != old), None)


def _shares(routes: Sequence[str | None], names: Sequence[str]) -> dict[str, float]:
    counts = Counter(routes)
    total = len(routes) or 1
    return {name: round(counts[name] / total, 4) for name in names}


def summarize(
    *,
    mode: str,
    routes: Sequence[str | None],
    latencies: Sequence[float],
    calls: int,
    warmup: int,
    reference: float,
    duration: float,
    concurrency: int,
    think: float = 0.0,
    reprobe_interval: float = DEFAULTS.reprobe_interval,
    ewma_alpha: float = DEFAULTS.ewma_alpha,
    names: Sequence[str] = tuple(LATENCIES),
    window: int = WINDOW,
    most: int | None = None,
    probed: Sequence[bool] | None = None,
) -> PolicyRun:
    """Turn the calls of both phases (route or None for a failure, latency in seconds, in
    dispatch order; the first ``calls`` are phase 1) into a :class:`PolicyRun`. ``most``
    (default: ``moved_most(concurrency)``) goes to :func:`moved_after`; ``probed``, when the
    caller knows it, says which calls were re-probes."""
    if not 0 <= warmup < calls <= len(routes) or len(latencies) != len(routes):
        raise ValueError("need len(routes) == len(latencies) >= calls > warmup >= 0")
    if probed is not None and len(probed) != len(routes):
        raise ValueError("need len(probed) == len(routes)")
    most = moved_most(concurrency) if most is None else most
    counted = range(warmup, calls)
    counted_routes = [routes[i] for i in counted]
    ok = [latencies[i] for i in counted if routes[i] is not None]
    mean = statistics.fmean(ok) if ok else float("nan")
    others = Counter(r for r in counted_routes if r is not None and r != FAST)
    phase2 = list(routes[calls:])
    moved = moved_after(phase2, FAST, window, most)
    probes = None
    if probed is not None:
        probes = Counter(routes[i] for i in counted if probed[i])
    after_move: list[str | None] = phase2[moved:] if moved is not None else []
    after_latencies = [
        latencies[calls + moved + i]
        for i, route in enumerate(after_move)
        if moved is not None and route is not None
    ]
    return PolicyRun(
        mode=mode,
        concurrency=concurrency,
        think_s=think,
        reprobe_interval=reprobe_interval,
        ewma_alpha=ewma_alpha,
        calls=calls,
        warmup=warmup,
        duration_s=round(duration, 3),
        mean_ms=round(mean * 1e3, 3),
        reference_ms=round(reference * 1e3, 3),
        ratio=round(mean / reference, 4),
        shares=_shares(counted_routes, names),
        reprobes={name: others[name] for name in names if name != FAST},
        after=len(phase2),
        moved_after=moved,
        shares_after_move=_shares(after_move, names),
        mean_after_move_ms=(
            round(statistics.fmean(after_latencies) * 1e3, 3) if after_latencies else None
        ),
        errors=sum(1 for route in routes if route is None),
        moved_most=most,
        probes=None if probes is None else {name: probes[name] for name in names if name != FAST},
    )


# -- the simulation ---------------------------------------------------------------------


class _Clock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(
    *,
    concurrency: int = 1,
    calls: int = 2000,
    warmup: int = 100,
    after: int | None = None,
    think: float = 0.0,
    reprobe_interval: float = DEFAULTS.reprobe_interval,
    ewma_alpha: float = DEFAULTS.ewma_alpha,
    latencies: Mapping[str, float] = LATENCIES,
    slowed: float = SLOWED,
    jitter: float = JITTER,
    seed: int = 0,
    policy: str | Policy = "least_latency",
    window: int = WINDOW,
) -> PolicyRun:
    """Both phases through a real Balancer on a fake clock (see the module docstring).

    ``after`` (phase 2 calls) defaults to ``calls``. ``policy`` may be another policy object
    (to compare); the routes are ``latencies``' keys in order, ``FAST`` among them."""
    if concurrency < 1 or FAST not in latencies:
        raise ValueError(f"need concurrency >= 1 and a route named {FAST!r}")
    after = calls if after is None else after
    total = calls + after
    clock = _Clock()
    rng = random.Random(seed)
    health = HealthConfig(reprobe_interval=reprobe_interval, ewma_alpha=ewma_alpha)
    configs = [
        RouteConfig(name=name, base_url=f"http://127.0.0.1:9/{name}/v1", model=MODEL)
        for name in latencies
    ]
    balancer = Balancer(configs, policy=policy, health=health, clock=clock, rng=random.Random(seed))
    pool = balancer.pool(MODEL)
    assert pool is not None
    routes: list[str | None] = []
    taken: list[float] = []
    probed: list[bool] = []
    members = pool.routes
    phase1_end = 0.0
    # (time, sequence, call): call None is a worker ready to send, else a call that answers
    events: list[tuple[float, int, tuple[RouteState, float, float] | None]] = [
        (0.0, worker, None) for worker in range(concurrency)
    ]
    sequence = concurrency
    while events:
        now, _, call = heapq.heappop(events)
        clock.now = now
        if call is None:
            index = len(routes)
            if index >= total:
                continue
            if index == calls:
                phase1_end = now
            probe_times = [member.last_probe_at for member in members]
            route = balancer.pick(pool)
            if route is None:
                raise RuntimeError("no route available")  # never: nothing fails here
            # least latency notes a re-probe in the route's last_probe_at
            probed.append(route.last_probe_at != probe_times[members.index(route)])
            base = slowed if route.name == FAST and index >= calls else latencies[route.name]
            latency = base * (1.0 + jitter * (2.0 * rng.random() - 1.0))
            started = balancer.dispatch(route)
            routes.append(route.name)
            taken.append(latency)
            heapq.heappush(events, (now + latency, sequence, (route, started, latency)))
        else:
            route, started, latency = call
            balancer.succeeded(route, started, latency=latency)
            pause = rng.expovariate(1.0 / think) if think > 0 else 0.0
            heapq.heappush(events, (now + pause, sequence, None))
        sequence += 1
    return summarize(
        mode="simulated",
        routes=routes,
        latencies=taken,
        calls=calls,
        warmup=warmup,
        reference=latencies[FAST],
        duration=phase1_end,
        concurrency=concurrency,
        think=think,
        reprobe_interval=reprobe_interval,
        ewma_alpha=ewma_alpha,
        names=tuple(latencies),
        window=window,
        probed=probed,
    )


# -- the live run -----------------------------------------------------------------------


@contextmanager
def fleet(latencies: Mapping[str, float] = LATENCIES) -> Iterator[dict[str, FakeProcess]]:
    """The fake servers, one child process each, stopped on the way out."""
    servers = {name: FakeProcess(name, model=MODEL, latency=lat) for name, lat in latencies.items()}
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def _provider(
    servers: Mapping[str, FakeProcess], reprobe_interval: float, ewma_alpha: float
) -> VLLMOpenAIProvider:
    config = {
        "llm": {
            "routes": {
                name: {"base_url": server.base_url, "model": server.model}
                for name, server in servers.items()
            },
            "lb_policy": "least_latency",
            "params": {"max_tokens": 8, "timeout": 5, "deadline": 10},
            "health": {"reprobe_interval": reprobe_interval, "ewma_alpha": ewma_alpha},
        }
    }
    return VLLMOpenAIProvider(parse_config(config, environ={}))


async def _calls(
    provider: VLLMOpenAIProvider,
    first: int,
    count: int,
    concurrency: int,
    routes: list[str | None],
    taken: list[float],
) -> float:
    """Calls ``first`` .. ``first + count - 1`` with ``concurrency`` workers; returns the wall
    time. Each call's route (None: it failed) and latency go to its index."""
    numbers = iter(range(first, first + count))
    began = time.perf_counter()

    async def worker() -> None:
        for number in numbers:  # one shared iterator: each number is taken once
            start = time.perf_counter()
            try:
                result = await provider.achat_completion(MESSAGES)
            except LLMError:
                routes[number] = None
            else:
                routes[number] = result.route
            taken[number] = time.perf_counter() - start

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - began


async def _measure_live(
    servers: Mapping[str, FakeProcess],
    concurrency: int,
    calls: int,
    warmup: int,
    after: int,
    reference_calls: int,
    rounds: int,
    reprobe_interval: float,
    ewma_alpha: float,
) -> PolicyRun:
    for server in servers.values():
        await asyncio.to_thread(server.control, reset=True)
    ref_routes: list[str | None] = [None] * reference_calls
    ref_taken = [0.0] * reference_calls
    total = calls + after
    routes: list[str | None] = [None] * total
    taken = [0.0] * total
    duration = 0.0
    async with (
        _provider({FAST: servers[FAST]}, reprobe_interval, ewma_alpha) as reference,
        _provider(servers, reprobe_interval, ewma_alpha) as provider,
    ):
        for i in range(rounds):  # reference and phase 1 take turns, each first every other
            for turn in (i % 2, 1 - i % 2):  # round: the same machine state, in either order
                if turn == 0:
                    first = i * reference_calls // rounds
                    count = (i + 1) * reference_calls // rounds - first
                    await _calls(reference, first, count, concurrency, ref_routes, ref_taken)
                else:
                    first = i * calls // rounds
                    count = (i + 1) * calls // rounds - first
                    duration += await _calls(provider, first, count, concurrency, routes, taken)
        await asyncio.to_thread(servers[FAST].control, latency=SLOWED)
        try:
            await _calls(provider, calls, after, concurrency, routes, taken)
        finally:
            await asyncio.to_thread(servers[FAST].control, reset=True)
    answered = [t for r, t in zip(ref_routes, ref_taken, strict=True) if r is not None]
    run = summarize(
        mode="live",
        routes=routes,
        latencies=taken,
        calls=calls,
        warmup=warmup,
        reference=statistics.fmean(answered[warmup:]),  # the same warm-up skipped
        duration=duration,
        concurrency=concurrency,
        reprobe_interval=reprobe_interval,
        ewma_alpha=ewma_alpha,
        names=tuple(servers),
    )
    return replace(run, errors=run.errors + reference_calls - len(answered))


def measure_live(
    *,
    concurrency: int = 1,
    calls: int = 300,
    warmup: int = 50,
    after: int = 300,
    reference_calls: int | None = None,
    rounds: int = 3,
    reprobe_interval: float = DEFAULTS.reprobe_interval,
    ewma_alpha: float = DEFAULTS.ewma_alpha,
    servers: Mapping[str, FakeProcess] | None = None,
) -> PolicyRun:
    """Both phases against fake servers (see the module docstring); starts and stops its own
    servers unless ``servers`` (from :func:`fleet`) are given. The reference takes
    ``reference_calls`` calls (default: ``calls``), the same warm-up skipped, in ``rounds``
    batches alternating with phase 1's. Call from outside any event loop."""
    if reference_calls is None:
        reference_calls = calls
    if not 0 <= warmup < min(calls, reference_calls):
        raise ValueError("need 0 <= warmup < calls and reference_calls")
    if servers is None:
        with fleet() as started:
            return measure_live(
                concurrency=concurrency,
                calls=calls,
                warmup=warmup,
                after=after,
                reference_calls=reference_calls,
                rounds=rounds,
                reprobe_interval=reprobe_interval,
                ewma_alpha=ewma_alpha,
                servers=started,
            )
    return asyncio.run(
        _measure_live(
            servers,
            concurrency,
            calls,
            warmup,
            after,
            reference_calls,
            rounds,
            reprobe_interval,
            ewma_alpha,
        )
    )


# -- the standard set -------------------------------------------------------------------

# (concurrency, calls per phase, think time): about 20 simulated seconds of closed-loop
# traffic each (two re-probe intervals), and a low rate where a worker waits 5 s on average
SIMULATIONS: tuple[tuple[int, int, float], ...] = ((1, 2000, 0.0), (16, 32000, 0.0), (1, 600, 5.0))
# (concurrency, calls, after, reprobe_interval): the defaults, sequential and 16 in flight,
# then 16 in flight with a re-probe interval short enough to re-probe within the run
LIVE: tuple[tuple[int, int, int, float], ...] = (
    (1, 300, 300, DEFAULTS.reprobe_interval),
    (16, 450, 450, DEFAULTS.reprobe_interval),
    (16, 450, 450, 0.5),
)
NOTE = (
    "Defaults throughout (reprobe_interval 10 s, ewma_alpha 0.3, least_latency's probe "
    "budget 10 %), except the last live run: its 0.5 s interval fits a few re-probes into "
    "a run of about a second."
)


def run_all(*, live: bool = True, seed: int = 0) -> PolicyReport:
    """The simulations (about a second in all) and, with ``live``, the live runs (about
    25 s, half of it the sequential run's 40 ms calls after the move)."""
    report = PolicyReport(
        latencies_ms={name: value * 1e3 for name, value in LATENCIES.items()},
        slowed_ms=SLOWED * 1e3,
        window=WINDOW,
        note=NOTE,
        cpus=os.cpu_count(),
    )
    for concurrency, calls, think in SIMULATIONS:
        warmup = max(100, calls // 20)
        report.simulated.append(
            simulate(concurrency=concurrency, calls=calls, warmup=warmup, think=think, seed=seed)
        )
    if live:
        with fleet() as servers:
            for concurrency, calls, after, reprobe in LIVE:
                report.live.append(
                    measure_live(
                        concurrency=concurrency,
                        calls=calls,
                        after=after,
                        warmup=max(50, calls // 10),
                        reprobe_interval=reprobe,
                        servers=servers,
                    )
                )
    return report


# -- output -----------------------------------------------------------------------------


def _pct(shares: Mapping[str, float]) -> str:
    return " / ".join(f"{100 * v:.1f}" for v in shares.values())


def _load(run: PolicyRun) -> str:
    if run.think_s:
        return f"{run.concurrency} × (call, think {run.think_s:g} s)"
    return f"{run.concurrency} in flight"


def _rows(report: PolicyReport) -> list[list[str]]:
    rows = []
    for run in [*report.simulated, *report.live]:
        rows.append(
            [
                run.mode,
                _load(run),
                f"{run.reprobe_interval:g} s",
                f"{run.calls} ({run.warmup})",
                f"{run.mean_ms:.2f} ms",
                f"{run.ratio:.3f}",
                _pct(run.shares),
                " / ".join(str(v) for v in run.reprobes.values()),
                "-" if run.probes is None else " / ".join(str(v) for v in run.probes.values()),
                "never" if run.moved_after is None else str(run.moved_after),
                _pct(run.shares_after_move) if run.moved_after is not None else "-",
                "-" if run.mean_after_move_ms is None else f"{run.mean_after_move_ms:.1f} ms",
            ]
        )
    return rows


def _header(report: PolicyReport) -> list[str]:
    names = "/".join(report.latencies_ms)
    slow = "/".join(n for n in report.latencies_ms if n != FAST)
    return [
        "run",
        "load",
        "re-probe interval",
        "phase 1 calls (warm-up)",
        "mean after warm-up",
        f"× always {FAST}",
        f"shares {names} %",
        f"calls to {slow}",
        f"re-probes of {slow}",
        "moved after (calls)",
        f"shares after the move {names} %",
        "mean after the move",
    ]


def _busy_reading(report: PolicyReport) -> list[str]:
    """What the simulated run with calls in flight shows, in its own figures."""
    busy = next((r for r in report.simulated if r.concurrency > 1 and not r.think_s), None)
    if busy is None:
        return []
    others = {n: v for n, v in report.latencies_ms.items() if n != FAST}
    best = min(others, key=others.__getitem__)  # always choosing it: the best after the slowdown
    moved = "never moves" if busy.moved_after is None else f"moves after {busy.moved_after} calls"
    text = (
        f"At {busy.concurrency} in flight the mean is {busy.ratio:.3f}x always choosing "
        f"`{FAST}` (the target is 1.25x). After the slowdown the row "
        f"{moved}, as `{FAST}`'s slow calls pile up in flight (each weighs its EWMA up) "
        "before the first of them is back"
    )
    if busy.mean_after_move_ms is not None:
        share = busy.shares_after_move[FAST]
        text += (
            f"; `{FAST}` then keeps {100 * share:.1f} % of the calls ({share * report.window:.1f} "
            f"in {report.window}), a mean of {busy.mean_after_move_ms / others[best]:.2f}x the "
            f"{others[best]:g} ms of always choosing `{best}`"
        )
    return [text + "."]


def render_markdown(report: PolicyReport) -> str:
    """The section "Least latency picks the fast route" of docs/performance.md."""
    lat = ", ".join(f"`{n}` {v:g} ms" for n, v in report.latencies_ms.items())
    lines = [
        "## Least latency picks the fast route",
        "",
        f"Three routes of one model answer in {lat}; calls go through the `least_latency` "
        "policy: the lowest latency EWMA times the route's calls in flight plus one (a route "
        "is tried first, one call at a time, until it has 3 answers, the least of which is "
        "its first estimate). "
        f"Phase 1: the mean latency after a warm-up against always choosing `{FAST}` "
        f"(the simulation's reference is the nominal {report.latencies_ms[FAST]:g} ms; the live "
        f"runs measure it, same calls through a provider with `{FAST}` only), each route's "
        "share, the calls the slower routes still got and, simulated, how many of those were "
        f"re-probes. Phase 2: `{FAST}` slows to {report.slowed_ms:g} ms; *moved after* is the "
        "number of calls made since then before the first call to another route from which "
        f"on `{FAST}` gets at most one (a re-probe) of any {report.window} calls in a row, "
        f"or {IN_FLIGHT_MOST} with calls in flight.",
        "",
        "Simulated runs: a real `Balancer` on a fake clock, latencies jittered by ±10 %, "
        "workers that send a call as soon as their last one answered (or after a think time), "
        "deterministic (`llm.perf.policy.simulate`). Live runs: three fake vLLM servers in "
        "child processes, async calls through a provider (`llm.perf.policy.measure_live`). "
        f"{report.note} Regenerate with `python -m llm.perf.policy`.",
        "",
    ]
    header = _header(report)
    reading = [
        "How to read it: with one call at a time the mean after the warm-up is what re-probes "
        "cost (the routing's own share of the latency); least_latency holds them to about "
        "10 % at any rate. With calls in flight each route's EWMA is weighted by its calls "
        f"in flight plus one, so `{FAST}` at 10 ms with 4 in flight (50) costs more than `b` "
        "at 40 ms with none (40) and `b` takes a share of the calls: real servers slow down "
        "with their queue and the weighting keeps a burst from piling onto one of them, but "
        "these simulated latencies do not grow with load, so here that share only costs.",
        *_busy_reading(report),
        "The sequential row moves after 1 call: the one sent before "
        f"`{FAST}`'s first slow answer came back. At one call every 5 s the move may count "
        f"from a little later: one 200 ms answer lifts `{FAST}`'s moving average only to "
        "67 ms, which can earn it an early re-probe before they space out.",
    ]
    if report.live:
        reading.append(
            "Live runs with the default interval last less than one interval, so they have "
            "no re-probes to show: with calls in flight their calls to the slower routes are "
            "the in-flight weighting's share (not counted apart live). At 16 in flight the "
            "live latencies are mostly the CPU of "
            f"this machine ({report.cpus or '?'} CPUs shared by the client and the three "
            "servers) and move by about 15 % from run to run, either way; the reference "
            "takes turns with the measured calls to share their conditions."
        )
    lines.extend([" ".join(reading), ""])
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines.extend("| " + " | ".join(row) + " |" for row in _rows(report))
    lines.append("")
    return "\n".join(lines)


def render_text(report: PolicyReport) -> str:
    """The same table, aligned for a terminal."""
    table = [_header(report), *_rows(report)]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    out = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in table
    ]
    out.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llm.perf.policy", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--markdown", action="store_true", help="print the docs section")
    parser.add_argument("--no-live", action="store_true", help="the simulation only")
    parser.add_argument("--seed", type=int, default=0, help="the simulation's seed")
    args = parser.parse_args(argv)
    report = run_all(live=not args.no_live, seed=args.seed)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif args.markdown:
        print(render_markdown(report))
    else:
        print(render_text(report), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
