"""Hedging under a frozen instance: call latency and failures, with and without hedges.

How this works
--------------
Three fake vLLM servers (``llm.testing.fake_vllm``) run as child processes
(``llm.testing.processes.ServerProcess``), each answering after ``latency`` plus ``tokens``
paced by ``token_delay`` (by default 50 ms + 8 × 10 ms: some 130 ms a call). One asyncio loop
in this process keeps exactly ``in_flight`` calls going (64 worker coroutines, each calling
``achat_completion``, or every ``1/stream_fraction``-th call ``astream_events`` read to its
end) through a provider over the three routes (each with a ``timeout`` of 30 s,
``least_load`` by default). Calls started in the ``warmup`` are not counted; the calls started
in the ``seconds`` after it are, each with its latency and, when it raised, the exception's
type. Once the window closes no call starts; the calls still running get ``drain`` seconds,
then are cancelled and counted as failed ("unfinished") with the time they had run.

Four scenarios run in turn, each with a fresh provider on the same servers:

1. ``no-fault, no hedge``: the reference, whose p99 the others are held to;
2. ``no-fault, hedge``: ``llm.hedge.enabled``; *extra attempts* are the attempts the routes
   saw in the window (the sum over routes of ``stats()[route]["requests"]``, its change from
   the window's start to the end) less the calls, per call;
3. ``frozen, no hedge``: ``freeze_after`` seconds into the window, one server is SIGSTOPped
   (its sockets stay open, nothing answers), which strands its calls until their 30 s timeout;
4. ``frozen, hedge``: the same with hedging, the issue's target scenario.

The frozen server is thawed (SIGCONT) after its scenario and must answer ``/health`` again
before the next one. Hedge counters (started, won, cancelled) are the change of
``stats()[route]["hedges"]`` over the window. The targets checked (``targets``): in scenario
4, p99 ≤ 3× scenario 1's and no failed call, streams the frozen server had begun aside (they
wait out the route's timeout: nothing is hedged after a stream's first token, which would
splice two answers; they are counted and shown apart); in scenario 2, extra attempts ≤ 5 %
of calls.
The CPU target (≤ 1.3× raw aiohttp per call with hedging on) is the overhead benchmark's
(``llm.perf.overhead``, client ``provider-async-hedge``). ``cpu_us_per_call`` here is this
process's CPU (the servers are other processes) per counted call, for comparison between
scenarios only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..factory import LLMFactory
from ..providers.vllm_openai import VLLMOpenAIProvider
from ..testing.processes import ServerProcess, fake_argv, free_port, start_all

HOST = "127.0.0.1"
MODEL = "tiny"
MESSAGES = [{"role": "user", "content": "hello"}]
P99_RATIO_TARGET = 3.0  # frozen + hedge p99, at most this many times the no-fault reference's
EXTRA_ATTEMPTS_TARGET = 5.0  # % of calls, with hedging on and no fault
CANCEL_BOUND = 5.0  # seconds the cancelled calls get to unwind at the end of a scenario
BUDGET_SAMPLE = 0.05  # seconds between two looks at the hedge budget
# the failures of calls still running when the drain ends (``ScenarioResult.errors``)
UNFINISHED = "unfinished"
UNFINISHED_STREAM = "unfinished stream, before its first token"
UNFINISHED_STREAMING = "unfinished stream, after its first token"  # no hedge can help it


@dataclass(frozen=True)
class Settings:
    """What a run does (see the module docstring)."""

    seconds: float = 20.0  # the measured window of each scenario
    warmup: float = 3.0  # before it, not counted
    in_flight: int = 64  # calls kept going at once
    servers: int = 3
    latency: float = 0.05  # the fake's wait before its first token
    tokens: int = 8  # tokens of each answer
    token_delay: float = 0.01  # seconds per token
    timeout: float = 30.0  # each route's
    freeze_after: float = 3.0  # seconds into the window the frozen scenarios freeze a server
    drain: float = 5.0  # seconds the calls still running at the window's end get
    stream_fraction: float = 0.25  # of the calls, streamed
    policy: str = "least_load"
    hedge_budget: float | None = None  # llm.hedge.budget (None: the library's default)
    hedge_burst: int | None = None  # llm.hedge.burst (None: the library's default)


@dataclass(frozen=True)
class Scenario:
    name: str
    frozen: bool
    hedge: bool


SCENARIOS = (
    Scenario("no-fault, no hedge", frozen=False, hedge=False),
    Scenario("no-fault, hedge", frozen=False, hedge=True),
    Scenario("frozen, no hedge", frozen=True, hedge=False),
    Scenario("frozen, hedge", frozen=True, hedge=True),
)
REFERENCE = SCENARIOS[0].name
NO_FAULT_HEDGE = SCENARIOS[1].name
TARGET = SCENARIOS[3].name


@dataclass
class ScenarioResult:
    """One scenario's figures (latencies in milliseconds, of every counted call: answered,
    failed or unfinished)."""

    name: str
    frozen: bool
    hedge: bool
    calls: int  # started in the measured window
    ok: int
    failed: int  # raised, or unfinished
    unfinished: int  # still running after the drain: cancelled, counted as failed
    errors: dict[str, int]  # exception type (or UNFINISHED...) -> calls
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None
    over_1s: int  # calls that took a second or more (or were unfinished after one)
    ok_p99_ms: float | None  # of the answered calls alone
    calls_per_second: float
    attempts: int  # sent to the routes in the window (stats' requests)
    extra_attempts: int  # attempts - calls
    extra_attempts_pct: float | None
    hedges: dict[str, int]  # started / won / cancelled in the window, over all routes
    frozen_route: str | None  # the server frozen (None: none, or the window ended first)
    cpu_us_per_call: float | None  # this process's CPU (not the servers')
    # the hedge budget's tokens (``Hedger.tokens``), sampled every BUDGET_SAMPLE seconds of
    # the window: its mean and least, and its value when the server froze (hedged runs only)
    budget_mean: float | None = None
    budget_min: float | None = None
    budget_at_freeze: float | None = None
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)  # per route, in the window


@dataclass
class Target:
    name: str
    value: float | None
    limit: float
    passed: bool
    detail: str


@dataclass
class Report:
    settings: Settings
    scenarios: list[ScenarioResult]
    targets: list[Target]
    p99_ratio: float | None  # frozen + hedge p99 / no-fault, no hedge p99
    hedge_p99_ratio: float | None  # no-fault + hedge p99 / no-fault, no hedge p99

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- measuring ------------------------------------------------------------------------------


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by nearest rank; None of nothing."""
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(len(ordered) * q / 100 - 1e-9)  # the tolerance: 99.9 is no exact float
    return ordered[min(len(ordered), max(1, rank)) - 1]


