"""A load test through the provider: N chat calls at concurrency C, async or sync, streamed or not.

How this works
--------------
``BenchSettings`` says what to run. ``target_config`` turns it into a provider config: every
route of ``--config``, or one route at ``VLLM_BASE_URL`` (its model asked from ``/v1/models``
when ``VLLM_MODEL`` is unset). ``run_async`` / ``run_sync`` make the calls with C workers
(tasks or threads) pulling call numbers from one counter, and turn each call into a
``CallRecord``; a call that fails is recorded with the kind of its error, never raised.
``execute`` runs them with the chosen API. The report is ``bench_report.summarize``; the
command is ``bench`` (``llm-bench``, ``scripts/bench_vllm.py``); the demo uses this too.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from ..config import LLMConfig, RouteConfig, load_config, parse_config
from ..config.redact import Redactor
from ..errors import AllRoutesFailedError, Attempt, ConfigError, LLMError, RouteError
from ..probes._sync.look import check_route
from ..probes.check import CheckSettings
from ..providers.vllm_openai import VLLMOpenAIProvider
from ..results import ChatResult, StreamEvent
from ..send.httpcore_sender import HttpcoreSender

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"  # vLLM's default port
DEFAULT_PROMPT = "Write a short poem about load balancing."
_MODELS_LIST_LIMIT = 4 * 1024 * 1024  # bytes of a /v1/models answer worth reading

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
        source="VLLM_BASE_URL",
    )


def _served_model(base_url: str) -> str:
    """The first model ``base_url`` serves: the seed's scripts needed VLLM_MODEL, we ask."""
    probe = RouteConfig(name="vllm", base_url=base_url.rstrip("/"), model="")
    sender = HttpcoreSender()
    try:
        settings = CheckSettings(10.0, _MODELS_LIST_LIMIT, Redactor([probe]))
        check = check_route(sender, probe, settings)
    finally:
        sender.close()
    if not check.models:
        raise ConfigError(
            f"VLLM_MODEL is unset and {base_url} did not list its models "
            f"({check.error}); set VLLM_MODEL, or VLLM_BASE_URL to another server",
            key_path="VLLM_BASE_URL",
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


# -- running --------------------------------------------------------------------------


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
