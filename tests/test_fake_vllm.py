"""Tests for llm.testing.FakeVLLM (the fake vLLM 0.32 server).

How this works: each test starts its own FakeVLLM on an ephemeral port (a
fixture), talks to it with httpx (every call has a timeout) or a raw socket, and
checks the bytes against the real-vLLM samples embedded below.
"""

from __future__ import annotations

import asyncio
import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm.testing import FakeVLLM, RecordedRequest, start_fleet

T = httpx.Timeout(5.0)

# Verbatim bodies from a real vLLM 0.32 server (see /work/shared/vllm-protocol-samples.txt).
SAMPLE_CHAT = (
    '{"id":"chatcmpl-8f45fb20bdce336f","object":"chat.completion","created":1795284739,'
    '"model":"tiny","choices":[{"index":0,"message":{"role":"assistant","content":'
    '"ercdguvlwoqxfvjrooo mdpzot","refusal":null,"annotations":null,"audio":null,'
    '"function_call":null,"reasoning":null},"logprobs":null,"finish_reason":"length",'
    '"stop_reason":null,"token_ids":null,"routed_experts":null}],"service_tier":null,'
    '"system_fingerprint":"vllm-0.32.0-d194b792","usage":{"prompt_tokens":16,'
    '"total_tokens":24,"completion_tokens":8,"prompt_tokens_details":null,'
    '"completion_tokens_details":null},"prompt_logprobs":null,"prompt_token_ids":null,'
    '"prompt_text":null,"kv_transfer_params":null,"ec_transfer_params":null,"metrics":null}'
)
SAMPLE_COMPLETION = (
    '{"id":"cmpl-8d78e7ccff244eae","object":"text_completion","created":1795284739,'
    '"model":"tiny","choices":[{"index":0,"text":"tr\\fsjnt eob lu jzbg","logprobs":null,'
    '"finish_reason":"length","stop_reason":null,"token_ids":null,"prompt_logprobs":null,'
    '"prompt_token_ids":null,"routed_experts":null}],"service_tier":null,'
    '"system_fingerprint":"vllm-0.32.0-d194b792","usage":{"prompt_tokens":3,"total_tokens":11,'
    '"completion_tokens":8,"prompt_tokens_details":null,"completion_tokens_details":null},'
    '"kv_transfer_params":null,"ec_transfer_params":null,"metrics":null}'
)
SAMPLE_ROLE_CHUNK = (
    '{"id":"chatcmpl-84af6e89664c9ee3","object":"chat.completion.chunk","created":1795284739,'
    '"model":"tiny","choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    '"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}'
)
SAMPLE_MODELS = (
    '{"object":"list","data":[{"id":"tiny","object":"model","created":1795284739,'
    '"owned_by":"vllm","root":"<model-dir>","parent":null,"max_model_len":512,"permission":'
    '[{"id":"modelperm-bae8094353a076b1","object":"model_permission","created":1795284739,'
    '"allow_create_engine":false,"allow_sampling":true,"allow_logprobs":true,'
    '"allow_search_indices":false,"allow_view":true,"allow_fine_tuning":false,'
    '"organization":"*","group":null,"is_blocking":false}]}]}'
)

HELLO = [{"role": "user", "content": "hello world"}]


def keys_deep(obj: Any) -> Any:
    """Structure of a JSON value: dict -> list of (key, structure), list -> structures."""
    if isinstance(obj, dict):
        return [(k, keys_deep(v)) for k, v in obj.items()]
    if isinstance(obj, list):
        return [keys_deep(v) for v in obj]
    return None


def sse_events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    out = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        assert "\n" not in block
        out.append(block[len("data: ") :])
    return out


@pytest.fixture
def srv() -> Iterator[FakeVLLM]:
    with FakeVLLM() as s:
        yield s


@pytest.fixture
def client(srv: FakeVLLM) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=T) as c:
        yield c


def chat(c: httpx.Client, **body: Any) -> httpx.Response:
    body.setdefault("model", "tiny")
    body.setdefault("messages", HELLO)
    return c.post("/v1/chat/completions", json=body)


# --------------------------------------------------------------------------- basic endpoints


