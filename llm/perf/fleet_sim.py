"""The fleet benchmark on a fake clock: its workloads through real balancers, in a second.

How this works
--------------
``scripts/bench_fleet.py`` runs the fake vLLM fleet in child processes and the clients in
others, on the wall clock: a run takes minutes and moves with the machine's noise. This module
runs the same thing as a discrete-event simulation, with no sockets and no sleeping:

- each instance is a :class:`llm.testing.fleet.Scheduler` (the batching fake's own scheduler,
  prefix cache included) at its :class:`FleetSpec` speed; a step is an event at its end;
- each app replica is a real :class:`llm.routing.Balancer` (the policy, affinity, load
  estimates: the library's own code) on the simulation's clock, its seed ``seed + replica``;
  every call is picked, dispatched, and reported as the engine reports it (latency, time to
  first token for a stream, tokens generated, the ORCA ``waiting`` count on a non-streamed
  answer);
- each replica reads every instance's ``/metrics`` (running, waiting) every ``poll`` seconds,
  at a phase of its own;
- the workload's calls (``fleet_workloads.make_calls``) arrive at their times and go to the
  replica ``fleet_model.assign_replicas`` gives them, as in the benchmark; the oracle client
  is one process that joins the shortest speed-weighted queue.

A call's answer has ``max_tokens`` tokens (the benchmark's fake answers that many); its
latency ends with the step of its last token, its time to first token with the step of its
first. The network takes no time. :func:`capacity` is the oracle's completed calls per second
in a closed loop (as the benchmark measures it), :func:`simulate` one client's open-loop run.

The real benchmark stays the judge of a routing change: this is the quick look that tells
which change is worth a real run, and a deterministic check (tests) of a policy's effect on
the prefix-cache hit rate and the tails. Its figures are not the benchmark's: no client CPU,
no network, no event loop lag.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..call.affinity import affinity_key
from ..call.size import prompt_tokens
from ..config import AffinityConfig, RouteConfig
from ..routing import Balancer
from ..routing.state import RouteState
from ..testing.fleet import PrefixCache, Scheduler, Seq, block_hashes, chat_units
from . import fleet_workloads as workloads
from .fleet_model import Call, assign_replicas, oracle_choice, percentile
from .fleet_workloads import FleetSpec, fleet_spec

ORACLE = "oracle"
MODEL = "sim"


@dataclass
class SimFigures:
    """One client's run: tails in seconds, the fleet's prefix-cache hit rate, shares."""

    client: str
    replicas: int
    calls: int
    p50: float | None
    p99: float | None
    ttft_p50: float | None
    ttft_p99: float | None
    prefix_hit: float | None  # cached prompt tokens / prompt tokens, over the fleet
    shares: list[float]  # of the calls, per instance
    home_calls: int = 0
    home_spills: int = 0


class _Seq(Seq):
    __slots__ = ("call", "done_at", "instance", "replica", "route", "sent", "started", "ttft")

    def __init__(self, call: Call, units: str, spec: FleetSpec) -> None:
        prompt_tokens = len(units) // 4
        hashes = block_hashes(units, spec.block_size)
        super().__init__(prompt_tokens, call.max_tokens, hashes, stream=call.stream)
        self.call = call
        self.sent = call.at
        self.ttft: float | None = None
        self.done_at = 0.0
        self.instance = 0
        self.replica = 0
        self.route: RouteState | None = None
        self.started = 0.0


class _Sim:
    """The event loop: a heap of (time, order, action)."""

    def __init__(self, spec: FleetSpec) -> None:
        self.now = 0.0
        self.spec = spec
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self.scheds: list[Scheduler[_Seq]] = [Scheduler(spec.batching(s)) for s in spec.speeds]
        self._stepping = [False] * len(spec.speeds)
        self.on_done: Callable[[_Seq], None] = lambda seq: None

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (when, next(self._order), action))

    def run(self, until: float | None = None) -> None:
        events = self._events
        while events and (until is None or events[0][0] <= until):
            when, _, action = heapq.heappop(events)
            self.now = when
            action()

    def submit(self, instance: int, seq: _Seq) -> None:
        seq.instance = instance
        self.scheds[instance].submit(seq)
        if not self._stepping[instance]:
            self._begin(instance)

    def _begin(self, instance: int) -> None:
        duration = self.scheds[instance].begin_step()
        if duration is None:
            self._stepping[instance] = False
            return
        self._stepping[instance] = True
        self.at(self.now + duration, lambda: self._end(instance))

    def _end(self, instance: int) -> None:
        tokens, finished = self.scheds[instance].end_step()
        for seq in tokens:
            if seq.ttft is None:
                seq.ttft = self.now - seq.sent
        for seq in finished:
            self.on_done(seq)
        self._begin(instance)


def _units(call: Call) -> str:
    return chat_units(call.as_messages())


def capacity(
    workload: str,
    spec: FleetSpec | None = None,
    *,
    seed: int = 0,
    max_tokens: tuple[int, int] = (16, 160),
    warmup: float = 10.0,
    window: float = 20.0,
) -> float:
    """The oracle's completed calls per second with every batch full (closed loop)."""
    spec = spec or fleet_spec(workload)
    sim = _Sim(spec)
    outstanding = [0] * len(spec.speeds)
    groups = workloads.closed_sessions(workload, seed, max_tokens)
    queues: dict[int, list[Call]] = {}
    ends: list[float] = []

    def send(worker: int) -> None:
        if not queues.get(worker):
            queues[worker] = list(next(groups))
        call = queues[worker].pop(0)
        seq = _Seq(call, _units(call), spec)
        seq.sent = sim.now
        seq.replica = worker
        instance = oracle_choice(outstanding, spec.speeds)
        outstanding[instance] += 1
        sim.submit(instance, seq)

    def done(seq: _Seq) -> None:
        outstanding[seq.instance] -= 1
        ends.append(sim.now)
        if sim.now < warmup + window:
            send(seq.replica)

    sim.on_done = done
    for worker in range(spec.saturating_concurrency):
        send(worker)
    sim.run(until=warmup + window)
    return sum(1 for end in ends if warmup <= end < warmup + window) / window


