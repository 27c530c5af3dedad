"""Results handed to callers: OpenAI-shaped data plus where it came from.

``Reply`` is what a non-streamed call got back from the route that answered (the senders
make it); ``ChatResult`` and ``CompletionResult`` are made from one (``from_reply``): the
decoded answer (``raw``) with the route that answered, the attempts made and the latency.
``StreamEvent`` is one typed piece of a stream (content, reasoning, a tool-call fragment,
usage, the end). ``StreamAccumulator`` turns chat-stream chunks into those events and
remembers what a whole answer needs (tool calls joined from their fragments, usage, finish
reason).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import Attempt

__all__ = ["ChatResult", "CompletionResult", "Reply", "StreamAccumulator", "StreamEvent"]


@dataclass(slots=True)
class Reply:
    """A successful non-streamed answer: its bytes, its decoded JSON and how it was got."""

    route: str
    status_code: int
    headers: Mapping[str, str]
    content: bytes
    data: Any
    attempts: list[Attempt]
    latency_s: float


@dataclass(slots=True)  # not frozen: a frozen dataclass costs microseconds per call to make
class ChatResult:
    """A chat completion. ``str(result)`` is the content."""

    content: str | None
    message: Mapping[str, Any]
    tool_calls: list[dict[str, Any]]
    reasoning: str | None
    finish_reason: str | None
    usage: Mapping[str, Any] | None
    route: str
    attempts: tuple[Attempt, ...]
    latency_s: float
    raw: Mapping[str, Any] = field(repr=False)
    model: str | None = None

    def __str__(self) -> str:
        return self.content or ""

    @classmethod
    def from_reply(cls, reply: Reply) -> ChatResult:
        data = reply.data
        choice = data["choices"][0] if data.get("choices") else {}
        message = choice.get("message") or {}
        reasoning = message.get("reasoning")
        if reasoning is None:
            reasoning = message.get("reasoning_content")
        return cls(
            content=message.get("content"),
            message=message,
            tool_calls=list(message.get("tool_calls") or ()),
            reasoning=reasoning,
            finish_reason=choice.get("finish_reason"),
            usage=data.get("usage"),
            route=reply.route,
            attempts=tuple(reply.attempts),
            latency_s=reply.latency_s,
            raw=data,
            model=data.get("model"),
        )


@dataclass(frozen=True, slots=True)
class CompletionResult:
    """A text completion (/v1/completions). ``str(result)`` is the text."""

    text: str
    finish_reason: str | None
    usage: Mapping[str, Any] | None
    route: str
    attempts: tuple[Attempt, ...]
    latency_s: float
    raw: Mapping[str, Any] = field(repr=False)

    def __str__(self) -> str:
        return self.text

    @classmethod
    def from_reply(cls, reply: Reply) -> CompletionResult:
        data = reply.data
        choice = data["choices"][0] if data.get("choices") else {}
        return cls(
            text=choice.get("text") or "",
            finish_reason=choice.get("finish_reason"),
            usage=data.get("usage"),
            route=reply.route,
            attempts=tuple(reply.attempts),
            latency_s=reply.latency_s,
            raw=data,
        )


EventKind = Literal["content", "reasoning", "tool_call", "usage", "end"]


@dataclass(slots=True)  # not frozen: a frozen dataclass is slow to make, and streams make many
class StreamEvent:
    """One piece of a stream.

    - ``content`` / ``reasoning``: ``text`` is the delta.
    - ``tool_call``: ``tool_call`` is the fragment as sent (``index``, maybe ``id`` and
      ``function.name``, a piece of ``function.arguments``).
    - ``usage``: ``usage`` is the token counts (``stream_options.include_usage``).
    - ``end``: the last event: ``finish_reason``, ``usage``, the joined ``tool_calls``, the
      ``route`` that answered and the ``attempts`` made (failed ones first).
    """

    kind: EventKind
    text: str = ""
    tool_call: Mapping[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    usage: Mapping[str, Any] | None = None
    finish_reason: str | None = None
    route: str | None = None
    index: int = 0
    attempts: tuple[Attempt, ...] = ()


class StreamAccumulator:
    """Chunks in, ``StreamEvent`` out; keeps what the end event reports."""

    __slots__ = ("_tool_calls", "finish_reason", "usage")

    def __init__(self) -> None:
        self._tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: Mapping[str, Any] | None = None

    def events(self, chunk: Mapping[str, Any]) -> list[StreamEvent]:
        found: list[StreamEvent] = []
        choices = chunk.get("choices")
        for choice in choices or ():
            index = choice.get("index", 0)
            delta = choice.get("delta")
            if delta is None:  # /v1/completions stream
                text = choice.get("text")
                if text:
                    found.append(StreamEvent("content", text=text, index=index))
            else:
                reasoning = delta.get("reasoning") or delta.get("reasoning_content")
                if reasoning:
                    found.append(StreamEvent("reasoning", text=reasoning, index=index))
                content = delta.get("content")
                if content:
                    found.append(StreamEvent("content", text=content, index=index))
                for fragment in delta.get("tool_calls") or ():
                    self._join_tool_call(fragment)
                    found.append(StreamEvent("tool_call", tool_call=fragment, index=index))
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
        usage = chunk.get("usage")
        if usage and not choices:
            self.usage = usage
            found.append(StreamEvent("usage", usage=usage))
        return found

    def _join_tool_call(self, fragment: Mapping[str, Any]) -> None:
        slot = self._tool_calls.setdefault(
            fragment.get("index", 0),
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if fragment.get("id"):
            slot["id"] = fragment["id"]
        if fragment.get("type"):
            slot["type"] = fragment["type"]
        function = fragment.get("function") or {}
        if function.get("name"):
            slot["function"]["name"] += function["name"]
        if function.get("arguments"):
            slot["function"]["arguments"] += function["arguments"]

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return [self._tool_calls[i] for i in sorted(self._tool_calls)]

    def end(self, route: str, attempts: tuple[Attempt, ...] = ()) -> StreamEvent:
        return StreamEvent(
            "end",
            tool_calls=self.tool_calls,
            usage=self.usage,
            finish_reason=self.finish_reason,
            route=route,
            attempts=attempts,
        )
