"""Hedging on a live provider, sync and async, streamed and not: an instance that hangs (the
fake's ``hang``, and a raw server that accepts and never answers) among healthy ones costs a
call no more than the hedge's delay; the loser's cancellation reaches the server; nothing is
hedged after a stream's first token; the budget holds under a storm; a call's own fault on
the hedge ends the call; ``hedge=`` per call."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import EventRecorder

from llm import AllRoutesFailedError, BadRequestError, StreamInterruptedError, VLLMOpenAIProvider
from llm.events import AttemptEnded, AttemptStarted, CallEnded
from llm.factory import LLMFactory
from llm.testing import FakeVLLM

MESSAGES = [{"role": "user", "content": "hello there"}]
DELAY = 0.3  # max_delay: nothing is measured at first, so the hedge waits this long
SLACK = 1.5  # what a loaded 2-core machine may add to a call


class SilentServer:
    """Accepts connections, reads what comes, never answers; counts the connections and the
    ones the client closed (a socket server of its own: the fake cannot be this rude)."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.host, self.port = self._listener.getsockname()[:2]
        self.accepted = 0
        self.closed_by_client = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            with self._lock:
                self.accepted += 1
            thread = threading.Thread(target=self._hold, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _hold(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    with self._lock:
                        self.closed_by_client += 1
                    return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for thread in self._threads:
            thread.join(5)
        self._listener.close()


class Hung:
    """The hung instance of a test: the fake's hang or the silent server."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.fake: FakeVLLM | None = None
        self.silent: SilentServer | None = None
        if kind == "fake":
            self.fake = FakeVLLM("tiny", name="h", tokens=4).start()
            self.fake.hang()
        else:
            self.silent = SilentServer()

    @property
    def base_url(self) -> str:
        server = self.fake or self.silent
        assert server is not None
        return server.base_url

    def requests_open(self) -> int:
        """Calls the server still holds (the loser's cancellation closes them)."""
        if self.fake is not None:
            return self.fake.in_flight
        assert self.silent is not None
        return self.silent.accepted - self.silent.closed_by_client

    def stop(self) -> None:
        if self.fake is not None:
            self.fake.stop()
        if self.silent is not None:
            self.silent.stop()


@pytest.fixture
def healthy() -> Iterator[list[FakeVLLM]]:
    servers = [FakeVLLM("tiny", name=name, tokens=4, latency=0.01).start() for name in ("a", "b")]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(params=["fake", "silent"])
def hung(request: pytest.FixtureRequest) -> Iterator[Hung]:
    server = Hung(request.param)
    try:
        yield server
    finally:
        server.stop()


def make_provider(
    healthy: list[FakeVLLM], hung_url: str | None, *, hooks: Any = (), **hedge: Any
) -> VLLMOpenAIProvider:
    routes: dict[str, Any] = {}
    if hung_url is not None:
        routes["h"] = {"base_url": hung_url, "model": "tiny", "timeout": 30}
    for server in healthy:
        routes[server.name or "x"] = {"base_url": server.base_url, "model": "tiny", "timeout": 30}
    config = {
        "llm": {
            "routes": routes,
            "lb_policy": "round_robin",
            "params": {"max_tokens": 4, "deadline": 20},
            "retry": {"backoff_initial": 0.01, "backoff_max": 0.05},
            "hedge": {"enabled": True, "max_delay": DELAY, "min_delay": 0.05, **hedge},
        }
    }
    return LLMFactory.create_provider("vllm_openai", config=config, hooks=list(hooks))


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


CALLS = 6  # round robin over h, a, b: two calls start on the hung instance


def one_call(provider: VLLMOpenAIProvider, mode: str) -> tuple[str, str | None]:
    """(text, answering route) of one sync call made the way ``mode`` says."""
    if mode == "sync":
        result = provider.chat_completion(MESSAGES)
        return result.content or "", result.route
    events = list(provider.stream_events(MESSAGES))
    text = "".join(e.text for e in events if e.kind == "content")
    return text, events[-1].route


def calls(provider: VLLMOpenAIProvider, mode: str, n: int) -> list[tuple[str, str | None, float]]:
    """(text, answering route, seconds) of ``n`` calls in a row, made the way ``mode`` says
    (async ones on one event loop, whose sessions are closed at its end)."""
    if not mode.startswith("async"):
        made = []
        for _ in range(n):
            began = time.monotonic()
            text, route = one_call(provider, mode)
            made.append((text, route, time.monotonic() - began))
        return made

    async def go() -> list[tuple[str, str | None, float]]:
        made = []
        try:
            for _ in range(n):
                began = time.monotonic()
                if mode == "async":
                    result = await provider.achat_completion(MESSAGES)
                    text, route = result.content or "", result.route
                else:
                    events = [e async for e in provider.astream_events(MESSAGES)]
                    text = "".join(e.text for e in events if e.kind == "content")
                    route = events[-1].route
                made.append((text, route, time.monotonic() - began))
        finally:
            await provider.aclose()
        return made

    return asyncio.run(go())


@pytest.mark.parametrize("mode", ["sync", "sync-stream", "async", "async-stream"])
def test_a_hung_instance_costs_a_call_no_more_than_the_hedge_delay(
    healthy: list[FakeVLLM], hung: Hung, mode: str
) -> None:
    recorder = EventRecorder()
    provider = make_provider(healthy, hung.base_url, hooks=[recorder])
    try:
        durations = []
        reference = None
        for text, route, seconds in calls(provider, mode, CALLS):
            durations.append(seconds)
            assert route in ("a", "b")  # only a healthy instance's answer reaches the caller
            assert text
            reference = reference or text
            assert text == reference  # the winner's whole answer, not a mix of two
        assert max(durations) < DELAY + SLACK, durations
        stats = provider.stats()
        cancelled = stats["h"]["hedges"]["cancelled"]
        assert cancelled >= 1
        assert sum(s["hedges"]["won"] for s in stats.values()) == cancelled
        assert stats["h"]["failures"] <= 1  # lost races are no failure (one stall may be)
        # the losers' connections were closed: the server holds none of their calls
        assert wait_until(lambda: hung.requests_open() == 0), hung.requests_open()
        assert all(s["in_flight"] == 0 for s in stats.values())
        lost = [e for e in recorder.events if isinstance(e, AttemptEnded) and e.route == "h"]
        assert lost and all(e.outcome in ("hedge_lost", "stalled") for e in lost)
        hedges = [e for e in recorder.events if isinstance(e, AttemptStarted) and e.hedge]
        assert len(hedges) == cancelled
        ended = [e for e in recorder.events if isinstance(e, CallEnded)]
        assert len(ended) == CALLS and all(e.outcome == "ok" for e in ended)
        assert sum(e.hedge_won for e in ended) == cancelled
    finally:
        provider.close()


def test_nothing_is_hedged_after_a_streams_first_token(healthy: list[FakeVLLM]) -> None:
    stuck = FakeVLLM("tiny", name="s", tokens=8).start()
    stuck.hang_streams_after(3)  # the role chunk, then two tokens, then silence
    try:
        routes = {"s": {"base_url": stuck.base_url, "model": "tiny", "timeout": 1.0}}
        routes["a"] = {"base_url": healthy[0].base_url, "model": "tiny", "timeout": 1.0}
        config = {
            "llm": {
                "routes": routes,
                "lb_policy": "round_robin",
                "params": {"max_tokens": 8},
                # the first token comes at once; a hedge would come 0.5 s after the start
                "hedge": {"enabled": True, "max_delay": 0.5, "min_delay": 0.5},
            }
        }
        provider = LLMFactory.create_provider("vllm_openai", config=config)
        try:
            received = []
            began = time.monotonic()
            with pytest.raises(StreamInterruptedError):  # round robin's first pick: s
                for piece in provider.stream(MESSAGES):
                    received.append(piece)
            assert received  # it had begun: no second answer may be spliced in
            assert time.monotonic() - began >= 1.0  # it waited for s, not for a hedge
            assert all(s["hedges"]["started"] == 0 for s in provider.stats().values())
            assert provider.stats()["a"]["requests"] == 0
        finally:
            provider.close()
    finally:
        stuck.stop()


def test_no_hedge_when_answers_come_in_time(healthy: list[FakeVLLM]) -> None:
    provider = make_provider(healthy, None, max_delay=1.0)
    try:
        for _ in range(20):
            provider.chat(MESSAGES)
        stats = provider.stats()
        assert sum(s["requests"] for s in stats.values()) == 20  # no extra attempt
        assert all(s["hedges"]["started"] == 0 for s in stats.values())
    finally:
        provider.close()


def test_the_budget_holds_under_a_storm(healthy: list[FakeVLLM]) -> None:
    """Every call waits on a hung instance: only ``budget x calls + burst`` of them hedge;
    the others wait for their deadline (and fail)."""
    silent = SilentServer()
    try:
        routes = {"h": {"base_url": silent.base_url, "model": "tiny", "timeout": 30}}
        routes["a"] = {"base_url": healthy[0].base_url, "model": "tiny", "timeout": 30}
        config = {
            "llm": {
                "routes": routes,
                "lb_policy": "round_robin",
                "params": {"max_tokens": 4, "max_retries": 0},
                "health": {"stall_factor": 0},  # keep sending calls to h: a storm of hedges
                "hedge": {"enabled": True, "max_delay": 0.1, "budget": 0.1, "burst": 3},
            }
        }
        provider = LLMFactory.create_provider("vllm_openai", config=config)

        async def storm() -> list[Any]:
            made = [provider.achat(MESSAGES, deadline=1.0) for _ in range(40)]
            try:
                return await asyncio.gather(*made, return_exceptions=True)
            finally:
                await provider.aclose()

        try:
            outcomes = asyncio.run(storm())
            stats = provider.stats()
            hedges = sum(s["hedges"]["started"] for s in stats.values())
            assert 3 <= hedges <= 0.1 * 40 + 3
            failed = [o for o in outcomes if isinstance(o, BaseException)]
            assert all(isinstance(o, AllRoutesFailedError) for o in failed), failed[:3]
            assert len(failed) >= 40 // 2 - hedges  # the calls on h that could not hedge
        finally:
            provider.close()
    finally:
        silent.stop()


def test_the_callers_fault_on_a_hedge_ends_the_call(healthy: list[FakeVLLM]) -> None:
    silent = SilentServer()
    provider = make_provider(healthy[:1], silent.base_url)
    try:
        healthy[0].fail_next(1, 400, message="messages: bad shape")
        began = time.monotonic()
        with pytest.raises(BadRequestError, match="bad shape"):
            provider.chat(MESSAGES)  # h first (round robin), hedged to a, which says 400
        assert time.monotonic() - began < DELAY + SLACK
        assert wait_until(lambda: silent.accepted - silent.closed_by_client == 0)
        stats = provider.stats()
        assert stats["h"]["in_flight"] == 0 and stats["h"]["failures"] == 0
    finally:
        provider.close()
        silent.stop()


def test_hedge_per_call(healthy: list[FakeVLLM]) -> None:
    """Each provider's first call goes to h (round robin): it hedges only when it may."""
    silent = SilentServer()
    try:
        for enabled, asked, hedges in [(False, True, 1), (False, None, 0), (True, False, 0)]:
            provider = make_provider(healthy[:1], silent.base_url, enabled=enabled)
            try:
                if hedges:
                    began = time.monotonic()
                    assert provider.chat(MESSAGES, hedge=asked)
                    assert time.monotonic() - began < DELAY + SLACK
                else:
                    with pytest.raises(AllRoutesFailedError):  # waits for h until the deadline
                        provider.chat(MESSAGES, hedge=asked, deadline=0.6, max_retries=0)
                assert provider.stats()["a"]["hedges"]["started"] == hedges
            finally:
                provider.close()
    finally:
        silent.stop()
