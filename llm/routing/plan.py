"""The attempts of one call: where each one goes and how long to wait before it.

Theory of operation
-------------------
``CallPlan.next()`` decides; the engines only act (sleep ``plan.delay``, send with
``plan.timeout``, report the outcome back through the plan). The rules, in order:

1. A call makes at most ``1 + max_retries`` attempts, all inside one overall deadline. The first
   attempt always happens, even past the deadline or with every route ejected: a call never
   fails without trying.
2. Each attempt goes at once (no wait) to an available route of the pool not yet tried.
3. When the pool has none left, the fallback route is tried (at once, with its own model).
4. After that, retries go to the best route again: an available one if any recovered, else the
   one whose cooldown (or Retry-After) ends first. These wait an exponential backoff with
   jitter (``backoff_initial * 2^k``, capped at ``backoff_max``, between half and all of it),
   and at least as long as the route's honoured Retry-After.
5. A wait that would end past the deadline ends the call instead.

Reporting: ``start`` marks the route busy and returns the start time; ``succeeded``,
``failed`` and ``finished`` (no evidence either way) release it, update health and record an
``Attempt``. An attempt is open from ``start`` to its first report, and reported exactly
once: a second report of it is ignored, so whatever a sender, a parser or the caller raises,
and wherever, the route's in-flight count and trial slot are released once and only once.

Hedging (``hedge.py``): ``hedge_delay`` says how long an attempt may wait before a hedge
(None: the call does not hedge); when it has passed, ``hedge`` gives the hedge's route (an
untried route with room for it, within the budget) or None, and then ``hedge_again`` says
whether to ask again after another such delay. Two attempts are then open at
once, on two routes, so an open attempt is known by its route; reports may come from two
threads (the sync engine's), and claiming an attempt (``dict.pop``) is atomic. The race's
loser is reported with ``abandon``; ``won`` marks a hedge that answered. A hedge is not a
retry: it does not count against ``max_retries``.

Hooks (``llm.events``): when the engine gave the plan a ``call`` and its ``hooks``, ``start``
emits ``AttemptStarted`` (keeping the headers hooks added in ``attempt_headers``), each report
emits ``AttemptEnded``, and ``ended`` (called by the engine, or by a stream at its end) emits
``CallEnded`` once. With no hook, ``call`` is None and each of these costs one test.

``plan_call`` makes the plan of one call: a pinned route alone, or the pool serving the
call's model with the fallback route after it (unless the fallback is in that pool).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Container
from urllib.parse import urlsplit

from ..config import RetryConfig
from ..errors import AllRoutesFailedError, Attempt, LLMError, NoRouteError, RouteError
from ..events import AttemptEnded, AttemptStarted, CallEnded, CallInfo, Hooks
from .balancer import Balancer
from .fit import min_limit, need_of, no_fit_error, unfit
from .hedge import MAX_HEDGES
from .indexes import Either
from .state import Pool, RouteState

Clock = Callable[[], float]


def plan_call(
    balancer: Balancer,
    *,
    route: str | None,
    model: str,
    retry: RetryConfig,
    deadline: float,
    stream: bool = False,
    max_retries: int | None = None,
    tokens: int = 0,
    key: bytes | None = None,
    prompt_tokens: int = 0,
    fallback: bool = True,
    hedge: bool = False,
) -> CallPlan:
    """The plan of one call: ``route`` pinned, else ``model``'s pool then the fallback route
    (``key``: the call's affinity key, ``affinity.py``; ``prompt_tokens``: its estimated
    prompt, which with ``tokens`` must fit a route's context window, ``fit.py``;
    ``fallback=False``: never the fallback route, which serves another model; ``hedge``:
    the call may hedge).

    Raises ``NoRouteError`` naming what exists when no route has that name or serves that
    model, ``ContextWindowError`` when the call fits no route it could go to."""
    other = None
    if route is not None:
        try:
            pool = balancer.single(route)
            if not pool.routes:
                status = balancer.group_status.get(route, "none")
                raise NoRouteError(f"route {route!r} has no instance now: {status}")
        except KeyError:
            raise NoRouteError(
                f"no route named {route!r}; configured routes: " + ", ".join(balancer.routes)
            ) from None
    else:
        found = balancer.pool(model)
        if found is None:
            waiting = [
                f"route {name!r} discovers its instances: {balancer.group_status[name]}"
                for name, group in balancer.groups.items()
                if group.model == model
            ]
            if waiting:
                raise NoRouteError(f"no instance serves model {model!r} now; " + "; ".join(waiting))
            raise NoRouteError(
                f"no route serves model {model!r}; models served: " + ", ".join(balancer.models())
            )
        pool = found
        name = balancer.fallback_route
        if fallback and name is not None and name not in pool.names:
            other = balancer.single(name)
    plan = CallPlan(
        balancer,
        pool,
        other,
        retry=retry,
        deadline=deadline,
        stream=stream,
        max_retries=max_retries,
        tokens=tokens,
        key=key,
    )
    plan.pinned = route is not None or not fallback
    plan.may_hedge = hedge and route is None
    plan.prompt_tokens = prompt_tokens
    if balancer.limits_known:
        need = need_of(prompt_tokens, tokens)
        fallback_limit = other.routes[0].max_model_len if other is not None else None
        if need > min_limit(pool, balancer.limits_version) or (
            fallback_limit is not None and fallback_limit < need
        ):
            plan.fit(need, model=model)
    return plan


def backoff_delay(retry_number: int, retry: RetryConfig, rng: random.Random) -> float:
    """Wait before the n-th (0-based) repeat attempt: capped exponential, jittered."""
    ceiling = min(retry.backoff_max, retry.backoff_initial * (2.0 ** min(retry_number, 32)))
    return ceiling * (0.5 + 0.5 * rng.random())


class CallPlan:
    __slots__ = (
        "_answer",
        "_open",
        "attempt_headers",
        "attempts",
        "balancer",
        "begun",
        "call",
        "clock",
        "deadline_at",
        "delay",
        "fallback",
        "hedge_won",
        "hedges",
        "hooks",
        "key",
        "last_error",
        "max_attempts",
        "may_hedge",
        "pinned",
        "pool",
        "prompt_tokens",
        "repeats",
        "retry",
        "started_at",
        "stream",
        "timeout",
        "tokens",
        "tried",
        "unfit",
    )

    def __init__(
        self,
        balancer: Balancer,
        pool: Pool,
        fallback: Pool | None,
        *,
        retry: RetryConfig,
        deadline: float,
        stream: bool = False,
        max_retries: int | None = None,
        tokens: int = 0,
        key: bytes | None = None,
    ) -> None:
        self.balancer = balancer
        self.key = key
        self.tokens = tokens  # max_tokens asked: counted in flight on the route of each attempt
        self.clock = balancer.clock
        self.pool = pool
        self.fallback = fallback
        self.retry = retry
        self.stream = stream
        self.max_attempts = 1 + (retry.max_retries if max_retries is None else max_retries)
        self.started_at = self.clock()
        self.deadline_at = self.started_at + deadline
        self.tried: list[RouteState] = []
        self.attempts: list[Attempt] = []  # in the order they ended
        # the open attempts, by route: (number, hedge, AttemptStarted or None, retry reason)
        self._open: dict[RouteState, tuple[int, bool, AttemptStarted | None, str | None]] = {}
        self.begun = 0  # attempts started, hedges included
        self.hedges = 0  # hedges started
        self.may_hedge = False
        self.hedge_won = False  # the answer came from a hedge
        self.last_error: LLMError | None = None
        self.repeats = 0
        self.delay = 0.0
        self.timeout = 0.0
        self.prompt_tokens = 0
        self.unfit: frozenset[RouteState] = frozenset()  # routes the call does not fit
        # a pinned call (or one that must keep its model) never leaves for the context fallback
        self.pinned = False
        self.call: CallInfo | None = None  # set with ``hooks`` when some hook listens
        self.hooks: Hooks | None = None
        self.attempt_headers: dict[str, str] | None = None  # what hooks add to the request
        self._answer: tuple[RouteState, float | None, int, int | None, int] | None = None

    # -- fitting -------------------------------------------------------------------------

    def fit(self, need: int, *, model: str | None = None) -> bool:
        """Keep the call off the routes whose context window is smaller than ``need``
        (``fit.py``): to the context fallback when no route of the pool fits. True when
        some route not tried yet fits; raises ``ContextWindowError`` when none fits at all
        before the first attempt."""
        balancer = self.balancer
        fallback = self.fallback
        pinned = self.pinned
        candidates = [*self.pool.routes, *(fallback.routes if fallback is not None else ())]
        self.unfit = unfit(candidates, need)
        if fallback is not None and fallback.routes[0] in self.unfit:
            self.fallback = None
        if all(route in self.unfit for route in self.pool.routes):
            context = None if pinned else balancer.context_pool()
            if context is not None and context is not self.pool:
                context_unfit = unfit(context.routes, need)
                if not all(route in context_unfit for route in context.routes):
                    self.pool = context
                    self.unfit |= context_unfit
        routes = [*self.pool.routes, *(self.fallback.routes if self.fallback else ())]
        fits = [route for route in routes if route not in self.unfit]
        if not self.attempts and not fits:
            shown = list(dict.fromkeys(candidates))
            raise no_fit_error(
                model or self.pool.model,
                self.prompt_tokens,
                self.tokens,
                shown,
                None if pinned else balancer.context_fallback,
            )
        return any(route not in self.tried for route in fits)

    def refit(self, server_prompt_tokens: int | None) -> bool:
        """A route refused the call as too long (its window now learned; the server may
        have counted the prompt): may an untried route still take it?"""
        if server_prompt_tokens is not None and server_prompt_tokens > self.prompt_tokens:
            self.prompt_tokens = server_prompt_tokens
        return self.fit(need_of(self.prompt_tokens, self.tokens))

    # -- deciding ------------------------------------------------------------------------

    def next(self) -> RouteState | None:
        """The route of the next attempt (``delay`` and ``timeout`` set), or None: give up."""
        made = self.begun - self.hedges
        if made >= self.max_attempts:
            return None
        now = self.clock()
        if made and now >= self.deadline_at:
            return None
        balancer = self.balancer
        route, tried = self._pick_untried()
        if self.fallback is not None and self.fallback.stale:
            self.fallback = balancer.current(self.fallback)
        unfit_routes = self.unfit
        fallback = self.fallback
        if route is None and fallback is not None and fallback.routes[0] not in tried:
            route = balancer.pick(fallback, (), self.stream)
        delay = 0.0
        if route is None and made == 0:
            route = balancer.force(self._everyone())
        elif route is None:
            route = balancer.pick(self.pool, unfit_routes, self.stream)
            if route is None and fallback is not None:
                route = balancer.pick(fallback, (), self.stream)
            if route is None:
                route = balancer.force(self._everyone())
            if route is None:
                return None
            delay = backoff_delay(self.repeats, self.retry, balancer.rng)
            delay = max(delay, route.retry_after_until - now)
            self.repeats += 1
        if route is None:
            return None
        remaining = self.deadline_at - now - delay
        if made and remaining <= 0:
            return None
        self.delay = delay
        if remaining > 0:
            timeout = route.config.timeout  # min() spelt out: it runs on every attempt
            self.timeout = remaining if remaining < timeout else timeout
        else:
            self.timeout = 0.001
        return route

    def _pick_untried(self) -> tuple[RouteState | None, Container[RouteState]]:
        """The policy's pick among the pool's routes not tried yet (nor too small for the
        call), the pool brought up to date first; and the routes it left out."""
        if self.pool.stale:  # discovered instances joined or left since the last attempt
            self.pool = self.balancer.current(self.pool)
        tried: Container[RouteState] = self.tried
        if self.unfit:
            tried = Either(tried, self.unfit)
        route = self.balancer.pick(
            self.pool, tried, self.stream, self.tokens, self.key, self.prompt_tokens
        )
        return route, tried

    def _everyone(self) -> list[RouteState]:
        routes = list(self.pool.routes)
        if self.fallback is not None:
            routes.extend(self.fallback.routes)
        if self.unfit:
            routes = [route for route in routes if route not in self.unfit]
        return routes

    # -- reporting -----------------------------------------------------------------------

    def start(self, route: RouteState, hedge: bool = False) -> float:
        """The attempt on ``route`` (``hedge``: a hedge) goes now; returns its start time."""
        self.tried.append(route)
        self.begun += 1
        if hedge:
            self.hedges += 1
        started = self.balancer.dispatch(route, self.tokens, hedge)
        if self.call is not None:
            self._open[route] = self._attempt_started(route, hedge)
        else:
            self._open[route] = (self.begun, hedge, None, None)
        return started

    def is_open(self, route: RouteState) -> bool:
        """Whether the attempt on ``route`` is still to be reported."""
        return route in self._open

    # -- hedging -------------------------------------------------------------------------

    def hedge_delay(self, route: RouteState) -> float | None:
        """How long the attempt on ``route`` may wait for its answer (a stream: its first
        token) before a hedge is sent; None when the call does not hedge (not asked, pinned,
        its hedge spent, or no time left for one)."""
        if not self.may_hedge or self.hedges >= MAX_HEDGES:
            return None
        delay = self.balancer.hedge_delay(route, self.stream, first=self.begun == 1)
        return delay if self.clock() + delay < self.deadline_at else None

    def hedge_again(self, delay: float) -> bool:
        """Whether a hedge refused now (``hedge`` gave None) may be asked for again in
        ``delay``: the budget refills and routes recover, while the call has time."""
        return self.hedges < MAX_HEDGES and self.clock() + delay < self.deadline_at

    def hedge(self) -> RouteState | None:
        """The route of a hedge, sent now (``timeout`` set), or None: no route not tried yet
        is available, the one the policy picks reports no room (``Balancer.saturated``), or
        the budget is spent (``hedge.py``)."""
        now = self.clock()
        remaining = self.deadline_at - now
        if remaining <= 0 or self.hedges >= MAX_HEDGES:
            return None
        balancer = self.balancer
        route, _ = self._pick_untried()
        if route is None or balancer.saturated(route) or not balancer.take_hedge():
            return None
        self.delay = 0.0
        timeout = route.config.timeout
        self.timeout = remaining if remaining < timeout else timeout
        return route

    def won(self, route: RouteState, hedge: bool) -> None:
        """The race's winner was the attempt on ``route`` (``hedge``: a hedge)."""
        if hedge:
            self.hedge_won = True
            self.balancer.hedge_won(route)

    def abandon(self, route: RouteState, started_at: float) -> None:
        """The attempt on ``route`` is cancelled: another attempt of the call answered first
        (``Balancer.abandon``: no evidence, unless the route had stalled)."""
        opened = self._open.pop(route, None)
        if opened is None:
            return
        reason = self.balancer.abandon(route, started_at, self.tokens, self.pool)
        outcome = "hedge_lost" if reason is None else "stalled"
        elapsed = self.clock() - started_at
        attempt = Attempt(route.name, outcome, None, reason, elapsed)
        self.attempts.append(attempt)
        if self.call is not None:
            self._attempt_ended(opened, attempt, None, None, 0, None, 0)

    def succeeded(
        self,
        route: RouteState,
        started_at: float,
        latency: float | None,
        ttft: float | None = None,
        *,
        generated: int | None = None,
        waiting: float | None = None,
        kv_usage: float | None = None,
        prompt_tokens: int = 0,
        cached_tokens: int = 0,
    ) -> None:
        """The attempt answered well: its measurements, the tokens it generated, the
        server's load report with it, if any, and its usage's prompt and cached tokens
        (``Balancer.succeeded``)."""
        opened = self._open.pop(route, None)
        if opened is None:
            return
        self.balancer.succeeded(
            route,
            started_at,
            latency,
            ttft,
            self.tokens,
            generated=generated,
            waiting=waiting,
            kv_usage=kv_usage,
            prompt_tokens=prompt_tokens,
            cached_tokens=cached_tokens,
            stream=self.stream,
        )
        elapsed = self.clock() - started_at
        attempt = Attempt(route.name, "ok", None, None, elapsed)
        self.attempts.append(attempt)
        if self.call is not None:
            self._answer = (route, ttft, prompt_tokens, generated, cached_tokens)
            self._attempt_ended(
                opened, attempt, latency, ttft, prompt_tokens, generated, cached_tokens
            )

    def failed(
        self,
        route: RouteState,
        started_at: float,
        error: RouteError,
        outcome: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        loud: bool = False,
    ) -> None:
        """A failure that is the route's fault: eject it and remember why (its texts masked
        of every secret of the config, in place, before anything keeps or shows them)."""
        opened = self._open.pop(route, None)
        if opened is None:
            return
        self.balancer.redact.error(error)
        reason = _short(error) or type(error).__name__
        self.balancer.failed(route, started_at, reason, retry_after, loud, self.tokens)
        self._record(opened, route, started_at, outcome, status_code, error)

    def finished(
        self,
        route: RouteState,
        started_at: float,
        error: LLMError | None = None,
        outcome: str = "cancelled",
        status_code: int | None = None,
    ) -> None:
        """The attempt ended without evidence about the route: the caller's fault (its
        ``error`` and ``outcome``), or cancelled (a race's loser when the call itself ended
        otherwise, the call cancelled, a stream closed before its first token)."""
        opened = self._open.pop(route, None)
        if opened is None:
            return
        if error is not None:
            self.balancer.redact.error(error)
        self.balancer.finished(route, started_at, self.tokens)
        self._record(opened, route, started_at, outcome, status_code, error)

    def _record(
        self,
        opened: tuple[int, bool, AttemptStarted | None, str | None],
        route: RouteState,
        started_at: float,
        outcome: str,
        status_code: int | None,
        error: LLMError | None,
    ) -> None:
        elapsed = self.clock() - started_at
        text = _short(error)
        attempt = Attempt(route.name, outcome, status_code, text, elapsed)
        self.attempts.append(attempt)
        if error is not None:
            self.last_error = error
        if self.call is not None:
            self._attempt_ended(opened, attempt, None, None, 0, None, 0)

    # -- hooks -----------------------------------------------------------------------------

    def _attempt_started(
        self, route: RouteState, hedge: bool
    ) -> tuple[int, bool, AttemptStarted | None, str | None]:
        hooks, call = self.hooks, self.call
        assert hooks is not None and call is not None
        config = route.config
        host, port = server_of(config.base_url)
        fallback = self.fallback is not None and route in self.fallback.routes
        number = self.begun
        event = AttemptStarted(
            call, number, route.name, config.model, host, port, self.delay, fallback, hedge=hedge
        )
        if hooks.on_attempt_started:
            hooks.emit(hooks.on_attempt_started, event)
        self.attempt_headers = event.headers or None
        # a retry's reason: how the attempt ended last (a hedge is no retry)
        reason = self.attempts[-1].outcome if self.attempts and not hedge else None
        return number, hedge, event, reason

    def _attempt_ended(
        self,
        opened: tuple[int, bool, AttemptStarted | None, str | None],
        attempt: Attempt,
        latency: float | None,
        ttft: float | None,
        prompt_tokens: int,
        completion_tokens: int | None,
        cached_tokens: int,
    ) -> None:
        hooks = self.hooks
        number, hedge, begun, retry_reason = opened
        if hooks is None or begun is None or not hooks.on_attempt_ended:
            return
        event = AttemptEnded(
            begun.call,
            number,
            begun.route,
            begun.model,
            begun.server_address,
            begun.server_port,
            attempt.outcome,
            attempt.status_code,
            attempt.latency_s,  # the attempt's whole time
            latency,
            ttft,
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            retry_reason,
            begun.delay_s,
            begun.fallback,
            attempt.error,
            hedge,
        )
        hooks.emit(hooks.on_attempt_ended, event)

    def ended(self, error: BaseException | None = None) -> None:
        """The call is over (``error``: what it raised): ``CallEnded``, once."""
        call, hooks = self.call, self.hooks
        if call is None or hooks is None:
            return
        self.call = None
        if not hooks.on_call_ended:
            return
        answer = self._answer
        route = answer[0] if answer is not None else None
        first = self.tried[0].name if self.tried else None
        event = CallEnded(
            call,
            outcome_of(error) if answer is None or error is not None else "ok",
            route.name if route is not None else None,
            route.config.model if route is not None else None,
            tuple(self.attempts),
            self.clock() - call.started_at,
            answer[1] if answer is not None else None,
            answer[2] if answer is not None else 0,
            answer[3] if answer is not None else None,
            answer[4] if answer is not None else 0,
            route is not None and route.name != first and not self.hedge_won,
            route is not None and self.fallback is not None and route in self.fallback.routes,
            error if isinstance(error, LLMError) else None,
            self.hedges > 0,
            self.hedge_won,
        )
        hooks.emit(hooks.on_call_ended, event)

    def exhausted(self) -> AllRoutesFailedError:
        """The error for a call whose attempts all failed."""
        routes = ", ".join(dict.fromkeys(a.route for a in self.attempts))
        reason = _short(self.last_error) or "no attempt could be made"
        message = (
            f"all attempts failed after {len(self.attempts)} attempt(s) "
            f"on route(s) {routes}: {reason}"
        )
        return AllRoutesFailedError(message, attempts=self.attempts, last_error=self.last_error)


def outcome_of(error: BaseException | None) -> str:
    """A call's outcome as events name it: ``ok``, ``cancelled``, or the error's class."""
    if error is None:
        return "ok"
    name = type(error).__name__
    if name in ("CancelledError", "GeneratorExit", "KeyboardInterrupt"):
        return "cancelled"
    return name


@functools.lru_cache(maxsize=1024)
def server_of(base_url: str) -> tuple[str, int | None]:
    """The host and port of a route's URL (OpenTelemetry's ``server.address`` / ``.port``)."""
    parts = urlsplit(base_url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = None
    return parts.hostname or "", port


def _short(error: LLMError | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, RouteError):
        return Exception.__str__(error)
    return str(error)
