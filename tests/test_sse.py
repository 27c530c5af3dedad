"""SSEDecoder: any split of the input gives the same events; stops at [DONE]."""

from __future__ import annotations

import json
import random
import tracemalloc
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm.judge.sse import OversizedEventError, SSEDecoder

# vLLM 0.32.0, POST /v1/chat/completions stream + include_usage, byte for byte
# (from the captured protocol samples).
VLLM_STREAM = (
    b'data: {"id":"chatcmpl-84af6e89664c9ee3","object":"chat.completion.chunk","create'
    b'd":1795284739,"model":"tiny","choices":[{"index":0,"delta":{"role":"assistant","'
    b'content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,"pro'
    b'mpt_text":null}\n\n'
    b'data: {"id":"chatcmpl-84af6e89664c9ee3","object":"chat.completion.chunk","create'
    b'd":1795284739,"model":"tiny","choices":[{"index":0,"delta":{"content":"er"},"log'
    b'probs":null,"finish_reason":null,"token_ids":null}]}\n\n'
    b'data: {"id":"chatcmpl-84af6e89664c9ee3","object":"chat.completion.chunk","create'
    b'd":1795284739,"model":"tiny","choices":[{"index":0,"delta":{"content":"cdgu"},"l'
    b'ogprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
    b'data: {"id":"chatcmpl-84af6e89664c9ee3","object":"chat.completion.chunk","create'
    b'd":1795284739,"model":"tiny","choices":[{"index":0,"delta":{"content":"vl"},"log'
    b'probs":null,"finish_reason":null,"token_ids":null}]}\n\n'
    b'data: {"id":"chatcmpl-84af6e89664c9ee3","object":"chat.completion.chunk","create'
    b'd":1795284739,"model":"tiny","choices":[{"index":0,"delta":{"content":"woqxf"},"'
    b'logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
    b'data: {"id":"chatcmpl-84af6e89664c9ee3","object":"chat.completion.chunk","create'
    b'd":1795284739,"model":"tiny","choices":[{"index":0,"delta":{"content":"vj"},"log'
    b'probs":null,"finish_reason":null,"token_ids":null}]}\n\n'
    b'data: {"id":"chatcmpl-84af6e89664c9ee3","object":"chat.completion.chunk","create'
    b'd":1795284739,"model":"tiny","choices":[{"index":0,"delta":{"content":"ro"},"log'
    b'probs":null,"finish_reason":null,"token_ids":null}]}\n\n'
    b'data: {"id":"chatcmpl-84af6e89664c9ee3","object":"chat.completion.chunk","create'
    b'd":1795284739,"model":"tiny","choices":[{"index":0,"delta":{"content":"oo"},"log'
    b'probs":null,"finish_reason":null,"token_ids":null}]}\n\n'
    b'data: {"id":"chatcmpl-84af6e89664c9ee3","object":"chat.completion.chunk","create'
    b'd":1795284739,"model":"tiny","choices":[{"index":0,"delta":{"content":" mdpzot"}'
    b',"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null}]}'
    b"\n\n"
    b'data: {"id":"chatcmpl-84af6e89664c9ee3","object":"chat.completion.chunk","create'
    b'd":1795284739,"model":"tiny","choices":[],"usage":{"prompt_tokens":16,"total_tok'
    b'ens":24,"completion_tokens":8},"system_fingerprint":"vllm-0.32.0-d194b792"}\n\n'
    b"data: [DONE]\n\n"
)

AFTER_DONE = b"data: after-done\n\n"

EXPECTED = [block[len(b"data: ") :] for block in VLLM_STREAM.split(b"\n\n")[:-2]]

# A stream that exercises the general parser: comments, other fields, multi-line data,
# "data:" without a space, an event without data, then [DONE] and more after it.
GENERAL = (
    b": keep-alive\n\n"
    b"event: message\nid: 7\nretry: 1000\ndata: first\n\n"
    b"data: line1\ndata:line2\ndata:  spaced\n: comment inside\n\n"
    b"event: ping\nid: 8\n\n"
    b"data:x\n\n"
    b"data: [DONE]\n\n"
    b"data: after\n\n"
)
GENERAL_EXPECTED = [b"first", b"line1\nline2\n spaced", b"x"]

