"""Per-route health: a small state machine, pure, with the clock passed in.

Theory of operation
-------------------
A route is HEALTHY until one of its requests fails in a way that is the route's fault
(connect error, timeout, 5xx, 429, 401/403/404). It is then EJECTED until ``ejected_until``:
a cooldown that doubles with each consecutive ejection, capped at ``max_cooldown`` and
jittered downwards (so a fleet of clients does not re-probe in lock step), never below a
server's Retry-After hint. Once the cooldown is over the route is PROBING: it may take one
trial request at a time. A success of a request dispatched after the ejection makes it HEALTHY
again and forgets the consecutive count; a failure ejects it again, for longer.

Requests that were already in flight when the route was ejected do not move the state: they
belong to the period before the ejection. That keeps one burst of failures from counting as
many consecutive ejections.

Nothing here locks: the balancer owns the lock and calls these methods under it.
"""

from __future__ import annotations

import random
from enum import Enum


class State(str, Enum):
    HEALTHY = "healthy"
    EJECTED = "ejected"
    PROBING = "probing"


def cooldown_for(
    consecutive: int, base: float, cap: float, rng: random.Random, jitter: float = 0.2
) -> float:
    """Cooldown of the n-th ejection in a row: base * 2^(n-1), capped, jittered down."""
    raw = base * (2.0 ** min(consecutive - 1, 32))
    return min(cap, raw) * (1.0 - jitter * rng.random())


class RouteHealth:
    """Health of one route. All times are the injected clock's seconds."""

    __slots__ = (
        "base_cooldown",
        "consecutive_ejections",
        "ejected_at",
        "ejected_until",
        "ejections",
        "healthy",
        "max_cooldown",
        "trial_in_flight",
    )

    def __init__(self, base_cooldown: float, max_cooldown: float) -> None:
        self.base_cooldown = base_cooldown
        self.max_cooldown = max_cooldown
        self.healthy = True
        self.ejections = 0
        self.consecutive_ejections = 0
        self.ejected_at = float("-inf")
        self.ejected_until = float("-inf")
        self.trial_in_flight = False

    def state(self, now: float) -> State:
        if self.healthy:
            return State.HEALTHY
        return State.PROBING if now >= self.ejected_until else State.EJECTED

    def available(self, now: float) -> bool:
        """May a request be sent here now without forcing? (healthy, or a free trial slot)"""
        return self.healthy or (now >= self.ejected_until and not self.trial_in_flight)

    def on_dispatch(self, now: float) -> None:
        """A request is sent now. When the route is not healthy it is the (or a forced) trial."""
        if not self.healthy:
            self.trial_in_flight = True

    def on_success(self, started_at: float) -> None:
        if self.healthy:
            self.consecutive_ejections = 0
        elif started_at >= self.ejected_at:
            self.healthy = True
            self.consecutive_ejections = 0
            self.trial_in_flight = False

    def on_neutral(self, started_at: float) -> None:
        """The request ended without telling anything about the route (caller's fault, cancel)."""
        if not self.healthy and started_at >= self.ejected_at:
            self.trial_in_flight = False

    def on_failure(
        self, started_at: float, now: float, rng: random.Random, min_cooldown: float = 0.0
    ) -> bool:
        """Record a route failure; returns True when this failure ejected the route."""
        if started_at < self.ejected_at:
            return False  # in flight before the last ejection: already accounted for
        self.healthy = False
        self.trial_in_flight = False
        self.ejections += 1
        self.consecutive_ejections += 1
        cooldown = cooldown_for(
            self.consecutive_ejections, self.base_cooldown, self.max_cooldown, rng
        )
        self.ejected_at = now
        self.ejected_until = now + max(cooldown, min(min_cooldown, self.max_cooldown))
        return True
