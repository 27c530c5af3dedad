"""Whatever is raised, wherever, an attempt is reported once: no in-flight count or slot leaks.

Engines run over fake senders (no sockets) that raise a chosen exception at a chosen stage:
sending, reading, iterating the body, closing the answer, judging the answer, priming a
stream, or streaming after its first token. For every stage and every kind of exception
(I/O errors, errors of a parser, memory, recursion, cancellation, interrupts, an unknown
``BaseException``), sync and async, plain and streamed, the route ends with nothing in flight
and its trial slot free, whether it was healthy or on trial.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from conftest import FakeClock

from llm.call.spec import CallSpec
from llm.config import parse_config
from llm.errors import LLMError
from llm.routing.balancer import Balancer
from llm.send._async.engine import AsyncEngine
from llm.send._sync.engine import SyncEngine
from llm.send.base import EngineBase
from llm.send.protocols import Request

ANSWER = json.dumps(
    {"choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}]}
).encode()
ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
STREAM = [ROLE, TOKEN, TOKEN, b"data: [DONE]\n\n"]


class Unknown(BaseException):
    """A BaseException the library has never heard of."""


EXCEPTIONS = [
    OSError("reset"),
    TimeoutError(),
    ValueError("bad"),
    TypeError("bad"),
    KeyError("k"),
    RecursionError(),
    MemoryError(),
    RuntimeError("bug"),
    KeyboardInterrupt(),
    SystemExit(1),
    asyncio.CancelledError(),
    Unknown(),
]
PLAIN_STAGES = ["send", "read", "body", "close", "settle"]
STREAM_STAGES = ["send", "prime", "close-on-failure", "after-first-token"]


class _Plan:
    """Where the fake raises: ``stage`` and ``exception``."""

    def __init__(self, stage: str, exception: BaseException, stream: bool) -> None:
        self.stage = stage
        self.exception = exception
        self.stream = stream

    def at(self, stage: str) -> None:
        if stage == self.stage:
            raise self.exception


class AsyncFakeAnswer:
    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.status_code = 200
        content_type = "text/event-stream" if plan.stream else "application/json"
        self.headers = {"content-type": content_type}

    async def read_declared(self, limit: int) -> bytes | None:
        self.plan.at("read")
        return None

    async def _pieces(self) -> AsyncIterator[bytes]:
        if not self.plan.stream:
            self.plan.at("body")
            yield ANSWER
            return
        for number, piece in enumerate(STREAM):
            if number == 0:
                self.plan.at("prime")
            if number == 2:
                await asyncio.sleep(0)
                self.plan.at("after-first-token")
            yield piece

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def aclose(self) -> None:
        self.plan.at("close")


class AsyncFakeSender:
    io_errors = (OSError, TimeoutError)

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan

    def bounded(self, seconds: float, stream: bool) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    async def send(self, request: Request) -> AsyncFakeAnswer:
        self.plan.at("send")
        return AsyncFakeAnswer(self.plan)

    async def aclose(self) -> None:
        pass


class SyncFakeAnswer:
    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.status_code = 200
        content_type = "text/event-stream" if plan.stream else "application/json"
        self.headers = {"content-type": content_type}

    def read_declared(self, limit: int) -> bytes | None:
        self.plan.at("read")
        return None

    def _pieces(self) -> Iterator[bytes]:
        if not self.plan.stream:
            self.plan.at("body")
            yield ANSWER
            return
        for number, piece in enumerate(STREAM):
            if number == 0:
                self.plan.at("prime")
            if number == 2:
                self.plan.at("after-first-token")
            yield piece

    def iter_bytes(self) -> Iterator[bytes]:
        return self._pieces()

    def close(self) -> None:
        self.plan.at("close")


class SyncFakeSender:
    io_errors = (OSError, TimeoutError)

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan

    def bounded(self, seconds: float, stream: bool) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    def send(self, request: Request) -> SyncFakeAnswer:
        self.plan.at("send")
        return SyncFakeAnswer(self.plan)

    def close(self) -> None:
        pass


def _setup(trial: bool) -> tuple[Any, Balancer, FakeClock]:
    config = parse_config(
        {
            "llm": {
                "routes": {"a": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}},
                "params": {"max_retries": 0, "timeout": 5},
                "health": {"cooldown": 1, "max_cooldown": 1},
            }
        },
        environ={},
    )
    clock = FakeClock(100.0)
    balancer = Balancer(config.routes.values(), health=config.health, clock=clock)
    if trial:  # ejected, cooldown over: the next attempt is its trial
        route = balancer.routes["a"]
        balancer.failed(route, balancer.dispatch(route), "down")
        clock.advance(2.0)
        assert route.health.state(clock()).value == "probing"
    return config, balancer, clock


def _assert_clean(balancer: Balancer) -> None:
    route = balancer.routes["a"]
    assert route.in_flight == 0
    assert route.health.trial_in_flight == 0


def _patch_settle(monkeypatch: pytest.MonkeyPatch, plan: _Plan) -> None:
    original = EngineBase.settle

    def settle(self: EngineBase, *args: Any, **kwargs: Any) -> Any:
        plan.at("settle")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EngineBase, "settle", settle)


async def _async_run(engine: AsyncEngine, stream: bool) -> None:
    spec = CallSpec(path="/chat/completions", body={"messages": []}, stream=stream)
    if not stream:
        await engine.request(spec)
        return
    opened = await engine.open_stream(spec)
    async for _events in opened.batches():
        pass


def _sync_run(engine: SyncEngine, stream: bool) -> None:
    spec = CallSpec(path="/chat/completions", body={"messages": []}, stream=stream)
    if not stream:
        engine.request(spec)
        return
    opened = engine.open_stream(spec)
    for _events in opened.batches():
        pass


CASES = [
    pytest.param(stream, stage, id=f"{'stream' if stream else 'plain'}-{stage}")
    for stream, stages in ((False, PLAIN_STAGES), (True, STREAM_STAGES))
    for stage in stages
]


def _assert_typed(raised: BaseException | None, exception: BaseException) -> None:
    """What reaches the caller is the library's own error, or what was raised, untouched."""
    assert raised is None or raised is exception or isinstance(raised, LLMError), repr(raised)


