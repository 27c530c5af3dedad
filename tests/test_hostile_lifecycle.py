"""A provider's life: closing with calls in flight, calls after close, and forked children.

- ``close()`` / ``aclose()`` wait a bounded time for the calls in flight (sync calls in other
  threads included), then end the rest with ``ProviderClosedError``; no route is blamed, no
  connection is opened after it.
- A forked child (a pre-fork server, multiprocessing's ``fork``) never shares a connection
  with its parent: each reads its own answers, and the background checker runs in the child.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llm import VLLMOpenAIProvider, parse_config
from llm.errors import ProviderClosedError
from llm.testing import FakeVLLM

MARGIN = 1.0
MSG = [{"role": "user", "content": "hi"}]


def provider_for(*servers: FakeVLLM, **health: Any) -> VLLMOpenAIProvider:
    routes = {s.name: {"base_url": s.base_url, "model": "m"} for s in servers}
    config = {
        "llm": {
            "routes": routes,
            "params": {"timeout": 10, "max_retries": 1, "max_tokens": 8},
            "health": {"cooldown": 30, **health},
        }
    }
    return VLLMOpenAIProvider(parse_config(config, environ={}))


@pytest.fixture
def pair() -> Iterator[tuple[FakeVLLM, FakeVLLM]]:
    with FakeVLLM("m", name="a") as a, FakeVLLM("m", name="b") as b:
        yield a, b


def in_threads(count: int, work: Callable[[], Any]) -> tuple[list[Any], list[threading.Thread]]:
    """Start ``count`` threads running ``work``; their results (or exceptions) land in the list."""
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(work())
        except BaseException as exc:  # noqa: BLE001 - the test looks at what each call got
            results.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return results, threads


def assert_no_route_blamed(provider: VLLMOpenAIProvider) -> None:
    for name, stats in provider.stats().items():
        assert stats["state"] == "healthy" and stats["failures"] == 0, name
        assert stats["in_flight"] == 0, name


# -- closing ------------------------------------------------------------------------------


def test_close_waits_for_the_sync_calls_in_flight(pair: tuple[FakeVLLM, FakeVLLM]) -> None:
    for server in pair:
        server.set_latency(0.5)
    provider = provider_for(*pair)
    results, threads = in_threads(4, lambda: provider.chat(MSG))
    time.sleep(0.2)
    started = time.monotonic()
    provider.close(timeout=5)
    took = time.monotonic() - started
    for thread in threads:
        thread.join(5)
    assert all(isinstance(result, str) for result in results), results
    assert 0.1 < took < 0.5 + MARGIN
    assert_no_route_blamed(provider)


def test_close_ends_what_is_still_running_after_its_timeout_and_blames_no_route(
    pair: tuple[FakeVLLM, FakeVLLM],
) -> None:
    for server in pair:
        server.set_latency(3.0)
    provider = provider_for(*pair)
    results, threads = in_threads(4, lambda: provider.chat(MSG))
    time.sleep(0.2)
    started = time.monotonic()
    provider.close(timeout=0.2)
    took = time.monotonic() - started
    for thread in threads:
        thread.join(5)
    assert took < 0.2 + MARGIN
    assert len(results) == 4
    assert all(isinstance(result, ProviderClosedError) for result in results), results
    assert_no_route_blamed(provider)


def test_aclose_waits_for_async_calls_and_ends_the_rest(pair: tuple[FakeVLLM, FakeVLLM]) -> None:
    async def scenario(latency: float, timeout: float) -> tuple[list[Any], float]:
        for server in pair:
            server.set_latency(latency)
        provider = provider_for(*pair)
        calls = [asyncio.ensure_future(provider.achat(MSG)) for _ in range(4)]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await provider.aclose(timeout=timeout)
        took = time.monotonic() - started
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert_no_route_blamed(provider)
        return list(results), took

    finished, waited = asyncio.run(scenario(0.5, 5))
    assert all(isinstance(result, str) for result in finished), finished
    assert 0.1 < waited < 0.5 + MARGIN
    ended, took = asyncio.run(scenario(3.0, 0.2))
    assert all(isinstance(result, ProviderClosedError) for result in ended), ended
    assert took < 0.2 + MARGIN


def test_a_sync_stream_in_another_thread_outlives_an_aclose_that_waits_for_it(
    pair: tuple[FakeVLLM, FakeVLLM],
) -> None:
    for server in pair:
        server.set_token_delay(0.05)
    provider = provider_for(*pair)
    results, threads = in_threads(1, lambda: "".join(provider.stream(MSG, max_tokens=12)))

    async def loop_work() -> str:
        answer = await provider.achat(MSG)
        await provider.aclose(timeout=5)  # at the end of the loop, as the README advises
        return answer

    time.sleep(0.1)
    assert isinstance(asyncio.run(loop_work()), str)
    threads[0].join(5)
    assert len(results) == 1 and isinstance(results[0], str) and results[0], results
    assert_no_route_blamed(provider)


def test_every_call_after_close_raises_at_once_and_opens_no_connection(
    pair: tuple[FakeVLLM, FakeVLLM],
) -> None:
    provider = provider_for(*pair)
    provider.chat(MSG)
    provider.close()
    accepted = sum(server.connections_accepted for server in pair)
    calls: list[Callable[[], Any]] = [
        lambda: provider.chat(MSG),
        lambda: list(provider.stream(MSG)),
        lambda: provider.complete("once"),
        provider.health_checks,
        provider.is_available,
        provider.list_models,
    ]
    for call in calls:
        with pytest.raises(ProviderClosedError):
            call()

    async def async_calls() -> None:
        for coroutine in (provider.achat(MSG), provider.ahealth_checks(), provider.ais_available()):
            with pytest.raises(ProviderClosedError):
                await coroutine
        with pytest.raises(ProviderClosedError):
            [piece async for piece in provider.astream(MSG)]

    asyncio.run(async_calls())
    assert sum(server.connections_accepted for server in pair) == accepted
    assert provider._engine.sender._pools == {}  # type: ignore[attr-defined]
    assert provider._aengine.sender._sessions == {}  # type: ignore[attr-defined]
    assert_no_route_blamed(provider)


# -- fork ---------------------------------------------------------------------------------

pytestmark_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _wait_child(pid: int, timeout: float = 20.0) -> int:
    """The child's exit status, waited for a bounded time (killed by its PID after)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} did not end within {timeout} s")