LINE_ENDINGS = [
    pytest.param(b"\n", id="LF"),
    pytest.param(b"\r\n", id="CRLF"),
    pytest.param(b"\r", id="CR"),
]


def decode(*chunks: bytes) -> tuple[list[bytes], SSEDecoder]:
    decoder = SSEDecoder()
    events: list[bytes] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events, decoder


def with_line_ending(stream: bytes, eol: bytes) -> bytes:
    return stream.replace(b"\n", eol)


def test_expected_events_are_the_vllm_chunks() -> None:
    assert len(EXPECTED) == 10
    parsed = [json.loads(event) for event in EXPECTED]
    assert all(p["object"] == "chat.completion.chunk" for p in parsed)
    text = "".join(p["choices"][0]["delta"]["content"] for p in parsed if p["choices"])
    assert text == "ercdguvlwoqxfvjrooo mdpzot"
    assert parsed[-1]["usage"]["completion_tokens"] == 8


def test_whole_vllm_stream_at_once() -> None:
    events, decoder = decode(VLLM_STREAM + AFTER_DONE)
    assert events == EXPECTED
    assert decoder.done
    assert not decoder.pending


@pytest.mark.parametrize("eol", LINE_ENDINGS)
def test_vllm_stream_split_at_every_offset(eol: bytes) -> None:
    stream = with_line_ending(VLLM_STREAM + AFTER_DONE, eol)
    for offset in range(len(stream) + 1):
        events, decoder = decode(stream[:offset], stream[offset:])
        assert events == EXPECTED, offset
        assert decoder.done, offset


@pytest.mark.parametrize("eol", LINE_ENDINGS)
def test_vllm_stream_one_byte_at_a_time(eol: bytes) -> None:
    stream = with_line_ending(VLLM_STREAM + AFTER_DONE, eol)
    decoder = SSEDecoder()
    events: list[bytes] = []
    done_at = None
    for i in range(len(stream)):
        got = decoder.feed(stream[i : i + 1])
        if done_at is not None:
            assert got == []  # nothing after [DONE]
        events.extend(got)
        if decoder.done and done_at is None:
            done_at = i
    assert events == EXPECTED
    assert done_at is not None
    # done as soon as the blank line after [DONE] arrived (its CR is enough for CRLF)
    assert stream[: done_at + 1].endswith(b"data: [DONE]" + eol + eol[:1])


