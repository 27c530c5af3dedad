"""The balancer: which route gets the next request, and what happened to the last one.

Pure and thread-safe: no I/O, the clock and the random source are injected, and one lock
guards every read-modify-write of route state (held for microseconds, never across I/O or an
``await``, so the sync and async paths of one provider share it safely). The per-request methods
(``pick``, ``dispatch``, ``succeeded``, ``finished``) take it with ``acquire``/``release`` in a
``try``/``finally``: the same guarantee as ``with``, for less (about 0.1 µs a time on CPython
3.11; ``python -m llm.perf.micro`` measures the routing cost per call).

The request life cycle, as the engines drive it::

    route = balancer.pick(pool, exclude, stream)    # or force(...) when nothing is available
    started = balancer.dispatch(route)              # in_flight += 1, trial bookkeeping
    ...the I/O...
    balancer.succeeded(route, started, latency=..., ttft=...)
    balancer.failed(route, started, "connect error", retry_after=...)   # ejects
    balancer.finished(route, started)                # neither: the caller's fault or a cancel
    balancer.abandon(route, started)                 # cancelled: another attempt answered first

``pick`` asks the policy, then steps around a *stalled* route: one with requests in flight and
none ending for ``stall_factor`` times its usual latency. A server that accepts and hangs
would otherwise collect its share of every new request until the first of them times out.

A hedge's loser (``abandon``) is no evidence against its route, and does not end the route's
quiet spell either. The route is *suspect* until it answers something: ``pick`` steps around
it (as around a stalled one), so a hung server's calls do not each wait for a hedge, until it
has been quiet a stall's length; then one call may probe it. Once ``STALL_ABANDONS`` attempts
were abandoned on a route that has answered nothing since, one abandoned after a stall's
length of quiet counts as its failure: a hung route is still ejected. ``hedger``
(``hedge.py``) keeps the hedges' delays and budget; ``saturated`` says whether a route has
room for a hedge.

Health changes (ejected, misconfigured, healthy again) go to the ``on_health`` listener as
``events.HealthChange`` records, after the lock is released; the balancer itself never logs.
``hooks`` (``llm.events.Hooks``, set by the provider once a hook is registered) are what every
plan of a call reports to, and get each load report (``LoadReported``), after the lock too.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Collection, Container, Iterable, Sequence
from typing import Any

from ..config import AffinityConfig, HealthConfig, HedgeConfig, RouteConfig
from ..config.model import serving
from ..config.redact import Redactor
from ..events import Hooks, LoadReported
from .affinity import Affinity
from .events import HealthChange, HealthListener
from .health import RouteHealth
from .hedge import Hedger, saturated
from .indexes import Either
from .load import DEFAULT_MAX_AGE, record_report
from .policies import POLICIES, LeastLatency, LeastLoad, Policy, RoundRobin
from .state import WARMUP_SAMPLES, Pool, RouteState

Clock = Callable[[], float]

STALL_ABANDONS = 3
"""Attempts abandoned unanswered on a route since its last answer before a stall counts as
its failure: one long answer lost to a hedge is not a hung server."""


class Balancer:
    """Route state for a set of routes, pools by model, and the pick/report protocol."""

    def __init__(
        self,
        routes: Iterable[RouteConfig],
        *,
        policy: str | Policy = "round_robin",
        health: HealthConfig | None = None,
        fallback_route: str | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        on_health: HealthListener | None = None,
        load_max_age: float = DEFAULT_MAX_AGE,
        affinity: AffinityConfig | None = None,
        context_fallback: str | None = None,
        hedge: HedgeConfig | None = None,
    ) -> None:
        self.health_config = health or HealthConfig()
        self.affinity_config = affinity or AffinityConfig()
        self._affinity: Affinity | None = None  # made on the first call with a key
        self.load_max_age = load_max_age
        self.on_health = on_health
        self.hooks: Hooks | None = None
        self.clock = clock
        self.rng = rng or random.Random()
        self.lock = threading.Lock()
        self.policy: Policy = self._make_policy(policy)
        self.hedger = Hedger(hedge or HedgeConfig())
        self.alpha = self.health_config.ewma_alpha
        self.stall_factor = self.health_config.stall_factor
        self.stall_min = self.health_config.stall_min
        self.routes: dict[str, RouteState] = {}
        routes = list(routes)
        self.redact = Redactor(routes)  # every error text it records or reports is masked
        # routes that discover their instances (members.py): templates, not servers
        self.groups: dict[str, RouteConfig] = {r.name: r for r in routes if r.discover}
        self.group_status: dict[str, str] = dict.fromkeys(self.groups, "not looked up yet")
        for config in routes:
            if config.discover is None:
                self.routes[config.name] = self._new_route(config)
        if fallback_route is not None and fallback_route not in self.routes:
            raise KeyError(fallback_route)
        self.fallback_route = fallback_route
        self.context_fallback = context_fallback
        # context windows (fit.py): any known at all, and a count of their changes
        self.limits_version = 0
        self.limits_known = any(r.max_model_len for r in self.routes.values())
        self._pools: dict[str, Pool] = {}
        self._single: dict[str, Pool] = {}

    def _make_policy(self, policy: str | Policy) -> Policy:
        if not isinstance(policy, str):
            return policy
        if policy == LeastLatency.name:
            return LeastLatency(self.health_config.reprobe_interval)
        if policy == RoundRobin.name:
            return RoundRobin()
        if policy == LeastLoad.name:
            # draws of its own: the cooldowns' jitter does not move its choices
            return LeastLoad(random.Random(self.rng.getrandbits(64)), self.load_max_age)
        raise ValueError(f"unknown lb_policy {policy!r}; known: {', '.join(sorted(POLICIES))}")

    def _make_affinity(self) -> Affinity:
        """Affinity weighs homes by least load's costs: the policy's own when it is least
        load, else a least load of its own (made here, so that a balancer whose calls carry
        no key draws nothing more from ``rng`` than before)."""
        policy = self.policy
        if not isinstance(policy, LeastLoad):
            policy = LeastLoad(random.Random(self.rng.getrandbits(64)), self.load_max_age)
        self._affinity = Affinity(self.affinity_config, policy, self.load_max_age)
        return self._affinity

    # -- pools ---------------------------------------------------------------------------

    def _new_route(self, config: RouteConfig) -> RouteState:
        health = RouteHealth(self.health_config.cooldown, self.health_config.max_cooldown)
        return RouteState(config, health)

    def pool(self, model: str) -> Pool | None:
        """The pool serving ``model`` (cached): the routes ``serving`` names, by its rule
        (instances that discovery retired are in no pool)."""
        pool = self._pools.get(model)
        if pool is None:
            with self.lock:  # discovery may change the routes meanwhile
                configs = [r.config for r in self.routes.values() if not r.retired]
                chosen = serving(configs, model, self.fallback_route)
                members = [self.routes[c.name] for c in chosen]
                if not members:
                    return None
                pool = self._new_pool(model, members, ("model", model))
                self._pools[model] = pool
        return pool

    def single(self, name: str) -> Pool:
        """The pool of a pinned route: that one route (the fallback too), or the instances a
        discovering route found. KeyError if unknown."""
        pool = self._single.get(name)
        if pool is None:
            with self.lock:
                group = self.groups.get(name)
                if group is not None:
                    pool = self._new_pool(group.model, self._members(name), ("single", name))
                else:
                    route = self.routes[name]
                    pool = self._new_pool(route.config.model, [route], ("single", name))
                self._single[name] = pool
        return pool

    def current(self, pool: Pool) -> Pool:
        """The pool as it is now: ``pool`` itself, or the one that replaced it when
        discovered instances joined or left (an empty pool when none serves its model)."""
        if not pool.stale:
            return pool
        kind, name = pool.key
        if kind == "model":
            found = self.pool(name)
            return found if found is not None else self._new_pool(name, [], pool.key)
        try:
            return self.single(name)
        except KeyError:  # a pinned instance that discovery retired
            return self._new_pool(pool.model, [], pool.key)

    @staticmethod
    def _new_pool(model: str, members: Sequence[RouteState], key: tuple[str, str]) -> Pool:
        weighted = len({r.weight for r in members}) > 1
        names = frozenset(r.name for r in members)
        return Pool(model, tuple(members), weighted, 0, names, key=key)

    # -- discovered instances ------------------------------------------------------------

    def members(self, group: str) -> list[RouteConfig]:
        """The instances of discovering route ``group`` that take calls now."""
        with self.lock:
            return [route.config for route in self._members(group)]

    def _members(self, group: str) -> list[RouteState]:
        """The instances of ``group`` not retired (under the lock)."""
        return [r for r in self.routes.values() if r.config.group == group and not r.retired]

    def set_members(
        self, group: str, configs: Sequence[RouteConfig]
    ) -> tuple[list[str], list[str]]:
        """The instances of ``group`` are now ``configs``: new ones join (with a fresh record,
        or their old one if they were still draining), the others are *retired*: in no pool
        any more, their calls in flight finish, and they are dropped once none is left.
        Returns the names that joined and those retired."""
        with self.lock:
            wanted = {config.name: config for config in configs}
            current = {route.name for route in self._members(group)}
            joined = [name for name in wanted if name not in current]
            retired = sorted(current - wanted.keys())
            for name in joined:
                route = self.routes.get(name)
                if route is None:
                    self.routes[name] = self._new_route(wanted[name])
                else:
                    route.retired = False
            for name in retired:
                route = self.routes[name]
                route.retired = True
                self.hedger.forget(name)
                if not route.in_flight:
                    del self.routes[name]
            if joined or retired:
                self._pools_changed()
                self.limits_known = any(r.max_model_len for r in self.routes.values())
        return joined, retired

    def _pools_changed(self) -> None:
        """Discovery changed the routes (under the lock): every pool is rebuilt on its next
        use, and a plan holding an old one takes the new one on its next attempt."""
        for pool in (*self._pools.values(), *self._single.values()):
            pool.stale = True
        self._pools.clear()
        self._single.clear()
        for route in self.routes.values():
            route.watchers = ()  # the old pools' indexes; new ones register themselves

    def context_pool(self) -> Pool | None:
        """Where a call that fits no route of its pool goes: ``context_fallback``, a route's
        name or a served model (None when it is not set, or serves nothing now)."""
        name = self.context_fallback
        if name is None:
            return None
        if name in self.routes:
            return self.single(name)
        return self.pool(name)

    def learn_limit(self, name: str, max_model_len: int | None, source: str) -> bool:
        """Route ``name``'s context window, as ``source`` ("models": /v1/models, "error": a
        400's message) says; the config's word is kept over both, and /v1/models' over an
        error's. True when it changed."""
        route = self.routes.get(name)
        if route is None or max_model_len is None or max_model_len < 1:
            return False
        with self.lock:
            if route.limit_source == "config" or (
                source == "error" and route.limit_source == "models"
            ):
                return False
            if route.max_model_len == max_model_len and route.limit_source == source:
                return False
            route.max_model_len = max_model_len
            route.limit_source = source
            self.limits_version += 1
            self.limits_known = True
            return True

    def models(self) -> list[str]:
        with self.lock:
            configs = [*self.groups.values(), *(r.config for r in self.routes.values())]
        return list(dict.fromkeys(config.model for config in configs))

    # -- picking -------------------------------------------------------------------------

    def pick(
        self,
        pool: Pool,
        exclude: Container[RouteState] = (),
        stream: bool = False,
        tokens: int = 0,
        key: bytes | None = None,
        prompt_tokens: int = 0,
    ) -> RouteState | None:
        """An available route of ``pool`` not in ``exclude``, chosen by the policy, or None
        (``tokens``: the call's ``max_tokens``, 0 when unknown; ``key``: its affinity key,
        which sends it to its homes, ``affinity.py``; ``prompt_tokens``: its estimated
        prompt, which tells affinity what a home may save)."""
        lock = self.lock
        lock.acquire()
        try:
            now = self.clock()
            if key is not None and len(pool.routes) > 1:
                affinity = self._affinity or self._make_affinity()
                route = affinity.choose(
                    pool, exclude, now, stream, tokens, key, self.policy, prompt_tokens
                )
            else:
                route = self.policy.choose(pool, exclude, now, stream, tokens)
            if (
                route is not None
                and (route.in_flight or route.abandoned)
                and self._stalled(route, now, pool)
            ):
                return self._instead_of_stalled(route, pool, exclude, now, stream, tokens)
            return route
        finally:
            lock.release()

    def _stalled(self, route: RouteState, now: float, pool: Pool | None = None) -> bool:
        """Whether ``pick`` steps around ``route``: requests in flight and none ended for a
        stall's length (``_too_quiet``): a server that accepts and then hangs looks like this
        long before the first of those requests times out. Or *suspect*: an attempt on it was
        abandoned unanswered (a hedge answered first) and it has answered nothing since; once
        it has nothing in flight and has been quiet a stall's length, one call may probe it
        (whose loss, if it is hung, ejects it: ``abandon``)."""
        if route.abandoned and self.stall_factor:
            return bool(route.in_flight) or not self._too_quiet(route, now, pool)
        return bool(route.in_flight) and self._too_quiet(route, now, pool)

    def _too_quiet(self, route: RouteState, now: float, pool: Pool | None = None) -> bool:
        """No request to ``route`` ended for ``stall_factor`` times its usual latency (at least
        ``stall_min``). A route not measured yet is held to the slowest average of its pool's
        measured routes; with none measured, none is too quiet."""
        if not self.stall_factor:
            return False
        quiet = now - max(route.busy_since, route.last_done)
        if quiet <= self.stall_min:
            return False  # decided without looking at the pool (the common case)
        expected = route.latency_ewma
        if expected is None:
            known = [r.latency_ewma for r in (pool.routes if pool else ()) if r.latency_ewma]
            if not known:
                return False
            expected = max(known)
        return quiet > self.stall_factor * expected

    def _instead_of_stalled(
        self,
        stalled: RouteState,
        pool: Pool,
        exclude: Container[RouteState],
        now: float,
        stream: bool,
        tokens: int = 0,
    ) -> RouteState:
        """Another choice of the policy that is not stalled; the stalled one if there is none
        (a stalled route is slow to answer, not known to be down: it is not ejected)."""
        skipped = {stalled}
        avoid = Either(exclude, skipped)
        while (other := self.policy.choose(pool, avoid, now, stream, tokens)) is not None:
            if not self._stalled(other, now, pool):
                return other
            skipped.add(other)
        return stalled

    def force(self, routes: Collection[RouteState]) -> RouteState | None:
        """When nothing is available: the route whose cooldown (or Retry-After) ends first."""
        if not routes:
            return None
        with self.lock:
            return min(routes, key=_ready_at)

    def available(self, pool: Pool) -> bool:
        with self.lock:
            now = self.clock()
            return any(r.health.available(now) for r in pool.routes)

    # -- reporting -----------------------------------------------------------------------

    def dispatch(self, route: RouteState, tokens: int = 0, hedge: bool = False) -> float:
        """A request asking for ``tokens`` goes to ``route`` now (``hedge``: as a call's
        hedge); returns its start time for the reports (the clock's, or a float step later
        when the route was ejected at this same clock reading). Every report of it gives the
        same ``tokens`` back."""
        lock = self.lock
        lock.acquire()
        try:
            now = self.clock()
            if not route.in_flight and not route.abandoned:
                route.busy_since = now
            if hedge:
                route.hedges_started += 1
            route.in_flight += 1
            route.requests += 1
            route.tokens_in_flight += tokens
            for watcher in route.watchers:
                watcher.loaded(route)
            return route.health.on_dispatch(now)
        finally:
            lock.release()

    def _ended(self, route: RouteState, now: float, tokens: int, answered: bool = True) -> None:
        """The bookkeeping of a request that ended, however (under the lock); one abandoned
        unanswered (``answered=False``) does not end the route's quiet spell."""
        route.in_flight -= 1
        route.tokens_in_flight -= tokens
        if answered:
            route.last_done = now
            route.abandoned = 0
        for watcher in route.watchers:
            watcher.loaded(route)
        if route.retired and not route.in_flight and self.routes.get(route.name) is route:
            del self.routes[route.name]  # its last call ended: drained

    def succeeded(
        self,
        route: RouteState,
        started_at: float,
        latency: float | None = None,
        ttft: float | None = None,
        tokens: int = 0,
        *,
        generated: int | None = None,
        waiting: float | None = None,
        kv_usage: float | None = None,
        prompt_tokens: int = 0,
        cached_tokens: int = 0,
        stream: bool = False,
    ) -> None:
        """The request (``stream``: a streamed one) answered well. ``latency`` (whole
        answer) and ``ttft`` (first token) are its measurements; ``generated`` the tokens it
        produced in ``latency`` (less ``ttft`` when both are known); ``waiting`` and
        ``kv_usage`` the server's ORCA load report that came with it; ``prompt_tokens`` and
        ``cached_tokens`` its usage's (for ``stats()``)."""
        health = route.health
        lock = self.lock
        lock.acquire()
        try:
            now = self.clock()
            self._ended(route, now, tokens)
            route.successes += 1
            if prompt_tokens:
                route.prompt_tokens += prompt_tokens
                route.cached_tokens += cached_tokens
            was_healthy = health.healthy
            health.on_success(started_at)
            alpha = self.alpha
            if latency is not None:
                n = route.latency_samples = route.latency_samples + 1
                old = route.latency_ewma
                route.latency_ewma = _smoothed(old, latency, n, alpha)
                if generated:  # a stream's tokens after its first one take latency - ttft
                    if ttft is not None and generated > 1:
                        per_token = (latency - ttft) / (generated - 1)
                    else:
                        per_token = latency / generated
                    route.token_time = _smoothed(route.token_time, per_token, n, alpha)
            if ttft is not None:
                n = route.ttft_samples = route.ttft_samples + 1
                route.ttft_ewma = _smoothed(route.ttft_ewma, ttft, n, alpha)
            waited = ttft if stream else latency  # what a hedge of such a call waits for
            if waited is not None and self.hedger.active:
                self.hedger.observe(route.name, route.config.model, waited, stream)
            if latency is not None or ttft is not None:
                route.last_sample_at = now
            if waiting is not None:
                record_report(route, now, waiting, None, kv_usage, "orca")
            for watcher in route.watchers:
                watcher.changed(route, latency is not None, ttft is not None)
        finally:
            lock.release()
        if not was_healthy and health.healthy and self.on_health is not None:
            self.on_health(HealthChange("recovered", route.name))
        if waiting is not None and self.hooks is not None:
            self._load_reported(LoadReported(route.name, "orca", None, waiting, kv_usage))

    def _load_reported(self, event: LoadReported) -> None:
        hooks = self.hooks
        if hooks is not None and hooks.on_load_reported:
            hooks.emit(hooks.on_load_reported, event)

    def failed(
        self,
        route: RouteState,
        started_at: float,
        reason: str,
        retry_after: float | None = None,
        loud: bool = False,
        tokens: int = 0,
    ) -> None:
        with self.lock:
            now = self.clock()
            self._ended(route, now, tokens)
            route.failures += 1
            route.last_error = reason
            min_cooldown = retry_after or 0.0
            if retry_after is not None:
                route.retry_after_until = now + retry_after
            ejected = route.health.on_failure(started_at, now, self.rng, min_cooldown)
            until = route.health.ejected_until - now
        report = self.on_health
        if report is not None:
            if loud:
                report(HealthChange("misconfigured", route.name, reason))
            if ejected:
                report(HealthChange("ejected", route.name, reason, until))

    def finished(self, route: RouteState, started_at: float, tokens: int = 0) -> None:
        """The request ended without evidence about the route (a 400, a cancel)."""
        lock = self.lock
        lock.acquire()
        try:
            self._ended(route, self.clock(), tokens)
            route.health.on_neutral(started_at)
        finally:
            lock.release()

    def abandon(
        self, route: RouteState, started_at: float, tokens: int = 0, pool: Pool | None = None
    ) -> str | None:
        """The request was cancelled unanswered: another attempt of its call answered first.
        No evidence about the route, unless the route was already stalled (``pool``: the
        routes a route not measured yet is held to): then it is the route's failure (ejected
        as ``failed`` would); returns the reason, else None."""
        with self.lock:
            now = self.clock()
            route.hedges_cancelled += 1
            route.abandoned += 1
            if route.abandoned < STALL_ABANDONS or not self._too_quiet(route, now, pool):
                self._ended(route, now, tokens, answered=False)
                route.health.on_neutral(started_at)
                return None
            quiet = now - max(route.busy_since, route.last_done)
        reason = f"no answer for {quiet:.1f}s (stalled); its calls went to other routes"
        self.failed(route, started_at, reason, tokens=tokens)
        return reason

    def hedge_delay(self, route: RouteState, stream: bool, first: bool = True) -> float:
        """How long an attempt on ``route`` waits before a hedge (``hedge.Hedger.delay``);
        ``first``: the call's first attempt, which adds the call's share to the budget."""
        with self.lock:
            hedger = self.hedger
            hedger.active = True  # a call hedges: measure from now on, if not already
            if first:
                hedger.called()
            return hedger.delay(route.name, route.config.model, stream)

    def take_hedge(self) -> bool:
        """Spend one hedge of the budget (False: it is spent)."""
        with self.lock:
            return self.hedger.take()

    def hedge_won(self, route: RouteState) -> None:
        """A hedge sent to ``route`` gave its call the answer."""
        with self.lock:
            route.hedges_won += 1

    def saturated(self, route: RouteState) -> bool:
        """Whether ``route`` has no room for a hedge (``hedge.saturated``)."""
        with self.lock:
            return saturated(route, self.clock(), self.load_max_age)

    def observe_check(self, name: str, healthy: bool, reason: str | None = None) -> None:
        """An active check's verdict: a failing healthy route is ejected; a passing ejected
        route may take its trial request now instead of waiting out the cooldown."""
        route = self.routes.get(name)
        if route is None:  # a discovered instance that has gone meanwhile
            return
        with self.lock:
            now = self.clock()
            health = route.health
            if healthy:
                if not health.healthy:
                    health.ejected_until = min(health.ejected_until, now)
                    for watcher in route.watchers:
                        watcher.changed(route)
                return
            if not health.healthy:
                return
            route.last_error = self.redact.text(f"active check: {reason}")
            # a failed check counts as a request dispatched now, after any earlier ejection
            health.on_failure(max(now, health.ejected_at), now, self.rng)
            until = health.ejected_until - now
        if self.on_health is not None:
            shown = None if reason is None else self.redact.text(reason)
            self.on_health(HealthChange("ejected", name, shown, until, by_check=True))

    def observe_load(
        self,
        name: str,
        waiting: float | None,
        running: float | None,
        kv_usage: float | None = None,
    ) -> None:
        """A load report of route ``name`` read now (its ``/metrics``; see ``load.py``)."""
        route = self.routes.get(name)
        if route is None:
            return
        with self.lock:
            record_report(route, self.clock(), waiting, running, kv_usage, "metrics")
        if self.hooks is not None:
            self._load_reported(LoadReported(name, "metrics", running, waiting, kv_usage))

    def configs(self) -> list[RouteConfig]:
        """The routes that take calls now (discovered instances included, retired ones not)."""
        with self.lock:
            return [r.config for r in self.routes.values() if not r.retired]

    def in_use(self, idle: float) -> list[str]:
        """The routes with a request in flight, or one ended in the last ``idle`` seconds."""
        with self.lock:
            since = self.clock() - idle
            return [
                name
                for name, route in self.routes.items()
                if route.in_flight or route.last_done >= since
            ]

    def fork_reset(self) -> None:
        """In a forked child: a fresh lock (another thread of the parent may have held it),
        and nothing in flight (the parent's calls do not exist here). Health and latency
        are kept: they are still true of the routes."""
        self.lock = threading.Lock()
        for route in self.routes.values():
            route.in_flight = 0
            route.tokens_in_flight = 0
            route.health.trial_in_flight = 0

    # -- reading -------------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            now = self.clock()
            max_age = self.load_max_age
            return {name: r.snapshot(now, max_age) for name, r in list(self.routes.items())}


def _smoothed(old: float | None, sample: float, n: int, alpha: float) -> float:
    """The EWMA after the n-th sample; during the warm-up, the least sample so far."""
    if old is None:
        return sample
    if n <= WARMUP_SAMPLES:
        return sample if sample < old else old
    return old + alpha * (sample - old)


def _ready_at(route: RouteState) -> float:
    return max(route.health.ejected_until, route.retry_after_until)
