"""Fault injection at load: one faulty instance of three, many calls in flight, what happened.

How this works
--------------
A :class:`Fleet` runs three fake vLLM servers (``a``, ``b``, ``c``) as child processes
(``python -m llm.testing.fake_vllm``). A fault can then be a real kill (SIGKILL) and a restart
on the same port, and the servers' sockets live in other processes, so whatever the client
process leaves behind (tasks, threads, unclosed sockets) is the library's own. Faults are set
on instance ``a`` over its ``/_fake/control`` endpoint.

A :class:`Fault` says what is done to ``a`` before the run and when half of the calls have
started, whether the calls stream, and what must hold: every call succeeds (a fault before the
first token must cost nothing), or the only failures are ``StreamInterruptedError`` on ``a``
(a stream cut after its first token cannot be replayed). :func:`run_async` (tasks) and
:func:`run_sync` (threads) make the calls through one provider and return a
:class:`ChaosResult`: calls made, succeeded, failed by error type, failures that were not an
``LLMError`` (bugs), extra attempts, the longest call against the deadline, whether ``a`` was
ejected and got traffic back, and what was left behind. :func:`problems` lists what the result
fails to prove (empty: the behaviour holds). ``tests/test_chaos.py`` asserts it for every
fault, both ways; ``scripts/reliability_report.py`` writes the figures to docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import select
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from ..config import parse_config
from ..errors import LLMError, RouteError, StreamInterruptedError
from ..providers.vllm_openai import VLLMOpenAIProvider

__all__ = [
    "DEADLINE",
    "FAULTS",
    "TIMEOUT",
    "ChaosResult",
    "FakeProcess",
    "Fault",
    "Fleet",
    "chaos_config",
    "problems",
    "run_async",
    "run_sync",
]

TIMEOUT = 0.5  # seconds per attempt
DEADLINE = 1.5  # seconds for all attempts of a call
MARGIN = 0.5  # what a loaded 2-core machine may add to a call past its deadline
LATENCY = 0.01  # each fake server's answer time
RECOVERY_WAIT = 5.0  # seconds a run goes on after a restart for the route to win traffic back
MESSAGES = [{"role": "user", "content": "chaos"}]

Action = Literal["kill", "restart"]


@dataclass(frozen=True)
class Fault:
    """What happens to instance ``a``, and what the calls must still achieve."""

    key: str
    title: str
    control: Mapping[str, Any] = field(default_factory=dict)  # /_fake/control before the run
    at_start: Action | None = None
    midway: Action | None = None
    stream: bool = False
    before_first_token: bool = True  # every call must succeed
    recovers: bool = False  # ``a`` must get traffic back after its restart


FAULTS: tuple[Fault, ...] = (
    Fault("killed", "process killed mid-run", midway="kill"),
    Fault("refused", "connection refused from the start", at_start="kill"),
    Fault("cut_before_first_chunk", "stream cut before the first chunk", stream=True,
          control={"cut_streams_after": 0}),
    Fault("cut_after_role_chunk", "stream cut after the role-only chunk", stream=True,
          control={"cut_streams_after": 1}),
    Fault("cut_after_chunks", "stream cut after some chunks", stream=True,
          control={"cut_streams_after": 3}, before_first_token=False),
    Fault("hang", "hangs after accepting (no bytes)", control={"hang": True}),
    Fault("hang_mid_stream", "hangs mid-stream", stream=True,
          control={"hang_streams_after": 3}, before_first_token=False),
    Fault("rate_limited", "answers 429 with Retry-After: 1",
          control={"fail_next": 10**6, "fail_status": 429, "retry_after": 1}),
    Fault("storm_500", "answers 500 to everything",
          control={"fail_next": 10**6, "fail_status": 500}),
    Fault("storm_502", "answers 502 to everything",
          control={"fail_next": 10**6, "fail_status": 502}),
    Fault("storm_503", "answers 503 to everything",
          control={"fail_next": 10**6, "fail_status": 503}),
    Fault("malformed_json", "answers malformed JSON",
          control={"respond_garbage": "malformed_json"}),
    Fault("truncated", "answers a truncated body", control={"respond_garbage": "truncated"}),
    Fault("wrong_content_type", "answers with a wrong content type",
          control={"respond_garbage": "wrong_content_type"}),
    Fault("html", "answers an HTML error page", control={"respond_garbage": "html"}),
    Fault("empty", "answers an empty 200", control={"respond_garbage": "empty"}),
    Fault("malformed_shape", "answers 200 with choices: [null]",
          control={"respond_garbage": "malformed_shape"}),
    Fault("deep_json", "answers JSON nested 100,000 deep",
          control={"respond_garbage": "deep_json"}),
    Fault("malformed_chunk", "streams a chunk whose choices are a string", stream=True,
          control={"respond_garbage": "malformed_chunk"}),
    Fault("processing_forever", "sends 102 Processing forever",
          control={"respond_garbage": "processing_forever"}),
    Fault("trickled_headers", "trickles its headers a byte at a time",
          control={"respond_garbage": "trickled_headers"}),
    Fault("comes_back", "down, then back halfway", at_start="kill", midway="restart",
          recovers=True),
)


# -- the fleet ----------------------------------------------------------------------------


class FakeProcess:
    """One fake vLLM server in a child process: started, killed, restarted on its port."""

    def __init__(
        self, name: str, model: str = "tiny", latency: float = LATENCY, tokens: int = 8
    ) -> None:
        self.name = name
        self.model = model
        self.latency = latency
        self.tokens = tokens
        self.port = 0
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 20.0) -> FakeProcess:
        """Start (again, on the same port once it has one); returns once it listens."""
        command = [
            sys.executable, "-m", "llm.testing.fake_vllm", "--port", str(self.port),
            "--model", self.model, "--name", self.name, "--latency", str(self.latency),
            "--tokens", str(self.tokens),
        ]  # fmt: skip
        self.stop()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self._process = process
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:  # a restart may find the port still held for a moment: the child exits 1
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([process.stdout], [], [], max(0.0, remaining))
            line = process.stdout.readline() if ready else ""
            if " on http://" in line:
                self.port = int(line.rsplit(":", 1)[1])
                return self
            if process.poll() is not None and remaining > 0.5:
                time.sleep(0.1)
                return self.start(remaining)
            if not ready or remaining <= 0:
                self.stop()
                raise RuntimeError(f"fake server {self.name} did not start within {timeout:g}s")

    def kill(self) -> None:
        """SIGKILL: the port refuses connections until :meth:`start` runs again."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
        if process is not None and process.stdout is not None:
            process.stdout.close()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process.stdout is not None:
            process.stdout.close()

    def control(self, **body: Any) -> None:
        answer = httpx.post(self.url + "/_fake/control", json=body, timeout=5)
        answer.raise_for_status()

    def request_count(self) -> int:
        return int(httpx.get(self.url + "/_fake/control", timeout=5).json()["request_count"])


