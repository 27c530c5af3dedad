# Generated from llm/send/_async/engine.py by scripts/unasync.py: do not edit.
# Edit the async file, then run `python scripts/unasync.py` (CI runs it with --check).
"""The engine: the attempts of one call, over a sender, until one answer is good.

How this works
--------------
``request`` runs a non-streamed call::

    plan = self.plan(spec)                   # routing: the pool, the fallback, the deadline
    while (route := plan.next()) is not None:
        sleep(plan.delay); send; read        # I/O: the sender, ``read_body``
        on an I/O error: plan.failed(...) and go on
        reply = self.settle(...)             # judge: a Reply, the caller's fault, or go on
    raise plan.exhausted()

``open_stream`` runs a streamed call the same way up to the stream's first event with a
payload (``Stream.prime``): until then a failure fails over. It returns the open stream.
Both are ``_call`` with their own attempt (``_attempt``, ``_stream_attempt``).

A call that may hedge (``plan.hedge_delay``) runs its attempt in a race (``race.py``'s, of
this engine's world): if the attempt has not answered (a stream: its first token) within the
delay, a hedge goes to another route
(``plan.hedge``); the first answer wins, the other attempt is reported abandoned, then
cancelled, and an answer it made anyway is discarded.

Everything an attempt waits on (connecting, interim answers, headers, the whole answer or a
stream's first token) is held to the attempt's timeout by ``sender.bounded``: a peer sending
a little at a time cannot hold it longer. After its first token a stream's reads are bounded
by the route's own timeout, not by what was left of the call's deadline.

Every attempt is reported to the plan exactly once, whatever is raised: an I/O error or a
limit of ``read_body`` as the route's failure, anything else (a cancellation, the caller's own
fault) as an attempt without evidence, before it propagates. Written once, for async;
``scripts/unasync.py`` writes the sync twin from it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from ...call.spec import BodyEncoder, CallSpec
from ...config import LLMConfig
from ...errors import InvalidResponseError
from ...judge.stream import stream_problem
from ...results import Reply
from ...routing.balancer import Balancer
from ...routing.plan import CallPlan
from ...routing.state import RouteState
from ..base import EngineBase
from ..lifecycle import Lifecycle, closed_error
from ..protocols import SyncSender, SyncSleep
from ..race import SyncAttempt, SyncDiscard, SyncRace
from .read import read_body
from .stream import SyncStream

T = TypeVar("T")


def _keep(reply: Reply) -> None:
    """A Reply that lost its race needs no cleaning up (its connection is released)."""


def _discard_stream(stream: SyncStream) -> None:
    stream.discard()


class SyncEngine(EngineBase):
    def __init__(
        self,
        config: LLMConfig,
        balancer: Balancer,
        sender: SyncSender,
        *,
        clock: Callable[[], float],
        sleep: SyncSleep,
        life: Lifecycle | None = None,
    ) -> None:
        super().__init__(config, balancer, clock=clock, life=life)
        self.sender = sender
        self.sleep = sleep

    def request(self, spec: CallSpec) -> Reply:
        """A non-streamed call: the first good answer, else the error of the last attempt."""
        return self._call(spec, self._attempt, _keep)

    def open_stream(self, spec: CallSpec) -> SyncStream:
        """A streamed call, returned once its first event with a payload is in hand (the
        stream then owns the call: closing it ends the call)."""
        return self._call(spec, self._stream_attempt, _discard_stream)

    def _call(
        self, spec: CallSpec, attempt: SyncAttempt[T | None], discard: SyncDiscard[T]
    ) -> T:
        """The attempts of one call, each made by ``attempt`` (raced with a hedge when the
        plan says so), until one answers; ``discard`` cleans up an answer that lost a race."""
        plan = self.plan(spec)
        body = BodyEncoder(spec)
        life = self.life
        life.enter()
        answer: T | None = None
        try:
            while (route := plan.next()) is not None:
                if plan.delay > 0:
                    self.sleep(plan.delay)
                if life.closed:
                    raise closed_error()
                payload, timeout = self.content(body, route.config), plan.timeout
                started = plan.start(route)
                delay = plan.hedge_delay(route) if plan.may_hedge else None
                if delay is None:
                    answer = attempt(
                        plan, spec, route, started, payload, timeout, plan.attempt_headers
                    )
                else:  # raced with a hedge (race.py)
                    race = SyncRace(plan, delay, functools.partial(self._content, body), discard)
                    answer = race.run(attempt, spec, route, started, payload)
                if answer is not None:
                    if plan.call is not None and not spec.stream:
                        plan.ended()  # a stream's call ends with the stream
                    return answer
            raise plan.exhausted()
        except BaseException as exc:
            if plan.call is not None:
                plan.ended(exc)
            raise
        finally:
            if answer is None or not spec.stream:  # an open stream leaves when it is closed
                life.leave()

    def _attempt(
        self,
        plan: CallPlan,
        spec: CallSpec,
        route: RouteState,
        started: float,
        payload: bytes | None,
        timeout: float,
        headers: dict[str, str] | None,
    ) -> Reply | None:
        """One attempt of a non-streamed call: its Reply, or None when the route failed
        (reported); raises the request's own fault and whatever is not the route's."""
        sender = self.sender
        try:
            with sender.bounded(timeout, False):
                request = self.request_for(route.config, spec, payload, timeout, headers)
                answer = sender.send(request)
                try:
                    content = read_body(
                        answer, route.name, self.max_response_bytes, self.clock, started, timeout
                    )
                finally:
                    answer.close()
            return self.settle(plan, route, started, answer, content, spec.expect)
        except BaseException as exc:
            if not self.report_raised(plan, route, started, exc, sender.io_errors):
                raise
            return None

    def _stream_attempt(
        self,
        plan: CallPlan,
        spec: CallSpec,
        route: RouteState,
        started: float,
        payload: bytes | None,
        timeout: float,
        headers: dict[str, str] | None,
    ) -> SyncStream | None:
        """One attempt of a streamed call, up to its first token: the open stream, or None
        when the route failed (reported); raises the request's own fault and whatever is not
        the route's."""
        sender = self.sender
        try:
            with sender.bounded(timeout, True):  # up to the first token
                request = self.request_for(route.config, spec, payload, timeout, headers)
                answer = sender.send(request)
                if 200 <= answer.status_code < 300:
                    problem = stream_problem(answer.headers)
                    if problem is not None:
                        answer.close()
                        raise InvalidResponseError(problem, route=route.name)
                    stream = SyncStream(
                        plan,
                        route,
                        started,
                        answer,
                        clock=self.clock,
                        io_errors=sender.io_errors,
                        max_event_bytes=self.max_response_bytes,
                        kind=spec.expect,
                        life=self.life,
                        timeout=timeout,
                    )
                    return stream if stream.prime() else None  # prime reported a failure
                try:
                    content = read_body(
                        answer, route.name, self.max_response_bytes, self.clock, started, timeout
                    )
                finally:
                    answer.close()
            # an error status: the request's own fault raises, else the next route
            self.settle(plan, route, started, answer, content, spec.expect)
            return None
        except BaseException as exc:
            if not self.report_raised(plan, route, started, exc, sender.io_errors):
                raise
            return None

    def close(self) -> None:
        self.sender.close()
