"""Fleet latency: the provider's routing policies against an oracle, on a simulated vLLM fleet.

How this works
--------------
**The fleet.** Four fake vLLM instances (``llm.testing.FakeVLLM`` with a ``BatchingSpec``) run
in this process, each on its own thread and event loop, at speeds 1, 1, 0.5 and 0.25, each
batching continuously: up to ``max_num_seqs`` (8) sequences run, the rest wait in FIFO order;
a step takes ``(20 ms + 1 ms × running + 0.05 ms × uncached prompt tokens) / speed`` and gives
every running sequence one token. They serve vLLM's ``/metrics`` (running, waiting, prefix
cache counters), which is what a load-aware policy can read. Every run gets a fresh fleet
(new ports, empty prefix caches); after a run the fleet is drained (every instance reports
running = waiting = 0, bounded) before it is stopped.

**The clients** run in other processes (``python -m llm.perf.fleet_client``, see there), so
that their CPU and the fleet's do not share one interpreter lock:

- each policy of ``llm.config.KNOWN_POLICIES`` through the provider, with 1 app replica and
  with 4 (four processes, each with its own provider, the calls split among them by a seeded
  random draw: each replica knows only its own calls, as in production);
- the **oracle**: join the shortest queue knowing the speeds, one process with raw aiohttp; it
  sends every call, so its count of outstanding calls per instance is the truth, and each call
  goes to the instance with the least ``(outstanding + 1) / speed``. It is the reference with
  global knowledge that no set of replicas has, and it runs as one process in both tables.

**Capacity** is measured, not assumed: on a fresh fleet the oracle runs a closed loop with
enough calls in flight to keep every batch full and every queue non-empty, even the slowest
instance's (``(max_num_seqs + 3) × Σ speed / min speed``); the completed calls per second over
a window after a warm-up is the capacity for this workload mix.

**The workload** (``llm.perf.fleet_model``) is open-loop Poisson at ``load`` × capacity (0.8)
for ``duration`` seconds, seeded, the same calls for every client: half share one of four long
system prompts, half are unique; half are streamed; ``max_tokens`` is uniform in 16-160. Calls
are sent at their absolute arrival times whether or not earlier ones have finished. That is
the ``mixed`` workload (``Settings.workload``); ``prefix`` (multi-turn sessions over more long
system prompts than one instance's cache holds) and ``hot`` (one hot system prompt) are in
``llm.perf.fleet_workloads``, which also says the fleet they run on (:func:`fleet_spec`: a
smaller prefix cache, a dearer prefill). Capacity is measured per workload, with its own mix.

**Affinity clients**: when the config takes ``llm.affinity`` (:func:`affinity_accepted`),
``least_load+affinity`` (``by_prefix`` on, and a session's calls pass ``session=``) and, for
workloads with sessions, ``least_load+by_prefix`` (no ``session=``) run after the policies;
with ``mixed`` only when named in ``Settings.policies`` (docs/fleet.md stays as it was).

**Measured** per client: latency p50/p95/p99 and, for streamed calls, time to first content
p50/p99, both counted from the arrival time; completed calls/s; failed calls (with their
errors); each instance's share; the fleet's prefix-cache hit rate (the counters' deltas from
``/metrics``, summed); and queue imbalance: every 0.25 s a thread here reads each instance's
waiting count (``batch_load()``), and over the samples whose mean waiting is at least 1 the
worst and the mean of ``max / mean`` are reported. Each client's p99 and TTFT p99 are also
given as a ratio to the oracle's in the same table (and, in the ``prefix`` / ``hot`` summary,
to plain ``least_load``'s). The CPU of the fleet process and of the
clients is reported against the wall time, to show that neither is the bottleneck.

:func:`benchmark` runs it all; :func:`render_text` / :func:`render_markdown` /
:func:`chart_svg` / :func:`document` present it (``scripts/bench_fleet.py``, docs/fleet.md);
for ``prefix`` and ``hot``, :func:`affinity_section` / :func:`affinity_page` write one section
each of docs/fleet-affinity.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import selectors
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from html import escape
from typing import TYPE_CHECKING, Any

from . import fleet_sim
from . import fleet_workloads as workloads
from .fleet_model import (
    Figures,
    capacity,
    prefix_hit_rate,
    summarize,
    with_ratios,
)
from .fleet_model import ratio as ratio_of
from .fleet_workloads import FleetSpec, fleet_spec

if TYPE_CHECKING:
    from ..testing import FakeVLLM

MODEL = "m"
ORACLE = "oracle"
SAMPLE_EVERY = 0.25  # seconds between two reads of every instance's queue
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

Progress = Callable[[str], None]


@dataclass
class Settings:
    load: float = 0.8
    duration: float = 50.0
    replicas: tuple[int, ...] = (1, 4)
    policies: tuple[str, ...] | None = None  # None: every policy in KNOWN_POLICIES
    seed: int = 0
    max_tokens: tuple[int, int] = (16, 160)
    warmup: float = 10.0  # capacity: seconds before the window
    window: float = 20.0  # capacity: the window
    fleet: FleetSpec = field(default_factory=FleetSpec)
    workload: str = workloads.DEFAULT_WORKLOAD

    def __post_init__(self) -> None:
        workloads.check_workload(self.workload)

    @classmethod
    def for_workload(cls, workload: str, *, quick: bool = False, **overrides: Any) -> Settings:
        """Settings for ``workload`` on its fleet (``quick``: as :meth:`quick`)."""
        overrides = {"workload": workload, "fleet": fleet_spec(workload), **overrides}
        return cls.quick(**overrides) if quick else cls(**overrides)

    @classmethod
    def quick(cls, **overrides: Any) -> Settings:
        """A run of a few seconds (tests, trying it out): short calls, short phases."""
        base: dict[str, Any] = {
            "duration": 3.0,
            "max_tokens": (8, 16),
            "warmup": 1.0,
            "window": 2.0,
            "replicas": (1,),
        }
        base.update(overrides)
        return cls(**base)


@dataclass
class Run:
    """One client's run: its figures, and what it cost."""

    figures: Figures
    wall: float  # seconds from the start to the last client's exit
    fleet_cpu: float  # CPU seconds of this process (the fleet and the sampler)
    client_cpu: float  # CPU seconds of the client processes, summed


