"""Compressed answers are counted as they inflate: a few hundred bytes cannot cost hundreds of MiB.

No ``Accept-Encoding`` is sent, but a proxy may compress anyway. A raw server answers 200 with
``Content-Encoding: gzip`` or ``gzip, gzip`` and a body that inflates to 512 MiB of spaces
(a few hundred bytes to a few hundred KiB on the wire). The call must refuse it at the size cap
and fail over, and the Python memory it holds at its peak (``tracemalloc``) must stay near the
cap, sync, async and streamed alike. A compressed answer that is good is still read.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from raw_server import RawServer, answer, chat_answer

from llm import VLLMOpenAIProvider, parse_config
from llm.testing import FakeVLLM

MSG = [{"role": "user", "content": "hi"}]
CAP = 1024 * 1024
INFLATED = 512 * 1024 * 1024


def _gzip_stream(blocks: Iterator[bytes]) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    out = [compressor.compress(block) for block in blocks]
    out.append(compressor.flush())
    return b"".join(out)


def _bomb(layers: int) -> bytes:
    block = b" " * (1024 * 1024)
    data = _gzip_stream(block for _ in range(INFLATED // len(block)))
    for _ in range(layers - 1):
        data = gzip.compress(data, 9)
    return data


BOMBS = {"gzip": _bomb(1), "gzip, gzip": _bomb(2)}


@pytest.fixture
def good() -> Iterator[FakeVLLM]:
    with FakeVLLM("m", name="good") as server:
        yield server


def provider_for(bad: RawServer, good: FakeVLLM) -> VLLMOpenAIProvider:
    config = {
        "llm": {
            "routes": {
                "bad": {"base_url": bad.base_url, "model": "m"},
                "good": {"base_url": good.base_url, "model": "m"},
            },
            "params": {"timeout": 20, "max_retries": 1, "max_response_bytes": CAP},
        }
    }
    return VLLMOpenAIProvider(parse_config(config, environ={}))


def call(provider: VLLMOpenAIProvider, kind: str) -> Any:
    if kind == "sync":
        return provider.chat_completion(MSG).attempts
    if kind == "stream":
        return list(provider.stream_events(MSG))[-1].attempts

    async def run() -> Any:
        try:
            if kind == "async":
                return (await provider.achat_completion(MSG)).attempts
            return [event async for event in provider.astream_events(MSG)][-1].attempts
        finally:
            await provider.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize("kind", ["sync", "async", "stream", "astream"])
@pytest.mark.parametrize("encoding", BOMBS)
def test_a_compression_bomb_is_refused_at_the_cap_without_inflating_it(
    good: FakeVLLM, encoding: str, kind: str
) -> None:
    content_type = "text/event-stream" if kind.endswith("stream") else "application/json"
    script = answer(BOMBS[encoding], content_type=content_type,
                    extra=[("content-encoding", encoding)])
    with RawServer(script) as bad:
        provider = provider_for(bad, good)
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            attempts = call(provider, kind)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            provider.close()
    # refused (a stream whose layers the async client does not undo never sees an event)
    assert attempts[0].route == "bad" and attempts[0].outcome in ("invalid_response", "stream_cut")
    assert attempts[-1].route == "good" and attempts[-1].outcome == "ok"
    assert peak < 24 * CAP, f"{peak / 2**20:.0f} MiB held at the peak"


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_good_compressed_answer_is_read(good: FakeVLLM, encoding: str, kind: str) -> None:
    body = json.dumps(chat_answer("compressed")).encode()
    data = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    script = answer(data, extra=[("content-encoding", encoding)])
    with RawServer(script) as bad:
        provider = provider_for(bad, good)
        try:
            attempts = call(provider, kind)
        finally:
            provider.close()
    assert [a.route for a in attempts] == ["bad"] and attempts[0].outcome == "ok"