@pytest.mark.parametrize("trial", [False, True], ids=["healthy", "trial"])
@pytest.mark.parametrize(("stream", "stage"), CASES)
@pytest.mark.parametrize("exception", EXCEPTIONS, ids=lambda e: type(e).__name__)
def test_async_attempts_are_reported_once_whatever_is_raised(
    monkeypatch: pytest.MonkeyPatch,
    stream: bool,
    stage: str,
    exception: BaseException,
    trial: bool,
) -> None:
    config, balancer, clock = _setup(trial)
    plan = _Plan("close" if stage == "close-on-failure" else stage, exception, stream)
    _patch_settle(monkeypatch, plan)
    engine = AsyncEngine(config, balancer, AsyncFakeSender(plan), clock=clock, sleep=asyncio.sleep)

    async def run() -> BaseException | None:
        try:
            await _async_run(engine, stream)
        except BaseException as raised:  # noqa: BLE001 - the test looks at whatever comes out
            return raised
        return None

    raised = asyncio.run(run())
    _assert_typed(raised, exception)
    _assert_clean(balancer)


@pytest.mark.parametrize("trial", [False, True], ids=["healthy", "trial"])
@pytest.mark.parametrize(("stream", "stage"), CASES)
@pytest.mark.parametrize("exception", EXCEPTIONS, ids=lambda e: type(e).__name__)
def test_sync_attempts_are_reported_once_whatever_is_raised(
    monkeypatch: pytest.MonkeyPatch,
    stream: bool,
    stage: str,
    exception: BaseException,
    trial: bool,
) -> None:
    config, balancer, clock = _setup(trial)
    plan = _Plan("close" if stage == "close-on-failure" else stage, exception, stream)
    _patch_settle(monkeypatch, plan)
    engine = SyncEngine(config, balancer, SyncFakeSender(plan), clock=clock, sleep=time.sleep)
    raised: BaseException | None = None
    try:
        _sync_run(engine, stream)
    except BaseException as caught:  # noqa: BLE001 - the test looks at whatever comes out
        raised = caught
    _assert_typed(raised, exception)
    _assert_clean(balancer)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_without_a_fault_the_fakes_answer_and_the_route_is_healthy(stream: bool) -> None:
    config, balancer, clock = _setup(trial=True)
    plan = _Plan("nowhere", RuntimeError(), stream)
    engine = SyncEngine(config, balancer, SyncFakeSender(plan), clock=clock, sleep=time.sleep)
    _sync_run(engine, stream)
    route = balancer.routes["a"]
    assert route.health.healthy and route.successes == 1
    _assert_clean(balancer)