def test_health_version_models(client: httpx.Client) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == "0"
    assert r.headers["server"] == "uvicorn"
    assert "date" in r.headers
    assert "content-type" not in r.headers

    r = client.get("/version")
    assert r.status_code == 200
    assert r.content == b'{"version":"0.32.0"}'
    assert r.headers["content-type"] == "application/json"

    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert keys_deep(body) == keys_deep(json.loads(SAMPLE_MODELS))
    assert body["data"][0]["id"] == "tiny"
    assert body["data"][0]["max_model_len"] == 512
    assert r.content == json.dumps(body, separators=(",", ":")).encode()


def test_nonstream_chat_matches_sample_shape(client: httpx.Client) -> None:
    r = chat(client, max_tokens=8, temperature=0)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert int(r.headers["content-length"]) == len(r.content)
    body = r.json()
    sample = json.loads(SAMPLE_CHAT)
    assert list(body) == list(sample)
    assert keys_deep(body) == keys_deep(sample)
    assert r.content == json.dumps(body, separators=(",", ":")).encode()  # compact
    assert body["id"].startswith("chatcmpl-") and len(body["id"]) == len(sample["id"])
    assert body["usage"] == {
        "prompt_tokens": 16,
        "total_tokens": 24,
        "completion_tokens": 8,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    content = choice["message"]["content"]
    assert content and content == content.lower()
    # deterministic for the same prompt
    assert chat(client, max_tokens=8).json()["choices"][0]["message"]["content"] == content


def test_finish_reason_stop_and_token_caps(client: httpx.Client) -> None:
    body = chat(client).json()  # no max_tokens: the server's `tokens` (8) applies
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 8
    body = chat(client, max_tokens=100).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    body = chat(client, max_completion_tokens=3).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    body = chat(client, n=2, max_tokens=2).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["completion_tokens"] == 4


def test_completions_nonstream_and_stream(client: httpx.Client) -> None:
    req = {"model": "tiny", "prompt": "hello world", "max_tokens": 8, "temperature": 0}
    r = client.post("/v1/completions", json=req)
    body = r.json()
    assert keys_deep(body) == keys_deep(json.loads(SAMPLE_COMPLETION))
    assert body["usage"]["prompt_tokens"] == 3
    text = body["choices"][0]["text"]

    r = client.post(
        "/v1/completions",
        json={**req, "stream": True, "stream_options": {"include_usage": True}},
    )
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == text
    assert list(chunks[0]["choices"][0]) == [
        "index",
        "text",
        "logprobs",
        "finish_reason",
        "stop_reason",
        "prompt_token_ids",
        "token_ids",
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "total_tokens": 11, "completion_tokens": 8}


# --------------------------------------------------------------------------- streaming


def test_stream_with_include_usage(client: httpx.Client) -> None:
    nonstream = chat(client, max_tokens=8).json()
    r = chat(client, max_tokens=8, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert r.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in r.headers
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert keys_deep(chunks[0]) == keys_deep(json.loads(SAMPLE_ROLE_CHUNK))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    token_chunks = chunks[1:-1]
    assert len(token_chunks) == 8
    assert list(token_chunks[0]["choices"][0]) == [
        "index",
        "delta",
        "logprobs",
        "finish_reason",
        "token_ids",
    ]
    last = token_chunks[-1]["choices"][0]
    assert list(last) == ["index", "delta", "logprobs", "finish_reason", "stop_reason", "token_ids"]
    assert last["finish_reason"] == "length"
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 16, "total_tokens": 24, "completion_tokens": 8}
    assert usage["system_fingerprint"] == "vllm-0.32.0-d194b792"
    joined = "".join(c["choices"][0]["delta"]["content"] for c in token_chunks)
    assert joined == nonstream["choices"][0]["message"]["content"]
    assert len({c["id"] for c in chunks}) == 1


def test_stream_without_include_usage(client: httpx.Client) -> None:
    r = chat(client, max_tokens=3, stream=True)
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 4  # role + 3 tokens
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)
    assert chunks[-1]["system_fingerprint"] == "vllm-0.32.0-d194b792"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_stream_raw_framing() -> None:
    """Byte-level: each event is its own HTTP chunk, LF-only SSE, then the terminator."""
    with FakeVLLM(tokens=2) as s:
        body = json.dumps({"messages": HELLO, "stream": True}).encode()
        req = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
        )
        raw = _raw_exchange(s.port, req)
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    names = [ln.split(b":")[0] for ln in lines[1:]]
    assert names == [
        b"date",
        b"server",
        b"content-type",
        b"vary",
        b"transfer-encoding",
        b"connection",
    ]
    assert rest.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    pos, events = 0, []
    while True:
        eol = rest.index(b"\r\n", pos)
        size = int(rest[pos:eol], 16)
        if size == 0:
            break
        events.append(rest[eol + 2 : eol + 2 + size])
        pos = eol + 2 + size + 2
    assert len(events) == 4  # role, 2 tokens, [DONE]
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)


