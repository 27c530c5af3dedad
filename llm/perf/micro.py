"""Micro-benchmarks: the routing work of one call, and what ``import llm`` costs.

How this works
--------------
**Routing** (``measure_routing``). One balancer, one pool of 2, 10 or 100 routes of one model,
under each policy: ``round_robin`` (equal weights), ``weighted_round_robin`` (the same policy
with unequal weights, scheduled earliest deadline first) and ``least_latency`` (every route with a
latency sample, as in steady state). Optionally the first half of the pool is ejected (with a
cooldown of an hour, so it stays ejected). Each route first gets one request, so every figure is
the steady state. Two loops are timed with ``time.perf_counter_ns`` (garbage collector off; best
of ``repeat`` runs of ``number`` iterations, ``number`` chosen so that a run lasts about 5 ms;
the runs of all the settings are interleaved, so a busy moment of a shared machine spoils one
run of several settings rather than every run of one):

- *pick + report*: ``balancer.pick`` -> ``balancer.dispatch`` -> ``balancer.succeeded``, the
  balancer's share of one successful attempt;
- *per call*: what ``routing.plan.plan_call`` and the engines' attempt loop do with routing for
  a call answered at the first attempt: the model's pool, a ``CallPlan``, ``plan.next()`` (pick),
  ``plan.start()`` (dispatch), ``plan.succeeded()`` (report and the ``Attempt`` record).

Their difference is the ``CallPlan``'s own overhead. There is no routing path outside
``CallPlan``: the engines never call the balancer directly. The real clock (``time.monotonic``)
is used, as in production. The figures include the timing loop itself (a few tens of ns).

``routes_examined`` is the same work without a timer: it counts the routes the policy looks at per
pick (each route's health counts the policy's reads of ``healthy``, the first thing it checks of
a route, whether it scans the pool or takes routes off a heap), the measure of work that must
not grow with the number of routes, and the one the tests assert on.

**Import time** (``measure_import_time``). The median wall time of ``python -c "<code>"`` over
``runs`` fresh interpreters (after two warm-up runs), for ``pass`` (the interpreter alone),
``import llm``, ``import httpx`` and a few others, from the repository's root. Bytecode is
cached in a temporary ``PYTHONPYCACHEPREFIX`` (and ``PYTHONDONTWRITEBYTECODE`` dropped), so the
figures are those of an installed package, whose modules are compiled once. ``loaded_modules``
says which heavy dependencies ``import llm`` loads; ``import_profile`` lists the slowest
modules of ``python -X importtime``.

``python -m llm.perf.micro`` prints the tables (``--json`` for JSON); ``render_markdown`` makes
the section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import HealthConfig, RetryConfig, RouteConfig
from ..routing.balancer import Balancer
from ..routing.plan import plan_call
from ..routing.state import WARMUP_SAMPLES, Pool, RouteState

POLICIES = ("round_robin", "weighted_round_robin", "least_latency", "least_load")
ROUTE_COUNTS = (2, 10, 100)
TARGET_US = 10.0
MODEL = "m"
RUN_NS = 5_000_000  # a timed run lasts about this long (short runs: the best of many)
FACTORY_IMPORT = "from llm.factory import LLMFactory"  # the documented entry point
IMPORT_CODES: tuple[tuple[str, str], ...] = (
    ("interpreter alone", "pass"),
    ("import llm", "import llm"),
    ("import httpx", "import httpx"),
    ("import loguru", "import loguru"),
    ("import yaml", "import yaml"),
    ("the entry point", FACTORY_IMPORT),
)
# Measured too when installed, for reference (not a dependency; its price table from the
# package, as this machine has no network).
LITELLM_IMPORT = (
    "LiteLLM (reference)",
    "import os; os.environ.setdefault('LITELLM_LOCAL_MODEL_COST_MAP', 'True'); import litellm",
)
# Modules that a plain ``import llm`` must not load.
MUST_STAY_UNLOADED = ("aiohttp", "openai", "httpx", "yaml", "loguru", "asyncio")

Step = Callable[[], None]


# --------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class RoutingFigure:
    """The routing cost of one successful call in one setting (microseconds)."""

    policy: str
    routes: int
    ejected: int
    pick_report_us: float  # balancer.pick + dispatch + succeeded
    call_us: float  # pool lookup + CallPlan + next + start + succeeded
    examined_per_pick: float  # routes the policy looked at per pick

    @property
    def plan_overhead_us(self) -> float:
        return self.call_us - self.pick_report_us


class _Tally:
    """How many times a policy looked at a route's health while choosing."""

    def __init__(self) -> None:
        self.looked_at = 0
        self.choosing = False


