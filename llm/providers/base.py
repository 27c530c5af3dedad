"""What a provider holds and does besides its call methods.

``ProviderBase`` wires one provider: the balancer (shared by the sync and async paths, so
what one learns about a route the other uses; its health changes logged through
``send.log``), a sync engine over httpcore and an async engine over aiohttp (or over httpx
transports handed in, for tests), the lifecycle both engines share (what ``close`` waits
for), the optional background checker, and what a forked child resets (``fork``). The call methods
live in ``_async/api.py`` (written once) and ``_sync/api.py`` (generated from it); the
provider class (``vllm_openai.py``) puts them together.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

from ..config import LLMConfig, RouteConfig
from ..errors import AllRoutesFailedError, Attempt
from ..events import HealthChange, Hook
from ..probes.check import CheckSettings, RouteCheck, check_limit
from ..probes.checker import ActiveChecker
from ..probes.discovery import Discoverer, Resolver
from ..probes.load_poll import LoadPoller
from ..routing.balancer import Balancer
from ..send._async.engine import AsyncEngine
from ..send._sync.engine import SyncEngine
from ..send.aiohttp_sender import AiohttpSender
from ..send.httpcore_sender import HttpcoreSender
from ..send.httpx_senders import HttpxAsyncSender, HttpxSender
from ..send.lifecycle import Lifecycle, closed_error
from ..send.log import log_health_change
from ..send.protocols import AsyncSender, SyncSender
from . import fork
from .hooks import HookLike, ProviderHooks, resolve

_CHECK_TIMEOUT_MAX = 5.0  # seconds: a look at a route needs no more, whatever the call timeout


class ProviderBase:
    """The parts of a provider that are neither sync nor async."""

    name = "vllm_openai"

    def __init__(
        self,
        config: LLMConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
        resolver: Resolver | None = None,
        hooks: Sequence[HookLike] = (),
    ) -> None:
        self.config = config
        chosen = [*resolve(config.hooks), *hooks]  # a bad reference fails before any I/O
        self.balancer = Balancer(
            config.routes.values(),
            policy=config.lb_policy,
            health=config.health,
            fallback_route=config.fallback_route,
            clock=clock,
            rng=rng,
            on_health=self._health_changed,
            load_max_age=config.load.max_age,
            affinity=config.affinity,
            context_fallback=config.context_fallback,
            hedge=config.hedge,
        )
        self._hooks = ProviderHooks(self.balancer, self)
        for hook in chosen:
            self._hooks.add(hook)
        self._life = Lifecycle()
        sync_sender: SyncSender = HttpcoreSender() if transport is None else HttpxSender(transport)
        self._engine = SyncEngine(
            config, self.balancer, sync_sender, clock=clock, sleep=sleep, life=self._life
        )
        async_sender: AsyncSender = (
            AiohttpSender() if async_transport is None else HttpxAsyncSender(async_transport)
        )
        self._aengine = AsyncEngine(
            config,
            self.balancer,
            async_sender,
            clock=clock,
            sleep=async_sleep or asyncio.sleep,
            life=self._life,
        )
        self._check_limit = check_limit(config.max_response_bytes)
        self._discoverer: Discoverer | None = None
        if self.balancer.groups:  # the first look now, so that the first call finds them
            self._discoverer = Discoverer(
                list(self.balancer.groups.values()),
                self.balancer,
                self._engine.sender,
                self._check_settings(),
                resolver,
            )
            self._discoverer.run_once()
            self._discoverer.start()
        self._checker: ActiveChecker | None = None
        if config.health.check_interval > 0:
            self._checker = ActiveChecker(
                list(config.routes.values()),
                self.balancer,
                self._engine.sender,
                config.health.check_interval,
                self._check_settings(),
            ).start()
        self._poller: LoadPoller | None = None
        poll_interval = config.load.polls(config.lb_policy)
        if poll_interval > 0:
            self._poller = LoadPoller(
                list(config.routes.values()),
                self.balancer,
                self._engine.sender,
                poll_interval,
                min(_CHECK_TIMEOUT_MAX, config.timeout, max(poll_interval, 1.0)),
            ).start()
        fork.track(self)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} routes={list(self.config.routes)} "
            f"default={self.config.default_route!r} policy={self.config.lb_policy!r}>"
        )

    def add_hook(self, hook: HookLike) -> Hook:
        """Register ``hook`` (an ``llm.events.Hook``, or a function of one event) for the
        events of every call from now on; returns it as registered (``remove_hook`` takes
        either)."""
        return self._hooks.add(hook)

    def remove_hook(self, hook: object) -> None:
        """Unregister ``hook`` (as given to ``add_hook``, or as it returned)."""
        self._hooks.remove(hook)

    def _health_changed(self, change: HealthChange) -> None:
        log_health_change(change)
        self._hooks.health_changed(change)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per route: state, requests, failures, in-flight, EWMAs, ejections, last error."""
        return self.balancer.stats()

    def _open(self) -> None:
        """``ProviderClosedError`` once the provider is closed (checks open no connection)."""
        if self._life.closed:
            raise closed_error()

    def _reset_after_fork(self) -> None:
        """In a forked child (see ``fork``): fresh connections, nothing in flight, the
        background checker running again."""
        self.balancer.fork_reset()
        self._life.fork_reset()
        self._engine.sender.fork_reset()
        self._aengine.sender.fork_reset()
        if self._checker is not None and not self._life.closed:
            self._checker = self._checker.restarted()
        if self._poller is not None and not self._life.closed:
            self._poller = self._poller.restarted()
        if self._discoverer is not None and not self._life.closed:
            self._discoverer = self._discoverer.restarted()

    def _check_settings(self, timeout: float | None = None) -> CheckSettings:
        """How a look at a route is made: ``timeout`` (else at most 5 s) per request."""
        seconds = timeout or min(_CHECK_TIMEOUT_MAX, self.config.timeout)
        return CheckSettings(seconds, self._check_limit, self.balancer.redact)

    def _all_routes(self) -> list[RouteConfig]:
        """Every route that takes calls now (discovered instances instead of their group)."""
        return self.balancer.configs()

    def _default_routes(self) -> list[RouteConfig]:
        """The default model's pool and the fallback route: what ``is_available`` asks about."""
        config = self.config
        pool = self.balancer.pool(config.default_model)
        routes = [route.config for route in pool.routes] if pool is not None else []
        if config.fallback_route is not None and all(
            route.name != config.fallback_route for route in routes
        ):
            routes.append(config.routes[config.fallback_route])
        return routes

    def _learned(self, checks: list[RouteCheck]) -> list[RouteCheck]:
        """``checks``, after each route's ``max_model_len`` they found is kept (``fit.py``)."""
        for check in checks:
            self.balancer.learn_limit(check.route, check.max_model_len, "models")
        return checks

    def _merge(self, checks: Sequence[RouteCheck]) -> dict[str, dict[str, Any]]:
        """Per route: the live check merged with the balancer's state."""
        stats = self.balancer.stats()
        report: dict[str, dict[str, Any]] = {}
        for check in checks:
            entry = check.as_dict()
            entry["state"] = stats.get(check.route, {}).get("state", "retired")
            report[check.route] = entry
        return report


def models_of(checks: Sequence[RouteCheck]) -> list[str]:
    """The models served by the routes that answered /v1/models, sorted; raises if none did."""
    answered = [c for c in checks if c.error is None or c.models]
    if not answered:
        attempts = [Attempt(c.route, "check_failed", None, c.error) for c in checks]
        raise AllRoutesFailedError(
            "no route answered /v1/models: " + "; ".join(f"{c.route}: {c.error}" for c in checks),
            attempts=attempts,
        )
    return sorted({model for c in answered for model in c.models})