@dataclass
class Report:
    settings: dict[str, Any]
    capacity: float
    rate: float
    calls: int
    policies: list[str]
    load_polling: bool
    tables: dict[int, list[Run]]  # replicas -> runs (the oracle first)
    cores: int
    wall: float = 0.0
    cpu: float = 0.0  # this process and its children, over the whole benchmark
    errors: list[str] = field(default_factory=list)  # clients that could not run
    affinity: bool = False  # did the config take llm.affinity (the affinity clients)

    @property
    def workload(self) -> str:
        return str(self.settings.get("workload", workloads.DEFAULT_WORKLOAD))


# -- the fleet ------------------------------------------------------------------------------


def start_fleet(spec: FleetSpec) -> list[FakeVLLM]:
    from ..testing import FakeVLLM

    servers: list[FakeVLLM] = []
    try:
        for name, speed in zip(spec.names, spec.speeds, strict=True):
            server = FakeVLLM(
                model=MODEL,
                batching=spec.batching(speed),
                name=name,
                max_model_len=8192,
                tokens=8192,
            )  # tokens: each call generates its max_tokens
            servers.append(server.start())
    except BaseException:
        stop_fleet(servers)
        raise
    return servers


def stop_fleet(servers: Sequence[FakeVLLM]) -> None:
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


@contextlib.contextmanager
def fleet(spec: FleetSpec) -> Iterator[list[FakeVLLM]]:
    servers = start_fleet(spec)
    try:
        yield servers
    finally:
        stop_fleet(servers)


def drain(servers: Sequence[FakeVLLM], timeout: float = 30.0) -> bool:
    """Wait (bounded) until every instance reports nothing running and nothing waiting."""
    end = time.monotonic() + timeout
    while True:
        if all(server.batch_load() == (0, 0) for server in servers):
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.05)


def prefix_counters(server: FakeVLLM) -> tuple[float, float]:
    """(queries, hits) of the prefix cache, in tokens, from the instance's /metrics."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    totals = {"vllm:prefix_cache_queries_total": 0.0, "vllm:prefix_cache_hits_total": 0.0}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals["vllm:prefix_cache_queries_total"], totals["vllm:prefix_cache_hits_total"]


class Sampler:
    """A thread reading every instance's (running, waiting) every ``every`` seconds."""

    def __init__(self, servers: Sequence[FakeVLLM], every: float = SAMPLE_EVERY) -> None:
        self.servers = list(servers)
        self.every = every
        self.waiting: list[list[int]] = []
        self.running: list[list[int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-sampler", daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            loads = [server.batch_load() for server in self.servers]
            self.running.append([running for running, _ in loads])
            self.waiting.append([waiting for _, waiting in loads])
            next_at += self.every
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


# -- the client processes -------------------------------------------------------------------


class ClientError(RuntimeError):
    """A client process failed to start, to run, or to report."""


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """One line of a child's stdout, waiting at most ``timeout`` seconds."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise ClientError(f"client process {process.pid} said nothing for {timeout:.0f} s")
    return process.stdout.readline().strip()


def run_processes(
    specs: Sequence[dict[str, Any]],
    workdir: str,
    bound: float,
    on_start: Callable[[], None] = lambda: None,
    ready_timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """Start one client process per spec, start them together, and collect their results.

    Every process is stopped by its own handle whatever happens; ``bound`` caps the run."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    processes: list[subprocess.Popen[str]] = []
    try:
        for number, spec in enumerate(specs):
            path = os.path.join(workdir, f"spec-{number}.json")
            spec = dict(spec, out=os.path.join(workdir, f"out-{number}.json"))
            with open(path, "w", encoding="utf-8") as out:
                json.dump(spec, out)
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "llm.perf.fleet_client", path],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                    cwd=ROOT,
                )
            )
        for process in processes:
            line = _read_line(process, ready_timeout)
            if line != "ready":
                raise ClientError(f"client process {process.pid} said {line!r}, not ready")
        t0 = time.time() + 0.2
        on_start()
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(f"{t0!r}\n")
            process.stdin.flush()
        end = time.monotonic() + bound
        for process in processes:
            code = process.wait(timeout=max(1.0, end - time.monotonic()))
            if code != 0:
                raise ClientError(f"client process {process.pid} exited with {code}")
        results = []
        for number in range(len(specs)):
            with open(os.path.join(workdir, f"out-{number}.json"), encoding="utf-8") as source:
                results.append(json.load(source))
        return results
    except subprocess.TimeoutExpired as error:
        raise ClientError(f"a client process ran past the bound of {bound:.0f} s") from error
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def _instances(servers: Sequence[FakeVLLM], spec: FleetSpec) -> list[dict[str, Any]]:
    return [
        {"name": name, "url": server.url, "speed": speed}
        for name, server, speed in zip(spec.names, servers, spec.speeds, strict=True)
    ]


def load_polling_accepted() -> bool:
    """Does the config take ``llm.load.poll_interval`` (the load-aware routing's section)?"""
    from ..config import parse_config
    from ..errors import ConfigError

    route = {"base_url": "http://127.0.0.1:9/v1", "model": MODEL}
    try:
        parse_config({"llm": {"routes": {"a": route}, "load": {"poll_interval": 0.5}}}, environ={})
    except ConfigError:
        return False
    return True


def affinity_accepted() -> bool:
    """Does the config take ``llm.affinity`` (prefix affinity's section)?"""
    from ..config import parse_config
    from ..errors import ConfigError

    route = {"base_url": "http://127.0.0.1:9/v1", "model": MODEL}
    llm = {"routes": {"a": route}, "lb_policy": "least_load", "affinity": {"by_prefix": True}}
    try:
        parse_config({"llm": llm}, environ={})
    except ConfigError:
        return False
    return True


def known_policies() -> list[str]:
    from ..config import KNOWN_POLICIES

    return list(KNOWN_POLICIES)


def known_clients() -> list[str]:
    """What ``Settings.policies`` may name: every policy, and the affinity clients."""
    return known_policies() + workloads.all_affinity_clients()


