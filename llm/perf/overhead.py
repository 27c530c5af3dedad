"""CPU per request: the provider against raw HTTP clients doing the same calls.

How this works
--------------
Two fake vLLM servers run in child processes (``llm.testing.chaos.FakeProcess``, 20 ms per
answer, 16 tokens), so the CPU this process spends (``resource.getrusage``, user + system, all
threads) is the client's alone. Each *client* makes the same chat calls, alternating between
the two servers, non-streamed or streamed, and reads every answer the way an application would
(the JSON parsed; for streams, every event parsed and the time to the first one noted):

- ``aiohttp``: a raw ``aiohttp.ClientSession`` (the floor for async), 64 calls in flight;
- ``httpx-async``: a raw ``httpx.AsyncClient``, 64 in flight;
- ``provider-async``: ``achat_completion`` / ``astream_events`` over both routes, 64 in flight;
- ``provider-async-load``: the same under ``least_load``, load reports on (the ORCA header
  asked for and read on every answer, ``/metrics`` polled every second);
- ``provider-async-prometheus``: ``provider-async`` with the Prometheus hook registered
  (``llm.observe.prometheus``, its own registry): what metrics cost a call (when
  prometheus-client is installed);
- ``provider-async-hedge``: ``provider-async`` with hedging on (``llm.hedge.enabled``): what
  the hedge's timer and race cost a call, the hedges it sends included;
- ``openai-async``: the OpenAI SDK's ``AsyncOpenAI`` (when installed), 64 in flight;
- ``litellm-router``: LiteLLM's ``Router.acompletion`` over both servers as two deployments
  (when litellm is installed; ``pip install litellm`` adds it), 64 in flight, retries off,
  its bundled price table (``LITELLM_LOCAL_MODEL_COST_MAP``: no network);
- ``httpx-sync``: a raw ``httpx.Client`` shared by 16 threads (the floor for sync);
- ``provider-sync``: ``chat_completion`` / ``stream_events`` from 16 threads.

Clients take turns over several rounds (the order rotates), each run after a short warm-up, and
reported are requests per second (median round), p50 / p95 latency, median time to first
token, and CPU microseconds per request (the lowest round: noise only adds) with its ratio to the
floor (aiohttp for async
clients, httpx-sync for sync ones). ``rss_growth`` measures the provider's resident memory
after 1,000 and after 10,000 calls. ``render_markdown`` and ``chart_svg`` turn the results
into docs/performance.md (see scripts/bench_overhead.py).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from ..config import parse_config
from ..providers.vllm_openai import VLLMOpenAIProvider
from ..testing.chaos import FakeProcess

LATENCY = 0.02
TOKENS = 16
ASYNC_IN_FLIGHT = 64
SYNC_THREADS = 16
MESSAGES = [{"role": "user", "content": "hello"}]
ASYNC_CLIENTS = (
    "aiohttp",
    "httpx-async",
    "provider-async",
    "provider-async-load",
    "provider-async-prometheus",
    "provider-async-hedge",
    "openai-async",
    "litellm-router",
)
OPTIONAL = {  # client -> the package it needs
    "openai-async": "openai",
    "litellm-router": "litellm",
    "provider-async-prometheus": "prometheus_client",
}
SLOW_CLIENTS = ("httpx-async", "litellm-router")  # a quarter of the calls is plenty
SYNC_CLIENTS = ("httpx-sync", "provider-sync")
FLOOR = {"async": "aiohttp", "sync": "httpx-sync"}


@dataclass
class Run:
    """One client, one mode, one round."""

    client: str
    stream: bool
    requests: int
    seconds: float
    cpu_seconds: float
    latencies: list[float] = field(repr=False)
    ttfts: list[float] = field(repr=False)

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.requests * 1e6


@dataclass
class Figures:
    """A client in one mode: medians over the rounds."""

    client: str
    stream: bool
    requests_per_round: int
    rps: float
    p50_ms: float
    p95_ms: float
    ttft_p50_ms: float | None
    cpu_us: float
    cpu_us_rounds: list[float]
    ratio: float | None = None  # to the floor of its kind (aiohttp or httpx-sync)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _body(model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": TOKENS}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


class _Numbers:
    """Call numbers shared by the workers of a run."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.issued = 0
        self.lock = threading.Lock()

    def next(self) -> int | None:
        with self.lock:
            if self.issued >= self.total:
                return None
            self.issued += 1
            return self.issued - 1


# -- the clients ----------------------------------------------------------------------------
# Each returns (latency, ttft or None) for call ``number``; the runner does the rest.

AsyncCall = Callable[[int], Awaitable[tuple[float, float | None]]]
SyncCall = Callable[[int], tuple[float, float | None]]