@pytest.mark.parametrize("eol", LINE_ENDINGS)
def test_vllm_stream_random_chunkings(eol: bytes) -> None:
    stream = with_line_ending(VLLM_STREAM + AFTER_DONE, eol)
    rng = random.Random(1234)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(2, 40)))
        chunks = [stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        events, decoder = decode(*chunks)
        assert events == EXPECTED
        assert decoder.done


@pytest.mark.parametrize("eol", LINE_ENDINGS)
def test_general_stream_split_at_every_offset(eol: bytes) -> None:
    stream = with_line_ending(GENERAL, eol)
    for offset in range(len(stream) + 1):
        events, decoder = decode(stream[:offset], stream[offset:])
        assert events == GENERAL_EXPECTED, offset
        assert decoder.done


@pytest.mark.parametrize("eol", LINE_ENDINGS)
def test_general_stream_one_byte_at_a_time(eol: bytes) -> None:
    stream = with_line_ending(GENERAL, eol)
    events, decoder = decode(*(stream[i : i + 1] for i in range(len(stream))))
    assert events == GENERAL_EXPECTED
    assert decoder.done


def test_nothing_after_done() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: [DONE]\n\ndata: b\n\n") == [b"a"]
    assert decoder.done
    assert decoder.feed(b"data: c\n\n") == []
    assert not decoder.pending


def test_cr_at_chunk_end_and_lf_at_next_start_are_one_line_end() -> None:
    # If the LF were a second line end, "data: a" would be dispatched on its own.
    events, _ = decode(b"data: a\r", b"\ndata: b\r\n\r\n")
    assert events == [b"a\nb"]
    events, _ = decode(b"data: a\r\n\r", b"\ndata: b\r\n\r\n")
    assert events == [b"a", b"b"]
    events, _ = decode(b"data: a\r", b"", b"\n\r", b"\n")
    assert events == [b"a"]


def test_cr_only_stream_with_cr_at_chunk_end() -> None:
    events, _ = decode(b"data: a\r", b"\rdata: b\r\r")
    assert events == [b"a", b"b"]


def test_mixed_line_endings() -> None:
    events, _ = decode(b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r")
    assert events == [b"a\nb\nc", b"d"]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: a\ndata: b\ndata: c\n\n", [b"a\nb\nc"]),
        (b": keep-alive\n\n", []),
        (b":\n\n", []),
        (b"event: ping\n\n", []),
        (b"id: 1\nretry: 5\n\n", []),
        (b"event: x\ndata: y\nid: 3\n\n", [b"y"]),
        (b"data:x\n\n", [b"x"]),
        (b"data:  x\n\n", [b" x"]),  # only one leading space is removed
        (b"data: \n\n", [b""]),
        (b"data: a: b\n\n", [b"a: b"]),
        (b"\n\n\ndata: a\n\n\n\n", [b"a"]),
        (b"data: a\n\ndata: b\n\n", [b"a", b"b"]),
        (b"datum: a\n\n", []),
        (b"data: [DONE]\n\n", []),
    ],
)
def test_blocks(stream: bytes, expected: list[bytes]) -> None:
    events, _ = decode(stream)
    assert events == expected


def test_done_only_on_exactly_done() -> None:
    events, decoder = decode(b"data: [DONE] \n\ndata: [done]\n\n")
    assert events == [b"[DONE] ", b"[done]"]
    assert not decoder.done
    _, decoder = decode(b"data:[DONE]\n\n")
    assert decoder.done


def test_pending() -> None:
    decoder = SSEDecoder()
    assert not decoder.pending
    assert decoder.feed(b'data: {"a"') == []
    assert decoder.pending
    assert decoder.feed(b":1}\n") == []
    assert decoder.pending
    assert decoder.feed(b"\n") == [b'{"a":1}']
    assert not decoder.pending
    assert decoder.feed(b"\n") == []  # a stray blank line is not a partial event
    assert not decoder.pending


def test_empty_chunk() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"") == []
    assert not decoder.pending and not decoder.done


def test_an_unfinished_event_past_the_bound_is_refused():
    from llm.judge.sse import OversizedEventError

    decoder = SSEDecoder(max_event_bytes=16)
    assert decoder.feed(b"data: 0123456789\n\n") == [b"0123456789"]  # whole events pass
    assert decoder.feed(b"data: 01234") == []
    with pytest.raises(OversizedEventError) as caught:
        decoder.feed(b"56789abcdef")
    assert caught.value.limit == 16
    assert SSEDecoder().feed(b"data: " + b"x" * 100_000) == []  # no bound by default


def test_the_bound_refuses_an_event_fed_byte_by_byte() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    event = b"data: " + b"x" * 2000
    for i in range(1000):  # up to the bound: held
        assert decoder.feed(event[i : i + 1]) == []
    assert decoder.pending
    with pytest.raises(OversizedEventError) as caught:
        decoder.feed(event[1000:1001])  # the 1001st byte
    assert caught.value.limit == 1000


def test_the_bound_counts_what_is_held_across_feeds_not_whole_events() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    big = b"data: " + b"x" * 150 + b"\n\n"
    assert decoder.feed(big) == [b"x" * 150]  # a whole event in one feed is not held
    assert decoder.feed(b"data: " + b"y" * 90) == []
    assert decoder.feed(b"\n\ndata: " + b"z" * 90) == [b"y" * 90]  # ended: forgotten
    with pytest.raises(OversizedEventError):
        decoder.feed(b"z" * 10)


# --------------------------------------------------------------------------- linear work