class _CountingHealth:
    """A route's health that counts the policy's looks (reads of ``healthy`` while it
    chooses); everything else goes to the real one."""

    __slots__ = ("_health", "_tally")

    def __init__(self, health: Any, tally: _Tally) -> None:
        object.__setattr__(self, "_health", health)
        object.__setattr__(self, "_tally", tally)

    def __getattr__(self, name: str) -> Any:
        if name == "healthy" and self._tally.choosing:
            self._tally.looked_at += 1
        return getattr(self._health, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._health, name, value)


def _count_looks(balancer: Balancer) -> _Tally:
    """Make every route of ``balancer`` count the policy's looks at it."""
    tally = _Tally()
    for route in balancer.routes.values():
        route.health = _CountingHealth(route.health, tally)  # type: ignore[assignment]
    choose = balancer.policy.choose

    def counting_choose(*args: Any) -> RouteState | None:
        tally.choosing = True
        try:
            return choose(*args)
        finally:
            tally.choosing = False

    balancer.policy.choose = counting_choose  # type: ignore[method-assign,assignment]
    return tally


@dataclass
class Setup:
    """A balancer in steady state, with its pool and each route's latency."""

    balancer: Balancer
    pool: Pool
    latency: dict[RouteState, float] = field(default_factory=dict)


def make_setup(
    policy: str,
    routes: int,
    ejected: int = 0,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Setup:
    """A balancer of ``routes`` routes of one model, each used once, the first ``ejected``
    ejected for an hour."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
    if not 0 <= ejected < routes:
        raise ValueError("ejected must leave at least one route available")
    weighted = policy == "weighted_round_robin"
    configs = [
        RouteConfig(
            name=f"r{i}",
            base_url=f"http://127.0.0.1:{9000 + i}/v1",
            model=MODEL,
            weight=float(1 + i % 3) if weighted else 1.0,
        )
        for i in range(routes)
    ]
    balancer = Balancer(
        configs,
        policy="round_robin" if weighted else policy,
        health=HealthConfig(cooldown=3600.0, max_cooldown=3600.0),
        clock=clock,
    )
    pool = balancer.pool(MODEL)
    assert pool is not None
    setup = Setup(balancer, pool)
    for i, route in enumerate(pool.routes):
        setup.latency[route] = 0.050 + 0.001 * i
        for _ in range(WARMUP_SAMPLES):  # measured, past the warm-up
            started = balancer.dispatch(route)
            balancer.succeeded(route, started, setup.latency[route])
    for route in pool.routes[:ejected]:
        balancer.failed(route, balancer.dispatch(route), "ejected by the benchmark")
    return setup


def pick_and_report(setup: Setup) -> Step:
    """One successful attempt, balancer only: pick, dispatch, succeeded."""
    balancer, pool, latency = setup.balancer, setup.pool, setup.latency
    tried: list[RouteState] = []  # what CallPlan passes on a first attempt

    def step() -> None:
        route = balancer.pick(pool, tried, False)
        if route is None:
            raise RuntimeError("no route available")
        started = balancer.dispatch(route)
        balancer.succeeded(route, started, latency[route])

    return step


def call_routing(setup: Setup) -> Step:
    """One call answered at its first attempt, as ``plan_call`` and the engine loop do it."""
    balancer, latency = setup.balancer, setup.latency
    retry = RetryConfig()
    deadline = 120.0

    def step() -> None:
        plan = plan_call(balancer, route=None, model=MODEL, retry=retry, deadline=deadline)
        route = plan.next()
        if route is None:
            raise RuntimeError("no route available")
        started = plan.start(route)
        plan.succeeded(route, started, latency[route])

    return step


@contextmanager
def _gc_off() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _run(step: Step, number: int) -> int:
    """Nanoseconds taken by ``number`` calls of ``step``."""
    clock = time.perf_counter_ns
    loop = range(number)
    started = clock()
    for _ in loop:
        step()
    return clock() - started


def calibrate(step: Step) -> int:
    """How many calls of ``step`` make a run of about ``RUN_NS``."""
    with _gc_off():
        number = 1
        while True:
            spent = _run(step, number)
            if spent >= RUN_NS // 10 or number >= 10_000_000:
                break
            number *= 10
    return max(1, int(number * RUN_NS / max(spent, 1)))


def time_steps(
    steps: Sequence[Step], *, number: int | None = None, repeat: int = 15
) -> list[float]:
    """Nanoseconds per call of each step: the best of ``repeat`` runs of ``number`` calls
    (calibrated per step when not given). The runs are interleaved (every step once, then every
    step again...), so that a busy moment of the machine spoils one run of several steps
    rather than every run of one step."""
    numbers = [number or calibrate(step) for step in steps]
    best = [math.inf] * len(steps)
    with _gc_off():
        for _ in range(max(1, repeat)):
            for i, step in enumerate(steps):
                best[i] = min(best[i], _run(step, numbers[i]) / numbers[i])
    return best


def time_step(step: Step, *, number: int | None = None, repeat: int = 15) -> float:
    """Best of ``repeat`` runs, in nanoseconds per call of ``step``."""
    return time_steps([step], number=number, repeat=repeat)[0]


def routes_examined(policy: str, routes: int, ejected: int = 0, picks: int = 1000) -> float:
    """Routes the policy looks at per pick, over ``picks`` pick + report cycles."""
    setup = make_setup(policy, routes, ejected)
    tally = _count_looks(setup.balancer)
    step = pick_and_report(setup)
    for _ in range(picks):
        step()
    return tally.looked_at / picks


def ejected_counts(routes: int) -> tuple[int, ...]:
    """The settings measured for a pool size: none ejected, and half of them."""
    return (0, routes // 2)


def measure_routing(
    policies: Sequence[str] = POLICIES,
    route_counts: Sequence[int] = ROUTE_COUNTS,
    *,
    number: int | None = None,
    repeat: int = 15,
) -> list[RoutingFigure]:
    """The routing figures of every policy, pool size and ejection setting."""
    settings = [
        (policy, routes, ejected)
        for policy in policies
        for routes in route_counts
        for ejected in ejected_counts(routes)
    ]
    steps: list[Step] = []
    for setting in settings:
        steps.append(pick_and_report(make_setup(*setting)))
        steps.append(call_routing(make_setup(*setting)))
    ns = time_steps(steps, number=number, repeat=repeat)
    return [
        RoutingFigure(
            policy=policy,
            routes=routes,
            ejected=ejected,
            pick_report_us=ns[2 * i] / 1000.0,
            call_us=ns[2 * i + 1] / 1000.0,
            examined_per_pick=routes_examined(policy, routes, ejected),
        )
        for i, (policy, routes, ejected) in enumerate(settings)
    ]


# --------------------------------------------------------------------------- import time


@dataclass(frozen=True)
class ImportFigure:
    """Wall time of ``python -c "<code>"``, a fresh interpreter per run (milliseconds)."""

    label: str
    code: str
    median_ms: float
    min_ms: float
    runs: int


@dataclass(frozen=True)
class ImportCost:
    """One module in ``python -X importtime``: its own time and with what it imports (ms)."""

    module: str
    self_ms: float
    cumulative_ms: float


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


@contextmanager
def _cached_bytecode_env() -> Iterator[dict[str, str]]:
    """An environment whose interpreters cache bytecode in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="llm-pyc-") as prefix:
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = prefix
        yield env


