#!/usr/bin/env python3
"""Fleet latency: the provider's routing policies against an oracle on a simulated vLLM fleet.

    python scripts/bench_fleet.py                 # capacity, then every client; tables on stdout
    python scripts/bench_fleet.py --write         # and docs/fleet.md + docs/fleet-latency.svg
    python scripts/bench_fleet.py --quick         # a smoke run of a few seconds per client
    python scripts/bench_fleet.py --json fleet.json --policies round_robin --replicas 1
    python scripts/bench_fleet.py --from-json fleet.json --write   # the docs, from a past run
    python scripts/bench_fleet.py --workload prefix --write  # docs/fleet-affinity.md (its section)
    python scripts/bench_fleet.py --quick --workload hot --policies least_load,least_load+affinity

Four fake vLLM instances (speeds 1, 1, 0.5, 0.25) run in this process; every client runs in
processes of its own (see llm/perf/fleet.py for how it works). Progress goes to stderr.
``--workload``: ``mixed`` (the default; docs/fleet.md), ``prefix`` (multi-turn sessions over
many long system prompts) or ``hot`` (one hot system prompt), on a fleet with a smaller prefix
cache and a dearer prefill (llm/perf/fleet_workloads.py); ``--write`` puts those two in their
own sections of docs/fleet-affinity.md, each with its chart, and leaves docs/fleet.md alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llm.perf import fleet
from llm.perf.fleet_workloads import DEFAULT_WORKLOAD, WORKLOADS


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(part) for part in text.split(",") if part.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, fleet.Settings]:
    """The command line, and the settings it asks for (argparse exits on a bad one)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--load", type=float, default=None, help="fraction of capacity (0.8)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of arrivals (50)")
    parser.add_argument("--replicas", type=_ints, default=None, help="app replicas: 1,4")
    parser.add_argument(
        "--policies",
        type=_names,
        default=None,
        help="policies and affinity clients, comma-separated (default: every policy; for "
        "prefix and hot also the affinity clients, when the config takes llm.affinity)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workload",
        choices=WORKLOADS,
        default=DEFAULT_WORKLOAD,
        help=f"the calls and their fleet (default {DEFAULT_WORKLOAD})",
    )
    parser.add_argument("--quick", action="store_true", help="short calls, short phases")
    parser.add_argument("--json", metavar="PATH", help="write the raw figures as JSON")
    parser.add_argument(
        "--write",
        action="store_true",
        help="write docs/fleet.md and its chart (other workloads: docs/fleet-affinity.md)",
    )
    parser.add_argument("--docs", default="docs", help="where --write puts its files")
    parser.add_argument(
        "--from-json", metavar="PATH", help="present the figures of an earlier --json, no run"
    )
    args = parser.parse_args(argv)

    overrides: dict[str, object] = {"seed": args.seed}
    for key in ("load", "duration", "replicas", "policies"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.policies is not None:
        unknown = set(args.policies) - set(fleet.known_clients())
        if unknown:
            parser.error(f"unknown policies {sorted(unknown)}; known: {fleet.known_clients()}")
    if args.load is not None and not 0 < args.load <= 1.5:
        parser.error("--load must be within (0, 1.5]")
    return args, fleet.Settings.for_workload(args.workload, quick=args.quick, **overrides)


def write_docs(report: fleet.Report, docs: str) -> None:
    """docs/fleet.md and its chart for ``mixed``; else the workload's section of
    docs/fleet-affinity.md and its own chart (the other sections are kept)."""
    os.makedirs(docs, exist_ok=True)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    machine = f"{os.cpu_count()} cores, Python {platform.python_version()}"
    workload = report.workload
    if workload == "mixed":
        chart = "fleet-latency.svg"
        text = fleet.document(report, date=date, machine=machine, chart_file=chart)
        path = os.path.join(docs, "fleet.md")
        title = "Fleet latency: p99 and TTFT p99 (s)"
    else:
        chart = fleet.affinity_chart_file(workload)
        section = fleet.affinity_section(report, date=date, machine=machine, chart_file=chart)
        path = os.path.join(docs, fleet.AFFINITY_DOC)
        existing = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as source:
                existing = source.read()
        text = fleet.affinity_page(existing, workload, section)
        title = f"Fleet latency, workload {workload}: p99 and TTFT p99 (s)"
    with open(os.path.join(docs, chart), "w", encoding="utf-8") as out:
        out.write(fleet.chart_svg(report, title))
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)
    progress(f"wrote {path} and {os.path.join(docs, chart)}")


def main(argv: list[str] | None = None) -> int:
    args, settings = parse(argv)
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as source:
            report = fleet.from_json(json.load(source))
    else:
        report = fleet.benchmark(settings, progress)
    print(fleet.render_text(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(fleet.as_json(report), out, indent=2)
        progress(f"wrote {args.json}")
    if args.write:
        write_docs(report, args.docs)
    failed = sum(run.figures.failed for runs in report.tables.values() for run in runs)
    return 1 if failed or report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
