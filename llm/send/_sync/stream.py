# Generated from llm/send/_async/stream.py by scripts/unasync.py: do not edit.
# Edit the async file, then run `python scripts/unasync.py` (CI runs it with --check).
"""An open stream of one call: events handed out as they arrive, the route told how it ended.

How this works
--------------
The engine opens a stream and calls ``prime``: it reads up to the first event that carries
something for the caller (``judge.stream.carries_payload``). Up to then a failure is the
route's, reported to the plan, and the engine fails over to the next route. After that the
stream belongs to the caller: ``batches()`` gives the events a list per piece of the body
(``piece`` holds its bytes), iterating gives them one by one, ``iter_raw`` gives the bytes.
A break after the first token raises ``StreamInterruptedError`` and counts against the
route; the end (``[DONE]``) counts as a success with the stream's latency and time to first
token; closing early records the time to first token and frees the route.

Whatever happens, the attempt is reported exactly once (the plan ignores a second report),
so in-flight counts stay exact, and the connection is released. Written once, for async;
``scripts/unasync.py`` writes the sync twin from it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from typing import Any

from ...call.spec import AnswerKind
from ...errors import RouteError, StreamInterruptedError
from ...judge.answers import prompt_counts, too_long
from ...judge.sse import SSEDecoder
from ...judge.status import outcome_name
from ...judge.stream import carries_payload, events_of
from ...routing.plan import CallPlan
from ...routing.state import RouteState
from ..failures import route_failure
from ..lifecycle import Lifecycle, closed_error
from ..protocols import SyncAnswer

Event = dict[str, Any]


class SyncStream:
    """An open stream: iterate for events (dicts), ``iter_raw`` for bytes; always close it."""

    def __init__(
        self,
        plan: CallPlan,
        route: RouteState,
        started: float,
        answer: SyncAnswer,
        *,
        clock: Callable[[], float],
        io_errors: tuple[type[BaseException], ...],
        max_event_bytes: int,
        kind: AnswerKind | None,
        life: Lifecycle,
        timeout: float | None = None,
    ) -> None:
        self._plan = plan
        self._timeout = plan.timeout if timeout is None else timeout  # up to the first token
        self._route = route
        self._started = started
        self._answer = answer
        self._clock = clock
        self._io_errors = io_errors
        self._kind = kind
        self._life = life
        self._left = False  # whether this stream's call has left the provider's lifecycle
        self._error: BaseException | None = None  # what ended the call, for the hooks
        self._raw = answer.iter_bytes()
        self._decoder = SSEDecoder(max_event_bytes)
        self._events: list[Event] = []  # read while priming, not handed out yet
        self._chunks: list[bytes] = []
        self.piece = b""
        self.route = route.name
        self.attempts = plan.attempts
        self.ttft_s: float | None = None
        self._seen = 0  # events read: about one per generated token (vLLM sends one a chunk)
        self.status_code = answer.status_code
        self.headers = answer.headers

    def prime(self) -> bool:
        """Read up to the first event with a payload. False (reported, closed) on failure."""
        decoder = self._decoder
        clock, timeout, started = self._clock, self._timeout, self._started
        try:
            for chunk in self._raw:
                self._chunks.append(chunk)
                events = events_of(decoder, chunk, self.route, self._kind)
                self._seen += len(events)
                self._events.extend(events)
                if any(carries_payload(event) for event in events):
                    self.ttft_s = clock() - started
                    return True
                if decoder.done:
                    return True
                if clock() - started > timeout:  # keep-alive comments, role chunks...
                    raise too_long(self.route, timeout, "no first token")
            error: RouteError = StreamInterruptedError(
                "stream ended before its first token", route=self.route
            )
        except BaseException as exc:
            failure = route_failure(self.route, exc, self._io_errors)
            if failure is None:  # not the route's fault: the engine reports the attempt
                self._release()
                raise
            if self._life.closed:  # the provider's closing cut it: the engine says so
                self._release()
                raise
            error = failure
        cut = isinstance(error, StreamInterruptedError)
        self._fail(error, "stream_cut" if cut else outcome_name(error))
        return False

    def __iter__(self) -> Generator[Event, None, None]:
        for events in self.batches():
            for event in events:
                yield event

    def iter_raw(self) -> Generator[bytes, None, None]:
        for _events in self.batches():
            yield self.piece

    def batches(self) -> Generator[list[Event], None, None]:
        """The events as they come, a list per piece of the body (``piece``: its bytes)."""
        try:
            last: list[Event] = []  # the last events that came (the usage chunk is last)
            if self._chunks:
                self.piece = b"".join(self._chunks)
                last = self._events
                yield last
                self._chunks, self._events = [], []
            decoder = self._decoder
            route = self.route
            raw = self._raw
            while not decoder.done:
                try:
                    chunk = raw.__next__()
                except StopIteration:
                    raise StreamInterruptedError(
                        "stream ended without [DONE]", route=route
                    ) from None
                events = events_of(decoder, chunk, route, self._kind)
                self._seen += len(events)
                if self.ttft_s is None and any(carries_payload(e) for e in events):
                    self.ttft_s = self._clock() - self._started
                self.piece = chunk
                if events:
                    last = events
                yield events
            self._succeed(last)
        except BaseException as exc:
            failure = route_failure(self.route, exc, self._io_errors)
            if failure is None:  # the consumer closing the generator, a cancellation, a bug
                raise
            if self._life.closed:  # the provider's closing cut it: no route is to blame
                self._plan.finished(self._route, self._started, outcome="closed")
                self._error = closed_error()
                raise self._error from None
            self._raise_interrupted(failure)
        finally:
            self.close()

    def _raise_interrupted(self, cause: RouteError) -> None:
        error = StreamInterruptedError(
            f"stream interrupted after the first token: {Exception.__str__(cause)}",
            route=self.route,
            attempts=self.attempts,
        )
        self._fail(error, "stream_cut")
        error.attempts = tuple(self.attempts)
        self._error = error
        raise error from None  # the cause's words are in the message, masked with it

    def _succeed(self, last: list[Event]) -> None:
        latency = self._clock() - self._started
        # the events less the first (the role) and the last (usage, or a finish reason)
        generated = self._seen - 2 if self._seen > 3 else 1
        prompt, cached = prompt_counts(last[-1].get("usage")) if last else (0, 0)
        self._plan.succeeded(
            self._route,
            self._started,
            latency,
            self.ttft_s,
            generated=generated,
            prompt_tokens=prompt,
            cached_tokens=cached,
        )

    def _fail(self, error: RouteError, outcome: str) -> None:
        self._plan.failed(self._route, self._started, error, outcome)
        self._release()

    def _release(self) -> None:
        # Closing a broken connection must not mask the error being reported.
        with contextlib.suppress(Exception):
            self._answer.close()

    def discard(self) -> None:
        """Close the connection of a stream that lost its call's race (reported abandoned by
        the engine): nothing more is reported, and the call is not ended by it."""
        self._left = True
        self._release()

    def close(self) -> None:
        """Release the connection; a stream closed before its end still records its TTFT."""
        if self.ttft_s is not None:
            self._plan.succeeded(self._route, self._started, None, self.ttft_s)
        else:
            self._plan.finished(self._route, self._started)
        self._release()
        if not self._left:
            self._left = True
            self._life.leave()
            if self._plan.call is not None:
                self._plan.ended(self._error)

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