def _python(code: str, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        cwd=_repo_root(),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )


def import_codes() -> tuple[tuple[str, str], ...]:
    """The imports to time: ``IMPORT_CODES``, and LiteLLM's when it is installed."""
    if importlib.util.find_spec("litellm") is None:
        return IMPORT_CODES
    return (*IMPORT_CODES, LITELLM_IMPORT)


def measure_import_time(
    runs: int = 10, codes: Sequence[tuple[str, str]] = IMPORT_CODES
) -> list[ImportFigure]:
    """Median wall time of each ``python -c code`` over ``runs`` runs (interleaved, so that a
    busy moment of the machine does not fall on one of them only)."""
    with _cached_bytecode_env() as env:
        for _ in range(2):
            for _, code in codes:
                _python(code, env)
        times: dict[str, list[float]] = {code: [] for _, code in codes}
        for _ in range(runs):
            for _, code in codes:
                started = time.perf_counter()
                _python(code, env)
                times[code].append((time.perf_counter() - started) * 1000.0)
    return [
        ImportFigure(label, code, statistics.median(times[code]), min(times[code]), runs)
        for label, code in codes
    ]


def loaded_modules(
    code: str = "import llm", modules: Sequence[str] = MUST_STAY_UNLOADED
) -> dict[str, bool]:
    """Which of ``modules`` are in ``sys.modules`` after ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(str(m in sys.modules) for m in {list(modules)!r}))"
    with _cached_bytecode_env() as env:
        words = _python(probe, env).stdout.split()
    return {module: word == "True" for module, word in zip(modules, words, strict=True)}


def import_profile(code: str = "import llm", top: int = 12, runs: int = 5) -> list[ImportCost]:
    """The ``top`` modules by cumulative time in ``python -X importtime -c code`` (medians of
    ``runs`` runs, bytecode cached), imports made by the interpreter's start-up left out."""
    samples: dict[str, list[tuple[int, int]]] = {}
    with _cached_bytecode_env() as env:
        _python(code, env)
        baseline = set(_import_lines(_python("pass", env, "-X", "importtime").stderr))
        for _ in range(runs):
            lines = _import_lines(_python(code, env, "-X", "importtime").stderr)
            for module, figures in lines.items():
                if module not in baseline:
                    samples.setdefault(module, []).append(figures)
    costs = [
        ImportCost(
            module,
            statistics.median(s[0] for s in values) / 1000.0,
            statistics.median(s[1] for s in values) / 1000.0,
        )
        for module, values in samples.items()
    ]
    costs.sort(key=lambda cost: cost.cumulative_ms, reverse=True)
    return costs[:top]