def _fork_call(work: Callable[[], str]) -> tuple[int, int]:
    """Fork; the child runs ``work`` and writes its result to a pipe. (pid, read end)."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read_end)
            os.write(write_end, work().encode())
        except BaseException as exc:  # noqa: BLE001 - the child reports and exits
            os.write(write_end, f"ERROR {exc!r}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    return pid, read_end


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode()


@pytestmark_fork
@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_forked_child_and_its_parent_each_read_their_own_answers(api: str) -> None:
    """The parent's async calls run on a loop of their own thread (its session open while
    the main thread forks); the child runs its own loop."""
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()
    with FakeVLLM("m", name="a", latency=0.05) as server:
        provider = provider_for(server)
        prompts = [f"round {number}: {who}" for number in range(5) for who in ("parent", "child")]
        expected = {p: provider.chat([{"role": "user", "content": p}]) for p in prompts}
        assert len(set(expected.values())) == len(prompts)  # every prompt its own answer

        def ask_in_parent(prompt: str) -> str:
            messages = [{"role": "user", "content": prompt}]
            if api == "sync":
                return provider.chat(messages)
            future = asyncio.run_coroutine_threadsafe(provider.achat(messages), loop)
            return future.result(10)

        def ask_in_child(prompt: str) -> str:
            messages = [{"role": "user", "content": prompt}]
            if api == "sync":
                return provider.chat(messages)
            return asyncio.run(provider.achat(messages))

        mixed = []
        try:
            for number in range(5):
                ask_in_parent(f"round {number}: warm")  # a keep-alive connection in the pool
                pid, read_end = _fork_call(lambda n=number: ask_in_child(f"round {n}: child"))
                parent_answer = ask_in_parent(f"round {number}: parent")
                child_answer = _read_all(read_end)
                assert _wait_child(pid) == 0, child_answer
                if parent_answer != expected[f"round {number}: parent"]:
                    mixed.append(("parent", number))
                if child_answer != expected[f"round {number}: child"]:
                    mixed.append(("child", number))
        finally:
            asyncio.run_coroutine_threadsafe(provider.aclose(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            loop_thread.join(5)
            loop.close()
    assert mixed == []


@pytestmark_fork
def test_a_forked_child_starts_with_fresh_pools_and_a_running_checker() -> None:
    with FakeVLLM("m", name="a") as server:
        provider = provider_for(server, check_interval=0.05)
        provider.chat(MSG)
        assert provider._engine.sender._pools  # type: ignore[attr-defined]

        def inspect() -> str:
            pools = len(provider._engine.sender._pools)  # type: ignore[attr-defined]
            in_flight = sum(s["in_flight"] for s in provider.stats().values())
            time.sleep(0.2)
            checker = provider._checker
            alive = checker is not None and checker._thread.is_alive()
            return f"{pools} {in_flight} {alive}"

        pid, read_end = _fork_call(inspect)
        report = _read_all(read_end)
        assert _wait_child(pid) == 0, report
        provider.close()
    assert report == "0 0 True"


@pytestmark_fork
def test_a_forked_child_polls_the_load_of_its_routes_with_a_thread_of_its_own() -> None:
    with FakeVLLM("m", name="a") as server:
        config = {
            "llm": {
                "routes": {"a": {"base_url": server.base_url, "model": "m"}},
                "lb_policy": "least_load",
                "load": {"poll_interval": 0.05},
            }
        }
        provider = VLLMOpenAIProvider(parse_config(config, environ={}))
        provider.chat(MSG)
        parent_poller = provider._poller

        def inspect() -> str:
            poller = provider._poller
            alive = poller is not None and poller._thread.is_alive()
            time.sleep(0.5)  # the parent's reports are old now; the child's own are fresh
            age = provider.stats()["a"]["load"]["report_age_s"]
            return f"{poller is not parent_poller} {alive} {age is not None and age < 0.3}"

        pid, read_end = _fork_call(inspect)
        report = _read_all(read_end)
        assert _wait_child(pid) == 0, report
        provider.close()
    assert report == "True True True"
