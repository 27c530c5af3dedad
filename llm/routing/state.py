"""What the balancer knows about one route: its config, health and counters.

A ``RouteState`` is created once per route and mutated only under the balancer's lock, so the
hot path allocates nothing per request. ``Pool`` is the ordered set of routes that can serve
one model, with the round-robin cursor that belongs to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import RouteConfig
from .health import RouteHealth
from .load import DEFAULT_MAX_AGE, load_snapshot

if TYPE_CHECKING:
    from .indexes import Watcher


WARMUP_SAMPLES = 3
"""A route's first measurements are a warm-up: its estimate is the least of them (one slow
first answer, carrying the client's own setup, does not bench a fast route), and least latency
treats it as not measured yet until it has this many."""


class RouteState:
    """Mutable per-route record."""

    __slots__ = (
        "abandoned",
        "busy_since",
        "cached_tokens",
        "config",
        "failures",
        "health",
        "hedges_cancelled",
        "hedges_started",
        "hedges_won",
        "home_calls",
        "home_spills",
        "in_flight",
        "kv_usage",
        "last_done",
        "last_error",
        "last_probe_at",
        "last_sample_at",
        "latency_ewma",
        "latency_samples",
        "limit_source",
        "max_model_len",
        "name",
        "prompt_tokens",
        "report_at",
        "report_own",
        "report_running",
        "report_source",
        "report_waiting",
        "requests",
        "retired",
        "retry_after_until",
        "running_at",
        "slots",
        "successes",
        "token_time",
        "tokens_in_flight",
        "ttft_ewma",
        "ttft_samples",
        "watchers",
        "weight",
    )

    def __init__(self, config: RouteConfig, health: RouteHealth) -> None:
        self.config = config
        self.name = config.name
        self.weight = config.weight
        self.health = health
        self.requests = 0
        self.successes = 0
        self.failures = 0
        self.in_flight = 0
        self.latency_ewma: float | None = None
        self.ttft_ewma: float | None = None
        self.last_sample_at = float("-inf")
        self.last_probe_at = float("-inf")
        self.last_error: str | None = None
        self.retry_after_until = float("-inf")
        self.watchers: tuple[Watcher, ...] = ()  # indexes of pools holding it (indexes.py)
        self.busy_since = float("-inf")  # when in_flight last went from 0 to 1
        self.last_done = float("-inf")  # when a request to it last ended, however
        self.latency_samples = 0  # measurements taken (the first few are a warm-up)
        self.ttft_samples = 0
        self.tokens_in_flight = 0  # max_tokens asked by the requests in flight
        self.token_time: float | None = None  # EWMA of seconds per generated token
        self.prompt_tokens = 0  # of the answers' usage: prompt tokens, and of those the
        self.cached_tokens = 0  # tokens its prefix cache held
        # the server's last load report (load.py): what it said, when, and our counters then
        self.report_waiting = 0.0
        self.report_running: float | None = None
        self.running_at = float("-inf")  # when ``report_running`` was reported
        self.slots = 0.0  # the most requests it ever reported running (vLLM's max_num_seqs)
        self.kv_usage: float | None = None
        self.report_at = float("-inf")
        self.report_own = 0
        self.report_source: str | None = None  # "orca" or "metrics"
        self.home_calls = 0  # calls sent here as their affinity home (affinity.py)
        self.home_spills = 0  # calls whose first home this was, sent elsewhere
        # its context window (fit.py): the config's, /v1/models', or a 400's word for it
        self.max_model_len = config.max_model_len
        self.limit_source: str | None = "config" if config.max_model_len else None
        self.retired = False  # discovery saw it go: in no pool, its calls in flight finish
        self.hedges_started = 0  # hedges sent here
        self.hedges_won = 0  # of those, the ones whose answer the call took
        self.hedges_cancelled = 0  # attempts here cancelled: another attempt answered first
        # attempts here cancelled unanswered since its last answer: the quiet spell that
        # marks a stall (Balancer._stalled) goes on through them
        self.abandoned = 0

    @property
    def done(self) -> int:
        """Requests ended, however."""
        return self.requests - self.in_flight

    def __repr__(self) -> str:
        return f"<RouteState {self.name} {'healthy' if self.health.healthy else 'ejected'}>"

    def snapshot(self, now: float, max_age: float = DEFAULT_MAX_AGE) -> dict[str, Any]:
        """Counters as plain data (for ``provider.stats()``); never includes secrets."""
        return {
            "route": self.name,
            "base_url": self.config.shown_url,
            "model": self.config.model,
            "state": "draining" if self.retired else self.health.state(now).value,
            "requests": self.requests,
            "successes": self.successes,
            "failures": self.failures,
            "in_flight": self.in_flight,
            "latency_ewma_ms": _ms(self.latency_ewma),
            "ttft_ewma_ms": _ms(self.ttft_ewma),
            "ejections": self.health.ejections,
            "consecutive_ejections": self.health.consecutive_ejections,
            "cooldown_remaining_s": max(0.0, self.health.ejected_until - now)
            if not self.health.healthy
            else 0.0,
            "last_error": self.last_error,
            "tokens_in_flight": self.tokens_in_flight,
            "ms_per_token": _ms(self.token_time),
            "tokens": {
                "prompt": self.prompt_tokens,
                "cached": self.cached_tokens,
                "cache_hit_rate": round(self.cached_tokens / self.prompt_tokens, 4)
                if self.prompt_tokens
                else None,
            },
            "load": load_snapshot(self, now, max_age),
            "max_model_len": self.max_model_len,
            "max_model_len_source": self.limit_source,
            "affinity": {"home_calls": self.home_calls, "home_spills": self.home_spills},
            "hedges": {
                "started": self.hedges_started,
                "won": self.hedges_won,
                "cancelled": self.hedges_cancelled,
            },
            "discovered_by": self.config.group,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


@dataclass(eq=False)
class Pool:
    """Routes that can serve one model, in config order, plus the round-robin cursor and the
    policy's index of them (``indexes.py``; made on the first pick that needs one)."""

    model: str
    routes: Sequence[RouteState]
    weighted: bool = False
    cursor: int = 0
    names: frozenset[str] = field(default_factory=frozenset)
    index: object = None
    homes: dict[bytes, tuple[RouteState, ...]] = field(default_factory=dict)  # affinity.py
    key_calls: dict[bytes, float] = field(default_factory=dict)  # affinity.py: decayed counts
    keyed_calls: float = 0.0  # affinity.py: calls with a key, decayed alike
    min_limit: int | None = None  # the smallest known max_model_len (fit.py)
    limits_version: int = -1
    key: tuple[str, str] = ("model", "")  # what it is the pool of: ("model" | "single", name)
    stale: bool = False  # replaced: discovered instances joined or left (Balancer.current)