def _import_lines(stderr: str) -> dict[str, tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        own, cumulative, name = line[len("import time:") :].split("|")
        found[name.strip()] = (int(own), int(cumulative))
    return found


# --------------------------------------------------------------------------- results


@dataclass
class MicroResults:
    routing: list[RoutingFigure] = field(default_factory=list)
    imports: list[ImportFigure] = field(default_factory=list)
    loaded: dict[str, bool] = field(default_factory=dict)
    profile: list[ImportCost] = field(default_factory=list)
    factory_profile: list[ImportCost] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "routing": [
                {**asdict(f), "plan_overhead_us": f.plan_overhead_us} for f in self.routing
            ],
            "imports": [asdict(f) for f in self.imports],
            "loaded_by_import_llm": dict(self.loaded),
            "import_profile": [asdict(c) for c in self.profile],
            "factory_import_profile": [asdict(c) for c in self.factory_profile],
            "python": sys.version.split()[0],
            "target_us": TARGET_US,
        }


def run(
    *,
    routing: bool = True,
    imports: bool = True,
    quick: bool = False,
    import_runs: int = 10,
) -> MicroResults:
    """Everything ``python -m llm.perf.micro`` measures; ``quick`` for a fast, rough pass."""
    results = MicroResults()
    if routing:
        results.routing = measure_routing(number=200 if quick else None, repeat=2 if quick else 15)
    if imports:
        runs = 2 if quick else import_runs
        results.imports = measure_import_time(runs=runs, codes=import_codes())
        results.loaded = loaded_modules()
        results.profile = import_profile(runs=1 if quick else 5)
        results.factory_profile = import_profile(FACTORY_IMPORT, top=10, runs=1 if quick else 5)
    return results


def _policy_label(policy: str) -> str:
    return policy.replace("_", " ")