def default_clients(workload: str, affinity: bool) -> list[str]:
    """Every policy, then (config permitting, ``mixed`` excepted) the affinity clients."""
    extra = workloads.affinity_clients(workload) if affinity and workload != "mixed" else []
    return known_policies() + extra


# -- the phases -----------------------------------------------------------------------------


def measure_capacity(settings: Settings, progress: Progress = lambda _: None) -> float:
    """Completed calls/s of the workload mix with every batch full (the oracle, closed loop)."""
    spec = settings.fleet
    concurrency = spec.saturating_concurrency
    duration = settings.warmup + settings.window
    progress(f"capacity: {concurrency} calls in flight, {duration:.0f} s")
    with fleet(spec) as servers, tempfile.TemporaryDirectory(prefix="fleet-") as workdir:
        client = {
            "mode": "closed",
            "client": ORACLE,
            "model": MODEL,
            "instances": _instances(servers, spec),
            "concurrency": concurrency,
            "duration": duration,
            "seed": settings.seed,
            "tokens": list(settings.max_tokens),
            "workload": settings.workload,
        }
        (result,) = run_processes([client], workdir, bound=duration + 60)
    completions = [r["end"] for r in result["records"] if r["ok"]]
    return capacity(completions, settings.warmup, settings.warmup + settings.window)


def run_client(
    client: str,
    replicas: int,
    calls_path: str,
    settings: Settings,
    load_poll: float | None,
    progress: Progress = lambda _: None,
) -> Run:
    """One client over the whole workload on a fresh fleet."""
    spec = settings.fleet
    processes = 1 if client == ORACLE else replicas
    bound = settings.duration * 4 + 60  # a round robin's slow queue drains well within this
    with fleet(spec) as servers, tempfile.TemporaryDirectory(prefix="fleet-") as workdir:
        before = {name: prefix_counters(s) for name, s in zip(spec.names, servers, strict=True)}
        specs = [
            {
                "mode": "open",
                "client": client,
                "model": MODEL,
                "instances": _instances(servers, spec),
                "calls_path": calls_path,
                "replica": replica,
                "replicas": processes,
                "seed": settings.seed,
                "bound": bound,
                "load_poll": None if client == ORACLE else load_poll,
            }
            for replica in range(processes)
        ]
        sampler = Sampler(servers)
        began: list[float] = []  # when the clients were told to start

        def start() -> None:
            began.append(time.monotonic())
            sampler.start()

        cpu = _cpu_self()
        try:
            results = run_processes(specs, workdir, bound + 30, on_start=start)
        finally:
            sampler.stop()
        wall = time.monotonic() - began[0]
        if not drain(servers):
            progress(f"{client}: the fleet did not drain within 30 s")
        after = {name: prefix_counters(s) for name, s in zip(spec.names, servers, strict=True)}
        fleet_cpu = _cpu_self() - cpu
    records = [record for result in results for record in result["records"]]
    figures = summarize(
        client,
        processes,
        records,
        spec.names,
        sampler.waiting,
        prefix_hit_rate(before, after),
    )
    client_cpu = sum(result["cpu"] for result in results)
    figures.cpu = {"wall": wall, "fleet": fleet_cpu, "clients": client_cpu}
    return Run(figures, wall, fleet_cpu, client_cpu)


def benchmark(settings: Settings, progress: Progress = lambda _: None) -> Report:
    """Capacity, then every client over the same workload, per replica count."""
    began, cpu = time.monotonic(), _cpu_total()
    affinity = affinity_accepted()
    policies = (
        list(settings.policies)
        if settings.policies is not None
        else default_clients(settings.workload, affinity)
    )
    errors: list[str] = []
    if not affinity:
        for client in [p for p in policies if p in workloads.all_affinity_clients()]:
            errors.append(f"{client}: this version's config does not take llm.affinity")
            policies.remove(client)
    polling = load_polling_accepted()
    measured = measure_capacity(settings, progress)
    rate = settings.load * measured
    calls = workloads.make_calls(
        settings.workload, settings.seed, rate, settings.duration, settings.max_tokens
    )
    progress(
        f"capacity {measured:.2f} calls/s; workload {settings.workload}: {len(calls)} calls at "
        f"{rate:.2f}/s for {settings.duration:.0f} s"
    )
    tables: dict[int, list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="fleet-") as workdir:
        calls_path = os.path.join(workdir, "calls.json")
        with open(calls_path, "w", encoding="utf-8") as out:
            json.dump([call.to_json() for call in calls], out)
        for replicas in settings.replicas:
            runs = []
            for client in [ORACLE, *policies]:
                progress(f"{client} x{1 if client == ORACLE else replicas}")
                try:
                    run = run_client(
                        client, replicas, calls_path, settings, 0.5 if polling else None, progress
                    )
                except ClientError as error:
                    errors.append(f"{client} ×{replicas}: {error}")
                    progress(errors[-1])
                    continue
                runs.append(run)
                progress("  " + _line(run.figures))
            oracle = next((run for run in runs if run.figures.client == ORACLE), None)
            if oracle is not None:
                with_ratios([run.figures for run in runs], oracle.figures)
            tables[replicas] = runs
    report = Report(
        settings=_settings_dict(settings),
        capacity=measured,
        rate=rate,
        calls=len(calls),
        policies=policies,
        load_polling=polling,
        tables=tables,
        cores=os.cpu_count() or 1,
        errors=errors,
        affinity=affinity,
    )
    report.wall = time.monotonic() - began
    report.cpu = _cpu_total() - cpu
    return report


def _cpu_total() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _settings_dict(settings: Settings) -> dict[str, Any]:
    data = asdict(settings)
    data["fleet"] = asdict(settings.fleet)
    return data


def as_json(report: Report) -> dict[str, Any]:
    return asdict(report)


def from_json(data: dict[str, Any]) -> Report:
    """The report ``as_json`` gave (e.g. to write the docs again without running it again)."""
    fields = dict(data)
    fields["tables"] = {
        int(replicas): [Run(**dict(run, figures=Figures(**run["figures"]))) for run in runs]
        for replicas, runs in data["tables"].items()
    }
    return Report(**fields)


