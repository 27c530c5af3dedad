#!/usr/bin/env python3
"""Hedging against a frozen vLLM instance: p99 latency, failed calls and extra attempts.

    python scripts/bench_hedge.py                      # four scenarios, 20 s each; a table
    python scripts/bench_hedge.py --json hedge.json    # and every figure as JSON
    python scripts/bench_hedge.py --seconds 5 --scenarios "no-fault, no hedge" "frozen, hedge"

Three fake vLLM servers run as child processes, started and stopped here; 64 calls are kept
in flight from one asyncio loop; one server is SIGSTOPped in the frozen scenarios (see
llm/perf/hedge_bench.py for how it works). Progress goes to stderr. Prints PASS or MISS per
target of the issue; the exit code is 0 unless the benchmark itself crashes. CPU per call with
hedging on: ``python scripts/bench_overhead.py --clients aiohttp provider-async
provider-async-hedge``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llm.config import KNOWN_POLICIES
from llm.perf import hedge_bench


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, hedge_bench.Settings]:
    """The command line, and the settings it asks for."""
    defaults = hedge_bench.Settings()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="measured")
    parser.add_argument("--warmup", type=float, default=defaults.warmup)
    parser.add_argument("--in-flight", type=int, default=defaults.in_flight)
    parser.add_argument("--servers", type=int, default=defaults.servers)
    parser.add_argument("--latency", type=float, default=defaults.latency, help="fake's, s")
    parser.add_argument("--tokens", type=int, default=defaults.tokens)
    parser.add_argument("--token-delay", type=float, default=defaults.token_delay)
    parser.add_argument("--timeout", type=float, default=defaults.timeout, help="routes'")
    parser.add_argument("--freeze-after", type=float, default=defaults.freeze_after)
    parser.add_argument("--drain", type=float, default=defaults.drain)
    parser.add_argument("--stream-fraction", type=float, default=defaults.stream_fraction)
    parser.add_argument(
        "--policy",
        default=defaults.policy,
        choices=KNOWN_POLICIES,
    )
    parser.add_argument("--hedge-budget", type=float, help="llm.hedge.budget (library default)")
    parser.add_argument("--hedge-burst", type=int, help="llm.hedge.burst (library default)")
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=[scenario.name for scenario in hedge_bench.SCENARIOS],
        help="which scenarios (default: all four)",
    )
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    args = parser.parse_args(argv)
    if args.servers < 2:
        parser.error("--servers: at least 2 (a hedge goes to another route)")
    if args.in_flight < 1 or args.seconds <= 0 or not 0 <= args.stream_fraction <= 1:
        parser.error("--in-flight >= 1, --seconds > 0 and 0 <= --stream-fraction <= 1")
    settings = hedge_bench.Settings(
        seconds=args.seconds,
        warmup=args.warmup,
        in_flight=args.in_flight,
        servers=args.servers,
        latency=args.latency,
        tokens=args.tokens,
        token_delay=args.token_delay,
        timeout=args.timeout,
        freeze_after=args.freeze_after,
        drain=args.drain,
        stream_fraction=args.stream_fraction,
        policy=args.policy,
        hedge_budget=args.hedge_budget,
        hedge_burst=args.hedge_burst,
    )
    return args, settings


def main(argv: list[str] | None = None) -> int:
    args, settings = parse(argv)
    chosen = args.scenarios
    scenarios = [s for s in hedge_bench.SCENARIOS if chosen is None or s.name in chosen]
    report = hedge_bench.run(settings, scenarios, progress=progress)
    print(hedge_bench.render_text(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report.as_dict(), out, indent=2)
        progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