def render_markdown(results: MicroResults) -> str:
    """The routing and import-time section of docs/performance.md."""
    lines: list[str] = []
    if results.routing:
        worst = {
            n: max(f.pick_report_us for f in results.routing if f.routes == n)
            for n in sorted({f.routes for f in results.routing})
        }
        worst_text = ", ".join(f"{us:.2f} µs at {n}" for n, us in worst.items())
        lines += [
            "### Routing cost per call",
            "",
            "Micro-benchmark of the balancer alone (`python -m llm.perf.micro`): one pool of one "
            "model, best of several timed runs with `time.perf_counter_ns`, the real clock, the "
            "steady state. *pick + report* is `balancer.pick` + `dispatch` + `succeeded`, the "
            "balancer's share of a successful attempt; *per call* adds what the engine does "
            "around it (the model's pool, a `CallPlan`, `next`, `start`, `succeeded` and the "
            "`Attempt` record); *routes examined / pick* counts the routes the policy looked "
            "at per pick (counted, not timed). No policy scans the pool: round robin moves a "
            "cursor; weighted round robin (earliest deadline first) and least latency take "
            "routes off per-pool heaps (`llm/routing/indexes.py`), where an ejected route is "
            "parked the first time it comes up and waits out its cooldown off the heaps. "
            f"Target: pick + report <= {TARGET_US:g} µs at 2 and at 100 routes "
            f"(worst measured here: {worst_text} routes).",
            "",
            "| policy | routes | ejected | pick + report (µs) | per call (µs) "
            "| CallPlan overhead (µs) | routes examined / pick |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for f in results.routing:
            lines.append(
                f"| {_policy_label(f.policy)} | {f.routes} | {f.ejected} "
                f"| {f.pick_report_us:.2f} | {f.call_us:.2f} | {f.plan_overhead_us:.2f} "
                f"| {f.examined_per_pick:.2f} |"
            )
        lines.append("")
    if results.imports:
        lines += [
            "### Import time",
            "",
            'Median wall time of `python -c "..."` in a fresh interpreter '
            f"({results.imports[0].runs} runs each, bytecode cached), Python "
            f"{sys.version.split()[0]}:",
            "",
            "| command | median (ms) | fastest (ms) |",
            "|---|---:|---:|",
        ]
        for i in results.imports:
            shown = "import litellm" if i.code == LITELLM_IMPORT[1] else i.code
            lines.append(f"| `{shown}` | {i.median_ms:.1f} | {i.min_ms:.1f} |")
        lines.append("")
        by_code = {i.code: i.median_ms for i in results.imports}
        if LITELLM_IMPORT[1] in by_code and "import llm" in by_code:
            lines += [
                f"`import llm` takes {by_code['import llm'] / by_code[LITELLM_IMPORT[1]]:.3f}× "
                f"the time of `import litellm`, and `{FACTORY_IMPORT}` "
                f"{by_code.get(FACTORY_IMPORT, 0.0) / by_code[LITELLM_IMPORT[1]]:.3f}× "
                "(LiteLLM imported with its bundled price table, "
                "`LITELLM_LOCAL_MODEL_COST_MAP=True`).",
                "",
            ]
    if results.loaded:
        loaded = [m for m, present in results.loaded.items() if present]
        absent = [m for m, present in results.loaded.items() if not present]
        lines += [
            "`import llm` loads "
            + (", ".join(f"`{m}`" for m in loaded) if loaded else "none of")
            + " "
            + ("of " if loaded else "")
            + ", ".join(f"`{m}`" for m in results.loaded)
            + (f" (not loaded: {', '.join(f'`{m}`' for m in absent)})" if loaded and absent else "")
            + ".",
            "",
        ]
    for title, costs in (
        ("`import llm`", results.profile),
        (f"`{FACTORY_IMPORT}` (the entry point)", results.factory_profile),
    ):
        if costs:
            lines += [
                f"Slowest imports of {title} (`python -X importtime`, medians, ms):",
                "",
                "| module | self | cumulative |",
                "|---|---:|---:|",
            ]
            for c in costs:
                lines.append(f"| `{c.module}` | {c.self_ms:.2f} | {c.cumulative_ms:.2f} |")
            lines.append("")
    return "\n".join(lines)


def _print_tables(results: MicroResults) -> None:
    if results.routing:
        print(
            f"{'policy':<22}{'routes':>7}{'ejected':>8}{'pick+report us':>16}"
            f"{'per call us':>13}{'plan us':>9}{'examined/pick':>15}"
        )
        for f in results.routing:
            print(
                f"{f.policy:<22}{f.routes:>7}{f.ejected:>8}{f.pick_report_us:>16.2f}"
                f"{f.call_us:>13.2f}{f.plan_overhead_us:>9.2f}{f.examined_per_pick:>15.2f}"
            )
        print()
    for i in results.imports:
        print(f"{i.median_ms:8.1f} ms median {i.min_ms:8.1f} ms min  python -c {i.code!r}")
    if results.loaded:
        print("loaded by import llm:", {m: p for m, p in results.loaded.items()})
    for code, costs in (("import llm", results.profile), (FACTORY_IMPORT, results.factory_profile)):
        if costs:
            print(f"python -X importtime -c {code!r}:")
        for c in costs:
            print(f"{c.self_ms:8.2f} ms self {c.cumulative_ms:8.2f} ms cumulative  {c.module}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llm.perf.micro", description="Routing cost and import time of llm."
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--markdown", action="store_true", help="print the markdown section")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (rough)")
    parser.add_argument("--runs", type=int, default=10, help="interpreters per import figure")
    parser.add_argument("--routing-only", action="store_true")
    parser.add_argument("--import-only", action="store_true")
    args = parser.parse_args(argv)
    results = run(
        routing=not args.import_only,
        imports=not args.routing_only,
        quick=args.quick,
        import_runs=args.runs,
    )
    if args.json:
        print(json.dumps(results.as_dict(), indent=2))
    elif args.markdown:
        print(render_markdown(results))
    else:
        _print_tables(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
