#!/usr/bin/env python3
"""Instructions per call under callgrind: the provider against raw aiohttp, deterministically.

    python scripts/bench_instructions.py               # streamed calls (16 tokens)
    python scripts/bench_instructions.py --plain       # non-streamed calls

CPU time on a small shared machine moves by ±15 % from round to round; the number of
instructions a call executes does not. Each client runs twice under ``valgrind --tool=callgrind``
(two fake vLLM servers in child processes, which callgrind does not trace; 16 calls in flight),
once with ``--few`` calls and once with ``--many``, after the same warm-up; the difference
divided by the difference in calls is the cost of one call, start-up and imports cancelled
out. Clients: raw aiohttp (the floor, each event parsed as JSON), the provider under
round_robin, and the provider under least_load with its load reports (the ORCA header; the
``/metrics`` poller is off, as it runs once a second, not per call). Needs valgrind; about
five minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CLIENTS = ("aiohttp", "round_robin", "least_load")
WARMUP = 50
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def instructions(log: str) -> int:
    """The ``I refs`` total of a callgrind log."""
    found = _REFS.search(log)
    if found is None:
        raise ValueError("no 'I refs' line in the callgrind output")
    return int(found.group(1).replace(",", ""))


def child(client: str, calls: int, stream: bool) -> None:
    """One client's calls (run under callgrind by ``measure``)."""
    from llm.perf import overhead
    from llm.testing.chaos import FakeProcess

    servers = [FakeProcess(name, latency=0.0, tokens=16) for name in ("a", "b")]
    for server in servers:
        server.start()
    try:

        async def main() -> None:
            if client == "aiohttp":
                urls = [s.base_url + "/chat/completions" for s in servers]
                call, close = await overhead._aiohttp_client(urls, servers[0].model, stream)
            else:
                from llm.config import parse_config
                from llm.providers.vllm_openai import VLLMOpenAIProvider

                routes = {s.name: {"base_url": s.base_url, "model": s.model} for s in servers}
                llm = {
                    "routes": routes,
                    "params": {"max_tokens": 16},
                    "lb_policy": client,
                    "load": {"poll_interval": 0},
                }
                provider = VLLMOpenAIProvider(parse_config({"llm": llm}, environ={}))
                messages = [{"role": "user", "content": "hi"}]

                async def call(number: int) -> None:
                    if stream:
                        async for _event in provider.astream_events(messages):
                            pass
                    else:
                        await provider.achat_completion(messages)

                close = provider.aclose
            gate = asyncio.Semaphore(16)

            async def one(number: int) -> None:
                async with gate:
                    await call(number)

            await asyncio.gather(*(one(i) for i in range(WARMUP)))
            await asyncio.gather(*(one(i) for i in range(calls)))
            await close()

        asyncio.run(main())
    finally:
        for server in servers:
            server.stop()


def measure(client: str, calls: int, stream: bool) -> int:
    """Instructions of a whole run of ``client`` making ``calls`` calls after the warm-up."""
    with tempfile.TemporaryDirectory() as folder:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={folder}/out",
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            client,
            str(calls),
            "--plain" if not stream else "--stream",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"{client}: callgrind run failed:\n{done.stderr[-2000:]}")
        return instructions(done.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", action="store_true", help="non-streamed calls")
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--few", type=int, default=50)
    parser.add_argument("--many", type=int, default=350)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    stream = not args.plain
    if args.child:
        child(args.child[0], int(args.child[1]), stream)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt install valgrind", file=sys.stderr)
        return 2
    runs = [(client, calls) for client in CLIENTS for calls in (args.few, args.many)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        found = pool.map(lambda run: measure(run[0], run[1], stream), runs)
        counts = dict(zip(runs, found, strict=True))
    per_call = {
        client: (counts[(client, args.many)] - counts[(client, args.few)])
        / (args.many - args.few)
        for client in CLIENTS
    }
    floor = per_call["aiohttp"]
    kind = "streamed (16 tokens)" if stream else "plain"
    print(f"instructions per {kind} call, {args.many - args.few} calls, 16 in flight:")
    for client in CLIENTS:
        name = client if client == "aiohttp" else f"provider, {client}"
        print(f"  {name:<22} {per_call[client] / 1e6:7.3f} M   {per_call[client] / floor:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
