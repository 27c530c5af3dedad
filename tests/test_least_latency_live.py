"""least_latency on real sockets: a fast and a slow instance, a fresh provider each run.

How this works
--------------
The issue's case: a 2 ms and a 60 ms instance, calls one after another. A fresh provider
pays its own setup (connection pools, a session, the first connect) on its first call, and
that used to be charged to whichever route took it: in 1 run of 5 the fast route's first
sample came out slower than 60 ms and it never got traffic again (59 calls of 60 went to the
slow one). Now a route's first three samples are a warm-up whose estimate is the least of
them, so each run gives the fast route everything after the warm-up: 3 + 14 of 20 calls.
Both pool orders, sync and async, 20 runs each.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import pytest

from llm.factory import LLMFactory
from llm.providers.vllm_openai import VLLMOpenAIProvider
from llm.routing.state import WARMUP_SAMPLES
from llm.testing import FakeVLLM

RUNS = 20
CALLS = 20
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeVLLM]]:
    fast = FakeVLLM("m", latency=0.002, name="fast").start()
    slow = FakeVLLM("m", latency=0.06, name="slow").start()
    try:
        yield {"fast": fast, "slow": slow}
    finally:
        fast.stop()
        slow.stop()


def fresh_provider(servers: dict[str, FakeVLLM], run: int) -> VLLMOpenAIProvider:
    order = ("fast", "slow") if run % 2 == 0 else ("slow", "fast")
    routes = {name: {"base_url": servers[name].base_url, "model": "m"} for name in order}
    config = {"llm": {"routes": routes, "lb_policy": "least_latency"}}
    provider = LLMFactory.create_provider("vllm_openai", config=config)
    assert isinstance(provider, VLLMOpenAIProvider)
    return provider


EXPECTED_FAST = CALLS - WARMUP_SAMPLES  # the slow route's warm-up, then the fast route only


def test_sync_the_fast_route_wins_in_every_run(servers: dict[str, FakeVLLM]) -> None:
    shares = []
    for run in range(RUNS):
        with fresh_provider(servers, run) as provider:
            picks = Counter(provider.chat_completion(MESSAGES).route for _ in range(CALLS))
        shares.append(picks["fast"])
    assert shares == [EXPECTED_FAST] * RUNS


def test_async_the_fast_route_wins_in_every_run(servers: dict[str, FakeVLLM]) -> None:
    async def one_run(run: int) -> int:
        provider = fresh_provider(servers, run)
        try:
            picks = Counter(
                [(await provider.achat_completion(MESSAGES)).route for _ in range(CALLS)]
            )
        finally:
            await provider.aclose()
        return picks["fast"]

    shares = [asyncio.run(one_run(run)) for run in range(RUNS)]
    assert shares == [EXPECTED_FAST] * RUNS