def test_a_feed_allocates_in_proportion_to_itself_not_to_the_held_event() -> None:
    """Feeding an unfinished event piece by piece copies no piece again: what one feed
    allocates does not grow with what is held (before, each feed copied all of it)."""
    piece = b"x" * 4096
    decoder = SSEDecoder()
    decoder.feed(b"data: ")
    largest = 0
    tracemalloc.start()
    try:
        for _ in range(512):  # 2 MiB held in the end
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            assert decoder.feed(piece) == []
            largest = max(largest, tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()
    assert largest < 64 * 1024, largest
    (data,) = decoder.feed(b"\n\n")
    assert data == piece * 512


def test_tiny_pieces_are_gathered_and_the_event_is_intact() -> None:
    decoder = SSEDecoder()
    event = b"data: " + bytes(range(32, 127)) * 200 + b"\n\n"
    events = [e for i in range(len(event)) for e in decoder.feed(event[i : i + 1])]
    assert events == [bytes(range(32, 127)) * 200]
    assert not decoder.pending


# --------------------------------------------------------------------------- any split


@dataclass(frozen=True)
class Stream:
    data: bytes
    events: list[bytes]
    done: bool
    pending: bool


# A line's value: any bytes but CR and LF.
_VALUE = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_LINE = st.one_of(
    st.tuples(st.just("data"), _VALUE, st.booleans()),  # data: v, or data:v
    st.tuples(st.just("comment"), _VALUE, st.just(False)),
    st.tuples(st.sampled_from(["event", "id", "retry", "datum"]), _VALUE, st.just(False)),
)
_EVENTS = st.lists(st.lists(_LINE, max_size=4), max_size=8)


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    """A stream of random events (LF, CRLF or CR line ends throughout, comments, other
    fields, multi-line data, empty events), maybe ``[DONE]`` and more after it, maybe an
    unfinished event at the end; with the events, ``done`` and ``pending`` it must give."""
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    events = draw(_EVENTS)
    if draw(st.booleans()):
        at = draw(st.integers(0, len(events)))
        events = [*events[:at], [("data", b"[DONE]", True)], *events[at:]]
    tail = draw(st.lists(_LINE, max_size=3))
    out: list[bytes] = []
    expected: list[bytes] = []
    done = False

    def lines_of(lines: list[tuple[str, bytes, bool]]) -> list[bytes]:
        data: list[bytes] = []
        for kind, value, space in lines:
            if kind == "data":
                out.append(b"data:" + (b" " if space else b"") + value + eol)
                data.append(value if space or value[:1] != b" " else value[1:])
            elif kind == "comment":
                out.append(b":" + value + eol)
            else:
                out.append(kind.encode() + b": " + value + eol)
        return data

    for lines in events:
        data = lines_of(lines)
        out.append(eol)
        if data and not done:
            if b"\n".join(data) == b"[DONE]":
                done = True
            else:
                expected.append(b"\n".join(data))
    lines_of(tail)
    return Stream(b"".join(out), expected, done, bool(tail) and not done)


def decoded(stream: bytes, cuts: list[int]) -> tuple[list[bytes], bool, bool]:
    bounds = [0, *sorted(cuts), len(stream)]
    events, decoder = decode(*(stream[i:j] for i, j in pairwise(bounds)))
    return events, decoder.done, decoder.pending


@settings(max_examples=400, deadline=None)
@given(stream=streams(), data=st.data())
def test_any_split_of_a_stream_gives_the_events_of_the_whole(
    stream: Stream, data: st.DataObject
) -> None:
    whole = decoded(stream.data, [])
    assert whole == (stream.events, stream.done, stream.pending)
    cuts = data.draw(st.lists(st.integers(0, len(stream.data)), max_size=len(stream.data) + 1))
    assert decoded(stream.data, cuts) == whole
    one_by_one = list(range(len(stream.data) + 1))
    assert decoded(stream.data, one_by_one) == whole


def test_the_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from llm.perf import sse as bench

    assert bench.main(["--sizes", "1", "2", "--piece", "65536"]) == 0
    out = capsys.readouterr().out
    assert "ratio 2 MiB / 1 MiB" in out and "(linear ~ 2, quadratic ~ 4)" in out