def test_stream_token_delay_and_latency() -> None:
    with FakeVLLM(tokens=4, latency=0.25, token_delay=0.05) as s, httpx.Client(timeout=T) as c:
        t0 = time.monotonic()
        with c.stream(
            "POST", s.base_url + "/chat/completions", json={"messages": HELLO, "stream": True}
        ) as r:
            t_headers = time.monotonic() - t0
            arrivals = []
            for line in r.iter_lines():
                if line:
                    arrivals.append(time.monotonic() - t0)
        assert t_headers < 0.2  # headers go out before the latency
        assert arrivals[0] >= 0.24  # first event after latency
        assert arrivals[-1] - arrivals[0] >= 0.14  # 3 gaps of 0.05 between tokens
        t0 = time.monotonic()
        r2 = c.post(s.base_url + "/chat/completions", json={"messages": HELLO})
        assert r2.status_code == 200 and time.monotonic() - t0 >= 0.24


# --------------------------------------------------------------------------- validation errors


def _err(c: httpx.Client, content: bytes, ctype: str = "application/json") -> httpx.Response:
    return c.post("/v1/chat/completions", content=content, headers={"content-type": ctype})


def test_validation_errors_match_samples(client: httpx.Client) -> None:
    cases: list[tuple[bytes, int, str]] = [
        (
            b'{"model":"no-such-model","messages":[{"role":"user","content":"hello"}],"max_tokens":8}',
            404,
            '{"error":{"message":"The model `no-such-model` does not exist. Valid aliases: tiny.",'
            '"type":"NotFoundError","param":"model","code":404}}',
        ),
        (
            b'{"model": "tiny", "messages": [ {"role": "user", ',
            400,
            "{\"error\":{\"message\":\"1 validation error:\\n  {'type': 'json_invalid', 'loc': "
            "'body.49', 'msg': 'JSON decode error', 'input': '<dict of 0 items>', 'ctx': "
            "{'error': 'Expecting property name enclosed in double quotes'}}\",\"type\":"
            '"Bad Request","param":"body.49","code":400}}',
        ),
        (
            b'{"model":"tiny","max_tokens":8}',
            400,
            "{\"error\":{\"message\":\"1 validation error:\\n  {'type': 'missing', 'loc': "
            "'body.messages', 'msg': 'Field required', 'input': '<dict of 2 items>'}\","
            '"type":"Bad Request","param":"body.messages","code":400}}',
        ),
        (
            b'{"model":"tiny","messages":[],"max_tokens":2}',
            400,
            '{"error":{"message":"Cannot apply chat template to an empty conversation. Provide at '
            'least one message.","type":"BadRequestError","param":null,"code":400}}',
        ),
        (
            b'{"model":"tiny","messages":[{"role":"user","content":"hello"}],"max_tokens":4096,'
            b'"stream":true}',
            400,
            '{"error":{"message":"max_tokens=4096 cannot be greater than max_model_len=512. Please '
            'request fewer output tokens. (parameter=max_tokens, value=4096)","type":'
            '"BadRequestError","param":"max_tokens","code":400}}',
        ),
        (
            b'{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":2,'
            b'"temperature":-1}',
            400,
            '{"error":{"message":"temperature must be non-negative, got -1.0. '
            '(parameter=temperature, value=-1.0)","type":"BadRequestError","param":"temperature",'
            '"code":400}}',
        ),
        (
            json.dumps(
                {"model": "tiny", "messages": [{"role": "user", "content": "hello world " * 400}]}
            ).encode(),
            400,
            '{"error":{"message":"This model\'s maximum context length is 512 tokens. '
            "However, your prompt contains at least 513 input tokens, which exceeds this "
            "limit even without any "
            "output tokens. Please reduce the length of the input prompt. (parameter=input_tokens, "
            'value=513)","type":"BadRequestError","param":"input_tokens","code":400}}',
        ),
    ]
    for content, status, expected in cases:
        r = _err(client, content)
        assert r.status_code == status, content
        assert r.text == expected
        assert r.headers["content-type"] == "application/json"

    r = _err(client, b"{}", "text/plain")
    assert r.status_code == 400
    assert r.text == (
        '{"error":{"message":"1 validation error:\\n  Unsupported Media Type: Only '
        '\'application/json\' is allowed","type":"Bad Request","param":null,"code":400}}'
    )
    r = client.get("/v1/nonexistent")
    assert (r.status_code, r.text) == (404, '{"detail":"Not Found"}')
    r = client.get("/v1/chat/completions")
    assert (r.status_code, r.text) == (405, '{"detail":"Method Not Allowed"}')
    r = client.post("/health")
    assert r.status_code == 405


