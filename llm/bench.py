"""Load test through the provider: N chat calls at concurrency C, async or sync, streamed or not.

How this works
--------------
``BenchSettings`` says what to run (from flags over the seed's environment variables
``VLLM_BASE``, ``VLLM_MODEL``, ``CONC``, ``NREQ``). ``target_config`` turns it into a provider
config: every route of ``--config``, or one route at ``VLLM_BASE`` (its model asked from
``/v1/models`` when ``VLLM_MODEL`` is unset). ``run_async`` / ``run_sync`` make the calls with
C workers (tasks or threads) pulling call numbers from one counter, and turn each call into a
``CallRecord``; a call that fails is recorded with the kind of its error, never raised.
``summarize`` (pure) turns records into the report: the seed's JSON shape plus TTFT, tokens per
second, each route's share, retries and failovers, and errors by kind. ``main`` is the command
(``llm-bench``, ``scripts/bench_vllm.py``); ``--demo`` hands over to :mod:`llm.demo`.

Exit code: 0 when every call succeeded, 1 when some failed, 2 on a bad setting or config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import httpx

from .checks import check_route
from .config import LLMConfig, RouteConfig, load_config, parse_config
from .errors import AllRoutesFailedError, Attempt, ConfigError, LLMError, RouteError
from .providers.vllm_openai import VLLMOpenAIProvider
from .results import ChatResult, StreamEvent

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"  # vLLM's default port
DEFAULT_PROMPT = "Write a short poem about load balancing."

Api = Literal["async", "sync"]
OnCall = Callable[[int], None]


@dataclass(frozen=True)
class BenchSettings:
    """What one benchmark run does."""

    concurrency: int = 64
    requests: int = 256
    stream: bool = False
    max_tokens: int = 128
    prompt: str = DEFAULT_PROMPT
    api: Api = "async"
    config_path: str | None = None
    base_url: str = DEFAULT_BASE_URL
    model: str | None = None


@dataclass(frozen=True, slots=True)
class CallRecord:
    """What one call did. ``error_kind`` is None when it succeeded."""

    route: str | None
    latency_s: float
    attempts: tuple[Attempt, ...]
    ttft_s: float | None = None
    completion_tokens: int | None = None
    error_kind: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None


# -- the target ---------------------------------------------------------------------------


def target_config(settings: BenchSettings, environ: Mapping[str, str] | None = None) -> LLMConfig:
    """The provider config to benchmark. Raises ``ConfigError`` naming what is wrong."""
    if settings.config_path is not None:
        return load_config(settings.config_path, environ=environ)
    model = settings.model or _served_model(settings.base_url)
    return parse_config(
        {"llm": {"routes": {"vllm": {"base_url": settings.base_url, "model": model}}}},
        environ=environ if environ is not None else os.environ,
        source="VLLM_BASE",
    )


def _served_model(base_url: str) -> str:
    """The first model ``base_url`` serves: the seed's scripts needed VLLM_MODEL, we ask."""
    probe = RouteConfig(name="vllm", base_url=base_url.rstrip("/"), model="")
    with httpx.HTTPTransport() as transport:
        check = check_route(transport, probe, timeout=10.0)
    if not check.models:
        raise ConfigError(
            f"VLLM_MODEL is unset and {base_url} did not list its models "
            f"({check.error}); set VLLM_MODEL or VLLM_BASE",
            key_path="VLLM_BASE",
        )
    return check.models[0]


# -- making the calls ---------------------------------------------------------------------


def _messages(settings: BenchSettings, number: int) -> list[dict[str, str]]:
    # A distinct prompt per call, so that no server-side prefix cache flatters the figures.
    return [{"role": "user", "content": f"{settings.prompt} (#{number})"}]


def _error_kind(error: BaseException) -> str:
    if isinstance(error, AllRoutesFailedError) and error.last_error is not None:
        return f"{type(error).__name__}: {_error_kind(error.last_error)}"
    status = getattr(error, "status_code", None)
    if isinstance(error, LLMError):
        return f"{type(error).__name__}" + (f" {status}" if status else "")
    return f"unexpected {type(error).__name__}"  # a bug of ours: counted, reported, not raised


def _failed(error: BaseException, started: float) -> CallRecord:
    attempts = error.attempts if isinstance(error, RouteError) else ()
    return CallRecord(
        route=None,
        latency_s=time.perf_counter() - started,
        attempts=attempts,
        error_kind=_error_kind(error),
    )