# -- presenting it --------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _label(figures: Figures) -> str:
    return f"{ORACLE} (1 process)" if figures.client == ORACLE else figures.client


def _shares(figures: Figures) -> str:
    return " / ".join(f"{share:.0f}" for share in figures.shares.values())


def _imbalance(figures: Figures) -> str:
    if figures.imbalance_worst is None or figures.imbalance_mean is None:
        return "—"
    return f"{figures.imbalance_worst:.2f} ({figures.imbalance_mean:.2f})"


def _line(figures: Figures) -> str:
    failed = f", {figures.failed} FAILED: {figures.errors}" if figures.failed else ""
    return (
        f"p50 {_s(figures.p50)} p99 {_s(figures.p99)} s, TTFT p99 {_s(figures.ttft_p99)} s, "
        f"{figures.calls_per_s:.2f} calls/s, shares {_shares(figures)}{failed}"
    )


def table_rows(runs: Sequence[Run]) -> list[list[str]]:
    rows = []
    for run in runs:
        f = run.figures
        rows.append(
            [
                _label(f),
                _s(f.p50),
                _s(f.p95),
                _s(f.p99),
                _s(f.ttft_p50),
                _s(f.ttft_p99),
                f"{f.calls_per_s:.2f}",
                _shares(f),
                "—" if f.prefix_hit is None else f"{f.prefix_hit:.0f}",
                _imbalance(f),
                _x(f.p99_ratio),
                _x(f.ttft_p99_ratio),
                str(f.failed),
            ]
        )
    return rows


def header(names: Sequence[str]) -> list[str]:
    return [
        "client",
        "p50 s",
        "p95 s",
        "p99 s",
        "TTFT p50 s",
        "TTFT p99 s",
        "calls/s",
        f"share % ({' / '.join(names)})",
        "prefix hit %",
        "worst imbalance (mean)",
        "p99 ÷ oracle",
        "TTFT p99 ÷ oracle",
        "failed",
    ]


def _markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _text_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[k]) for row in [head, *rows]) for k in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) if k == 0 else cell.rjust(w) for k, (cell, w) in enumerate(
            zip(row, widths, strict=True)
        ))
        for row in [head, *rows]
    )  # fmt: skip


def cpu_rows(report: Report) -> list[list[str]]:
    rows = []
    for replicas, runs in report.tables.items():
        for run in runs:
            f = run.figures
            busy = (run.fleet_cpu + run.client_cpu) / (run.wall * report.cores) * 100
            name = f"{ORACLE} (1 process), ×{replicas} table" if f.client == ORACLE else None
            rows.append(
                [
                    name or f"{f.client} ×{replicas}",
                    f"{run.wall:.1f}",
                    f"{run.fleet_cpu:.1f}",
                    f"{run.client_cpu:.1f}",
                    f"{busy:.0f}",
                    f"{f.max_lag * 1000:.0f}",
                ]
            )
    return rows


CPU_HEAD = [
    "run",
    "wall s",
    "fleet CPU s",
    "clients CPU s",
    "CPU % of all cores",
    "worst send lag ms",
]


def _intro(report: Report) -> str:
    s = report.settings
    text = (
        f"capacity {report.capacity:.2f} calls/s (measured); workload {report.calls} calls at "
        f"{report.rate:.2f}/s ({s['load']:.0%} of capacity) for {s['duration']:.0f} s, seed "
        f"{s['seed']}; load polling {'on (0.5 s)' if report.load_polling else 'not available'}"
    )
    if report.workload == "mixed":
        return text
    spec = FleetSpec(**_fleet_args(s))
    return (
        f"workload {report.workload}; prefix cache {spec.cache_tokens} tokens per instance, "
        f"prefill {spec.prefill_ms_per_token:g} ms/token; llm.affinity "
        f"{'accepted' if report.affinity else 'not accepted by this version'}\n{text}"
    )


BASELINE = "least_load"  # what the affinity clients are compared with, besides the oracle

SUMMARY_HEAD = [
    "client",
    "prefix hit %",
    "TTFT p99 s",
    "p99 s",
    "TTFT p99 ÷ oracle",
    "p99 ÷ oracle",
    f"TTFT p99 ÷ {BASELINE}",
    f"p99 ÷ {BASELINE}",
]


def summary_rows(runs: Sequence[Run]) -> list[list[str]]:
    """Per client: the prefix-cache hit rate and the tails, against the oracle and least_load."""
    base = next((run.figures for run in runs if run.figures.client == BASELINE), None)
    rows = []
    for run in runs:
        f = run.figures
        rows.append(
            [
                _label(f),
                "—" if f.prefix_hit is None else f"{f.prefix_hit:.0f}",
                _s(f.ttft_p99),
                _s(f.p99),
                _x(f.ttft_p99_ratio),
                _x(f.p99_ratio),
                _x(ratio_of(f.ttft_p99, base.ttft_p99) if base else None),
                _x(ratio_of(f.p99, base.p99) if base else None),
            ]
        )
    return rows


def render_text(report: Report) -> str:
    names = FleetSpec(**_fleet_args(report.settings)).names
    parts = [_intro(report)]
    for replicas, runs in report.tables.items():
        parts.append(f"\n{replicas} app replica(s) per policy; the oracle is one process:")
        parts.append(_text_table(header(names), table_rows(runs)))
        for run in runs:
            if run.figures.failed:
                parts.append(f"  {run.figures.client}: failed calls: {run.figures.errors}")
        if report.workload != "mixed":
            parts.append(f"\nprefix cache and tails, {replicas} app replica(s):")
            parts.append(_text_table(SUMMARY_HEAD, summary_rows(runs)))
    parts += [f"NOT RUN: {error}" for error in report.errors]
    parts.append("\nCPU:")
    parts.append(_text_table(CPU_HEAD, cpu_rows(report)))
    parts.append(
        f"whole benchmark: {report.wall:.0f} s wall, {report.cpu:.0f} s CPU "
        f"({report.cpu / (report.wall * report.cores):.0%} of {report.cores} cores)"
    )
    return "\n".join(parts)


def _fleet_args(settings: dict[str, Any]) -> dict[str, Any]:
    data = dict(settings["fleet"])
    data["speeds"] = tuple(data["speeds"])
    return data