async def _aiohttp_client(urls: Sequence[str], model: str, stream: bool) -> Any:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    body = _body(model, stream)
    headers = {"content-type": "application/json", "accept": "application/json"}

    async def call(number: int) -> tuple[float, float | None]:
        began = time.perf_counter()
        data = json.dumps(body).encode()
        async with session.post(urls[number % 2], data=data, headers=headers) as response:
            if not stream:
                json.loads(await response.read())
                return time.perf_counter() - began, None
            first = None
            async for line in response.content:
                if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                    json.loads(line[6:])
                    if first is None:
                        first = time.perf_counter() - began
            return time.perf_counter() - began, first

    return call, session.close


async def _httpx_async_client(urls: Sequence[str], model: str, stream: bool) -> Any:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=256)
    client = httpx.AsyncClient(limits=limits, timeout=30)
    body = _body(model, stream)
    headers = {"content-type": "application/json"}

    async def call(number: int) -> tuple[float, float | None]:
        began = time.perf_counter()
        data = json.dumps(body).encode()
        if not stream:
            response = await client.post(urls[number % 2], content=data, headers=headers)
            json.loads(response.content)
            return time.perf_counter() - began, None
        first = None
        async with client.stream("POST", urls[number % 2], content=data, headers=headers) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: ") and not line.startswith("data: [DONE]"):
                    json.loads(line[6:])
                    if first is None:
                        first = time.perf_counter() - began
        return time.perf_counter() - began, first

    return call, client.aclose


def _provider(
    servers: Sequence[FakeProcess], policy: str = "round_robin", hedge: bool = False
) -> VLLMOpenAIProvider:
    routes = {s.name: {"base_url": s.base_url, "model": s.model} for s in servers}
    llm: dict[str, Any] = {"routes": routes, "params": {"max_tokens": TOKENS}, "lb_policy": policy}
    if policy == "least_load":
        llm["load"] = {"poll_interval": 1.0, "orca": True}
    if hedge:
        llm["hedge"] = {"enabled": True}
    return VLLMOpenAIProvider(parse_config({"llm": llm}, environ={}))


async def _provider_async_client(
    servers: Sequence[FakeProcess],
    stream: bool,
    policy: str = "round_robin",
    metrics: bool = False,
    hedge: bool = False,
) -> Any:
    provider = _provider(servers, policy, hedge)
    if metrics:
        from prometheus_client import CollectorRegistry

        from ..observe.prometheus import PrometheusHook

        provider.add_hook(PrometheusHook(CollectorRegistry()))

    async def call(number: int) -> tuple[float, float | None]:
        began = time.perf_counter()
        if not stream:
            await provider.achat_completion(MESSAGES)
            return time.perf_counter() - began, None
        first = None
        async for event in provider.astream_events(MESSAGES):
            if first is None and event.kind == "content":
                first = time.perf_counter() - began
        return time.perf_counter() - began, first

    return call, provider.aclose


async def _openai_async_client(urls: Sequence[str], model: str, stream: bool) -> Any:
    import openai

    bases = [url.rsplit("/chat/completions", 1)[0] for url in urls]
    clients = [openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0) for base in bases]
    messages: Any = MESSAGES

    async def call(number: int) -> tuple[float, float | None]:
        began = time.perf_counter()
        client = clients[number % 2]
        if not stream:
            await client.chat.completions.create(model=model, messages=messages, max_tokens=TOKENS)
            return time.perf_counter() - began, None
        first = None
        chunks = await client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in chunks:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - began
        return time.perf_counter() - began, first

    async def close() -> None:
        for client in clients:
            await client.close()

    return call, close


async def _litellm_router_client(urls: Sequence[str], model: str, stream: bool) -> Any:
    # its price table from the package, not from the network (this machine has none)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm: Any = importlib.import_module("litellm")  # optional: not a dependency

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    deployments = [
        {
            "model_name": "bench",
            "litellm_params": {
                "model": f"hosted_vllm/{model}",
                "api_base": url.rsplit("/chat/completions", 1)[0],
                "api_key": "x",
            },
        }
        for url in urls
    ]
    router = litellm.Router(model_list=deployments, num_retries=0)
    messages: Any = MESSAGES

    async def call(number: int) -> tuple[float, float | None]:
        began = time.perf_counter()
        if not stream:
            await router.acompletion(model="bench", messages=messages, max_tokens=TOKENS)
            return time.perf_counter() - began, None
        first = None
        chunks = await router.acompletion(
            model="bench", messages=messages, max_tokens=TOKENS, stream=True
        )
        async for chunk in chunks:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - began
        return time.perf_counter() - began, first

    async def close() -> None:
        pass  # the Router keeps its clients in litellm's module-level cache

    return call, close


