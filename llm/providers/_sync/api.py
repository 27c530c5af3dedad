# Generated from llm/providers/_async/api.py by scripts/unasync.py: do not edit.
# Edit the async file, then run `python scripts/unasync.py` (CI runs it with --check).
"""The provider's call methods: messages in, text and results out.

Each method builds the call (``call.build``: the config's ``params`` overlaid with the call's
keywords, checked before any I/O), runs it through the engine and shapes the answer
(``results``). Written once, for async; ``scripts/unasync.py`` writes the sync twin from it,
whose methods drop the ``a`` (``chat`` -> ``chat``).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any

from ...call.build import chat_spec, completion_spec
from ...probes.check import RouteCheck
from ...probes.run import check_routes
from ...results import ChatResult, CompletionResult, StreamAccumulator, StreamEvent
from ..base import ProviderBase, models_of


class SyncAPI(ProviderBase):
    def chat(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> str:
        """The assistant's text for ``messages`` ("" when it answered only with tool calls)."""
        return (self.chat_completion(messages, **options)).content or ""

    def chat_completion(
        self, messages: Sequence[Mapping[str, Any]], **options: Any
    ) -> ChatResult:
        """The whole answer: content, tool calls, reasoning, usage, route and attempts."""
        spec = chat_spec(self.config.params, messages, options, stream=False)
        return ChatResult.from_reply(self._engine.request(spec))

    def stream(
        self, messages: Sequence[Mapping[str, Any]], **options: Any
    ) -> Generator[str, None, None]:
        """Text deltas as they arrive."""
        events = self.stream_events(messages, **options)
        try:
            for event in events:
                if event.kind == "content":
                    yield event.text
        finally:
            events.close()  # a generator is not closed by its consumer's close

    def stream_events(
        self, messages: Sequence[Mapping[str, Any]], **options: Any
    ) -> Generator[StreamEvent, None, None]:
        """Typed pieces: content, reasoning, tool-call fragments, usage, and a final ``end``."""
        spec = chat_spec(self.config.params, messages, options, stream=True)
        stream = self._engine.open_stream(spec)
        accumulator = StreamAccumulator()
        batches = stream.batches()
        try:
            for chunks in batches:
                for chunk in chunks:
                    for event in accumulator.events(chunk):
                        yield event
        finally:
            batches.close()  # a generator is not closed by its consumer's close
            stream.close()
        yield accumulator.end(stream.route, tuple(stream.attempts))

    def complete(self, prompt: str | list[Any], **options: Any) -> CompletionResult:
        """A text completion (/v1/completions)."""
        spec = completion_spec(self.config.params, prompt, options, stream=False)
        return CompletionResult.from_reply(self._engine.request(spec))

    def list_models(self) -> list[str]:
        """Model ids served by the routes that answer, sorted; raises if none answers."""
        return models_of(self.health_checks())

    def is_available(self) -> bool:
        """True when some route of the default pool (or the fallback) passes a live check."""
        self._open()
        checks = check_routes(
            self._default_routes(), self._engine.sender, self._check_settings()
        )
        return any(check.healthy for check in checks)

    def health_checks(self, timeout: float | None = None) -> list[RouteCheck]:
        """A live check (/health, /v1/models) of every route, in config order."""
        self._open()
        return self._learned(
            check_routes(
                self._all_routes(), self._engine.sender, self._check_settings(timeout)
            )
        )

    def health(self, timeout: float | None = None) -> dict[str, dict[str, Any]]:
        """Per route: the live check merged with the balancer's state."""
        return self._merge(self.health_checks(timeout))