class Fleet:
    """Instances ``a`` (the faulty one), ``b`` and ``c``, each in its own process."""

    def __init__(self) -> None:
        self.servers = {name: FakeProcess(name) for name in ("a", "b", "c")}

    def __enter__(self) -> Fleet:
        try:
            for server in self.servers.values():
                server.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    @property
    def faulty(self) -> FakeProcess:
        return self.servers["a"]

    def prepare(self, fault: Fault) -> None:
        """Every instance running and healthy, then ``fault``'s starting state on ``a``."""
        for server in self.servers.values():
            if not server.running:
                server.start()
            server.control(reset=True)
        if fault.control:
            self.faulty.control(**fault.control)
        if fault.at_start is not None:
            self.act(fault.at_start)

    def act(self, action: Action) -> None:
        if action == "kill":
            self.faulty.kill()
        else:
            self.faulty.start()


def chaos_config(fleet: Fleet) -> dict[str, Any]:
    return {
        "llm": {
            "routes": {
                name: {"base_url": server.base_url, "model": server.model}
                for name, server in fleet.servers.items()
            },
            "lb_policy": "round_robin",  # the faulty route keeps its share of the traffic
            "params": {"max_tokens": 8, "timeout": TIMEOUT, "deadline": DEADLINE},
            "retry": {"backoff_initial": 0.02, "backoff_max": 0.1, "retry_after_max": 0.5},
            # stall_min scaled down with the 10 ms answers (1 s by default, for answers of seconds)
            "health": {"cooldown": 0.25, "max_cooldown": 1.0, "stall_min": 0.05},
        }
    }


# -- the runs -----------------------------------------------------------------------------


