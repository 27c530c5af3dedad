"""The provider's call methods: messages in, text and results out.

Each method builds the call (``call.build``: the config's ``params`` overlaid with the call's
keywords, checked before any I/O), runs it through the engine and shapes the answer
(``results``). Written once, for async; ``scripts/unasync.py`` writes the sync twin from it,
whose methods drop the ``a`` (``achat`` -> ``chat``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from ...call.build import chat_spec, completion_spec
from ...probes.check import RouteCheck
from ...probes.run import acheck_routes
from ...results import ChatResult, CompletionResult, StreamAccumulator, StreamEvent
from ..base import ProviderBase, models_of


class AsyncAPI(ProviderBase):
    async def achat(self, messages: Sequence[Mapping[str, Any]], **options: Any) -> str:
        """The assistant's text for ``messages`` ("" when it answered only with tool calls)."""
        return (await self.achat_completion(messages, **options)).content or ""

    async def achat_completion(
        self, messages: Sequence[Mapping[str, Any]], **options: Any
    ) -> ChatResult:
        """The whole answer: content, tool calls, reasoning, usage, route and attempts."""
        spec = chat_spec(self.config.params, messages, options, stream=False)
        return ChatResult.from_reply(await self._aengine.request(spec))

    async def astream(
        self, messages: Sequence[Mapping[str, Any]], **options: Any
    ) -> AsyncGenerator[str, None]:
        """Text deltas as they arrive."""
        events = self.astream_events(messages, **options)
        try:
            async for event in events:
                if event.kind == "content":
                    yield event.text
        finally:
            await events.aclose()  # a generator is not closed by its consumer's close

    async def astream_events(
        self, messages: Sequence[Mapping[str, Any]], **options: Any
    ) -> AsyncGenerator[StreamEvent, None]:
        """Typed pieces: content, reasoning, tool-call fragments, usage, and a final ``end``."""
        spec = chat_spec(self.config.params, messages, options, stream=True)
        stream = await self._aengine.open_stream(spec)
        accumulator = StreamAccumulator()
        batches = stream.batches()
        try:
            async for chunks in batches:
                for chunk in chunks:
                    for event in accumulator.events(chunk):
                        yield event
        finally:
            await batches.aclose()  # a generator is not closed by its consumer's close
            await stream.aclose()
        yield accumulator.end(stream.route, tuple(stream.attempts))

    async def acomplete(self, prompt: str | list[Any], **options: Any) -> CompletionResult:
        """A text completion (/v1/completions)."""
        spec = completion_spec(self.config.params, prompt, options, stream=False)
        return CompletionResult.from_reply(await self._aengine.request(spec))

    async def alist_models(self) -> list[str]:
        """Model ids served by the routes that answer, sorted; raises if none answers."""
        return models_of(await self.ahealth_checks())

    async def ais_available(self) -> bool:
        """True when some route of the default pool (or the fallback) passes a live check."""
        self._open()
        checks = await acheck_routes(
            self._default_routes(), self._aengine.sender, self._check_settings()
        )
        return any(check.healthy for check in checks)

    async def ahealth_checks(self, timeout: float | None = None) -> list[RouteCheck]:
        """A live check (/health, /v1/models) of every route, in config order."""
        self._open()
        return self._learned(
            await acheck_routes(
                self._all_routes(), self._aengine.sender, self._check_settings(timeout)
            )
        )

    async def ahealth(self, timeout: float | None = None) -> dict[str, dict[str, Any]]:
        """Per route: the live check merged with the balancer's state."""
        return self._merge(await self.ahealth_checks(timeout))
