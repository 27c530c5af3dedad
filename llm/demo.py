"""A self-contained demo: a small fake vLLM fleet, a few hundred calls, one instance killed.

``python -m llm.demo`` starts four fake vLLM servers on 127.0.0.1 (fast, slow, flaky and a
fallback serving a smaller model), routes ``--requests`` chat calls through one provider with
the least_latency policy, stops the fast instance halfway, and prints what happened: the share
of each route, the failovers, how many calls were lost (the point: none) and the latency.
Nothing is written to disk; every server it started is stopped before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from typing import Any

from .errors import LLMError
from .factory import LLMFactory
from .testing import FakeVLLM


def fleet_config(
    fast: FakeVLLM, slow: FakeVLLM, flaky: FakeVLLM, fallback: FakeVLLM
) -> dict[str, Any]:
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


async def run(requests: int, concurrency: int) -> dict[str, Any]:
    fast = FakeVLLM("tiny", latency=0.005, name="fast").start()
    slow = FakeVLLM("tiny", latency=0.05, name="slow").start()
    flaky = FakeVLLM("tiny", latency=0.01, name="flaky", seed=7).start()
    flaky.fail_fraction(0.2, status=503)
    fallback = FakeVLLM("tiny-fallback", latency=0.02, name="fallback").start()
    servers = (fast, slow, flaky, fallback)
    provider = LLMFactory.create_provider("vllm_openai", config=fleet_config(*servers))
    routes: Counter[str] = Counter()
    latencies: list[float] = []
    failovers = 0
    failed: Counter[str] = Counter()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for number in range(requests):
        queue.put_nowait(number)

    async def worker() -> None:
        nonlocal failovers
        while not queue.empty():
            number = queue.get_nowait()
            if number == requests // 2:
                fast.down()
            try:
                result = await provider.achat_completion(
                    [{"role": "user", "content": f"question {number}"}]
                )
            except LLMError as error:
                failed[type(error).__name__] += 1
                continue
            routes[result.route] += 1
            latencies.append(result.latency_s)
            failovers += len(result.attempts) - 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        stats = provider.stats()
        await provider.aclose()
        for server in servers:
            server.stop()
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [0.0]
    return {
        "requests": requests,
        "succeeded": sum(routes.values()),
        "lost": sum(failed.values()),
        "failed_by_type": dict(failed),
        "share": {name: routes.get(name, 0) for name in stats},
        "failovers": failovers,
        "ejections": {name: s["ejections"] for name, s in stats.items()},
        "seconds": round(elapsed, 2),
        "latency_ms": {
            "median": round(statistics.median(ordered) * 1000, 1),
            "p95": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 1),
            "max": round(ordered[-1] * 1000, 1),
        },
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        "llm-routes demo: 4 fake vLLM instances (fast, slow, flaky 20% 503s, fallback),",
        f"{report['requests']} chat calls with least_latency; 'fast' is killed halfway.",
        "",
        "route      share   ejections",
    ]
    total = max(1, report["succeeded"])
    for name, count in report["share"].items():
        lines.append(f"{name:<10} {100 * count / total:5.1f}%  {report['ejections'][name]:>5}")
    latency = report["latency_ms"]
    lines += [
        "",
        f"succeeded {report['succeeded']}/{report['requests']}, lost {report['lost']}"
        + (f" {report['failed_by_type']}" if report["lost"] else ""),
        f"failovers (extra attempts that saved a call): {report['failovers']}",
        f"latency ms: median {latency['median']}, p95 {latency['p95']}, max {latency['max']}"
        f"  ({report['seconds']} s in all)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    report = asyncio.run(run(args.requests, args.concurrency))
    print(render(report))
    return 0 if report["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