def _httpx_sync_client(urls: Sequence[str], model: str, stream: bool) -> Any:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=256)
    client = httpx.Client(limits=limits, timeout=30)
    body = _body(model, stream)
    headers = {"content-type": "application/json"}

    def call(number: int) -> tuple[float, float | None]:
        began = time.perf_counter()
        data = json.dumps(body).encode()
        if not stream:
            response = client.post(urls[number % 2], content=data, headers=headers)
            json.loads(response.content)
            return time.perf_counter() - began, None
        first = None
        with client.stream("POST", urls[number % 2], content=data, headers=headers) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and not line.startswith("data: [DONE]"):
                    json.loads(line[6:])
                    if first is None:
                        first = time.perf_counter() - began
        return time.perf_counter() - began, first

    return call, client.close


def _provider_sync_client(servers: Sequence[FakeProcess], stream: bool) -> Any:
    provider = _provider(servers)

    def call(number: int) -> tuple[float, float | None]:
        began = time.perf_counter()
        if not stream:
            provider.chat_completion(MESSAGES)
            return time.perf_counter() - began, None
        first = None
        for event in provider.stream_events(MESSAGES):
            if first is None and event.kind == "content":
                first = time.perf_counter() - began
        return time.perf_counter() - began, first

    return call, provider.close


# -- running them ---------------------------------------------------------------------------


def _run_async(
    make: Callable[[], Awaitable[Any]], client: str, stream: bool, requests: int, warmup: int
) -> Run:
    async def main() -> Run:
        call, close = await make()
        try:
            await _drive_async(call, warmup)
            gc.collect()
            cpu, began = _cpu(), time.perf_counter()
            latencies, ttfts = await _drive_async(call, requests)
            seconds, cpu_seconds = time.perf_counter() - began, _cpu() - cpu
        finally:
            await close()
        return Run(client, stream, requests, seconds, cpu_seconds, latencies, ttfts)

    return asyncio.run(main())


async def _drive_async(call: AsyncCall, requests: int) -> tuple[list[float], list[float]]:
    numbers = _Numbers(requests)
    latencies: list[float] = []
    ttfts: list[float] = []

    async def worker() -> None:
        while (number := numbers.next()) is not None:
            latency, ttft = await call(number)
            latencies.append(latency)
            if ttft is not None:
                ttfts.append(ttft)

    await asyncio.gather(*(worker() for _ in range(ASYNC_IN_FLIGHT)))
    return latencies, ttfts


def _run_sync(
    make: Callable[[], Any], client: str, stream: bool, requests: int, warmup: int
) -> Run:
    call, close = make()
    try:
        _drive_sync(call, warmup)
        gc.collect()
        cpu, began = _cpu(), time.perf_counter()
        latencies, ttfts = _drive_sync(call, requests)
        seconds, cpu_seconds = time.perf_counter() - began, _cpu() - cpu
    finally:
        close()
    return Run(client, stream, requests, seconds, cpu_seconds, latencies, ttfts)


def _drive_sync(call: SyncCall, requests: int) -> tuple[list[float], list[float]]:
    numbers = _Numbers(requests)
    latencies: list[float] = []
    ttfts: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        while (number := numbers.next()) is not None:
            latency, ttft = call(number)
            with lock:
                latencies.append(latency)
                if ttft is not None:
                    ttfts.append(ttft)

    with ThreadPoolExecutor(max_workers=SYNC_THREADS) as pool:
        for future in [pool.submit(worker) for _ in range(SYNC_THREADS)]:
            future.result()
    return latencies, ttfts


def available_clients() -> list[str]:
    """Every client whose package is installed."""
    return [
        client
        for client in ASYNC_CLIENTS + SYNC_CLIENTS
        if client not in OPTIONAL or importlib.util.find_spec(OPTIONAL[client]) is not None
    ]