def test_flat_error_style() -> None:
    with FakeVLLM(error_style="flat") as s, httpx.Client(base_url=s.url, timeout=T) as c:
        r = chat(c, model="nope")
        assert r.status_code == 404
        assert r.json() == {
            "object": "error",
            "message": "The model `nope` does not exist. Valid aliases: tiny.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
        assert list(r.json()) == ["object", "message", "type", "param", "code"]
        s.fail_next(1, 503)
        assert chat(c).json()["object"] == "error"


def test_api_key() -> None:
    with FakeVLLM(api_key="sekret") as s, httpx.Client(base_url=s.url, timeout=T) as c:
        r = chat(c)
        assert (r.status_code, r.text) == (401, '{"error":"Unauthorized"}')
        assert c.get("/v1/models").status_code == 401
        r = chat(c, max_tokens=2)
        assert r.status_code == 401
        ok = c.post(
            "/v1/chat/completions",
            json={"messages": HELLO},
            headers={"authorization": "Bearer sekret"},
        )
        assert ok.status_code == 200
        assert c.get("/health").status_code == 200  # not under /v1


# --------------------------------------------------------------------------- faults


def test_fail_next_then_success(srv: FakeVLLM, client: httpx.Client) -> None:
    srv.fail_next(2)
    r1, r2, r3 = chat(client), chat(client), chat(client)
    assert [r1.status_code, r2.status_code, r3.status_code] == [503, 503, 200]
    assert r1.json() == {
        "error": {
            "message": "Service temporarily unavailable (fake)",
            "type": "ServiceUnavailableError",
            "param": None,
            "code": 503,
        }
    }
    assert "retry-after" not in r1.headers
    assert srv.request_count == 3

    srv.fail_next(1, 429, message="slow down", retry_after=2)
    r = chat(client, stream=True)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2"
    assert r.json()["error"] == {
        "message": "slow down",
        "type": "RateLimitError",
        "param": None,
        "code": 429,
    }
    assert chat(client).status_code == 200
    # non-/v1-POST requests are not affected and not counted
    srv.fail_next(1)
    assert client.get("/v1/models").status_code == 200
    assert chat(client).status_code == 503
    assert srv.request_count == 6


def test_fail_fraction_is_seeded() -> None:
    def pattern(seed: int) -> list[int]:
        with FakeVLLM(seed=seed) as s, httpx.Client(base_url=s.url, timeout=T) as c:
            s.fail_fraction(0.5, 500)
            return [chat(c).status_code for _ in range(20)]

    a, b = pattern(7), pattern(7)
    assert a == b
    assert set(a) == {200, 500}


def test_cut_streams_after(srv: FakeVLLM, client: httpx.Client) -> None:
    srv.cut_streams_after(2)
    got: list[str] = []
    with (
        pytest.raises(httpx.TransportError),
        client.stream(
            "POST", "/v1/chat/completions", json={"messages": HELLO, "stream": True}
        ) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if line:
                got.append(line)
    assert len(got) == 2
    assert json.loads(got[0][6:])["choices"][0]["delta"]["role"] == "assistant"

    srv.cut_streams_after(0)
    with (
        pytest.raises(httpx.TransportError),
        client.stream(
            "POST", "/v1/chat/completions", json={"messages": HELLO, "stream": True}
        ) as r,
    ):
        assert r.status_code == 200
        r.read()
    srv.reset()
    assert chat(client, stream=True).text.endswith("data: [DONE]\n\n")


def test_hang_streams_after(srv: FakeVLLM) -> None:
    srv.hang_streams_after(2)
    got: list[str] = []
    with (
        httpx.Client(base_url=srv.url, timeout=httpx.Timeout(5.0, read=0.3)) as c,
        pytest.raises(httpx.ReadTimeout),
        c.stream("POST", "/v1/chat/completions", json={"messages": HELLO, "stream": True}) as r,
    ):
        for line in r.iter_lines():
            if line:
                got.append(line)
    assert len(got) == 2


def test_hang_then_read_timeout_and_health_still_ok(srv: FakeVLLM) -> None:
    srv.hang()
    with httpx.Client(base_url=srv.url, timeout=httpx.Timeout(5.0, read=0.3)) as c:
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            chat(c)
        assert time.monotonic() - t0 < 2.0
        assert c.get("/health").status_code == 200
        srv.hang(False)
        assert chat(c).status_code == 200


def test_stop_is_bounded_with_hanging_requests() -> None:
    s = FakeVLLM().start()
    s.hang()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            with httpx.Client(timeout=5.0) as c:
                c.post(s.base_url + "/chat/completions", json={"messages": HELLO})
        except httpx.HTTPError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 3
    while s.in_flight < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.in_flight == 3
    t0 = time.monotonic()
    s.stop()
    assert time.monotonic() - t0 < 2.0
    for t in threads:
        t.join(5)
    assert len(errors) == 3  # the clients saw the connection drop
    assert not [t for t in threading.enumerate() if t.name.startswith("fake-vllm")]
    s.stop()  # idempotent


def test_down_and_up_same_port(srv: FakeVLLM, client: httpx.Client) -> None:
    assert chat(client).status_code == 200
    port = srv.port
    srv.down()
    with pytest.raises(httpx.ConnectError):
        client.get("/health")
    with pytest.raises(httpx.ConnectError), httpx.Client(timeout=T) as fresh:
        fresh.get(srv.url + "/health")
    srv.up()
    assert srv.port == port
    assert client.get("/health").status_code == 200
    assert chat(client).status_code == 200


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("malformed_json", "json"),
        ("truncated", "transport"),
        ("html", "html"),
        ("empty", "empty"),
        ("wrong_content_type", "text"),
    ],
)
def test_respond_garbage(srv: FakeVLLM, client: httpx.Client, kind: str, check: str) -> None:
    srv.respond_garbage(kind)
    if check == "transport":
        with pytest.raises(httpx.TransportError):
            chat(client)
    else:
        r = chat(client)
        if check == "json":
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/json"
            with pytest.raises(json.JSONDecodeError):
                json.loads(r.text)
        elif check == "html":
            assert r.status_code == 502
            assert r.headers["content-type"].startswith("text/html")
            assert "502 Bad Gateway" in r.text
        elif check == "empty":
            assert (r.status_code, r.content) == (200, b"")
        else:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain")
            assert r.text == "hello"
    srv.respond_garbage(None)
    assert chat(client).status_code == 200
    with pytest.raises(ValueError):
        srv.respond_garbage("nonsense")


