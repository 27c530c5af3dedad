"""The limits of an attempt on the async engine's own aiohttp path, against real sockets.

``tests/test_limits.py`` covers the httpx path with a mock transport; here a small HTTP server
on 127.0.0.1 sends what a misbehaving instance would (too large a body, a compressed one that
inflates past the cap, bytes trickling in, a redirect), and an async provider with no
transport of its own (so: aiohttp directly) must refuse it and fail over to a healthy fake.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from llm import VLLMOpenAIProvider, parse_config
from llm.send.aiohttp_sender import AiohttpSender
from llm.testing import FakeVLLM

LIMIT = 4096
Script = Callable[[BaseHTTPRequestHandler], None]


class _Handler(BaseHTTPRequestHandler):
    script: Script

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).script(self)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def bad_server() -> Iterator[Callable[[Script], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(script: Script) -> str:
        handler = type("Handler", (_Handler,), {"script": staticmethod(script)})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def send(handler: BaseHTTPRequestHandler, body: bytes, **headers: str) -> None:
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


def first_attempt_on_bad(bad_url: str, **params: Any) -> Any:
    with FakeVLLM("m") as good:
        config = parse_config(
            {
                "llm": {
                    "routes": {
                        "bad": {"base_url": bad_url, "model": "m"},
                        "good": {"base_url": good.base_url, "model": "m"},
                    },
                    "params": {"timeout": 0.5, "max_response_bytes": LIMIT, **params},
                }
            },
            environ={},
        )

        async def call() -> Any:
            provider = VLLMOpenAIProvider(config)
            assert isinstance(provider._aengine.sender, AiohttpSender)  # aiohttp, not httpx
            try:
                return await provider.achat_completion([{"role": "user", "content": "hi"}])
            finally:
                await provider.aclose()

        result = asyncio.run(call())
    assert result.route == "good"
    assert [attempt.route for attempt in result.attempts] == ["bad", "good"]
    return result.attempts[0]


def test_a_declared_length_past_the_cap_is_refused(bad_server):
    url = bad_server(lambda h: send(h, b'{"x": "' + b"y" * (LIMIT * 2) + b'"}'))
    attempt = first_attempt_on_bad(url)
    assert attempt.outcome == "invalid_response"
    assert "larger than max_response_bytes" in attempt.error


def test_a_compressed_body_that_inflates_past_the_cap_is_refused(bad_server):
    inflated = json.dumps({"choices": [], "pad": "z" * (LIMIT * 50)}).encode()
    packed = gzip.compress(inflated)
    assert len(packed) < LIMIT < len(inflated)
    url = bad_server(lambda h: send(h, packed, content_encoding="gzip"))
    attempt = first_attempt_on_bad(url)
    assert "larger than max_response_bytes" in attempt.error


def test_a_trickling_answer_ends_at_the_attempt_timeout(bad_server):
    def trickle(handler: BaseHTTPRequestHandler) -> None:
        body = b'{"choices": [], "pad": "' + b"p" * 40 + b'"}'
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        for index in range(len(body)):  # a byte every 0.1 s: each read is quick, the whole is not
            handler.wfile.write(body[index : index + 1])
            handler.wfile.flush()
            time.sleep(0.1)

    began = time.monotonic()
    attempt = first_attempt_on_bad(bad_server(trickle))
    assert attempt.outcome == "timeout"
    assert time.monotonic() - began < 2.0  # the 0.5 s attempt, then the good route


def test_a_redirect_is_not_followed(bad_server):
    def redirect(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(307)
        handler.send_header("location", "http://user:pw@127.0.0.1:9/v1/chat/completions")
        handler.send_header("content-length", "0")
        handler.end_headers()

    attempt = first_attempt_on_bad(bad_server(redirect))
    assert attempt.status_code == 307
    assert "redirect to http://127.0.0.1:9/v1/chat/completions not followed" in attempt.error
    assert "pw" not in attempt.error
