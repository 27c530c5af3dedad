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

from collections.abc import Callable, Mapping

from ..call.affinity import affinity_key
from ..call.headers import route_headers
from ..call.size import prompt_tokens
from ..call.spec import AnswerKind, BodyEncoder, CallSpec
from ..config import LLMConfig, RouteConfig
from ..errors import InvalidRequestError, InvalidResponseError, LLMError
from ..events import CallEnded, CallInfo, CallStarted
from ..judge.answers import decode_answer, prompt_counts
from ..judge.context import context_limit
from ..judge.load_report import parse_orca
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
from ..routing.plan import CallPlan, outcome_of, plan_call
from ..routing.state import RouteState
from .failures import route_failure
from .lifecycle import Lifecycle, closed_error
from .protocols import AsyncAnswer, Request, SyncAnswer

# the operation a call's expected answer names (OpenTelemetry's gen_ai.operation.name)
_OPERATIONS: dict[AnswerKind | None, str] = {"chat": "chat", "completion": "text_completion"}

ORCA_REQUEST = "endpoint-load-metrics-format"
ORCA_ANSWER = "endpoint-load-metrics"


def asked_tokens(spec: CallSpec) -> int:
    """The ``max_tokens`` (or ``max_completion_tokens``) a call asks for; 0 when it names
    none (the load it adds is then counted in calls only)."""
    body = spec.body
    if not body:
        return 0
    asked = body.get("max_tokens")
    if asked is None:
        asked = body.get("max_completion_tokens")
    return asked if type(asked) is int and asked > 0 else 0


def generated_tokens(data: object) -> int | None:
    """``usage.completion_tokens`` of a decoded answer, when it is a positive count."""
    usage = data.get("usage") if isinstance(data, dict) else None
    count = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return count if type(count) is int and count > 0 else None


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
        self.orca = config.load.asks_orca(config.lb_policy)  # ask for vLLM's load reports
        self.by_prefix = config.affinity.by_prefix
        self.prefix_chars = config.affinity.prefix_chars
        self.hedge = config.hedge.enabled  # calls hedge unless they say otherwise
        self._urls: dict[tuple[str, str], str] = {}
        self._headers: dict[str, dict[str, str]] = {}

    def plan(self, spec: CallSpec) -> CallPlan:
        """The call's plan; with hooks registered, ``CallStarted`` first, and ``CallEnded``
        when no plan can be made (no route serves the model, the call fits no window)."""
        config = self.config
        key = None
        if spec.session is not None or self.by_prefix:
            key = affinity_key(spec.session, spec.body, self.by_prefix, self.prefix_chars)
        model = spec.model or config.default_model
        hooks = self.balancer.hooks
        call = None
        if hooks is not None:
            call = CallInfo(
                _OPERATIONS.get(spec.expect) or spec.path.split("?", 1)[0].strip("/"),
                model,
                spec.stream,
                spec.route,
                self.clock(),
            )
            if hooks.on_call_started:
                hooks.emit(hooks.on_call_started, CallStarted(call))
        try:
            plan = plan_call(
                self.balancer,
                route=spec.route,
                model=model,
                retry=config.retry,
                deadline=spec.deadline if spec.deadline is not None else config.deadline,
                stream=spec.stream,
                max_retries=spec.max_retries,
                tokens=asked_tokens(spec),
                key=key,
                prompt_tokens=(
                    prompt_tokens(spec.body) if key is not None or self.balancer.limits_known else 0
                ),
                fallback=spec.fallback,
                hedge=self.hedge if spec.hedge is None else spec.hedge,
            )
        except LLMError as error:
            if call is not None and hooks is not None and hooks.on_call_ended:
                ended = CallEnded(
                    call,
                    type(error).__name__,
                    None,
                    None,
                    (),
                    self.clock() - call.started_at,
                    None,
                    0,
                    None,
                    0,
                    False,
                    False,
                    error,
                )
                hooks.emit(hooks.on_call_ended, ended)
            raise
        if call is not None:
            plan.call, plan.hooks = call, hooks
        return plan

    def request_for(
        self,
        route: RouteConfig,
        spec: CallSpec,
        content: bytes | None,
        timeout: float,
        added: Mapping[str, str] | None = None,
    ) -> Request:
        """The request of one attempt (URL and headers made once per route and path);
        ``added``: headers hooks added (the route's own win over them)."""
        key = (route.name, spec.path)
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = route.base_url + spec.path
        headers = self._headers.get(route.name)
        if headers is None:
            headers = self._headers[route.name] = route_headers(route)
            if self.orca:
                headers.setdefault(ORCA_REQUEST, "TEXT")
        if added:
            headers = {**added, **headers}
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

    def _content(self, body: BodyEncoder, route: RouteState) -> bytes | None:
        """A hedge's body for ``route`` (``race.py``)."""
        return self.content(body, route.config)

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
        if not plan.is_open(route):
            return False
        error = route_failure(route.name, exc, io_errors)
        if error is None:  # a cancellation, the caller closing a stream, a bug
            plan.finished(route, started, outcome=outcome_of(exc))
            return False
        if self.life.closed:
            plan.finished(route, started, outcome="closed")
            raise closed_error() from None
        plan.failed(route, started, error, outcome_name(error))
        return True

    def _too_long(self, plan: CallPlan, route: RouteState, message: str | None) -> bool:
        """A 400 saying the call does not fit the route's context window teaches the route's
        window (unless /v1/models or the config told it); True when a route not tried yet
        may still take the call (``CallPlan.refit``)."""
        found = context_limit(message)
        if found is None:
            return False
        self.balancer.learn_limit(route.name, found.max_model_len, "error")
        if len(plan.attempts) >= plan.max_attempts:
            return False  # no attempt left: the server's own error is the answer
        return plan.refit(found.prompt_tokens)

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
        verdict = verdict_for_status(status, expect is None)
        if verdict is Verdict.OK:
            data, problem = decode_answer(content, expect)
            if problem is None:
                latency = self.clock() - started
                waiting = kv_usage = None
                if self.orca and (orca := headers.get(ORCA_ANSWER)) is not None:
                    report = parse_orca(orca)
                    if report is not None:
                        waiting, kv_usage = report.waiting, report.kv_usage
                prompt, cached = prompt_counts(data.get("usage"))
                plan.succeeded(
                    route,
                    started,
                    latency,
                    generated=generated_tokens(data),
                    waiting=waiting,
                    kv_usage=kv_usage,
                    prompt_tokens=prompt,
                    cached_tokens=cached,
                )
                return Reply(route.name, status, headers, content, data, plan.attempts, latency)
            invalid = InvalidResponseError(f"HTTP {status} with {problem}", route=route.name)
            plan.failed(route, started, invalid, "invalid_response", status_code=status)
            return None
        location = headers.get("location") if 300 <= status < 400 else None
        error = status_error(route.name, status, content, location=location)
        if verdict is Verdict.CALLER_FAULT:
            plan.finished(route, started, error, "status", status)
            if status == 400 and self._too_long(plan, route, error.server_message):
                return None  # another route's window may take it: no ejection, go on
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
