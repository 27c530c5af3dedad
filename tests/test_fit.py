"""Context-window fit: the prompt estimate, vLLM's "too long" 400s, and where a call may go.

How this works
--------------
The pure parts (``call/size.py``, ``judge/context.py``, ``routing/fit.py`` through
``plan_call``) are driven without sockets; then fake vLLM servers with different
``--max-model-len`` show the three ways a window is learned (config, ``/v1/models``, a 400)
and that a call that fits nowhere fails before anything is sent.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import FakeClock, route_config

from llm.call.size import prompt_tokens
from llm.config import RetryConfig
from llm.errors import BadRequestError, ContextWindowError
from llm.factory import LLMFactory
from llm.judge.context import context_limit
from llm.providers.vllm_openai import VLLMOpenAIProvider
from llm.routing import Balancer
from llm.routing.plan import plan_call
from llm.testing import FakeVLLM

# byte for byte as vLLM 0.32 sent them (vllm-protocol-samples.txt)
MAX_TOKENS_400 = (
    "max_tokens=4096 cannot be greater than max_model_len=512. Please request fewer output "
    "tokens. (parameter=max_tokens, value=4096)"
)
PROMPT_400 = (
    "This model's maximum context length is 512 tokens. However, your prompt contains at least "
    "513 input tokens, which exceeds this limit even without any output tokens. Please reduce "
    "the length of the input prompt. (parameter=input_tokens, value=513)"
)


# -- the estimate and the server's words --------------------------------------------------------


def test_the_prompt_estimate_is_utf8_bytes_over_four_plus_the_template() -> None:
    assert prompt_tokens({"messages": [{"role": "user", "content": "a" * 400}]}) == 100 + 4 + 3
    assert prompt_tokens({"messages": [{"role": "user", "content": "é" * 200}]}) == 100 + 4 + 3
    parts = [{"type": "text", "text": "b" * 40}, {"type": "image_url", "image_url": {}}]
    assert prompt_tokens({"messages": [{"role": "user", "content": parts}]}) == 10 + 7
    calls = [{"function": {"name": "f" * 4, "arguments": "{" + "x" * 35 + "}"}}]
    tool_turn = [{"role": "assistant", "content": None, "tool_calls": calls}]
    assert prompt_tokens({"messages": tool_turn}) == 11 + 7
    assert prompt_tokens({"prompt": "c" * 41}) == 11
    assert prompt_tokens({"prompt": [1, 2, 3]}) == 3
    assert prompt_tokens(None) == 0


def test_vllms_two_too_long_messages_name_the_window_and_nothing_else_does() -> None:
    assert context_limit(MAX_TOKENS_400) == (512, None)
    assert context_limit(PROMPT_400) == (512, 513)
    assert context_limit("temperature must be non-negative, got -1.0.") is None
    assert context_limit(None) is None
    assert context_limit("maximum context length is 0 tokens") is None


# -- where a call may go ---------------------------------------------------------------------------


def balancer_with(**limits: int | None) -> Balancer:
    configs = [
        route_config(name, model="big" if name.startswith("huge") else "m", max_model_len=limit)
        for name, limit in limits.items()
    ]
    return Balancer(
        configs,
        clock=FakeClock(10.0),
        rng=random.Random(0),
        context_fallback="big" if any(n.startswith("huge") for n in limits) else None,
    )


def plan(balancer: Balancer, prompt: int, max_tokens: int, model: str = "m") -> Any:
    return plan_call(
        balancer,
        route=None,
        model=model,
        retry=RetryConfig(),
        deadline=10.0,
        tokens=max_tokens,
        prompt_tokens=prompt,
    )


def test_a_call_goes_only_to_routes_whose_window_holds_it() -> None:
    balancer = balancer_with(small=512, large=4096, unknown=None)
    for _ in range(20):
        route = plan(balancer, 1000, 100).next()
        assert route is not None and route.name in ("large", "unknown")
    short = {plan(balancer, 100, 100).next().name for _ in range(9)}
    assert short == {"small", "large", "unknown"}  # fits everywhere: nothing skipped


def test_a_call_that_fits_nowhere_fails_at_once_naming_the_estimate_and_the_windows() -> None:
    balancer = balancer_with(small=512, large=4096)
    with pytest.raises(ContextWindowError) as caught:
        plan(balancer, 4000, 200)
    error = caught.value
    assert error.prompt_tokens == 4000 and error.max_tokens == 200
    assert error.limits == {"small": 512, "large": 4096}
    text = str(error)
    assert "about 4000 prompt tokens" in text and "max_tokens 200" in text
    assert "small 512 (from config)" in text and "large 4096 (from config)" in text
    assert "no llm.context_fallback is configured" in text


def test_the_context_fallback_pool_takes_what_fits_no_route_of_the_pool() -> None:
    balancer = balancer_with(small=512, large=4096, huge=32768)
    route = plan(balancer, 10_000, 500).next()
    assert route is not None and route.name == "huge"
    with pytest.raises(ContextWindowError, match="nor the context_fallback 'big'"):
        plan(balancer, 40_000, 500)


def test_windows_are_learned_by_precedence_config_then_models_then_an_error() -> None:
    balancer = balancer_with(fixed=512, open=None)
    assert not balancer.learn_limit("fixed", 8192, "models")  # the config's word stands
    assert balancer.learn_limit("open", 1024, "error")
    assert balancer.learn_limit("open", 2048, "models")
    assert not balancer.learn_limit("open", 999, "error")  # /v1/models said otherwise
    stats = balancer.stats()
    assert (stats["open"]["max_model_len"], stats["open"]["max_model_len_source"]) == (
        2048,
        "models",
    )
    assert stats["fixed"]["max_model_len_source"] == "config"


# -- over real sockets ---------------------------------------------------------------------


@pytest.fixture
def small_and_large() -> Iterator[tuple[FakeVLLM, FakeVLLM]]:
    small = FakeVLLM("m", max_model_len=512).start()
    large = FakeVLLM("m", max_model_len=4096).start()
    try:
        yield small, large
    finally:
        small.stop()
        large.stop()


def provider_for(*servers: FakeVLLM, **llm: Any) -> VLLMOpenAIProvider:
    routes = {
        f"r{i}": {"base_url": server.base_url, "model": "m", "timeout": 5}
        for i, server in enumerate(servers)
    }
    provider = LLMFactory.create_provider("vllm_openai", config={"llm": {"routes": routes, **llm}})
    assert isinstance(provider, VLLMOpenAIProvider)
    return provider


LONG = [{"role": "user", "content": "word " * 600}]  # about 750 tokens: only the large fits


def test_windows_from_v1_models_keep_long_calls_off_the_small_instance(
    small_and_large: tuple[FakeVLLM, FakeVLLM],
) -> None:
    small, large = small_and_large
    provider = provider_for(small, large)
    try:
        health = provider.health()
        assert [health[r]["max_model_len"] for r in ("r0", "r1")] == [512, 4096]
        for _ in range(4):
            provider.chat(LONG, max_tokens=8)
        assert (small.request_count, large.request_count) == (0, 4)
        before = large.request_count
        with pytest.raises(ContextWindowError, match="r0 512 \\(from models\\)"):
            provider.chat([{"role": "user", "content": "word " * 4000}], max_tokens=8)
        assert large.request_count == before  # refused before anything was sent
    finally:
        provider.close()


def test_a_too_long_400_teaches_the_window_and_the_call_moves_on_unejected(
    small_and_large: tuple[FakeVLLM, FakeVLLM],
) -> None:
    small, large = small_and_large
    provider = provider_for(small, large)  # round robin: r0 (small) first
    try:
        result = provider.chat_completion(LONG, max_tokens=8)
        assert result.route == "r1"
        assert [a.route for a in result.attempts] == ["r0", "r1"]
        stats = provider.stats()["r0"]
        assert stats["state"] == "healthy" and stats["failures"] == 0
        assert (stats["max_model_len"], stats["max_model_len_source"]) == (512, "error")

        async def again() -> None:
            for _ in range(3):
                await provider.achat(LONG, max_tokens=8)
            await provider.aclose()

        asyncio.run(again())
        assert small.request_count == 1  # the one 400; never again
    finally:
        provider.close()


def test_a_too_long_400_with_nowhere_else_to_go_is_the_servers_own_error(
    small_and_large: tuple[FakeVLLM, FakeVLLM],
) -> None:
    small, _ = small_and_large
    provider = provider_for(small)
    try:
        with pytest.raises(BadRequestError, match="maximum context length is 512"):
            provider.chat(LONG, max_tokens=8)
        with pytest.raises(ContextWindowError, match="r0 512 \\(from error\\)"):
            provider.chat(LONG, max_tokens=8)  # now known: refused before sending
        assert small.request_count == 1
    finally:
        provider.close()


def test_a_pinned_call_refused_as_too_long_never_moves_to_the_context_fallback() -> None:
    balancer = balancer_with(small=None, huge=32768)
    pinned = plan_call(
        balancer, route="small", model="m", retry=RetryConfig(), deadline=10.0, tokens=100
    )
    route = pinned.next()
    assert route is not None and route.name == "small"
    started = pinned.start(route)
    pinned.finished(route, started)
    balancer.learn_limit("small", 512, "error")
    assert not pinned.refit(900)  # nowhere else to go: the server's 400 is the answer
    assert pinned.pool.routes == (route,)
    free = plan(balancer, 0, 100)
    first = free.next()
    assert first is not None and first.name == "small"
    free.start(first)
    free.finished(first, started)
    assert free.refit(900)  # not pinned: the context fallback may take it
    assert [r.name for r in free.pool.routes] == ["huge"]
