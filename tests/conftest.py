"""Shared test helpers: a fake clock, a balancer factory (no sockets, no sleeping) and a
hook that records events."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from llm.config import HealthConfig, RouteConfig
from llm.events import AttemptEnded, AttemptStarted, CallEnded, Hook
from llm.routing import Balancer, HealthListener, Pool


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class EventRecorder(Hook):
    """A hook that keeps every attempt's and every call's end, in order."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def attempt_started(self, event: AttemptStarted) -> None:
        self.events.append(event)

    def attempt_ended(self, event: AttemptEnded) -> None:
        self.events.append(event)

    def call_ended(self, event: CallEnded) -> None:
        self.events.append(event)


def route_config(name: str, model: str = "m", **kwargs: Any) -> RouteConfig:
    kwargs.setdefault("timeout", 5.0)
    return RouteConfig(name=name, base_url=f"http://127.0.0.1:1/{name}/v1", model=model, **kwargs)


MakeBalancer = Callable[..., Balancer]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_balancer(clock: FakeClock) -> MakeBalancer:
    """``make_balancer("a", "b", route_config("c", weight=2), policy=..., health=...)``.

    Plain names become routes of model "m". Uses the ``clock`` fixture and a seeded rng.
    """

    def make(
        *routes: str | RouteConfig,
        policy: Any = "round_robin",
        health: HealthConfig | None = None,
        fallback_route: str | None = None,
        seed: int = 0,
        on_health: HealthListener | None = None,
    ) -> Balancer:
        configs = [route_config(r) if isinstance(r, str) else r for r in routes]
        return Balancer(
            configs,
            policy=policy,
            health=health or HealthConfig(cooldown=5, max_cooldown=60),
            fallback_route=fallback_route,
            clock=clock,
            rng=random.Random(seed),
            on_health=on_health,
        )

    return make


def picks(balancer: Balancer, pool: Pool, n: int, **kw: Any) -> list[str]:
    """The names of ``n`` routes picked in a row (none dispatched); ``kw`` goes to ``pick``."""
    names = []
    for _ in range(n):
        route = balancer.pick(pool, **kw)
        assert route is not None
        names.append(route.name)
    return names
