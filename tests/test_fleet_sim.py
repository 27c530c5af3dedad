"""Tests for the fake vLLM's continuous-batching mode (llm.testing.fleet + FakeVLLM(batching=...)).

How this works: the scheduler, the prefix cache and the token grouping are tested without
sockets and without a clock (steps are driven by hand). The server tests start FakeVLLMs on
127.0.0.1 (ephemeral ports); calls that must stay in flight are raw sockets that send a request
and never read, closed at the end (which also exercises "the client went away"). Every wait is
bounded; timing checks compare ratios with generous bounds.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from llm.testing import BatchingSpec, FakeVLLM, start_fleet
from llm.testing import _vllm as V
from llm.testing.fleet import (
    UNIT,
    PrefixCache,
    Scheduler,
    Seq,
    block_hashes,
    chat_units,
    completion_units,
    token_chunks,
)

T = httpx.Timeout(5.0)
ORCA_JSON = 'JSON {"named_metrics": {"num_requests_waiting": 0.0, "kv_cache_usage_perc": 0.0}}'
ORCA_TEXT = "TEXT named_metrics.num_requests_waiting=0.0, named_metrics.kv_cache_usage_perc=0.0"
SYSTEM = "You are a careful assistant. " * 40  # ~1,160 characters, ~290 tokens
SPEC = V.ServerSpec(model="m", max_model_len=4096, tokens=8, reasoning=False, error_style="nested")


def wait_for(pred: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def drive(sched: Scheduler[Seq], steps: int) -> list[tuple[list[Seq], list[Seq]]]:
    out = []
    for _ in range(steps):
        if sched.begin_step() is None:
            break
        out.append(sched.end_step())
    return out


# --------------------------------------------------------------------------- pure: scheduler


def test_fifo_order_and_max_num_seqs() -> None:
    sched: Scheduler[Seq] = Scheduler(BatchingSpec(max_num_seqs=2))
    seqs = [Seq(10, length) for length in (3, 5, 2, 2, 2)]
    for s in seqs:
        sched.submit(s)
    assert sched.load == (0, 5)
    assert sched.begin_step() is not None
    assert sched.running_seqs() == seqs[:2]
    assert sched.waiting_seqs() == seqs[2:]
    assert sched.load == (2, 3)
    finished_at: dict[int, int] = {}
    step = 1
    while step < 20:
        for s in sched.end_step()[1]:
            finished_at[seqs.index(s)] = step
        step += 1
        if sched.begin_step() is None:
            break
        assert sched.running <= 2
    # seq 0 (3 tokens) ends at step 3, seq 2 takes its slot: admitted before step 4, ends at 5
    assert finished_at == {0: 3, 1: 5, 2: 5, 3: 7, 4: 7}
    assert sched.idle and sched.load == (0, 0)


def test_first_token_comes_after_the_queue_wait_and_the_prefill_step() -> None:
    sched: Scheduler[Seq] = Scheduler(BatchingSpec(max_num_seqs=1))
    a, b = Seq(10, 4), Seq(10, 2)
    sched.submit(a)
    sched.submit(b)
    drive(sched, 4)
    assert sched.generated(a) == 4 and sched.generated(b) == 0  # b waited 4 steps
    sched.begin_step()
    sched.end_step()
    assert sched.generated(b) == 1


def test_step_duration_formula_with_speed_and_prefill() -> None:
    spec = BatchingSpec(
        max_num_seqs=4,
        step_base_ms=10.0,
        step_per_seq_ms=2.0,
        prefill_ms_per_token=0.5,
        speed=0.5,
    )
    assert spec.step_seconds(3, 100) == pytest.approx((10 + 6 + 50) / 1000 / 0.5)
    sched: Scheduler[Seq] = Scheduler(spec)
    sched.submit(Seq(100, 5))
    sched.submit(Seq(40, 5))
    first = sched.begin_step()  # both admitted: prefill 140 tokens, 2 running
    assert first == pytest.approx((10 + 2 * 2 + 0.5 * 140) / 1000 / 0.5)
    sched.end_step()
    second = sched.begin_step()  # nothing admitted: no prefill
    assert second == pytest.approx((10 + 2 * 2) / 1000 / 0.5)
    sched.end_step()
    sched.submit(Seq(20, 5))
    third = sched.begin_step()
    assert third == pytest.approx((10 + 3 * 2 + 0.5 * 20) / 1000 / 0.5)
    faster = Scheduler(dataclasses.replace(spec, speed=2.0))
    faster.submit(Seq(100, 5))
    faster.submit(Seq(40, 5))
    assert faster.begin_step() == pytest.approx(first / 4)


def test_idle_scheduler_has_no_step() -> None:
    sched: Scheduler[Seq] = Scheduler()
    assert sched.begin_step() is None
    sched.submit(Seq(5, 1))
    assert sched.begin_step() is not None
    tokens, finished = sched.end_step()
    assert tokens == [] and len(finished) == 1
    assert sched.begin_step() is None


def test_prefix_hits_after_a_repeated_system_prompt() -> None:
    spec = BatchingSpec(block_size=16)
    sched: Scheduler[Seq] = Scheduler(spec)
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "first question"}]
    second = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "other one?"}]
    u1, u2 = chat_units(first), chat_units(second)
    n1, n2 = len(u1) // UNIT, len(u2) // UNIT
    a = Seq(n1, 4, block_hashes(u1, 16))
    sched.submit(a)
    sched.begin_step()
    assert a.cached_tokens == 0
    assert a.created_tokens == n1 // 16 * 16
    b = Seq(n2, 4, block_hashes(u2, 16))
    sched.submit(b)
    sched.begin_step()
    shared_units = next(i for i, (x, y) in enumerate(zip(u1, u2, strict=False)) if x != y) // UNIT
    assert shared_units > 200
    assert b.cached_tokens == shared_units // 16 * 16
    assert b.created_tokens == n2 // 16 * 16 - b.cached_tokens
    assert sched.prefix_queries == n1 + n2
    assert sched.prefix_hits == b.cached_tokens


def test_the_last_prompt_token_is_never_served_from_the_cache() -> None:
    units = completion_units("abcd" * 31)  # BOS + 31 units = 32 tokens = 2 full blocks
    assert len(units) // UNIT == 32
    sched: Scheduler[Seq] = Scheduler(BatchingSpec(block_size=16))
    for _ in range(2):
        s = Seq(32, 1, block_hashes(units, 16))
        sched.submit(s)
        sched.begin_step()
        sched.end_step()
    assert s.cached_tokens == 16  # (32 - 1) // 16 blocks, like vLLM


def test_chained_hashes_match_only_after_the_same_prefix() -> None:
    a = block_hashes("x" * 64 + "y" * 64, 16)
    b = block_hashes("z" * 64 + "y" * 64, 16)
    assert len(a) == len(b) == 2
    assert a[1] != b[1]  # same second block, different prefix
    assert block_hashes("x" * 64 + "y" * 60, 16) == a[:1]  # a partial block has no hash


def test_lru_eviction_keeps_the_head_of_a_prefix_longest() -> None:
    cache = PrefixCache(4)
    assert cache.admit([1, 2, 3], 3) == (0, 3)
    assert cache.admit([1, 2, 3], 3) == (3, 0)
    assert cache.admit([7, 8, 9], 3) == (0, 3)  # evicts the least recently used: 3, then 2
    assert len(cache) == 4
    assert 1 in cache and 2 not in cache and 3 not in cache
    assert cache.admit([1, 2, 3], 3) == (1, 2)
    assert cache.admit([1, 2, 3], 2) == (2, 0)  # hits are capped by max_hit


def test_eviction_through_the_scheduler() -> None:
    sched: Scheduler[Seq] = Scheduler(BatchingSpec(block_size=4, cache_blocks=8))
    first = completion_units("a" * 4 * 40)  # 41 tokens: 10 full blocks > cache_blocks
    other = completion_units("b" * 4 * 40)
    for units in (first, other, first):
        s = Seq(41, 1, block_hashes(units, 4))
        sched.submit(s)
        sched.begin_step()
        sched.end_step()
    assert s.cached_tokens == 0  # "other" pushed every block of "first" out
    again = Seq(41, 1, block_hashes(first, 4))
    sched.submit(again)
    sched.begin_step()
    assert again.cached_tokens == 8 * 4  # the 8 head blocks kept from the last insert


def test_cancel_frees_a_running_slot_and_drops_a_waiting_one() -> None:
    sched: Scheduler[Seq] = Scheduler(BatchingSpec(max_num_seqs=1))
    a, b, c = Seq(10, 100), Seq(10, 3), Seq(10, 3, stream=True)
    for s in (a, b, c):
        sched.submit(s)
    sched.begin_step()
    sched.end_step()
    assert sched.load == (1, 2)
    assert sched.cancel(c)  # waiting: gone at once
    assert sched.load == (1, 1)
    assert sched.cancel(a)  # running: its slot is free now
    assert sched.load == (0, 1)
    assert not sched.cancel(a)
    sched.begin_step()
    assert sched.running_seqs() == [b]
    results = [sched.end_step(), *drive(sched, 10)]
    assert [f for _, f in results if f] == [[b]]  # a never finishes, c never runs
    assert sched.generated(c) == 0 and sched.idle


def test_tokens_and_kv_usage_accounting() -> None:
    sched: Scheduler[Seq] = Scheduler(BatchingSpec(block_size=16, cache_blocks=100))
    plain, streamed = Seq(20, 3), Seq(40, 2, stream=True)
    sched.submit(plain)
    sched.submit(streamed)
    sched.begin_step()
    assert sched.kv_usage() == pytest.approx((2 + 3) / 100)  # ceil(20/16) + ceil(40/16)
    tokens, finished = sched.end_step()
    assert tokens == [streamed] and finished == []  # a plain sequence is not visited
    sched.begin_step()
    tokens, finished = sched.end_step()
    assert tokens == [streamed] and finished == [streamed]
    assert sched.generated(plain) == 2 and sched.generated(streamed) == 2
    assert sched.kv_usage() == pytest.approx(2 / 100)  # ceil(22/16)
    sched.begin_step()
    tokens, finished = sched.end_step()
    assert tokens == [] and finished == [plain]
    assert sched.kv_usage() == 0.0


def test_token_units_count_the_prompt_tokens_the_fake_reports() -> None:
    bodies: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": "hello world"}]},
        {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "abcdefg"}]}]},
    ]
    for body in bodies:
        plan = V.plan_chat(SPEC, body)
        assert isinstance(plan, V.Plan)
        assert len(chat_units(body["messages"])) == UNIT * plan.prompt_tokens
    for prompt in ("abc", "abcdefghij" * 7, [1, 2, 3, 70000], ["ab", "cdefgh"], [[1, 2], [3]]):
        cplan = V.plan_completion(SPEC, {"prompt": prompt})
        assert isinstance(cplan, V.Plan)
        assert len(completion_units(prompt)) == UNIT * cplan.prompt_tokens
    # the units are a function of the prompt: same prompt, same units; other text, other units
    m = [{"role": "user", "content": "hello world"}]
    assert chat_units(m) == chat_units([dict(m[0])])
    assert chat_units(m) != chat_units([{"role": "user", "content": "hello worle"}])
    assert chat_units(m) != chat_units([{"role": "system", "content": "hello world"}])


def test_token_chunks_group_frames_by_token() -> None:
    frames = [b"role", b"t0", b"t1", b"t2", b"usage", b"done"]
    paced = [False, False, True, True, False, False]
    chunks, last = token_chunks(frames, paced, 3, end=b"END")
    assert chunks == [b"rolet0", b"t1", b"t2usagedoneEND"] and last == 2
    # more tokens than events (e.g. a tool call): the tail waits for the last token
    chunks, last = token_chunks(frames, paced, 5, end=b"END")
    assert chunks == [b"rolet0", b"t1", None, None, b"t2usagedoneEND"] and last == 4
    chunks, last = token_chunks(frames, paced, 3, limit=3)  # a stream cut after 3 events
    assert chunks == [b"rolet0", b"t1", None] and last == 1


def test_batching_spec_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        BatchingSpec(max_num_seqs=0)
    with pytest.raises(ValueError):
        BatchingSpec(speed=0.0)
    with pytest.raises(ValueError):
        BatchingSpec(block_size=0)
    with pytest.raises(TypeError):
        FakeVLLM(batching={"max_num_seqs": 2})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- servers


def chat_body(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def raw_post(srv: FakeVLLM, body: dict[str, Any], headers: str = "") -> socket.socket:
    """A call that stays in flight until the socket is closed (nothing is read)."""
    sock = socket.create_connection((srv.host, srv.port), timeout=5)
    data = json.dumps(body).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: fake\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n{headers}\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


def read_head(sock: socket.socket, timeout: float = 5.0) -> str:
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        piece = sock.recv(65536)
        if not piece:
            break
        buf += piece
    return buf.split(b"\r\n\r\n", 1)[0].decode("latin-1")


def metric(text: str, name: str) -> float:
    match = re.search(rf'^{re.escape(name)}{{engine="0",model_name="m"}} (\S+)$', text, re.M)
    assert match, name
    return float(match.group(1))


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """One client for the module (creating one costs 0.1-0.2 s on a busy machine)."""
    with httpx.Client(timeout=T) as c:
        yield c


@pytest.fixture
def batching() -> Iterator[FakeVLLM]:
    spec = BatchingSpec(max_num_seqs=4, step_base_ms=2.0, step_per_seq_ms=0.1)
    with FakeVLLM(model="m", batching=spec, max_model_len=4096, tokens=64) as srv:
        yield srv


def test_metrics_show_running_and_waiting_under_load(client: httpx.Client) -> None:
    spec = BatchingSpec(max_num_seqs=2, step_base_ms=20.0)
    with FakeVLLM(model="m", batching=spec, tokens=400) as srv:
        socks = [raw_post(srv, chat_body(f"call {i}", max_tokens=400)) for i in range(6)]
        try:
            assert wait_for(lambda: srv.batch_load() == (2, 4)), srv.batch_load()
            text = client.get(f"{srv.url}/metrics").text
            assert metric(text, "vllm:num_requests_running") == 2.0
            assert metric(text, "vllm:num_requests_waiting") == 4.0
            assert (
                'vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"}'
                " 4.0\n" in text
            )
            assert 0.0 < metric(text, "vllm:kv_cache_usage_perc") < 0.01
            assert metric(text, "vllm:prefix_cache_queries_total") > 0
            assert srv.in_flight == 6
        finally:
            for s in socks:
                s.close()
        assert wait_for(lambda: srv.batch_load() == (0, 0) and srv.in_flight == 0)


def test_metrics_format_matches_the_samples(client: httpx.Client) -> None:
    spec = BatchingSpec(max_num_seqs=2)
    with FakeVLLM(model="m", batching=spec) as srv:
        text = client.get(f"{srv.url}/metrics").text
    for line in (
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="m"} 0.0',
        'vllm:num_requests_waiting{engine="0",model_name="m"} 0.0',
        'vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="deferred"} 0.0',
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.0',
        "# TYPE vllm:prefix_cache_queries_total counter",
        'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 0.0',
        "# TYPE vllm:prefix_cache_hits_total counter",
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 0.0',
    ):
        assert line in text.splitlines()


def test_metrics_without_batching_count_the_prefix_cache(client: httpx.Client) -> None:
    # real vLLM always shows its prefix-cache counters (tests/test_conformance.py)
    expected = V.render_metrics("m", 0, 0, 0, 0, 0, prefix_cache=(0, 0))
    with FakeVLLM(model="m") as srv:
        assert client.get(f"{srv.url}/metrics").content == expected
    assert b"vllm:prefix_cache_hits_total" in expected


@pytest.mark.parametrize("batch", [False, True], ids=["plain", "batching"])
def test_orca_header_byte_exact(batch: bool, client: httpx.Client) -> None:
    spec = BatchingSpec(step_base_ms=1.0) if batch else None
    with FakeVLLM(model="m", batching=spec) as srv:
        url = f"{srv.base_url}/chat/completions"

        def orca(fmt: str | None, **extra: Any) -> str | None:
            headers = {} if fmt is None else {"endpoint-load-metrics-format": fmt}
            r = client.post(url, json=chat_body(**extra), headers=headers)
            assert r.status_code == 200
            return r.headers.get("endpoint-load-metrics")

        assert orca("JSON") == ORCA_JSON
        assert orca("TEXT") == ORCA_TEXT
        assert orca(None) is None
        assert orca("XML") is None
        assert orca("JSON", stream=True) is None
        assert orca("TEXT", stream=True) is None
        # on the wire: after server:, before content-length, like uvicorn in the samples
        sock = raw_post(srv, chat_body(), "endpoint-load-metrics-format: JSON\r\n")
        with sock:
            head = read_head(sock)
        assert f"server: uvicorn\r\nendpoint-load-metrics: {ORCA_JSON}\r\ncontent-length:" in head


def test_orca_header_reports_the_queue_of_a_batching_server() -> None:
    spec = BatchingSpec(max_num_seqs=2, step_base_ms=100.0)
    with FakeVLLM(model="m", batching=spec, tokens=400) as srv:
        socks = [raw_post(srv, chat_body("long"))]
        try:
            assert wait_for(lambda: srv.batch_load() == (1, 0))
            ask = raw_post(srv, chat_body("ask", max_tokens=1), ORCA_ASK)
            socks.append(ask)
            assert wait_for(lambda: srv.batch_load() in ((1, 1), (2, 0)))
            # two more arrive while "ask" waits for (or runs) its 100 ms step: they wait
            socks += [raw_post(srv, chat_body(f"w{i}")) for i in range(2)]
            head = read_head(ask)
        finally:
            for s in socks:
                s.close()
    found = re.search(
        r"\r\nendpoint-load-metrics: TEXT named_metrics.num_requests_waiting=(\S+), "
        r"named_metrics.kv_cache_usage_perc=(\S+)\r\n",
        head + "\r\n",
    )
    assert found, head
    assert found.group(1) == "2.0"  # the two behind it; the long call holds KV blocks
    assert 0.0 < float(found.group(2)) < 0.01


ORCA_ASK = "endpoint-load-metrics-format: TEXT\r\n"


def sse_texts(raw: str) -> tuple[str, list[str]]:
    events = [b[len("data: ") :] for b in raw.split("\n\n") if b]
    assert events[-1] == "[DONE]"
    text = ""
    for e in events[:-1]:
        for choice in json.loads(e)["choices"]:
            text += choice["delta"].get("content") or ""
    return text, events


def normalized(events: list[str]) -> list[str]:
    return [re.sub(r'"id":"[^"]+","object":"([^"]+)","created":\d+', r"\1", e) for e in events]


def test_streamed_text_equals_non_streamed_text(batching: FakeVLLM, client: httpx.Client) -> None:
    url = f"{batching.base_url}/chat/completions"
    body = chat_body("tell me a story", max_tokens=24)
    with FakeVLLM(model="m", max_model_len=4096, tokens=64) as plain:
        whole = client.post(url, json=body).json()
        streamed = client.post(url, json={**body, "stream": True})
        assert streamed.headers["content-type"] == "text/event-stream; charset=utf-8"
        text, events = sse_texts(streamed.text)
        assert text == whole["choices"][0]["message"]["content"]
        assert len(events) == 24 + 2  # role chunk, 24 tokens, [DONE]
        assert whole["usage"]["completion_tokens"] == 24
        # the same events as a non-batching server sends, id and timestamp aside
        reference = client.post(f"{plain.base_url}/chat/completions", json={**body, "stream": True})
        assert normalized(events) == normalized(sse_texts(reference.text)[1])


def test_completions_stream_and_usage_details(batching: FakeVLLM, client: httpx.Client) -> None:
    url = f"{batching.base_url}/completions"
    body = {"model": "m", "prompt": "once upon a time " * 20, "max_tokens": 6}
    whole = client.post(url, json=body).json()
    streamed = client.post(url, json={**body, "stream": True})
    events = [b[6:] for b in streamed.text.split("\n\n") if b][:-1]
    assert (
        "".join(json.loads(e)["choices"][0]["text"] for e in events) == whole["choices"][0]["text"]
    )
    details = whole["usage"]["prompt_tokens_details"]
    assert list(details) == ["cached_tokens", "created_cache_tokens", "multimodal_tokens"]
    assert details["created_cache_tokens"] == whole["usage"]["prompt_tokens"] // 16 * 16


def test_cached_tokens_on_the_second_call_with_a_shared_prompt(
    batching: FakeVLLM, client: httpx.Client
) -> None:
    url = f"{batching.base_url}/chat/completions"

    def usage(question: str) -> dict[str, Any]:
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
        ]
        r = client.post(url, json={"model": "m", "messages": messages, "max_tokens": 2})
        return dict(r.json()["usage"])

    first, second = usage("what is a cat?"), usage("and a dog?")
    metrics = client.get(f"{batching.url}/metrics").text
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    assert first["prompt_tokens_details"]["created_cache_tokens"] > 256
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert 256 < cached < second["prompt_tokens"]
    assert cached % 16 == 0
    assert second["prompt_tokens_details"]["multimodal_tokens"] is None
    queries = first["prompt_tokens"] + second["prompt_tokens"]
    assert metric(metrics, "vllm:prefix_cache_queries_total") == float(queries)
    assert metric(metrics, "vllm:prefix_cache_hits_total") == float(cached)


def test_without_batching_usage_has_no_prompt_details(client: httpx.Client) -> None:
    with FakeVLLM(model="m") as srv:
        r = client.post(f"{srv.base_url}/chat/completions", json=chat_body())
    assert r.json()["usage"]["prompt_tokens_details"] is None


def test_a_slower_speed_slows_a_call(client: httpx.Client) -> None:
    fast = BatchingSpec(step_base_ms=3.0, step_per_seq_ms=0.0, prefill_ms_per_token=0.0)
    slow = dataclasses.replace(fast, speed=0.25)
    with start_fleet(2, model="m", tokens=10, batching=[fast, slow]) as (f, s):
        assert f.batching == fast and s.batching == slow

        def best(srv: FakeVLLM) -> float:
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                r = client.post(f"{srv.base_url}/chat/completions", json=chat_body(max_tokens=10))
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200
            return min(times)

        t_fast, t_slow = best(f), best(s)
    assert t_fast >= 10 * 0.003 * 0.8  # 10 steps of 3 ms
    assert t_slow / t_fast > 2.0  # 4x in theory


def test_disconnect_frees_the_slot(client: httpx.Client) -> None:
    spec = BatchingSpec(max_num_seqs=1, step_base_ms=20.0)
    with FakeVLLM(model="m", batching=spec, tokens=400) as srv:
        long_call = raw_post(srv, chat_body("long", max_tokens=400))  # would take 8 s
        assert wait_for(lambda: srv.batch_load() == (1, 0))
        queued = raw_post(srv, chat_body("queued", max_tokens=400, stream=True))
        assert wait_for(lambda: srv.batch_load() == (1, 1))
        queued.close()  # leaves the queue at once
        assert wait_for(lambda: srv.batch_load() == (1, 0), 1.0)
        long_call.close()  # leaves the running set at once
        assert wait_for(lambda: srv.batch_load() == (0, 0), 1.0)
        t0 = time.perf_counter()
        r = client.post(f"{srv.base_url}/chat/completions", json=chat_body(max_tokens=2))
        assert r.status_code == 200 and time.perf_counter() - t0 < 2.0
        assert srv.in_flight == 0


def test_faults_still_work_in_batching_mode(batching: FakeVLLM, client: httpx.Client) -> None:
    url = f"{batching.base_url}/chat/completions"
    batching.fail_next(1, 429, retry_after=2)
    r = client.post(url, json=chat_body())
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    batching.respond_garbage("malformed_json")
    assert client.post(url, json=chat_body()).text == '{"id": "x", "choices": ['
    batching.reset()
    batching.hang_streams_after(3)
    with client.stream("POST", url, json=chat_body(stream=True, max_tokens=20)) as r:
        lines = r.iter_lines()
        got = [line for line in (next(lines) for _ in range(6)) if line]
        assert len(got) == 3
        assert wait_for(lambda: batching.batch_load() == (0, 0))  # its tokens all came
    batching.reset()
    batching.cut_streams_after(4)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(url, json=chat_body(stream=True, max_tokens=20)).read()
    batching.reset()
    assert client.post(url, json=chat_body(max_tokens=5)).status_code == 200
    assert client.post(url, json={"model": "m"}).status_code == 400  # validation first
    assert wait_for(lambda: batching.in_flight == 0 and batching.batch_load() == (0, 0))


def test_latency_delays_the_entry_into_the_queue(client: httpx.Client) -> None:
    spec = BatchingSpec(step_base_ms=1.0)
    with FakeVLLM(model="m", batching=spec, latency=0.15) as srv:
        t0 = time.perf_counter()
        assert client.post(f"{srv.base_url}/chat/completions", json=chat_body()).status_code == 200
        assert time.perf_counter() - t0 >= 0.14


def test_keep_alive_and_pipelining_after_a_batched_answer(batching: FakeVLLM) -> None:
    body = json.dumps(chat_body(max_tokens=3)).encode()
    one = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%b" % (len(body), body)
    )
    with socket.create_connection((batching.host, batching.port), timeout=5) as sock:
        sock.sendall(one * 3)  # pipelined: answered one after the other on one connection
        buf = b""
        deadline = time.monotonic() + 5
        while buf.count(b'"object":"chat.completion"') < 3 and time.monotonic() < deadline:
            buf += sock.recv(65536)
    assert buf.count(b"HTTP/1.1 200 OK") == 3
    assert batching.connections_accepted == 1


def test_batch_load_is_thread_safe_and_shared_by_no_one(client: httpx.Client) -> None:
    spec = BatchingSpec(max_num_seqs=3, step_base_ms=1.0)
    with start_fleet(2, model="m", batching=spec) as (a, b):
        assert a.batching is b.batching is spec
        errors: list[BaseException] = []

        def call(i: int) -> None:
            try:
                r = client.post(f"{a.base_url}/chat/completions", json=chat_body(f"q{i}"))
                assert r.status_code == 200
            except (AssertionError, httpx.HTTPError) as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        seen = set()
        while any(t.is_alive() for t in threads):
            running, waiting = a.batch_load()
            assert 0 <= running <= 3 and waiting >= 0
            seen.add((running, waiting))
            time.sleep(0.001)
        for t in threads:
            t.join(5)
        assert not errors
        assert b.batch_load() == (0, 0) and a.batch_load() == (0, 0)
        assert len(seen) > 1
    assert FakeVLLM().batch_load() == (0, 0)  # not started