def run_client(
    client: str, servers: Sequence[FakeProcess], stream: bool, requests: int, warmup: int = 128
) -> Run:
    urls = [s.base_url + "/chat/completions" for s in servers]
    model = servers[0].model
    async_makers: dict[str, Callable[[], Awaitable[Any]]] = {
        "aiohttp": lambda: _aiohttp_client(urls, model, stream),
        "httpx-async": lambda: _httpx_async_client(urls, model, stream),
        "provider-async": lambda: _provider_async_client(servers, stream),
        "provider-async-load": lambda: _provider_async_client(servers, stream, "least_load"),
        "provider-async-prometheus": lambda: _provider_async_client(servers, stream, metrics=True),
        "provider-async-hedge": lambda: _provider_async_client(servers, stream, hedge=True),
        "openai-async": lambda: _openai_async_client(urls, model, stream),
        "litellm-router": lambda: _litellm_router_client(urls, model, stream),
    }
    sync_makers: dict[str, Callable[[], Any]] = {
        "httpx-sync": lambda: _httpx_sync_client(urls, model, stream),
        "provider-sync": lambda: _provider_sync_client(servers, stream),
    }
    if client in async_makers:
        return _run_async(async_makers[client], client, stream, requests, warmup)
    if client in sync_makers:
        return _run_sync(sync_makers[client], client, stream, requests, warmup)
    raise ValueError(f"unknown client {client!r}")


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def summarize(runs: Sequence[Run]) -> list[Figures]:
    """Per (client, mode): the lowest CPU per request over the rounds (noise only adds), the
    median rate and the latency percentiles of all rounds; ratios to the floor of each kind."""
    grouped: dict[tuple[str, bool], list[Run]] = {}
    for run in runs:
        grouped.setdefault((run.client, run.stream), []).append(run)
    figures: list[Figures] = []
    for (client, stream), group in grouped.items():
        middle = group[0]
        latencies = [value for run in group for value in run.latencies]
        ttfts = [value for run in group for value in run.ttfts]
        figures.append(
            Figures(
                client=client,
                stream=stream,
                requests_per_round=middle.requests,
                rps=round(statistics.median(r.requests / r.seconds for r in group), 1),
                p50_ms=round(_percentile(latencies, 50) * 1000, 2),
                p95_ms=round(_percentile(latencies, 95) * 1000, 2),
                ttft_p50_ms=round(_percentile(ttfts, 50) * 1000, 2) if ttfts else None,
                # the lowest round: on a shared machine noise only ever adds CPU time
                cpu_us=round(min(r.cpu_us for r in group), 1),
                cpu_us_rounds=[round(r.cpu_us, 1) for r in group],
            )
        )
    by_key = {(f.client, f.stream): f for f in figures}
    for item in figures:
        kind = "sync" if item.client.endswith("-sync") else "async"
        floor = by_key.get((FLOOR[kind], item.stream))
        if floor is not None and floor.cpu_us > 0:
            item.ratio = round(item.cpu_us / floor.cpu_us, 2)
    return figures


def benchmark(
    rounds: int = 3,
    requests: int = 2000,
    stream_requests: int = 1000,
    clients: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Figures]:
    """Every client, non-streamed and streamed, over ``rounds`` rounds in rotating order."""
    chosen = list(clients or available_clients())
    runs: list[Run] = []
    servers = [FakeProcess(name, latency=LATENCY, tokens=TOKENS) for name in ("a", "b")]
    try:
        for server in servers:
            server.start()
        for round_number in range(rounds):
            order = chosen[round_number % len(chosen) :] + chosen[: round_number % len(chosen)]
            for stream in (False, True):
                for client in order:
                    count = stream_requests if stream else requests
                    if client in SLOW_CLIENTS:
                        count = max(200, count // 4)
                    run = run_client(client, servers, stream, count)
                    runs.append(run)
                    if progress is not None:
                        progress(
                            f"round {round_number + 1} {'stream' if stream else 'plain':6} "
                            f"{client:<15} {run.cpu_us:8.1f} us/request"
                        )
    finally:
        for server in servers:
            server.stop()
    return summarize(runs)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_growth(first: int = 1000, total: int = 10000) -> dict[str, float]:
    """The provider's resident memory after ``first`` and after ``total`` async calls (MiB)."""
    servers = [FakeProcess(name, latency=0.002, tokens=TOKENS) for name in ("a", "b")]

    async def main() -> dict[str, float]:
        provider = _provider(servers)
        try:

            async def call(number: int) -> tuple[float, float | None]:
                await provider.achat_completion(MESSAGES)
                return 0.0, None

            await _drive_async(call, first)
            gc.collect()
            after_first = _rss_bytes()
            await _drive_async(call, total - first)
            gc.collect()
            after_total = _rss_bytes()
        finally:
            await provider.aclose()
        mib = 1024 * 1024
        return {
            f"rss_after_{first}_mib": round(after_first / mib, 1),
            f"rss_after_{total}_mib": round(after_total / mib, 1),
            "growth_mib": round((after_total - after_first) / mib, 2),
        }

    try:
        for server in servers:
            server.start()
        return asyncio.run(main())
    finally:
        for server in servers:
            server.stop()


def rss_growth_in_child(
    first: int = 1000, total: int = 10000, timeout: float = 600.0
) -> dict[str, float]:
    """``rss_growth`` in a fresh interpreter, so that what other clients loaded into this
    process (LiteLLM alone adds some 170 MiB) is not counted as the provider's."""
    code = (
        "import json; from llm.perf.overhead import rss_growth; "
        f"print(json.dumps(rss_growth({first}, {total})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=True
    )
    growth: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return growth


def as_dicts(figures: Sequence[Figures]) -> list[dict[str, Any]]:
    return [asdict(item) for item in figures]


__all__ = [
    "Figures",
    "Run",
    "as_dicts",
    "available_clients",
    "benchmark",
    "rss_growth",
    "run_client",
    "summarize",
]