@dataclass
class ChaosResult:
    """What one run did and left behind."""

    fault: Fault
    api: str
    concurrency: int
    calls: int = 0
    succeeded: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    failed_elsewhere: int = 0  # failures on another route than the faulty one
    untyped: list[str] = field(default_factory=list)  # not an LLMError: a bug
    extra_attempts: int = 0
    longest_call_s: float = 0.0
    hung: bool = False
    ejected: bool = False
    recovered: bool | None = None
    leftover_tasks: int = 0
    leftover_threads: int = 0
    resource_warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


class _Tally:
    """Counts calls as they end; one lock, as the sync run records from many threads."""

    def __init__(self, result: ChaosResult) -> None:
        self.result = result
        self.lock = threading.Lock()

    def ok(self, attempts: int, seconds: float) -> None:
        with self.lock:
            result = self.result
            result.succeeded += 1
            result.extra_attempts += attempts - 1
            result.longest_call_s = max(result.longest_call_s, seconds)

    def failed(self, error: BaseException, seconds: float) -> None:
        with self.lock:
            result = self.result
            result.longest_call_s = max(result.longest_call_s, seconds)
            if not isinstance(error, LLMError):
                result.untyped.append(f"{type(error).__name__}: {error}")
                return
            result.failed[type(error).__name__] += 1
            if isinstance(error, RouteError):
                result.extra_attempts += max(0, len(error.attempts) - 1)
                if error.route != "a":
                    result.failed_elsewhere += 1


class _Calls:
    """Hands out call numbers: ``calls`` of them, or more until a restarted route is back."""

    def __init__(self, fault: Fault, calls: int, provider: VLLMOpenAIProvider) -> None:
        self.fault = fault
        self.calls = calls
        self.provider = provider
        self.issued = 0
        self.lock = threading.Lock()
        self.restarted_at: float | None = None
        self.successes_at_restart = 0

    def next(self) -> int | None:
        with self.lock:
            number = self.issued
            if number >= self.calls and not self._waiting_for_recovery():
                return None
            self.issued += 1
            return number

    def _waiting_for_recovery(self) -> bool:
        if not self.fault.recovers or self.restarted_at is None:
            return False
        if time.monotonic() - self.restarted_at > RECOVERY_WAIT:
            return False
        return not self.recovered()

    def restarted(self) -> None:
        self.successes_at_restart = self.provider.stats()["a"]["successes"]
        self.restarted_at = time.monotonic()

    def recovered(self) -> bool:
        return bool(self.provider.stats()["a"]["successes"] > self.successes_at_restart)


def _provider(fleet: Fleet) -> VLLMOpenAIProvider:
    return VLLMOpenAIProvider(parse_config(chaos_config(fleet), environ={}))


RUN_LIMIT = 60.0  # seconds: a run still going after this has hung


@contextlib.contextmanager
def _watch_leaks(result: ChaosResult) -> Iterator[None]:
    """Record ResourceWarnings raised during the run and threads that outlive it."""
    threads_before = set(threading.enumerate())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    result.resource_warnings = [
        str(warning.message) for warning in caught if issubclass(warning.category, ResourceWarning)
    ]
    deadline = time.monotonic() + 2.0
    while True:  # a thread may still be on its way out
        extra = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    result.leftover_threads = len(extra)


def _finish(result: ChaosResult, provider: VLLMOpenAIProvider, calls: _Calls) -> None:
    result.calls = calls.issued
    result.ejected = provider.stats()["a"]["ejections"] > 0
    if result.fault.recovers:
        result.recovered = calls.restarted_at is not None and calls.recovered()


def run_async(fleet: Fleet, fault: Fault, calls: int = 192, concurrency: int = 64) -> ChaosResult:
    """``calls`` calls, ``concurrency`` in flight, through the async API (a fresh event loop)."""
    result = ChaosResult(fault, "async", concurrency)
    fleet.prepare(fault)
    began = time.monotonic()
    with _watch_leaks(result):
        asyncio.run(_run_async(fleet, fault, calls, concurrency, result))
    result.seconds = time.monotonic() - began
    return result