def _answered(result: ChatResult, started: float) -> CallRecord:
    # Wall time as the caller saw it: every attempt, backoff included.
    latency = time.perf_counter() - started
    tokens = _tokens(result.usage)
    return CallRecord(result.route, latency, result.attempts, completion_tokens=tokens)


def _tokens(usage: Mapping[str, Any] | None) -> int | None:
    value = usage.get("completion_tokens") if usage else None
    return value if isinstance(value, int) else None


class _StreamWatch:
    """Follows a stream's events: when the first token came, and what the end reported."""

    __slots__ = ("end", "first_token_at")

    def __init__(self) -> None:
        self.first_token_at: float | None = None
        self.end: StreamEvent | None = None

    def see(self, event: StreamEvent) -> None:
        if self.first_token_at is None and event.kind != "end" and event.kind != "usage":
            self.first_token_at = time.perf_counter()
        if event.kind == "end":
            self.end = event

    def record(self, started: float) -> CallRecord:
        end = self.end
        if end is None or end.route is None:  # not reachable: a stream always ends with "end"
            return CallRecord(None, time.perf_counter() - started, (), error_kind="no end event")
        ttft = None if self.first_token_at is None else self.first_token_at - started
        return CallRecord(
            route=end.route,
            latency_s=time.perf_counter() - started,
            attempts=end.attempts,
            ttft_s=ttft,
            completion_tokens=_tokens(end.usage),
        )


async def _one_async(
    provider: VLLMOpenAIProvider, settings: BenchSettings, number: int
) -> CallRecord:
    messages = _messages(settings, number)
    started = time.perf_counter()
    try:
        if settings.stream:
            watch = _StreamWatch()
            async for event in provider.astream_events(messages, max_tokens=settings.max_tokens):
                watch.see(event)
            return watch.record(started)
        result = await provider.achat_completion(messages, max_tokens=settings.max_tokens)
    except Exception as error:  # noqa: BLE001 - a benchmark counts failures, it does not stop
        return _failed(error, started)
    return _answered(result, started)


def _one_sync(provider: VLLMOpenAIProvider, settings: BenchSettings, number: int) -> CallRecord:
    messages = _messages(settings, number)
    started = time.perf_counter()
    try:
        if settings.stream:
            watch = _StreamWatch()
            for event in provider.stream_events(messages, max_tokens=settings.max_tokens):
                watch.see(event)
            return watch.record(started)
        result = provider.chat_completion(messages, max_tokens=settings.max_tokens)
    except Exception as error:  # noqa: BLE001 - a benchmark counts failures, it does not stop
        return _failed(error, started)
    return _answered(result, started)


async def run_async(
    provider: VLLMOpenAIProvider,
    settings: BenchSettings,
    *,
    on_call: OnCall | None = None,
    on_done: Callable[[CallRecord], None] | None = None,
) -> list[CallRecord]:
    """Every call of the run, in the order they ended. ``on_call(n)`` runs before call n."""
    numbers = iter(range(settings.requests))
    records: list[CallRecord] = []

    async def worker() -> None:
        for number in numbers:
            if on_call is not None:
                on_call(number)
            record = await _one_async(provider, settings, number)
            records.append(record)
            if on_done is not None:
                on_done(record)

    await asyncio.gather(*(worker() for _ in range(min(settings.concurrency, settings.requests))))
    return records


def run_sync(
    provider: VLLMOpenAIProvider,
    settings: BenchSettings,
    *,
    on_call: OnCall | None = None,
    on_done: Callable[[CallRecord], None] | None = None,
) -> list[CallRecord]:
    """The sync twin of :func:`run_async`: C threads share one provider."""
    numbers = iter(range(settings.requests))
    lock = threading.Lock()
    stop = threading.Event()
    records: list[CallRecord] = []

    def worker() -> None:
        while not stop.is_set():
            with lock:
                number = next(numbers, None)
            if number is None:
                return
            if on_call is not None:
                on_call(number)
            record = _one_sync(provider, settings, number)
            with lock:
                records.append(record)
                if on_done is not None:
                    on_done(record)

    workers = max(1, min(settings.concurrency, settings.requests))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm-bench") as pool:
        try:
            for future in [pool.submit(worker) for _ in range(workers)]:
                future.result()
        except BaseException:  # Ctrl-C: no new calls; the pool waits for those in flight
            stop.set()
            raise
    return records


# -- the report ---------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of sorted values, linearly interpolated."""
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution_ms(seconds: Sequence[float]) -> dict[str, float] | None:
    """min, max, mean, median, p95, p99 in milliseconds; None for no values."""
    if not seconds:
        return None
    ordered = sorted(value * 1000.0 for value in seconds)
    return {
        "min": round(ordered[0], 2),
        "max": round(ordered[-1], 2),
        "mean": round(sum(ordered) / len(ordered), 2),
        "median": round(percentile(ordered, 50), 2),
        "p95": round(percentile(ordered, 95), 2),
        "p99": round(percentile(ordered, 99), 2),
    }


