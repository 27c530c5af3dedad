"""When a call hedges: how long its attempt waits first, and whether the budget allows it.

How this works
--------------
A *hedge* is a second attempt of one call, sent to another route while the first is still
waiting for its answer (a stream: for its first token). The first good answer wins and the
other attempt is cancelled (``send/_async/engine.py`` runs the race; ``plan.py`` decides).
Pure: the engines pass the clock's readings, and every method here runs under the balancer's
lock.

*The delay* of an attempt is what its route usually takes: each route keeps its last
``WINDOW`` latencies of non-streamed answers and, apart, its last ``WINDOW`` times to first
token of streams; each model's pool keeps the same of all its routes together. The delay is
the configured quantile (``llm.hedge.quantile``, 0.95) of the route's window of the call's
kind, else of its pool's when the route has fewer than ``MIN_SAMPLES``, else ``max_delay``;
at least ``MEDIAN_FACTOR`` times that window's median; always between ``min_delay`` and
``max_delay``. A quantile is recomputed once every
``REFRESH`` samples, so a sample costs an assignment.

*The budget* is a token bucket: each call that may hedge adds ``budget`` tokens (0.05), up
to ``max(1, burst)`` (it starts full); a hedge takes one. So over any run of N calls at most
``budget × N + max(1, burst)`` hedges are sent, and a sudden fault (an instance freezing with
calls on it) may hedge all of its calls at once, up to ``burst``.

*Saturation*: no hedge goes to a route whose fresh load report (``load.py``) shows requests
waiting in its queue or its KV cache nearly full: the fleet has no spare capacity there, and
a hedge would only add to the queue. With no fresh report, only the budget limits hedges.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..config import HedgeConfig

if TYPE_CHECKING:
    from .state import RouteState

WINDOW = 64  # samples kept per route and kind, and per pool and kind
MIN_SAMPLES = 16  # a window with fewer has no quantile yet
REFRESH = 8  # a window's quantile is recomputed once every this many new samples
FULL_KV = 0.95  # a reported KV-cache usage from which a route counts as saturated
MAX_HEDGES = 1  # hedges of one call: a second one would rarely help more than it costs
MEDIAN_FACTOR = 2.0
"""A hedge waits at least this many times the usual median: it is for an attempt far slower
than usual, not for the usual spread. Where answers take about the same time every time, the
95th percentile is hardly above the median, and hedging there would spend the budget on
nothing; the budget is then still there when an instance hangs."""


class LatencyWindow:
    """The last ``WINDOW`` samples of one kind of wait, and a quantile of them."""

    __slots__ = ("_cached", "_quantile", "_samples", "_since", "_slot")

    def __init__(self, quantile: float) -> None:
        self._quantile = quantile
        self._samples: list[float] = []
        self._slot = 0  # where the next sample goes once the window is full
        self._since = 0  # samples since the quantile was computed
        self._cached: float | None = None

    def add(self, seconds: float) -> None:
        samples = self._samples
        if len(samples) < WINDOW:
            samples.append(seconds)
        else:
            samples[self._slot] = seconds
            self._slot = (self._slot + 1) % WINDOW
        self._since += 1

    def __len__(self) -> int:
        return len(self._samples)

    def value(self) -> float | None:
        """The wait this window makes usual: its quantile (nearest rank), and at least
        ``MEDIAN_FACTOR`` times its median; None with fewer than ``MIN_SAMPLES``."""
        samples = self._samples
        if len(samples) < MIN_SAMPLES:
            return None
        if self._cached is None or self._since >= REFRESH:
            ordered = sorted(samples)
            usual = nearest_rank(ordered, self._quantile)
            spread = MEDIAN_FACTOR * nearest_rank(ordered, 0.5)
            self._cached = usual if usual > spread else spread
            self._since = 0
        return self._cached


def nearest_rank(ordered: list[float], quantile: float) -> float:
    """The least of ``ordered`` with at least ``quantile`` of them at or below it (less a hair,
    so that 0.9 of 30 is the 27th, not the 28th, in floating point)."""
    return ordered[max(0, math.ceil(quantile * len(ordered) - 1e-9) - 1)]


class Hedger:
    """The hedge delays (from the windows) and the budget of one balancer."""

    __slots__ = ("_cap", "_pools", "_routes", "active", "config", "tokens")

    def __init__(self, config: HedgeConfig) -> None:
        self.config = config
        # whether answers are measured: from the start when calls hedge by default, else
        # from the first call that asks to (a fleet that never hedges pays nothing for it)
        self.active = config.enabled
        self._cap = float(max(1, config.burst))
        self.tokens = self._cap
        self._routes: dict[tuple[str, bool], LatencyWindow] = {}
        self._pools: dict[tuple[str, bool], LatencyWindow] = {}

    def observe(self, route: str, model: str, seconds: float, stream: bool) -> None:
        """A route's answer (``stream``: its first token) came after ``seconds``."""
        key = (route, stream)
        window = self._routes.get(key)
        if window is None:
            window = self._routes[key] = LatencyWindow(self.config.quantile)
        window.add(seconds)
        key = (model, stream)
        window = self._pools.get(key)
        if window is None:
            window = self._pools[key] = LatencyWindow(self.config.quantile)
        window.add(seconds)

    def delay(self, route: str, model: str, stream: bool) -> float:
        """How long an attempt on ``route`` waits for its answer before a hedge is sent."""
        config = self.config
        window = self._routes.get((route, stream))
        usual = window.value() if window is not None else None
        if usual is None:
            window = self._pools.get((model, stream))
            usual = window.value() if window is not None else None
        if usual is None:
            return config.max_delay
        if usual < config.min_delay:
            return config.min_delay
        return usual if usual < config.max_delay else config.max_delay

    def called(self) -> None:
        """A call that may hedge began: the budget grows by its share."""
        tokens = self.tokens + self.config.budget
        self.tokens = tokens if tokens < self._cap else self._cap

    def take(self) -> bool:
        """Spend one hedge of the budget; False (nothing spent) when it is used up."""
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def forget(self, route: str) -> None:
        """A route left the fleet (discovery): its windows go with it."""
        self._routes.pop((route, False), None)
        self._routes.pop((route, True), None)


def saturated(route: RouteState, now: float, max_age: float) -> bool:
    """Whether ``route``'s fresh load report says it has no room: requests waiting in its
    queue, or its KV cache nearly full. False with no fresh report (nothing is known)."""
    if now - route.report_at > max_age:
        return False
    kv = route.kv_usage
    return route.report_waiting >= 1.0 or (kv is not None and kv >= FULL_KV)