async def _run_async(
    fleet: Fleet, fault: Fault, calls: int, concurrency: int, result: ChaosResult
) -> None:
    provider = _provider(fleet)
    tally = _Tally(result)
    numbers = _Calls(fault, calls, provider)

    async def one() -> int:
        if fault.stream:
            attempts = 0
            async for event in provider.astream_events(MESSAGES):
                attempts = len(event.attempts)
            return attempts
        return len((await provider.achat_completion(MESSAGES)).attempts)

    async def worker() -> None:
        while (number := numbers.next()) is not None:
            if number == calls // 2 and fault.midway is not None:
                await asyncio.to_thread(fleet.act, fault.midway)
                if fault.midway == "restart":
                    numbers.restarted()
            began = time.perf_counter()
            try:
                attempts = await one()
            except Exception as error:  # noqa: BLE001 - counted: typed or not, that is the test
                tally.failed(error, time.perf_counter() - began)
            else:
                tally.ok(attempts, time.perf_counter() - began)

    try:
        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(concurrency))), timeout=RUN_LIMIT
        )
    except asyncio.TimeoutError:
        result.hung = True
    finally:
        _finish(result, provider, numbers)
        await provider.aclose()
        provider.close()
    await asyncio.sleep(0)
    me = asyncio.current_task()
    result.leftover_tasks = sum(1 for task in asyncio.all_tasks() if task is not me)


def run_sync(fleet: Fleet, fault: Fault, calls: int = 96, concurrency: int = 16) -> ChaosResult:
    """``calls`` calls from ``concurrency`` threads through the sync API."""
    result = ChaosResult(fault, "sync", concurrency)
    fleet.prepare(fault)
    began = time.monotonic()
    with _watch_leaks(result):
        _run_sync(fleet, fault, calls, concurrency, result)
    result.seconds = time.monotonic() - began
    return result


def _run_sync(
    fleet: Fleet, fault: Fault, calls: int, concurrency: int, result: ChaosResult
) -> None:
    provider = _provider(fleet)
    tally = _Tally(result)
    numbers = _Calls(fault, calls, provider)

    def one() -> int:
        if fault.stream:
            attempts = 0
            for event in provider.stream_events(MESSAGES):
                attempts = len(event.attempts)
            return attempts
        return len(provider.chat_completion(MESSAGES).attempts)

    def worker() -> None:
        while (number := numbers.next()) is not None:
            if number == calls // 2 and fault.midway is not None:
                fleet.act(fault.midway)
                if fault.midway == "restart":
                    numbers.restarted()
            began = time.perf_counter()
            try:
                attempts = one()
            except Exception as error:  # noqa: BLE001 - counted: typed or not, that is the test
                tally.failed(error, time.perf_counter() - began)
            else:
                tally.ok(attempts, time.perf_counter() - began)

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="chaos")
    try:
        futures = [pool.submit(worker) for _ in range(concurrency)]
        deadline = time.monotonic() + RUN_LIMIT
        for future in futures:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                result.hung = True
                break
    finally:
        pool.shutdown(wait=not result.hung, cancel_futures=True)
        _finish(result, provider, numbers)
        provider.close()


# -- the verdict --------------------------------------------------------------------------


def problems(result: ChaosResult) -> list[str]:
    """What the run fails to prove; empty when the behaviour holds."""
    found: list[str] = []
    fault = result.fault
    if result.hung:
        found.append(f"the run did not end within {RUN_LIMIT:g}s")
    accounted = result.succeeded + result.failed_total + len(result.untyped)
    if accounted != result.calls:
        found.append(f"{result.calls} calls made but {accounted} ended")
    if result.untyped:
        found.append(f"failures that are not an LLMError: {result.untyped[:3]}")
    if fault.before_first_token and result.failed_total:
        found.append(f"{result.failed_total} calls failed: {dict(result.failed)}")
    if not fault.before_first_token:
        others = set(result.failed) - {StreamInterruptedError.__name__}
        if others or result.failed_elsewhere:
            found.append(f"failures other than a stream cut on 'a': {dict(result.failed)}")
        if not result.succeeded:
            found.append("no call succeeded")
    if result.longest_call_s > DEADLINE + MARGIN:
        found.append(f"a call took {result.longest_call_s:.2f}s (deadline {DEADLINE:g}s)")
    if not result.ejected:
        found.append("the faulty route was never ejected")
    if fault.recovers and not result.recovered:
        found.append("the restarted route got no traffic back")
    if result.leftover_tasks:
        found.append(f"{result.leftover_tasks} asyncio tasks left after aclose()")
    if result.leftover_threads:
        found.append(f"{result.leftover_threads} threads left after close()")
    if result.resource_warnings:
        found.append(f"ResourceWarnings: {result.resource_warnings[:3]}")
    return found
