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

from collections.abc import Callable

from ...call.spec import BodyEncoder, CallSpec
from ...config import LLMConfig
from ...errors import InvalidResponseError
from ...judge.stream import stream_problem
from ...results import Reply
from ...routing.balancer import Balancer
from ..base import EngineBase
from ..lifecycle import Lifecycle, closed_error
from ..protocols import AsyncSender, AsyncSleep
from .read import read_body
from .stream import AsyncStream


class AsyncEngine(EngineBase):
    def __init__(
        self,
        config: LLMConfig,
        balancer: Balancer,
        sender: AsyncSender,
        *,
        clock: Callable[[], float],
        sleep: AsyncSleep,
        life: Lifecycle | None = None,
    ) -> None:
        super().__init__(config, balancer, clock=clock, life=life)
        self.sender = sender
        self.sleep = sleep

    async def request(self, spec: CallSpec) -> Reply:
        """A non-streamed call: the first good answer, else the error of the last attempt."""
        plan = self.plan(spec)
        body = BodyEncoder(spec)
        sender, limit, clock, life = self.sender, self.max_response_bytes, self.clock, self.life
        life.enter()
        try:
            while (route := plan.next()) is not None:
                if plan.delay > 0:
                    await self.sleep(plan.delay)
                if life.closed:
                    raise closed_error()
                payload, timeout = self.content(body, route.config), plan.timeout
                started = plan.start(route)
                try:
                    async with sender.bounded(timeout, False):
                        request = self.request_for(
                            route.config, spec, payload, timeout, plan.attempt_headers
                        )
                        answer = await sender.send(request)
                        try:
                            content = await read_body(
                                answer, route.name, limit, clock, started, timeout
                            )
                        finally:
                            await answer.aclose()
                    reply = self.settle(plan, route, started, answer, content, spec.expect)
                except BaseException as exc:
                    if not self.report_raised(plan, route, started, exc, sender.io_errors):
                        raise
                    continue
                if reply is not None:
                    if plan.call is not None:
                        plan.ended()
                    return reply
            raise plan.exhausted()
        except BaseException as exc:
            if plan.call is not None:
                plan.ended(exc)
            raise
        finally:
            life.leave()

    async def open_stream(self, spec: CallSpec) -> AsyncStream:
        """A streamed call, returned once its first event with a payload is in hand (the
        stream then owns the call: closing it ends the call)."""
        plan = self.plan(spec)
        body = BodyEncoder(spec)
        sender, limit, clock, life = self.sender, self.max_response_bytes, self.clock, self.life
        life.enter()
        opened: AsyncStream | None = None
        try:
            while (route := plan.next()) is not None:
                if plan.delay > 0:
                    await self.sleep(plan.delay)
                if life.closed:
                    raise closed_error()
                payload, timeout = self.content(body, route.config), plan.timeout
                started = plan.start(route)
                try:
                    async with sender.bounded(timeout, True):  # up to the first token
                        request = self.request_for(
                            route.config, spec, payload, timeout, plan.attempt_headers
                        )
                        answer = await sender.send(request)
                        if 200 <= answer.status_code < 300:
                            problem = stream_problem(answer.headers)
                            if problem is not None:
                                await answer.aclose()
                                raise InvalidResponseError(problem, route=route.name)
                            stream = AsyncStream(
                                plan,
                                route,
                                started,
                                answer,
                                clock=clock,
                                io_errors=sender.io_errors,
                                max_event_bytes=limit,
                                kind=spec.expect,
                                life=life,
                            )
                            if await stream.prime():
                                opened = stream
                                return stream
                            continue  # prime reported the failure
                        try:
                            content = await read_body(
                                answer, route.name, limit, clock, started, timeout
                            )
                        finally:
                            await answer.aclose()
                    # an error status: the request's own fault raises, else the next route
                    self.settle(plan, route, started, answer, content, spec.expect)
                except BaseException as exc:
                    if not self.report_raised(plan, route, started, exc, sender.io_errors):
                        raise
            raise plan.exhausted()
        except BaseException as exc:
            if plan.call is not None:
                plan.ended(exc)
            raise
        finally:
            if opened is None:
                life.leave()

    async def aclose(self) -> None:
        await self.sender.aclose()