def _counters(provider: VLLMOpenAIProvider) -> dict[str, dict[str, int]]:
    """Per route: requests, failures, ejections and the hedge counters, now."""
    counters: dict[str, dict[str, int]] = {}
    for name, route in provider.stats().items():
        hedges = route.get("hedges") or {}
        counters[name] = {
            "requests": int(route["requests"]),
            "failures": int(route["failures"]),
            "ejections": int(route["ejections"]),
            "hedges_started": int(hedges.get("started", 0)),
            "hedges_won": int(hedges.get("won", 0)),
            "hedges_cancelled": int(hedges.get("cancelled", 0)),
        }
    return counters


def _delta(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    return {
        name: {key: value - before.get(name, {}).get(key, 0) for key, value in numbers.items()}
        for name, numbers in after.items()
    }


@dataclass
class _Window:
    """What the workers record during one scenario. The window opens when the counters are
    read (``open``), so that a call is counted exactly when its attempts are."""

    starts_at: float  # planned; the real start once open
    ends_at: float
    open: bool = False
    latencies: list[float] = field(default_factory=list)  # every counted call's
    ok_latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    numbers: int = 0  # calls started, warm-up included (which ones stream)


def make_provider(
    servers: Sequence[ServerProcess], settings: Settings, hedge: bool
) -> VLLMOpenAIProvider:
    """A provider over ``servers``: each a route with the settings' timeout."""
    routes = {
        server.name: {"base_url": server.base_url, "model": MODEL, "timeout": settings.timeout}
        for server in servers
    }
    hedge_config: dict[str, Any] = {"enabled": hedge}
    if settings.hedge_budget is not None:
        hedge_config["budget"] = settings.hedge_budget
    if settings.hedge_burst is not None:
        hedge_config["burst"] = settings.hedge_burst
    config = {
        "llm": {
            "routes": routes,
            "params": {"max_tokens": settings.tokens},
            "lb_policy": settings.policy,
            "hedge": hedge_config,
        }
    }
    provider = LLMFactory.create_provider("vllm_openai", config=config)
    assert isinstance(provider, VLLMOpenAIProvider)
    return provider


class _Running:
    """A worker's call in progress."""

    __slots__ = ("counted", "first_token", "started", "stream")

    def __init__(self, started: float, counted: bool, stream: bool) -> None:
        self.started = started
        self.counted = counted
        self.stream = stream
        self.first_token = False  # a stream's: its first event came

    def unfinished(self) -> str:
        """The kind of failure this call is when the drain ends before it does."""
        if not self.stream:
            return UNFINISHED
        return UNFINISHED_STREAMING if self.first_token else UNFINISHED_STREAM


async def _call(provider: VLLMOpenAIProvider, running: _Running) -> None:
    if not running.stream:
        await provider.achat_completion(MESSAGES)
        return
    events = provider.astream_events(MESSAGES)
    try:
        async for _ in events:
            running.first_token = True
    finally:
        await events.aclose()


async def run_scenario(
    scenario: Scenario,
    servers: Sequence[ServerProcess],
    settings: Settings,
    progress: Callable[[str], None] | None = None,
) -> ScenarioResult:
    """One scenario on running servers, with a fresh provider (see the module docstring)."""
    provider = make_provider(servers, settings, scenario.hedge)
    frozen = servers[0] if scenario.frozen else None
    clock = time.perf_counter
    began = clock()
    window = _Window(began + settings.warmup, began + settings.warmup + settings.seconds)
    current: list[_Running | None] = [None] * settings.in_flight  # each worker's call
    period = round(1 / settings.stream_fraction) if settings.stream_fraction > 0 else 0

    async def worker(index: int) -> None:
        while (started := clock()) < window.ends_at:
            number = window.numbers
            window.numbers += 1
            stream = period > 0 and number % period == period - 1
            counted = window.open
            running = current[index] = _Running(started, counted, stream)
            error: str | None = None
            try:
                await _call(provider, running)
            except Exception as exc:  # noqa: BLE001 - any failure is a failed call, by type
                error = type(exc).__name__
            current[index] = None
            if counted:
                elapsed = clock() - started
                window.calls += 1
                window.latencies.append(elapsed)
                if error is None:
                    window.ok_latencies.append(elapsed)
                else:
                    window.errors[error] += 1

    snapshot: dict[str, Any] = {}
    hedger = provider.balancer.hedger
    budget: list[float] = []

    async def conductor() -> None:
        await asyncio.sleep(max(0.0, window.starts_at - clock()))
        snapshot["counters"] = _counters(provider)  # no await from here to ``open``
        snapshot["cpu"] = _cpu()
        window.starts_at = clock()
        window.open = True
        freeze_at = window.starts_at + settings.freeze_after if frozen is not None else None
        while (now := clock()) < window.ends_at:
            if freeze_at is not None and now >= freeze_at and frozen is not None:
                snapshot["budget_at_freeze"] = hedger.tokens
                snapshot["froze"] = frozen.name
                frozen.freeze()
                freeze_at = None
                if progress is not None:
                    progress(f"  froze {frozen.name} (pid {frozen.pid})")
            budget.append(hedger.tokens)
            wake = now + BUDGET_SAMPLE
            if freeze_at is not None:
                wake = min(wake, freeze_at)
            await asyncio.sleep(max(0.0, wake - clock()))

    tasks = [asyncio.create_task(worker(index)) for index in range(settings.in_flight)]
    leader = asyncio.create_task(conductor())
    try:
        await asyncio.wait(tasks, timeout=max(0.0, window.ends_at + settings.drain - clock()))
        unfinished_at = clock()
        unfinished = 0
        for index, task in enumerate(tasks):
            left = current[index]
            if task.done() or left is None:
                continue
            task.cancel()
            if left.counted:
                unfinished += 1
                window.calls += 1
                window.latencies.append(unfinished_at - left.started)
                window.errors[left.unfinished()] += 1
        await asyncio.wait(tasks, timeout=CANCEL_BOUND)
        for task in tasks:  # a worker's own crash is the benchmark's: raise it
            crash = task.exception() if task.done() and not task.cancelled() else None
            if crash is not None:
                raise crash
        measured = min(clock(), window.ends_at) - window.starts_at
        cpu = _cpu() - snapshot.get("cpu", _cpu())
        after = _counters(provider)
    finally:
        leader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leader
        if frozen is not None:
            frozen.thaw()
        with contextlib.suppress(Exception):
            await provider.aclose(timeout=2.0)
    routes = _delta(snapshot.get("counters", {}), after)
    attempts = sum(route["requests"] for route in routes.values())
    calls = window.calls
    latencies = window.latencies
    ms = 1000.0

    def in_ms(value: float | None) -> float | None:
        return None if value is None else round(value * ms, 1)

    return ScenarioResult(
        name=scenario.name,
        frozen=scenario.frozen,
        hedge=scenario.hedge,
        calls=calls,
        ok=len(window.ok_latencies),
        failed=calls - len(window.ok_latencies),
        unfinished=unfinished,
        errors=dict(window.errors),
        p50_ms=in_ms(percentile(latencies, 50)),
        p99_ms=in_ms(percentile(latencies, 99)),
        p999_ms=in_ms(percentile(latencies, 99.9)),
        max_ms=in_ms(max(latencies) if latencies else None),
        over_1s=sum(1 for latency in latencies if latency >= 1.0),
        ok_p99_ms=in_ms(percentile(window.ok_latencies, 99)),
        calls_per_second=round(calls / measured, 1) if measured > 0 else 0.0,
        attempts=attempts,
        extra_attempts=attempts - calls,
        extra_attempts_pct=round(100.0 * (attempts - calls) / calls, 2) if calls else None,
        hedges={
            "started": sum(route["hedges_started"] for route in routes.values()),
            "won": sum(route["hedges_won"] for route in routes.values()),
            "cancelled": sum(route["hedges_cancelled"] for route in routes.values()),
        },
        frozen_route=snapshot.get("froze"),
        cpu_us_per_call=round(cpu / calls * 1e6, 1) if calls else None,
        budget_mean=round(sum(budget) / len(budget), 2) if budget and scenario.hedge else None,
        budget_min=round(min(budget), 2) if budget and scenario.hedge else None,
        budget_at_freeze=_rounded(snapshot.get("budget_at_freeze")) if scenario.hedge else None,
        routes=routes,
    )


# -- the run --------------------------------------------------------------------------------


def make_servers(settings: Settings) -> list[ServerProcess]:
    """The fake servers (not started), on free loopback ports."""
    servers = []
    for number in range(settings.servers):
        name = f"s{number}"
        port = free_port(HOST)
        argv = fake_argv(
            HOST,
            port,
            MODEL,
            "--name",
            name,
            "--latency",
            str(settings.latency),
            "--tokens",
            str(settings.tokens),
            "--token-delay",
            str(settings.token_delay),
        )
        servers.append(ServerProcess(name, argv, host=HOST, port=port))
    return servers


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return round(value / reference, 2)


def targets(scenarios: Sequence[ScenarioResult]) -> tuple[list[Target], float | None]:
    """The issue's targets over the scenarios that ran, and the frozen + hedge p99 ratio."""
    by_name = {result.name: result for result in scenarios}
    found: list[Target] = []
    reference = by_name.get(REFERENCE)
    frozen = by_name.get(TARGET)
    ratio = None
    if reference is not None and frozen is not None:
        ratio = _ratio(frozen.p99_ms, reference.p99_ms)
        found.append(
            Target(
                f"{TARGET}: p99 ≤ {P99_RATIO_TARGET:g}× {REFERENCE} p99",
                ratio,
                P99_RATIO_TARGET,
                ratio is not None and ratio <= P99_RATIO_TARGET,
                f"{frozen.p99_ms} ms / {reference.p99_ms} ms",
            )
        )
    if frozen is not None:
        # a stream the frozen server had begun cannot be hedged: two answers would be spliced
        begun = frozen.errors.get(UNFINISHED_STREAMING, 0)
        failed = frozen.failed - begun
        found.append(
            Target(
                f"{TARGET}: no failed call (but streams frozen after their first token)",
                float(failed),
                0.0,
                failed == 0 and frozen.calls > 0,
                f"{failed} of {frozen.calls}; {frozen.failed} with those streams "
                f"({_errors(frozen.errors)})",
            )
        )
    hedged = by_name.get(NO_FAULT_HEDGE)
    if hedged is not None:
        pct = hedged.extra_attempts_pct
        found.append(
            Target(
                f"{NO_FAULT_HEDGE}: extra attempts ≤ {EXTRA_ATTEMPTS_TARGET:g} % of calls",
                pct,
                EXTRA_ATTEMPTS_TARGET,
                pct is not None and pct <= EXTRA_ATTEMPTS_TARGET,
                f"{hedged.extra_attempts} extra attempts over {hedged.calls} calls",
            )
        )
    return found, ratio


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(errors.items())) or "none"


