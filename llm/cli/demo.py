"""The main job on a built-in default: a small fake vLLM fleet, a few hundred calls, one killed.

``python scripts/bench_vllm.py --demo`` (or ``llm-demo``, ``python -m llm.cli.demo``) starts four
fake vLLM servers on 127.0.0.1: *fast* (5 ms), *slow* (50 ms), *flaky* (10 ms, one call in five
answers 503) and *fallback* (a smaller model, the config's ``fallback_route``). It writes their
config to a temporary directory, loads it the way an application does, routes ``--requests``
chat calls through one provider with the least_latency policy, kills *fast* halfway (its port
then refuses connections and its open connections are dropped), and prints what happened: each
route's share, the failovers, the calls lost (the point: none) and the latency. It uses the
load test's machinery (:mod:`llm.cli.loadtest`), so ``--json`` prints the benchmark's report too.
Every server it started is stopped and the temporary directory removed before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from typing import Any

import yaml

from ..config import LLMConfig, load_config
from ..providers.vllm_openai import VLLMOpenAIProvider
from ..testing import FakeVLLM
from .bench_report import summarize
from .loadtest import BenchSettings, run_async

ROLES = {
    "fast": "5 ms",
    "slow": "50 ms",
    "flaky": "10 ms, 1 in 5 calls answers 503",
    "fallback": "20 ms, smaller model, the fallback",
}


def fleet_config(
    fast: FakeVLLM, slow: FakeVLLM, flaky: FakeVLLM, fallback: FakeVLLM
) -> dict[str, Any]:
    """The config an application would write for this fleet."""
    return {
        "llm": {
            "provider": "vllm_openai",
            "routes": {
                "fast": {"base_url": fast.base_url, "model": "tiny", "timeout": 5},
                "slow": {"base_url": slow.base_url, "model": "tiny", "timeout": 5},
                "flaky": {"base_url": flaky.base_url, "model": "tiny", "timeout": 5},
                "fallback": {"base_url": fallback.base_url, "model": "tiny-fallback", "timeout": 5},
            },
            "default_route": "fast",
            "fallback_route": "fallback",
            "lb_policy": "least_latency",
            "params": {"temperature": 0.0, "max_tokens": 16, "timeout": 5, "max_retries": 3},
            "health": {"cooldown": 0.5, "max_cooldown": 5, "reprobe_interval": 0.5},
        }
    }


def _write_and_load(data: dict[str, Any], folder: str) -> LLMConfig:
    path = os.path.join(folder, "config.yaml")
    with open(path, "w", encoding="utf-8") as out:
        yaml.safe_dump(data, out, sort_keys=False)
    return load_config(path)


async def run(requests: int = 400, concurrency: int = 16) -> dict[str, Any]:
    """Run the demo; the benchmark report plus ``lost``, ``killed_after`` and ``ejections``."""
    servers = {
        "fast": FakeVLLM("tiny", latency=0.005, name="fast"),
        "slow": FakeVLLM("tiny", latency=0.05, name="slow"),
        "flaky": FakeVLLM("tiny", latency=0.01, name="flaky", seed=7),
        "fallback": FakeVLLM("tiny-fallback", latency=0.02, name="fallback"),
    }
    settings = BenchSettings(concurrency=concurrency, requests=requests, max_tokens=16)
    kill_at = requests // 2
    try:
        for server in servers.values():
            server.start()
        servers["flaky"].fail_fraction(0.2, status=503)
        with tempfile.TemporaryDirectory(prefix="llm-routes-demo-") as folder:
            config = _write_and_load(fleet_config(**servers), folder)

        def kill_fast_halfway(number: int) -> None:
            if number == kill_at:
                servers["fast"].down()

        provider = VLLMOpenAIProvider(config)
        started = asyncio.get_running_loop().time()
        try:
            records = await run_async(provider, settings, on_call=kill_fast_halfway)
        finally:
            elapsed = asyncio.get_running_loop().time() - started
            stats = provider.stats()
            await provider.aclose()
            provider.close()
    finally:
        for server in servers.values():
            server.stop()
    report = summarize(records, elapsed, settings, config)
    report["lost"] = report["summary"]["failed_requests"]
    report["killed_after"] = kill_at
    report["ejections"] = {name: entry["ejections"] for name, entry in stats.items()}
    return report


def render(report: dict[str, Any]) -> str:
    """The demo's story, for a terminal."""
    summary = report["summary"]
    total = summary["total_requests"]
    concurrency = report["benchmark_config"]["concurrency"]
    lines = [
        f"llm-routes demo: 4 fake vLLM servers on 127.0.0.1, {total} chat calls "
        f"({concurrency} in flight), policy least_latency.",
        f"'fast' is killed after {report['killed_after']} calls.",
        "",
        f"{'route':<10} {'server':<36} {'calls':>6} {'share':>7} {'ejected':>8}",
    ]
    for name, entry in report["routes"].items():
        lines.append(
            f"{name:<10} {ROLES.get(name, ''):<36} {entry['requests']:>6} "
            f"{100 * entry['share']:>6.1f}% {report['ejections'].get(name, 0):>8}"
        )
    retries = report["retries"]
    latency = report["latency_ms"] or {"median": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    seen = "; ".join(
        f"{route}: " + ", ".join(f"{outcome} ×{count}" for outcome, count in outcomes.items())
        for route, outcomes in retries["failed_attempts"].items()
    )
    lines += [
        "",
        f"{summary['successful_requests']}/{total} calls succeeded, {report['lost']} lost"
        + (f" {report['errors']}" if report["lost"] else "."),
        f"{retries['failovers']} calls were saved by another route "
        f"({retries['extra_attempts']} extra attempts"
        + (f"; failed attempts: {seen})" if seen else ")"),
        f"latency ms: median {latency['median']:.1f}, p95 {latency['p95']:.1f}, "
        f"p99 {latency['p99']:.1f}, max {latency['max']:.1f} "
        f"({summary['total_time_seconds']:.1f} s, {summary['requests_per_second']:.0f} calls/s)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_vllm --demo",
        description="Route calls over 4 local fake vLLM servers, kill one halfway, "
        "show that no call is lost. Exit code 0 when none was.",
    )
    parser.add_argument("--requests", type=int, default=400, help="calls to make (400)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight (16)")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead")
    args = parser.parse_args(argv)
    if args.requests < 2 or args.concurrency < 1:
        parser.error("--requests must be at least 2 and --concurrency at least 1")
    report = asyncio.run(run(args.requests, args.concurrency))
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if report["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