def _balancer(
    spec: FleetSpec,
    seed: int,
    policy: str,
    affinity: AffinityConfig | None,
    clock: Callable[[], float],
) -> Balancer:
    routes = [
        RouteConfig(name=name, base_url=f"http://127.0.0.1:1/{name}/v1", model=MODEL)
        for name in spec.names
    ]
    return Balancer(routes, policy=policy, clock=clock, rng=random.Random(seed), affinity=affinity)


def simulate(
    workload: str,
    client: str,
    replicas: int = 1,
    *,
    rate: float,
    duration: float = 50.0,
    seed: int = 0,
    spec: FleetSpec | None = None,
    poll: float = 0.5,
    max_tokens: tuple[int, int] = (16, 160),
    affinity: dict[str, Any] | None = None,
) -> SimFigures:
    """One client's open-loop run of ``workload`` at ``rate`` calls/s (see the module doc).
    ``affinity`` overrides the client's ``llm.affinity`` settings."""
    spec = spec or fleet_spec(workload)
    calls = workloads.make_calls(workload, seed, rate, duration, max_tokens)
    sim = _Sim(spec)
    names = spec.names
    options = workloads.client_options(client)
    config = (
        AffinityConfig(**{**options.affinity, **(affinity or {})}) if options.affinity else None
    )
    oracle = client == ORACLE
    processes = 1 if oracle else replicas
    owner = assign_replicas(len(calls), processes, seed)
    balancers = (
        []
        if oracle
        else [
            _balancer(spec, seed * 1000 + r, options.policy, config, lambda: sim.now)
            for r in range(processes)
        ]
    )
    outstanding = [0] * len(names)
    done_seqs: list[_Seq] = []

    def send(call: Call) -> None:
        seq = _Seq(call, _units(call), spec)
        replica = seq.replica = owner[call.index]
        if oracle:
            instance = oracle_choice(outstanding, spec.speeds)
        else:
            balancer = balancers[replica]
            pool = balancer.pool(MODEL)
            assert pool is not None
            key, prompt = None, 0
            if config is not None:  # as the library's send layer does it (send/base.py)
                session = call.session if options.session else None
                body = {"messages": call.as_messages()}
                key = affinity_key(session, body, config.by_prefix, config.prefix_chars)
                prompt = prompt_tokens(body)
            route = balancer.pick(pool, (), call.stream, call.max_tokens, key, prompt)
            assert route is not None
            seq.route = route
            seq.started = balancer.dispatch(route, call.max_tokens)
            instance = names.index(route.name)
        outstanding[instance] += 1
        sim.submit(instance, seq)

    def done(seq: _Seq) -> None:
        outstanding[seq.instance] -= 1
        seq.done_at = sim.now
        done_seqs.append(seq)
        if seq.route is not None:
            latency = sim.now - seq.sent
            waiting = None if seq.stream else float(sim.scheds[seq.instance].waiting)
            balancers[seq.replica].succeeded(
                seq.route,
                seq.started,
                latency,
                seq.ttft if seq.stream else None,
                seq.call.max_tokens,
                generated=seq.length,
                waiting=waiting,
            )

    def poller(balancer: Balancer) -> Callable[[], None]:
        def read() -> None:
            for name, sched in zip(names, sim.scheds, strict=True):
                running, waiting = sched.load
                balancer.observe_load(name, float(waiting), float(running))
            if sim.now < duration * 4:
                sim.at(sim.now + poll, read)

        return read

    sim.on_done = done
    phases = random.Random(f"sim-poll-{seed}")
    for balancer in balancers:
        sim.at(phases.uniform(0, poll), poller(balancer))
    for call in calls:
        sim.at(call.at, functools.partial(send, call))
    sim.run()
    return _figures(client, processes, done_seqs, sim, names, balancers, len(calls))