# --------------------------------------------------------------------------- features


def test_tool_calls_nonstream_and_stream(client: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    body = chat(client, tools=tools).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    msg = choice["message"]
    assert msg["content"] is None
    (call,) = msg["tool_calls"]
    assert call["id"].startswith("chatcmpl-tool-")
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}

    r = chat(client, tools=tools, stream=True)
    chunks = [json.loads(e) for e in sse_events(r.text)[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks[1:]]
    first = deltas[0]["tool_calls"][0]
    assert first["index"] == 0 and first["type"] == "function"
    assert first["function"] == {"name": "get_weather"}  # as vLLM's hermes parser sends it
    frags = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:-1]]
    assert 2 <= len(frags) <= 3
    assert json.loads("".join(frags)) == {"city": "Paris"}
    assert deltas[-1] == {}  # the finish reason comes alone, as from vLLM
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    body = chat(client, tools=tools, tool_choice="none").json()
    assert body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] != "tool_calls"


def test_reasoning() -> None:
    with FakeVLLM(reasoning=True) as s, httpx.Client(base_url=s.url, timeout=T) as c:
        msg = chat(c).json()["choices"][0]["message"]
        assert msg["reasoning"]
        assert msg["content"]
        r = chat(c, stream=True)
        chunks = [json.loads(e) for e in sse_events(r.text)[:-1]]
        deltas = [ch["choices"][0]["delta"] for ch in chunks[1:]]
        kinds = ["reasoning" if "reasoning" in d else "content" for d in deltas]
        assert kinds[0] == "reasoning" and kinds[-1] == "content"
        assert kinds == sorted(kinds, key=lambda k: k != "reasoning")  # reasoning first
        assert "".join(d.get("reasoning", "") for d in deltas) == msg["reasoning"]
        assert "".join(d.get("content", "") for d in deltas) == msg["content"]


