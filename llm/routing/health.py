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
many consecutive ejections. "Before" is the order of events, not of clock readings: a coarse
clock (or a fake one) gives the same reading to a request and to an ejection that follows it,
so ``on_dispatch`` returns a start stamp that is never before the last ejection, and an
ejection is stamped after every request dispatched so far (one float step later on a tie).

Nothing here locks: the balancer owns the lock and calls these methods under it.
"""

from __future__ import annotations

import math
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
        "last_dispatched_at",
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
        self.last_dispatched_at = float("-inf")
        # requests sent since the ejection (the trial, forced ones) still in flight: a count,
        # not a flag, so that one of two ending does not open the slot while the other runs
        self.trial_in_flight = 0

    def state(self, now: float) -> State:
        if self.healthy:
            return State.HEALTHY
        return State.PROBING if now >= self.ejected_until else State.EJECTED

    def available(self, now: float) -> bool:
        """May a request be sent here now without forcing? (healthy, or a free trial slot)"""
        return self.healthy or (now >= self.ejected_until and not self.trial_in_flight)

    def on_dispatch(self, now: float) -> float:
        """A request is sent now. When the route is not healthy it is the (or a forced) trial.

        Returns the request's start stamp for the reports: ``now``, or the last ejection's
        stamp when that is later (an ejection at this same clock reading came first)."""
        # max() spelt out: this runs on every request, and a builtin call costs more here
        ejected_at = self.ejected_at
        started = ejected_at if ejected_at > now else now
        if started > self.last_dispatched_at:
            self.last_dispatched_at = started
        if not self.healthy:
            self.trial_in_flight += 1
        return started

    def on_success(self, started_at: float) -> None:
        if self.healthy:
            self.consecutive_ejections = 0
        elif started_at >= self.ejected_at:
            self.healthy = True
            self.consecutive_ejections = 0
            self.trial_in_flight = 0

    def on_neutral(self, started_at: float) -> None:
        """The request ended without telling anything about the route (caller's fault, cancel)."""
        if not self.healthy and started_at >= self.ejected_at and self.trial_in_flight:
            self.trial_in_flight -= 1

    def on_failure(
        self, started_at: float, now: float, rng: random.Random, min_cooldown: float = 0.0
    ) -> bool:
        """Record a route failure; returns True when this failure ejected the route."""
        if started_at < self.ejected_at:
            return False  # in flight before the last ejection: already accounted for
        self.healthy = False
        self.trial_in_flight = 0
        self.ejections += 1
        self.consecutive_ejections += 1
        cooldown = cooldown_for(
            self.consecutive_ejections, self.base_cooldown, self.max_cooldown, rng
        )
        # after every request dispatched so far, even those with this same clock reading
        last = self.last_dispatched_at
        self.ejected_at = now if now > last else math.nextafter(last, math.inf)
        self.ejected_until = now + max(cooldown, min(min_cooldown, self.max_cooldown))
        return True