def summarize(
    records: Sequence[CallRecord],
    elapsed_s: float,
    settings: BenchSettings,
    config: LLMConfig,
) -> dict[str, Any]:
    """The report of a run (pure): what was run, the counts, latency, routes, retries, errors."""
    total = len(records)
    succeeded = [r for r in records if r.ok]
    elapsed = max(elapsed_s, 1e-9)
    pool = list(config.pool())
    if config.fallback_route is not None:
        pool.append(config.fallback_route)
    shares: Counter[str] = Counter(r.route for r in succeeded if r.route is not None)
    tokens = [r.completion_tokens for r in succeeded if r.completion_tokens is not None]
    first_routes = Counter(r.attempts[0].route for r in records if r.attempts)
    failed_attempts: dict[str, Counter[str]] = {}
    for record in records:
        for attempt in record.attempts:
            if attempt.outcome != "ok":
                status = f" {attempt.status_code}" if attempt.status_code else ""
                outcome = attempt.outcome + status
                failed_attempts.setdefault(attempt.route, Counter())[outcome] += 1
    answered_elsewhere = sum(
        1 for r in succeeded if r.attempts and r.attempts[0].route != r.route
    )
    target: dict[str, Any] = (
        {"routes": {name: config.route(name).shown_url for name in pool}}
        if settings.config_path is not None
        else {"base_url": config.route(pool[0]).shown_url}
    )
    return {
        "benchmark_config": {
            **target,
            "model": config.default_model,
            "concurrency": settings.concurrency,
            "num_requests": settings.requests,
            "stream": settings.stream,
            "max_tokens": settings.max_tokens,
            "api": settings.api,
            "lb_policy": config.lb_policy,
        },
        "summary": {
            "total_requests": total,
            "successful_requests": len(succeeded),
            "failed_requests": total - len(succeeded),
            "success_rate": round(len(succeeded) / total, 4) if total else 0.0,
            "total_time_seconds": round(elapsed_s, 3),
            "requests_per_second": round(total / elapsed, 2),
            "successful_rps": round(len(succeeded) / elapsed, 2),
        },
        "latency_ms": distribution_ms([r.latency_s for r in succeeded]),
        "ttft_ms": distribution_ms([r.ttft_s for r in succeeded if r.ttft_s is not None])
        if settings.stream
        else None,
        "tokens": {
            "completion_tokens": sum(tokens),
            "tokens_per_second": round(sum(tokens) / elapsed, 1),
            "per_call_tokens_per_second": round(
                sum(tokens) / max(sum(r.latency_s for r in succeeded), 1e-9), 1
            )
            if tokens
            else None,
        },
        "routes": {
            name: {
                "requests": shares.get(name, 0),
                "share": round(shares.get(name, 0) / len(succeeded), 4) if succeeded else 0.0,
                "first_attempts": first_routes.get(name, 0),
            }
            for name in (*pool, *sorted(set(shares) - set(pool), key=str))
        },
        "retries": {
            "extra_attempts": sum(max(0, len(r.attempts) - 1) for r in records),
            "calls_retried": sum(1 for r in records if len(r.attempts) > 1),
            "failovers": answered_elsewhere,
            "answered_by_fallback": shares.get(config.fallback_route, 0)
            if config.fallback_route
            else 0,
            "failed_attempts": {
                route: dict(outcomes.most_common()) for route, outcomes in failed_attempts.items()
            },
        },
        "errors": dict(Counter(r.error_kind for r in records if r.error_kind).most_common()),
    }


def exit_code(report: Mapping[str, Any]) -> int:
    return 0 if report["summary"]["failed_requests"] == 0 else 1


# -- progress -----------------------------------------------------------------------------


def progress_line(done: int, total: int, failed: int, elapsed_s: float, width: int = 30) -> str:
    filled = width * done // total if total else width
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        f"  {rate:7.1f} req/s  failed {failed}"
    )


class Progress:
    """A progress bar on a TTY stream, redrawn at most ten times a second; silent otherwise."""

    def __init__(self, total: int, stream: TextIO, *, enabled: bool | None = None) -> None:
        self.total = total
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.done = 0
        self.failed = 0
        self._started = time.perf_counter()
        self._drawn_at = 0.0

    def __call__(self, record: CallRecord) -> None:
        self.done += 1
        self.failed += not record.ok
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._drawn_at >= 0.1 or self.done == self.total:
            self._drawn_at = now
            line = progress_line(self.done, self.total, self.failed, now - self._started)
            self.stream.write("\r" + line)
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# -- the command --------------------------------------------------------------------------