def test_metrics_running_gauge() -> None:
    with FakeVLLM(latency=0.6) as s, httpx.Client(base_url=s.url, timeout=T) as c:
        t = threading.Thread(target=lambda: chat(c))
        t.start()
        deadline = time.monotonic() + 2
        running = 0.0
        with httpx.Client(base_url=s.url, timeout=T) as probe:
            while time.monotonic() < deadline:
                r = probe.get("/metrics")
                assert r.status_code == 200
                for line in r.text.splitlines():
                    if line.startswith("vllm:num_requests_running{"):
                        running = float(line.rsplit(" ", 1)[1])
                if running > 0:
                    break
                time.sleep(0.02)
            assert running >= 1.0
            text = probe.get("/metrics").text
            for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
                assert f"# HELP vllm:{name} " in text
                assert f"# TYPE vllm:{name} gauge" in text
                assert f'vllm:{name}{{engine="0",model_name="tiny"}} ' in text
        t.join(5)
        assert s.in_flight == 0


def test_keep_alive_reuses_connections(srv: FakeVLLM, client: httpx.Client) -> None:
    for i in range(50):
        r = chat(client, stream=bool(i % 2))
        assert r.status_code == 200
    assert srv.connections_accepted <= 2
    assert srv.request_count == 50


def test_connection_close_and_pipelining(srv: FakeVLLM) -> None:
    body = json.dumps({"messages": HELLO}).encode()
    one = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%b" % (len(body), body)
    )
    last = b"GET /version HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    raw = _raw_exchange(srv.port, one + one + last)  # returns once the server closes
    assert raw.count(b"HTTP/1.1 200 OK") == 3
    assert raw.endswith(b'{"version":"0.32.0"}')
    assert b"connection: close\r\n" in raw


def test_chunked_request_body(srv: FakeVLLM, client: httpx.Client) -> None:
    payload = json.dumps({"messages": HELLO, "max_tokens": 2}).encode()

    def gen() -> Iterator[bytes]:
        yield payload[:10]
        yield payload[10:]

    r = client.post(
        "/v1/chat/completions", content=gen(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] == 2
    assert srv.requests[-1].headers["transfer-encoding"] == "chunked"


def test_recorded_requests(srv: FakeVLLM, client: httpx.Client) -> None:
    chat(client, max_tokens=2)
    client.get("/health", headers={"X-Probe": "yes"})
    reqs = srv.requests
    assert isinstance(reqs[0], RecordedRequest)
    assert reqs[0].method == "POST"
    assert reqs[0].path == "/v1/chat/completions"
    assert reqs[0].json is not None and reqs[0].json["max_tokens"] == 2
    assert reqs[0].headers["content-type"] == "application/json"
    assert reqs[1].method == "GET" and reqs[1].json is None
    assert reqs[1].headers["x-probe"] == "yes"
    assert srv.request_count == 1


def test_control_endpoint(srv: FakeVLLM, client: httpx.Client) -> None:
    r = client.post("/_fake/control", json={"fail_next": 1, "fail_status": 500})
    assert (r.status_code, r.json()) == (200, {"ok": True})
    r = chat(client)
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "InternalServerError"
    assert chat(client).status_code == 200
    assert client.post("/_fake/control", json={"bogus": 1}).status_code == 400
    client.post("/_fake/control", json={"respond_garbage": "empty"})
    assert chat(client).content == b""
    client.post("/_fake/control", json={"reset": True})
    assert chat(client).status_code == 200
    state = client.get("/_fake/control").json()
    assert state["request_count"] == srv.request_count == 4


def test_start_fleet() -> None:
    with start_fleet(3, tokens=2) as fleet:
        ports = {s.port for s in fleet}
        assert len(ports) == 3
        with httpx.Client(timeout=T) as c:
            for s in fleet:
                assert c.get(s.url + "/health").status_code == 200
    assert all(not s.running for s in fleet)


async def test_async_client_64_concurrent() -> None:
    """The fake works from a foreign event loop and answers 64 requests concurrently."""
    with FakeVLLM(latency=0.3) as s:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=s.base_url, timeout=T, limits=limits) as c:

            async def one(i: int) -> int:
                r = await c.post(
                    "/chat/completions",
                    json={"messages": [{"role": "user", "content": f"q{i}"}], "stream": i % 2 == 0},
                )
                return r.status_code

            t0 = time.monotonic()
            codes = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(64))), 10)
            assert codes == [200] * 64
            assert time.monotonic() - t0 < 6.0  # serialized would take 64 * 0.3 s
            assert s.in_flight == 0
        assert s.connections_accepted <= 64