def run(
    settings: Settings | None = None,
    scenarios: Sequence[Scenario] = SCENARIOS,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Start the servers, run ``scenarios`` in turn, stop the servers; the report."""
    settings = settings or Settings()
    servers = make_servers(settings)
    results: list[ScenarioResult] = []
    try:
        start_all(servers)
        for scenario in scenarios:
            if progress is not None:
                progress(f"{scenario.name}: {settings.warmup:g} s warm-up, {settings.seconds:g} s")
            result = asyncio.run(run_scenario(scenario, servers, settings, progress))
            results.append(result)
            if progress is not None:
                progress("  " + summary_line(result))
            for server in servers:  # a thawed server answers again before the next one
                server.wait_healthy(30.0)
    finally:
        for server in servers:
            server.stop()
    found, ratio = targets(results)
    by_name = {result.name: result for result in results}
    reference = by_name.get(REFERENCE)
    hedged = by_name.get(NO_FAULT_HEDGE)
    hedge_ratio = (
        _ratio(hedged.p99_ms, reference.p99_ms)
        if hedged is not None and reference is not None
        else None
    )
    return Report(settings, results, found, ratio, hedge_ratio)


# -- showing --------------------------------------------------------------------------------


def _shown(value: float | None, suffix: str = "") -> str:
    return "-" if value is None else f"{value:g}{suffix}"


def summary_line(result: ScenarioResult) -> str:
    return (
        f"{result.calls} calls, p50 {_shown(result.p50_ms)} ms, p99 {_shown(result.p99_ms)} ms, "
        f"max {_shown(result.max_ms)} ms, failed {result.failed}, extra attempts "
        f"{_shown(result.extra_attempts_pct, ' %')}, hedges {result.hedges}"
    )


def render_text(report: Report) -> str:
    """The scenarios as a table, then the ratios and each target's PASS or MISS."""
    settings = report.settings
    head = (
        f"{settings.servers} fake vLLM servers ({settings.latency * 1000:g} ms + "
        f"{settings.tokens} × {settings.token_delay * 1000:g} ms tokens), "
        f"{settings.in_flight} calls in flight, {settings.stream_fraction:.0%} streamed, "
        f"{settings.policy}, route timeout {settings.timeout:g} s; {settings.seconds:g} s "
        f"measured after {settings.warmup:g} s warm-up; a frozen server is stopped "
        f"{settings.freeze_after:g} s into the window; unfinished after {settings.drain:g} s "
        "more = failed"
    )
    if settings.hedge_budget is not None or settings.hedge_burst is not None:
        head += (
            f"; hedge budget {_shown(settings.hedge_budget)}, burst {_shown(settings.hedge_burst)}"
        )
    columns = (
        "scenario",
        "calls",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "≥ 1 s",
        "failed",
        "extra att.",
        "hedges s/w/c",
        "CPU µs/call",
    )
    rows = [columns]
    for result in report.scenarios:
        hedges = result.hedges
        rows.append(
            (
                result.name,
                str(result.calls),
                _shown(result.calls_per_second),
                _shown(result.p50_ms),
                _shown(result.p99_ms),
                _shown(result.p999_ms),
                _shown(result.max_ms),
                str(result.over_1s),
                str(result.failed) + (f" ({result.unfinished} unf.)" if result.unfinished else ""),
                _shown(result.extra_attempts_pct, " %"),
                f"{hedges['started']}/{hedges['won']}/{hedges['cancelled']}",
                _shown(result.cpu_us_per_call),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = [head, ""]
    for number, row in enumerate(rows):
        cells = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells))
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    lines.append("")
    for result in report.scenarios:
        if result.errors:
            lines.append(f"{result.name}: failed calls by type: {_errors(result.errors)}")
        if result.budget_mean is not None:
            frozen = (
                f", {result.budget_at_freeze:g} when {result.frozen_route} froze"
                if result.budget_at_freeze is not None
                else ""
            )
            lines.append(
                f"{result.name}: hedge budget tokens: mean {result.budget_mean:g}, least "
                f"{result.budget_min:g}{frozen}"
            )
    lines.append(
        f"p99 ratio {TARGET} / {REFERENCE}: {_shown(report.p99_ratio, '×')}; "
        f"{NO_FAULT_HEDGE} / {REFERENCE}: {_shown(report.hedge_p99_ratio, '×')}"
    )
    for target in report.targets:
        verdict = "PASS" if target.passed else "MISS"
        lines.append(f"{verdict}  {target.name}: {_shown(target.value)} ({target.detail})")
    lines.append(
        "CPU per call with hedging vs raw aiohttp: python scripts/bench_overhead.py "
        "--clients aiohttp provider-async provider-async-hedge"
    )
    return "\n".join(lines)


__all__ = [
    "SCENARIOS",
    "Report",
    "Scenario",
    "ScenarioResult",
    "Settings",
    "Target",
    "make_provider",
    "make_servers",
    "percentile",
    "render_text",
    "run",
    "run_scenario",
    "targets",
]
