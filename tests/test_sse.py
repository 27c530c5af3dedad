"""SSEDecoder: any split of the input gives the same events; stops at [DONE]."""

from __future__ import annotations

import json
import random

import pytest

from llm.judge.sse import SSEDecoder

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