def execute(
    provider: VLLMOpenAIProvider,
    settings: BenchSettings,
    *,
    on_call: OnCall | None = None,
    on_done: Callable[[CallRecord], None] | None = None,
) -> tuple[list[CallRecord], float]:
    """Run the calls with the chosen API; the records and the seconds it took."""
    started = time.perf_counter()
    if settings.api == "sync":
        records = run_sync(provider, settings, on_call=on_call, on_done=on_done)
    else:

        async def run() -> list[CallRecord]:
            try:
                return await run_async(provider, settings, on_call=on_call, on_done=on_done)
            finally:
                await provider.aclose()

        records = asyncio.run(run())
    return records, time.perf_counter() - started


def benchmark(
    settings: BenchSettings,
    environ: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run one benchmark and return its report. Raises ``ConfigError`` for a bad target."""
    config = target_config(settings, environ)
    with VLLMOpenAIProvider(config) as provider:
        records, elapsed = execute(provider, settings, on_done=progress)
    if progress is not None:
        progress.finish()
    return summarize(records, elapsed, settings, config)


def _positive_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{name}: expected a positive integer, got {text!r}", key_path=name)
    return value


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> BenchSettings:
    """Flags over environment variables over defaults. Raises ``ConfigError``."""
    defaults = BenchSettings()

    def number(flag: int | None, variable: str, default: int, name: str) -> int:
        if flag is not None:
            return _positive_int(name, str(flag))
        if variable in environ:
            return _positive_int(variable, environ[variable])
        return default

    return BenchSettings(
        concurrency=number(args.concurrency, "CONC", defaults.concurrency, "--concurrency"),
        requests=number(args.requests, "NREQ", defaults.requests, "--requests"),
        stream=args.stream,
        max_tokens=_positive_int("--max-tokens", str(args.max_tokens)),
        prompt=args.prompt,
        api=args.api,
        config_path=args.config,
        base_url=environ.get("VLLM_BASE") or DEFAULT_BASE_URL,
        model=environ.get("VLLM_MODEL") or None,
    )


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="bench_vllm",
        description=(
            "Load test through the llm-routes provider; prints a JSON report on stdout. "
            "Target: every route of --config, else one server at $VLLM_BASE "
            f"(default {DEFAULT_BASE_URL}) serving $VLLM_MODEL (default: the first model it "
            "lists). Exit code 0 when every call succeeded, 1 when some failed, 2 on a bad "
            "setting."
        ),
        epilog="--demo runs the built-in demo on local fake vLLM servers instead "
        "(see `--demo --help`).",
    )
    cli.add_argument("--demo", action="store_true", help="run the demo on fake local servers")
    cli.add_argument("--config", help="a config file: benchmark its default pool and fallback")
    cli.add_argument("--concurrency", type=int, help="calls in flight (env CONC, default 64)")
    cli.add_argument("--requests", type=int, help="calls to make (env NREQ, default 256)")
    cli.add_argument("--stream", action="store_true", help="stream the answers (adds ttft_ms)")
    cli.add_argument("--max-tokens", type=int, default=BenchSettings.max_tokens)
    cli.add_argument("--prompt", default=DEFAULT_PROMPT)
    cli.add_argument("--api", choices=("async", "sync"), default="async")
    cli.add_argument("--json-out", metavar="FILE", help="also write the report to FILE")
    return cli


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if "--demo" in arguments:
        from . import demo

        return demo.main([a for a in arguments if a != "--demo"])
    args = parser().parse_args(arguments)
    try:
        settings = settings_from(args, os.environ)
        # Opened before the run, so that a bad path fails at once rather than after it.
        json_out = open(args.json_out, "w", encoding="utf-8") if args.json_out else None  # noqa: SIM115
    except (ConfigError, OSError) as error:
        print(f"bench_vllm: {error}", file=sys.stderr)
        return 2
    with json_out or contextlib.nullcontext():
        try:
            report = benchmark(settings, os.environ, Progress(settings.requests, sys.stderr))
        except ConfigError as error:
            print(f"bench_vllm: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("\nbench_vllm: interrupted", file=sys.stderr)
            return 130
        text = json.dumps(report, indent=2)
        if json_out is not None:
            json_out.write(text + "\n")
    print(text)
    return exit_code(report)


if __name__ == "__main__":
    sys.exit(main())