# --------------------------------------------------------------------------- CLI


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return b""
    return proc.stdout.readline()


def test_cli_subprocess() -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm.testing.fake_vllm", "--port", str(port), "--model", "m1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = _readline(proc, 10.0)
        assert line.decode().strip() == f"fake vLLM serving m1 on http://127.0.0.1:{port}"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=T) as c:
            assert c.get("/health").status_code == 200
            assert c.get("/v1/models").json()["data"][0]["id"] == "m1"
            assert c.post("/_fake/control", json={"fail_next": 1}).json() == {"ok": True}
            assert chat(c, model="m1").status_code == 503
            assert chat(c, model="m1").status_code == 200
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        _, err = proc.communicate(timeout=5)
    assert b"Traceback" not in err


def test_cli_serves_every_route_of_a_config(tmp_path: Path) -> None:
    ports = [_free_port() for _ in range(2)]
    config = tmp_path / "config.yaml"
    config.write_text(
        "llm:\n  routes:\n"
        f"    big: {{base_url: 'http://127.0.0.1:{ports[0]}/v1', model: m1}}\n"
        f"    small: {{base_url: 'http://127.0.0.2:{ports[1]}/v1', model: m2, max_model_len: 300,"
        " api_key: k2}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm.testing.fake_vllm", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lines = [_readline(proc, 10.0).decode().strip() for _ in range(2)]
        assert lines == [
            f"fake vLLM serving m1 on http://127.0.0.1:{ports[0]} (big)",
            f"fake vLLM serving m2 on http://127.0.0.2:{ports[1]} (small)",
        ]
        with httpx.Client(timeout=T) as c:
            big = c.get(f"http://127.0.0.1:{ports[0]}/v1/models").json()["data"][0]
            assert (big["id"], big["max_model_len"]) == ("m1", 8192)  # room for the README's
            small = f"http://127.0.0.2:{ports[1]}/v1/models"
            assert c.get(small).status_code == 401  # the route's key is asked for
            answer = c.get(small, headers={"Authorization": "Bearer k2"}).json()["data"][0]
            assert (answer["id"], answer["max_model_len"]) == ("m2", 300)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        _, err = proc.communicate(timeout=5)
    assert b"Traceback" not in err


def test_cli_config_refuses_a_route_it_cannot_serve(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "llm:\n  routes:\n    far: {base_url: 'http://10.1.2.3:8000/v1', model: m}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "llm.testing.fake_vllm", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "llm.routes.far.base_url" in done.stderr and "loopback" in done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- helpers


def _raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            part = sock.recv(65536)
            if not part:
                break
            chunks.append(part)
        return b"".join(chunks)


def test_a_structured_answer_ends_with_its_document_not_the_default_length() -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "degrees": {"type": "integer"}},
        "required": ["city", "degrees"],
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}
    messages = [{"role": "user", "content": "hi"}]
    with FakeVLLM("tiny", tokens=4) as srv, httpx.Client(timeout=10) as client:  # 4-token default
        whole = client.post(
            f"{srv.base_url}/chat/completions",
            json={"model": "tiny", "messages": messages, "response_format": response_format},
        ).json()
        cut = client.post(
            f"{srv.base_url}/chat/completions",
            json={
                "model": "tiny",
                "messages": messages,
                "response_format": response_format,
                "max_tokens": 3,
            },
        ).json()
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert json.loads(choice["message"]["content"]) == {"city": "fake", "degrees": 42}
    assert whole["usage"]["completion_tokens"] > 4
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 3