def render_markdown(report: Report) -> str:
    """The tables and the CPU table, as markdown sections."""
    names = FleetSpec(**_fleet_args(report.settings)).names
    parts = []
    for replicas, runs in report.tables.items():
        title = "one app replica" if replicas == 1 else f"{replicas} app replicas"
        parts.append(f"### Each policy with {title}\n")
        if report.workload != "mixed":
            parts.append(_markdown_table(SUMMARY_HEAD, summary_rows(runs)))
            parts.append("\nAll the figures:\n")
        parts.append(_markdown_table(header(names), table_rows(runs)))
        for run in runs:
            if run.figures.failed:
                parts.append(f"\nFailed calls of {run.figures.client}: {run.figures.errors}")
        parts.append("")
    parts += [f"Not run: {error}\n" for error in report.errors]
    parts.append("### CPU\n")
    parts.append(_markdown_table(CPU_HEAD, cpu_rows(report)))
    parts.append(
        f"\nWhole benchmark: {report.wall:.0f} s wall, {report.cpu:.0f} s CPU "
        f"({report.cpu / (report.wall * report.cores):.0%} of {report.cores} cores)."
    )
    return "\n".join(parts)


def chart_svg(report: Report, title: str = "Fleet latency: p99 and TTFT p99 (s)") -> str:
    """Horizontal bars on a log scale: per client and replica count, p99 and TTFT p99."""
    rows: list[tuple[str, Figures]] = []
    for replicas, runs in report.tables.items():
        for run in runs:
            suffix = f" (1 process), ×{replicas} table" if run.figures.client == ORACLE else ""
            suffix = suffix or f" ×{replicas}"
            rows.append((run.figures.client + suffix, run.figures))
    values = [v for _, f in rows for v in (f.p99, f.ttft_p99) if v]
    low = 10 ** math.floor(math.log10(min(values))) if values else 0.1
    top = max([low * 10, *values])
    span = math.log10(top / low)
    label_w, bar_w, row_h, bar_h = 200, 500, 44, 16
    width, height = label_w + bar_w + 140, 60 + row_h * len(rows) + 40
    colors = {"p99": "#4c78a8", "ttft": "#f58518"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{label_w}" y="32" width="12" height="12" fill="{colors["p99"]}"/>',
        f'<text x="{label_w + 16}" y="42">latency p99</text>',
        f'<rect x="{label_w + 110}" y="32" width="12" height="12" fill="{colors["ttft"]}"/>',
        f'<text x="{label_w + 126}" y="42">time to first token p99 (streamed calls)</text>',
    ]
    axis_bottom = 60 + row_h * len(rows) - 8
    decade = low
    while decade <= top:
        x = label_w + bar_w * math.log10(decade / low) / span
        parts.append(f'<line x1="{x:.1f}" y1="52" x2="{x:.1f}" y2="{axis_bottom}" stroke="#ddd"/>')
        parts.append(f'<text x="{x + 2:.1f}" y="{axis_bottom + 12}" fill="#555">{decade:g}</text>')
        decade *= 10
    for row, (label, figures) in enumerate(rows):
        y = 60 + row * row_h
        parts.append(f'<text x="10" y="{y + bar_h + 4}">{escape(label)}</text>')
        bars = (
            (0, "p99", figures.p99, figures.p99_ratio),
            (bar_h + 2, "ttft", figures.ttft_p99, figures.ttft_p99_ratio),
        )
        for offset, kind, value, ratio in bars:
            if value is None:
                continue
            length = max(1.0, bar_w * math.log10(max(value, low) / low) / span)
            note = "" if ratio is None or figures.client == ORACLE else f"  ({ratio:.2f}×)"
            parts.append(
                f'<rect x="{label_w}" y="{y + offset}" width="{length:.1f}" height="{bar_h}" '
                f'fill="{colors[kind]}"/>'
            )
            parts.append(
                f'<text x="{label_w + length + 4:.1f}" y="{y + offset + bar_h - 4}">'
                f"{value:.2f} s{escape(note)}</text>"
            )
    parts.append(
        f'<text x="10" y="{height - 8}" fill="#555">log scale, seconds from arrival; '
        "in brackets: the ratio to the oracle of the same table</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def document(report: Report, *, date: str, machine: str, chart_file: str) -> str:
    """The whole of docs/fleet.md."""
    s = report.settings
    spec = FleetSpec(**_fleet_args(s))
    speeds = ", ".join(
        f"{name} {speed:g}" for name, speed in zip(spec.names, spec.speeds, strict=True)
    )
    low, high = s["max_tokens"]
    polling = (
        "every 0.5 s (`llm.load.poll_interval`)"
        if report.load_polling
        else "not available in this version"
    )
    slowest = spec.names[spec.speeds.index(min(spec.speeds))]
    slow_part = min(spec.speeds) / sum(spec.speeds)
    ratios = []
    runs_all = [run for runs in report.tables.values() for run in runs]
    busy = "(no runs)"
    if runs_all:
        peak = max(runs_all, key=lambda run: (run.fleet_cpu + run.client_cpu) / run.wall)
        use = (peak.fleet_cpu + peak.client_cpu) / (peak.wall * report.cores)
        lag = max(run.figures.max_lag for run in runs_all)
        busy = (
            f"The busiest run (`{peak.figures.client}` ×{peak.figures.replicas}) kept "
            f"{use:.0%} of the {report.cores} cores busy (fleet and clients together), and the "
            f"latest any call left after its arrival time was {lag * 1000:.0f} ms (table CPU)."
        )
    for replicas, runs in report.tables.items():
        for run in runs:
            f = run.figures
            if f.client != ORACLE:
                ratios.append(
                    f"- `{f.client}` ×{replicas}: p99 {_x(f.p99_ratio)}, "
                    f"TTFT p99 {_x(f.ttft_p99_ratio)} the oracle's; the slowest instance "
                    f"({slowest}, {slow_part:.0%} of the fleet's speed) got "
                    f"{f.shares.get(slowest, 0.0):.0f} % of the calls"
                )
    return f"""# Fleet latency against an oracle

Generated by `python scripts/bench_fleet.py --write` on {date} ({machine}); run it again to
refresh this page and its chart. Users run vLLM fleets to cut p99 latency: this compares the
provider's routing policies with an oracle on a simulated fleet whose instances differ in
speed, under the same open-loop workload.

## The fleet

{len(spec.speeds)} fake vLLM instances (`llm.testing.FakeVLLM` with a `BatchingSpec`) in the
benchmark's process, speeds {speeds}. Each batches continuously as vLLM does: up to
{spec.max_num_seqs} sequences run (`max_num_seqs`), the rest wait in FIFO order; a step takes
({spec.step_base_ms:g} ms + {spec.step_per_seq_ms:g} ms × running + {spec.prefill_ms_per_token:g}
ms × uncached prompt tokens) / speed and gives each running sequence one token; a prefix cache
of {spec.cache_blocks} blocks of {spec.block_size} tokens serves repeated prompt prefixes. The
instances serve vLLM's `/metrics` (running, waiting, KV-cache use, prefix-cache counters), the
ORCA `endpoint-load-metrics` header and `usage.prompt_tokens_details.cached_tokens`. Every run
starts on a fresh fleet (empty queues, empty prefix caches).

**Capacity** is measured before the runs: the oracle keeps enough calls in flight that every
batch is full and every queue non-empty, even the slowest instance's, and the completed calls
per second over {s["window"]:g} s (after {s["warmup"]:g} s of warm-up) is the capacity of this
fleet for this workload mix: **{report.capacity:.2f} calls/s** in this run.

## The workload

Open-loop Poisson arrivals at {s["load"]:.0%} of the measured capacity ({report.rate:.2f}
calls/s) for {s["duration"]:g} s: {report.calls} calls, seed {s["seed"]}, the same calls at the
same times for every client. Half of the calls begin with one of four long system prompts
(400-800 tokens) followed by a short question of their own; half are one unique prompt of
100-400 tokens. Half are streamed. `max_tokens` is uniform in {low}-{high}, and the fake
generates exactly that many tokens. A call is sent at its arrival time whether or not earlier
calls have finished, and its latency (and, streamed, its time to first token) counts from that
arrival time.

## The clients

- **Each policy of the provider** (`{"`, `".join(report.policies)}`), with one app replica and
  with {max(report.tables) if report.tables else 4} (separate processes, each with its own
  provider; each call goes to one replica by a seeded random draw, so each replica sees only
  its own calls, as in production). Load polling of `/metrics`: {polling}.
- **The oracle**: join the shortest queue, knowing the speeds. One process with raw aiohttp
  that sends every call, so its count of outstanding calls per instance is exact, and sends
  each call to the instance with the least (outstanding + 1) / speed. It has the global
  knowledge no set of replicas has; it runs as **one process in both tables**, and it is run
  again for each table, so the two oracle rows also show the run-to-run noise.

Columns: latency percentiles and time to first token (TTFT, streamed calls only) in seconds,
from each call's arrival time; completed calls per second, over the span from the first arrival
to the last completion (a little under the arrival rate when the fleet kept up, by the time
the last calls took to finish; far under it when a queue grew during the run and took long to
drain); each instance's share of the calls; the fleet's prefix-cache hit rate (hit tokens over
queried tokens, from the `/metrics` counters: with {spec.cache_blocks} blocks of
{spec.block_size} tokens per instance, every instance soon holds all four system prompts, so this
rate reflects the workload more than the routing); **worst imbalance**: every
0.25 s each instance's waiting count is read, and over the samples where the mean is at least
one waiting call, the largest max / mean (in brackets, its mean over those samples; 1.00 is
perfectly even; the oracle's is above 1 by design, since a slow instance should have a shorter
queue); the p99 and TTFT p99 as a ratio to the oracle's in the same table; failed calls.

## Results

![p99 and TTFT p99 per client]({chart_file})

{render_markdown(report)}

Ratios to the oracle (a p99 rests on the slowest 1 % of {report.calls} calls, a handful: the
two oracle runs show how much it moves from run to run):

{chr(10).join(ratios)}

## Running it

```bash
python scripts/bench_fleet.py                  # capacity, then every client: tables on stdout
python scripts/bench_fleet.py --write          # and this page, with docs/fleet-latency.svg
python scripts/bench_fleet.py --quick          # a smoke run of about 20 seconds
python scripts/bench_fleet.py --load 0.9 --duration 60 --replicas 1,4 \\
    --policies round_robin,least_latency --seed 1 --json fleet.json
python scripts/bench_fleet.py --from-json fleet.json --write   # this page from a past run
```

A full run takes some 10-15 minutes: the capacity phase, then per table a fresh fleet for
each client, whose run lasts until its last call is answered (a queue that grew under a
policy takes a while to drain).

The benchmark starts and stops everything it uses (the fleet in the benchmark's process, one
process per client replica) on 127.0.0.1. Is the benchmark itself a bottleneck? {busy}
"""


# -- docs/fleet-affinity.md: the prefix and hot workloads -----------------------------------

AFFINITY_DOC = "fleet-affinity.md"


def affinity_chart_file(workload: str) -> str:
    return f"fleet-affinity-{workload}.svg"


def _begin(workload: str) -> str:
    return f"<!-- fleet-affinity:{workload} -->"


def _end(workload: str) -> str:
    return f"<!-- /fleet-affinity:{workload} -->"


def _workload_prose(workload: str, s: dict[str, Any]) -> str:
    w = workloads
    low, high = s["max_tokens"]
    spec = FleetSpec(**_fleet_args(s))
    tail = (
        f"Half of the calls are streamed; `max_tokens` is uniform in {low}-{high}, and the fake "
        "generates exactly that many tokens."
    )
    if workload == "prefix":
        tokens = w.prefix_prompt_tokens()
        weights = w.zipf_weights()
        total = sum(tokens)
        fleet_tokens = spec.cache_tokens * len(spec.speeds)
        return (
            f"Multi-turn conversations over {w.PREFIX_PROMPTS} long system prompts of "
            f"{min(tokens):,}-{max(tokens):,} tokens ({total:,} tokens in all: "
            f"{total / spec.cache_tokens:.2f}× what one instance's prefix cache holds, "
            f"{total / fleet_tokens:.0%} of the four caches together). A session picks its "
            f"system prompt by a Zipf law (weight 1 / rank^{w.ZIPF_EXPONENT:g}: the most popular "
            f"is {weights[0]:.0%} of the sessions, the first three {sum(weights[:3]):.0%}, the "
            f"last {weights[-1]:.1%}) and has {w.SESSION_TURNS[0]}-{w.SESSION_TURNS[1]} turns "
            "(uniform). Each turn resends the whole conversation so far (the system prompt, the "
            "earlier user messages and assistant answers: an answer is synthetic text fixed per "
            "turn, the same bytes in every later turn) and adds a user message of "
            f"{w.USER_TOKENS[0]}-{w.USER_TOKENS[1]} tokens (answers: {w.ANSWER_TOKENS[0]}-"
            f"{w.ANSWER_TOKENS[1]} tokens), so a turn's prompt begins with the previous turn's "
            "prompt and answer. Sessions start as a Poisson process at the rate / "
            f"{w.mean_turns():g} (the mean turns), from {w.LEAD:g} s before the run so that the "
            f"calls' rate is steady from its start; a turn comes {w.THINK_MIN:g} s + an "
            f"exponential time of mean {w.THINK_MEAN:g} s after the previous one (a compressed "
            "think time, whether or not the previous one was answered). Every call carries its "
            f"session's id. {tail}"
        )
    if workload == "tenants":
        tokens = w.tenant_prompt_tokens()
        weights = w.zipf_weights(w.TENANTS, w.TENANT_ZIPF)
        total = sum(tokens)
        fleet_tokens = spec.cache_tokens * len(spec.speeds)
        return (
            f"Many tenants, single turns: {w.TENANTS} system prompts of "
            f"{min(tokens):,}-{max(tokens):,} tokens ({total:,} tokens in all: "
            f"{total / spec.cache_tokens:.2f}× what one instance's prefix cache holds, "
            f"{total / fleet_tokens:.0%} of the four caches together), picked by a Zipf law "
            f"(weight 1 / rank^{w.TENANT_ZIPF:g}: the most popular is {weights[0]:.0%} of the "
            f"calls, the last {weights[-1]:.1%}); each call adds a question of its own (20-100 "
            "tokens). A router blind to prefixes has every instance cache every tenant; homes "
            f"split the tenants among the instances. {tail}"
        )
    return (
        f"One hot prefix: {w.HOT_SHARE:.0%} of the calls begin with the same system prompt of "
        f"{w.HOT_TOKENS:,} tokens and ask a short question of their own (20-100 tokens); the "
        "others are one unique prompt of 100-400 tokens. No sessions. Affinity sends the calls "
        "of one key to the same homes; this checks that the hot key spreads over the fleet "
        f"when its homes are busy: the aim is a p99 within 1.10× of plain `{BASELINE}`'s. "
        f"{tail}"
    )


def _affinity_findings(report: Report) -> list[str]:
    """Each affinity client against plain least load, with the issue's aims: hits >= 1.5x
    and TTFT p99 lower (``prefix``, ``tenants``), the hit rate with 4 replicas within 5 points
    of 1 replica's, p99 <= 1.10x (``hot``); and the hit rate no routing can pass."""
    lines = []
    hits: dict[str, dict[int, float]] = {}
    for replicas, runs in report.tables.items():
        base = next((run.figures for run in runs if run.figures.client == BASELINE), None)
        for run in runs:
            f = run.figures
            if f.client not in workloads.all_affinity_clients() or base is None:
                continue
            p99 = ratio_of(f.p99, base.p99)
            aim = ""
            if report.workload == "hot" and p99 is not None:
                aim = " (aim ≤ 1.10×: " + ("met" if p99 <= 1.10 else "NOT met") + ")"
            hit_ratio = ratio_of(f.prefix_hit, base.prefix_hit)
            ttft = ratio_of(f.ttft_p99, base.ttft_p99)
            if report.workload != "hot" and hit_ratio is not None and ttft is not None:
                met = hit_ratio >= 1.5 and ttft < 1.0
                aim = f" (aim hits ≥ 1.5×, TTFT p99 lower: {'met' if met else 'NOT met'})"
            if f.prefix_hit is not None:
                hits.setdefault(f.client, {})[replicas] = f.prefix_hit
            hit = "—" if f.prefix_hit is None else f"{f.prefix_hit:.0f} %"
            base_hit = "—" if base.prefix_hit is None else f"{base.prefix_hit:.0f} %"
            lines.append(
                f"- `{f.client}` ×{replicas}: prefix-cache hits {hit}, {_x(hit_ratio)} "
                f"`{BASELINE}`'s ({base_hit}); TTFT p99 {_x(ttft)} and p99 {_x(p99)} "
                f"`{BASELINE}`'s{aim}; p99 {_x(f.p99_ratio)} the oracle's"
            )
    for client, by_replicas in hits.items():
        if 1 in by_replicas and 4 in by_replicas:
            gap = abs(by_replicas[4] - by_replicas[1])
            verdict = "met" if gap <= 5 else "NOT met"
            lines.append(
                f"- `{client}`: hits with 4 replicas {gap:.1f} points from 1 replica's "
                f"(aim ≤ 5: {verdict})"
            )
    s = report.settings
    ceiling = 100 * fleet_sim.hit_ceiling(
        report.workload,
        report.rate,
        duration=s["duration"],
        seed=s["seed"],
        max_tokens=(s["max_tokens"][0], s["max_tokens"][1]),
    )
    lines.append(
        f"- The ceiling: {ceiling:.0f} % of the prompt tokens could be hits at all (every call "
        "on one instance with an unbounded cache, `llm.perf.fleet_sim.hit_ceiling`); no "
        "routing passes it"
    )
    return lines


def affinity_section(report: Report, *, date: str, machine: str, chart_file: str) -> str:
    """One workload's section of docs/fleet-affinity.md, between its markers."""
    workload = report.workload
    if workload == "mixed":
        raise ValueError("the mixed workload is docs/fleet.md (document())")
    s = report.settings
    polling = "every 0.5 s" if report.load_polling else "not available in this version"
    affinity = (
        "taken by the config"
        if report.affinity
        else "not taken by this version's config: the affinity clients did not run"
    )
    findings = _affinity_findings(report)
    found = "\n".join(findings) if findings else "(no affinity client ran)"
    return f"""{_begin(workload)}
## Workload `{workload}`

Generated by `python scripts/bench_fleet.py --workload {workload}{_options(s)} --write` on
{date} ({machine}).

{textwrap.fill(_workload_prose(workload, s), 95, break_on_hyphens=False)}

Capacity of the fleet for this mix (the oracle's closed loop with the same mix, {s["window"]:g} s
after {s["warmup"]:g} s of warm-up): **{report.capacity:.2f} calls/s**. The run: open-loop
arrivals at {s["load"]:.0%} of it ({report.rate:.2f} calls/s) for {s["duration"]:g} s,
{report.calls} calls, seed {s["seed"]}, the same for every client. Clients: the oracle,
`{"`, `".join(report.policies)}`. `llm.affinity`: {affinity}. Load polling: {polling}.

Affinity against plain `{BASELINE}` (same table):

{found}

![p99 and TTFT p99 per client, workload {workload}]({chart_file})

{render_markdown(report)}
{_end(workload)}"""


def _options(settings: dict[str, Any]) -> str:
    """The command-line options of a run that differ from the defaults (``--policies`` aside)."""
    default = Settings()
    options = []
    if settings["duration"] != default.duration:
        options.append(f" --duration {settings['duration']:g}")
    if settings["load"] != default.load:
        options.append(f" --load {settings['load']:g}")
    if settings["seed"] != default.seed:
        options.append(f" --seed {settings['seed']}")
    return "".join(options)


def _affinity_header() -> str:
    base, spec = FleetSpec(), fleet_spec("prefix")
    rate = 1000 / spec.prefill_ms_per_token
    miss = 2000 * spec.prefill_ms_per_token
    slowest = min(spec.speeds)
    return f"""# Fleet latency with prefix affinity

Generated by `python scripts/bench_fleet.py --workload W --write` for W in prefix, hot and
tenants: each run rewrites its own section of this page and its own chart
(`{affinity_chart_file("<workload>")}`) and keeps the other sections; [fleet.md](fleet.md)
(the `mixed` workload) is left alone. The fleet, the oracle, the clients of the policies, the
capacity measurement and the columns are those of [fleet.md](fleet.md); what differs:

- **The fleet's cache and prefill.** Each instance's prefix cache holds {spec.cache_blocks:,}
  blocks of {spec.block_size} tokens, {spec.cache_tokens:,} tokens (fleet.md's:
  {base.cache_tokens:,}, which would hold every prefix below on every instance, so routing
  could not matter), and prefill costs {spec.prefill_ms_per_token:g} ms per uncached prompt
  token ({rate:,.0f} tokens/s at speed 1, between a 70B model at ~3k tokens/s and an 8B one at
  10-20k on one GPU; fleet.md: {base.prefill_ms_per_token:g} ms). A miss on a 2,000-token
  prefix then costs {miss:.0f} ms at speed 1 and {miss / slowest / 1000:.1f} s at speed
  {slowest:g}, and a step's prefill holds up every sequence running on that instance: a
  visible part of TTFT and of capacity.
- **The affinity clients** (when the config takes `llm.affinity`): `{workloads.AFFINITY}` is
  `least_load` with `llm.affinity: {{by_prefix: true}}` (the library's defaults for `homes`,
  `load_bound` and `spill_ratio`), and a session's calls pass `session=<its id>`;
  `{workloads.BY_PREFIX}` is the same without `session=` (the key is the prompt's head: here
  the system prompt), run for workloads with sessions.
- **The oracle** knows every queue but no cache (join the shortest queue, weighted by speed),
  so a client that keeps prefixes where they are cached can beat it.
- **The summary table** of each replica count gives per client the fleet's prefix-cache hit
  rate (hit tokens over queried tokens, from the instances' `/metrics` counters), TTFT p99 and
  p99, and their ratios to the oracle's and to plain `{BASELINE}`'s; all the columns of
  fleet.md follow it.
- **One run is one draw.** A p99 of a few hundred calls is their third-worst, and this machine
  is noisy. `python -m llm.perf.fleet_sim` runs the same workloads through the same balancers
  on a fake clock (the fake's own scheduler and prefix cache per instance, no sockets), five
  seeds of 150 s each in about 20 seconds, and prints the means of the per-seed ratios: the
  figures to tune by, with this page's live runs as the check that they carry over.
"""


def _placeholder(workload: str) -> str:
    return (
        f"{_begin(workload)}\n## Workload `{workload}`\n\nNot run yet: "
        f"`python scripts/bench_fleet.py --workload {workload} --write`.\n{_end(workload)}"
    )


def _section_of(page: str, workload: str) -> str | None:
    begin, end = _begin(workload), _end(workload)
    start = page.find(begin)
    stop = page.find(end, start + len(begin)) if start >= 0 else -1
    return page[start : stop + len(end)] if stop >= 0 else None


def affinity_page(existing: str | None, workload: str, section: str) -> str:
    """docs/fleet-affinity.md with ``workload``'s section replaced by ``section`` and every
    other workload's section kept from ``existing`` (a placeholder when it has none)."""
    if workload == "mixed" or workload not in workloads.WORKLOADS:
        raise ValueError(f"no section of {AFFINITY_DOC} for the workload {workload!r}")
    parts = []
    for name in workloads.WORKLOADS:
        if name == "mixed":
            continue
        kept = _section_of(existing or "", name)
        parts.append(section.strip() if name == workload else kept or _placeholder(name))
    return _affinity_header() + "\n" + "\n\n".join(parts) + "\n"


__all__ = [
    "AFFINITY_DOC",
    "FleetSpec",
    "Report",
    "Run",
    "Settings",
    "affinity_accepted",
    "affinity_chart_file",
    "affinity_page",
    "affinity_section",
    "as_json",
    "benchmark",
    "chart_svg",
    "default_clients",
    "document",
    "fleet_spec",
    "from_json",
    "known_clients",
    "measure_capacity",
    "render_markdown",
    "render_text",
    "run_client",
]
