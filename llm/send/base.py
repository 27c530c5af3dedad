"""What both engines share that is not I/O: the plan, the parts of a request, the verdict.

How this works
--------------
An engine runs the attempts of one call (``_async/engine.py`` by hand, ``_sync/engine.py``
generated from it)::

    plan = self.plan(spec)
    while (route := plan.next()) is not None:
        sleep(plan.delay); send; read
        on an I/O error: plan.failed(...) and go on
        reply = self.settle(...)   # a Reply; or raises the caller's fault; or None: go on
    raise plan.exhausted()

``EngineBase`` holds the rest, identical for both: ``plan`` (``routing.plan.plan_call`` with
the config's defaults); ``content``, an attempt's body (``call.spec.BodyEncoder``: encoded
once per model name); ``request_for``, an attempt's request (its URL and headers made once per
route and path); and ``settle``: what a status and body mean (``judge``) applied to the plan.
"""

from __future__ import annotations

from collections.abc import Callable

from ..call.headers import route_headers
from ..call.spec import AnswerKind, BodyEncoder, CallSpec
from ..config import LLMConfig, RouteConfig
from ..errors import InvalidRequestError, InvalidResponseError
from ..judge.answers import decode_answer
from ..judge.status import (
    RETRY_AFTER_STATUSES,
    Verdict,
    outcome_name,
    retry_after_seconds,
    status_error,
    verdict_for_status,
)
from ..results import Reply
from ..routing.balancer import Balancer
from ..routing.plan import CallPlan, plan_call
from ..routing.state import RouteState
from .failures import route_failure
from .lifecycle import Lifecycle, closed_error
from .protocols import AsyncAnswer, Request, SyncAnswer


class EngineBase:
    """The I/O-free part of both engines."""

    def __init__(
        self,
        config: LLMConfig,
        balancer: Balancer,
        *,
        clock: Callable[[], float],
        life: Lifecycle | None = None,
    ) -> None:
        self.config = config
        self.balancer = balancer
        self.clock = clock
        self.life = life or Lifecycle()
        self.max_response_bytes = config.max_response_bytes
        self._urls: dict[tuple[str, str], str] = {}
        self._headers: dict[str, dict[str, str]] = {}

    def plan(self, spec: CallSpec) -> CallPlan:
        config = self.config
        return plan_call(
            self.balancer,
            route=spec.route,
            model=spec.model or config.default_model,
            retry=config.retry,
            deadline=spec.deadline if spec.deadline is not None else config.deadline,
            stream=spec.stream,
            max_retries=spec.max_retries,
        )

    def request_for(
        self, route: RouteConfig, spec: CallSpec, content: bytes | None, timeout: float
    ) -> Request:
        """The request of one attempt (URL and headers made once per route and path)."""
        key = (route.name, spec.path)
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = route.base_url + spec.path
        headers = self._headers.get(route.name)
        if headers is None:
            headers = self._headers[route.name] = route_headers(route)
        if spec.headers:
            headers = {**headers, **spec.headers}
        connect_timeout = min(self.config.connect_timeout, timeout)
        # a stream's gaps after its first token: the route's own timeout, not what is left
        read_timeout = route.timeout if spec.stream else timeout
        return Request(
            route,
            spec.method,
            url,
            headers,
            content,
            timeout,
            connect_timeout,
            read_timeout,
            spec.stream,
        )

    @staticmethod
    def content(body: BodyEncoder, route: RouteConfig) -> bytes | None:
        try:
            return body.for_route(route)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"request body is not JSON-serialisable: {exc}") from None

    def report_raised(
        self,
        plan: CallPlan,
        route: RouteState,
        started: float,
        exc: BaseException,
        io_errors: tuple[type[BaseException], ...],
    ) -> bool:
        """Report the open attempt, which raised ``exc``. True: the route's failure, reported
        (try the next route). False: re-raise it, because it is not the route's fault (the
        attempt is reported as without evidence) or the attempt was reported already (the
        request's own fault, raised once recorded). Raises ``ProviderClosedError`` when the
        provider's closing ended the attempt: no route is blamed for that."""
        if not plan.attempt_open:
            return False
        error = route_failure(route.name, exc, io_errors)
        if error is None:
            plan.finished(route, started)
            return False
        if self.life.closed:
            plan.finished(route, started)
            raise closed_error() from None
        plan.failed(route, started, error, outcome_name(error))
        return True

    def settle(
        self,
        plan: CallPlan,
        route: RouteState,
        started: float,
        answer: SyncAnswer | AsyncAnswer,
        content: bytes,
        expect: AnswerKind | None,
    ) -> Reply | None:
        """A Reply on success; None when the route failed (try the next); raises the
        request's own fault (a 400...) after recording it."""
        status, headers = answer.status_code, answer.headers
        verdict = verdict_for_status(status)
        if verdict is Verdict.OK:
            data, problem = decode_answer(content, expect)
            if problem is None:
                latency = self.clock() - started
                plan.succeeded(route, started, latency)
                return Reply(route.name, status, headers, content, data, plan.attempts, latency)
            invalid = InvalidResponseError(f"HTTP {status} with {problem}", route=route.name)
            plan.failed(route, started, invalid, "invalid_response", status_code=status)
            return None
        location = headers.get("location") if 300 <= status < 400 else None
        error = status_error(route.name, status, content, location=location)
        if verdict is Verdict.CALLER_FAULT:
            plan.finished(route, started, error, "status", status)
            error.attempts = tuple(plan.attempts)
            raise error
        retry_after = None
        if status in RETRY_AFTER_STATUSES:
            retry_after = retry_after_seconds(headers, self.config.retry.retry_after_max)
        plan.failed(
            route,
            started,
            error,
            "status",
            status_code=status,
            retry_after=retry_after,
            loud=verdict is Verdict.MISCONFIGURED,
        )
        return None