def _figures(
    client: str,
    processes: int,
    seqs: Sequence[_Seq],
    sim: _Sim,
    names: Sequence[str],
    balancers: Sequence[Balancer],
    calls: int,
) -> SimFigures:
    latencies = [seq.done_at - seq.sent for seq in seqs]
    ttfts = [seq.ttft for seq in seqs if seq.stream and seq.ttft is not None]
    counts = [0] * len(names)
    for seq in seqs:
        counts[seq.instance] += 1
    queries = sum(s.prefix_queries for s in sim.scheds)
    hits = sum(s.prefix_hits for s in sim.scheds)
    routes = [route for b in balancers for route in b.routes.values()]
    return SimFigures(
        client=client,
        replicas=processes,
        calls=calls,
        p50=percentile(latencies, 50),
        p99=percentile(latencies, 99),
        ttft_p50=percentile(ttfts, 50),
        ttft_p99=percentile(ttfts, 99),
        prefix_hit=hits / queries if queries else None,
        shares=[c / max(1, len(seqs)) for c in counts],
        home_calls=sum(r.home_calls for r in routes),
        home_spills=sum(r.home_spills for r in routes),
    )


def hit_ceiling(
    workload: str,
    rate: float,
    *,
    duration: float = 50.0,
    seed: int = 0,
    max_tokens: tuple[int, int] = (16, 160),
) -> float:
    """The prefix-cache hit rate no routing can beat: every call of the run served by one
    instance with an unbounded cache (a call hits whatever any earlier call cached)."""
    spec = fleet_spec(workload)
    cache = PrefixCache(2**62)
    queried = hit = 0
    for call in workloads.make_calls(workload, seed, rate, duration, max_tokens):
        units = _units(call)
        tokens = len(units) // 4
        found, _ = cache.admit(
            block_hashes(units, spec.block_size), (tokens - 1) // spec.block_size
        )
        queried += tokens
        hit += found * spec.block_size
    return hit / queried if queried else 0.0


@dataclass
class Comparison:
    """A client against ``least_load`` over several seeds: means of the per-seed ratios."""

    workload: str
    client: str
    replicas: int
    hit: float
    hit_ratio: float
    p99_ratio: float
    ttft_p99_ratio: float
    home_share: float  # of the keyed calls, those that went home


def compare(
    workload: str,
    clients: Sequence[str],
    replicas: Sequence[int] = (1, 4),
    *,
    seeds: int = 5,
    duration: float = 150.0,
    load: float = 0.8,
) -> tuple[float, list[Comparison]]:
    """(``least_load``'s mean hit rate, each client x replica count against it)."""
    rate = load * capacity(workload)
    out: list[Comparison] = []
    base_hits: list[float] = []
    for count in replicas:
        base = [
            simulate(workload, "least_load", count, rate=rate, duration=duration, seed=seed)
            for seed in range(seeds)
        ]
        base_hits += [b.prefix_hit or 0.0 for b in base]
        for client in clients:
            runs = [
                simulate(workload, client, count, rate=rate, duration=duration, seed=seed)
                for seed in range(seeds)
            ]
            out.append(
                Comparison(
                    workload,
                    client,
                    count,
                    _mean([r.prefix_hit or 0.0 for r in runs]),
                    _mean(
                        [
                            _ratio(r.prefix_hit, b.prefix_hit)
                            for r, b in zip(runs, base, strict=True)
                        ]
                    ),
                    _mean([_ratio(r.p99, b.p99) for r, b in zip(runs, base, strict=True)]),
                    _mean(
                        [_ratio(r.ttft_p99, b.ttft_p99) for r, b in zip(runs, base, strict=True)]
                    ),
                    _mean([r.home_calls / max(1, r.home_calls + r.home_spills) for r in runs]),
                )
            )
    return _mean(base_hits), out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _ratio(value: float | None, reference: float | None) -> float:
    return value / reference if value is not None and reference else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m llm.perf.fleet_sim",
        description="The fleet benchmark's affinity workloads on a fake clock: the affinity "
        "clients against least_load, means of per-seed ratios.",
    )
    parser.add_argument("--workload", action="append", choices=["prefix", "tenants", "hot"])
    parser.add_argument("--seeds", type=int, default=5, help="runs per figure (default 5)")
    parser.add_argument("--duration", type=float, default=150.0, help="seconds (default 150)")
    parser.add_argument("--load", type=float, default=0.8, help="of capacity (default 0.8)")
    args = parser.parse_args(argv)
    print(
        "workload  client               replicas  hit %  hit ÷ least_load  p99 ÷  TTFT p99 ÷  "
        "home %  (least_load hit %, ceiling %)"
    )
    for workload in args.workload or ["prefix", "tenants", "hot"]:
        clients = workloads.affinity_clients(workload)
        base, rows = compare(
            workload, clients, seeds=args.seeds, duration=args.duration, load=args.load
        )
        ceiling = hit_ceiling(workload, args.load * capacity(workload), duration=args.duration)
        for row in rows:
            print(
                f"{workload:9} {row.client:21} {row.replicas:8}  {100 * row.hit:5.1f}  "
                f"{row.hit_ratio:15.2f}×  {row.p99_ratio:4.2f}×  {row.ttft_p99_ratio:9.2f}×  "
                f"{100 * row.home_share:6.1f}  ({100 * base:.1f}, {100 * ceiling:.1f})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
