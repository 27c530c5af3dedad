"""Prometheus metrics of a provider: a hook for what happens, a collector for what is.

How this works
--------------
``PrometheusHook`` is a hook (``llm.events``): each attempt and each call that ends moves its
counters and histograms, each health change its counter. When it is registered on a provider
(``provider.add_hook``, or ``hooks: [prometheus]`` in the config) it is handed the provider
(``attach``), and a collector reads the provider's ``stats()`` at each scrape for the gauges:
calls in flight, route health, and the last load report of each route. Everything goes into
one registry (default: prometheus_client's global ``REGISTRY``), which the application exposes
as it exposes its own metrics (``prometheus_client.start_http_server(9464)``, a ``/metrics``
route of its web framework, ...).

Names follow Prometheus' conventions (``_total`` counters, ``_seconds`` histograms, base units)
under the ``llm_routes_`` prefix; see ``METRICS`` and docs/observability.md. Label values are
route names, model names, outcomes and status codes: bounded by the config, never per call.
The children of each label set are looked up once and kept, so a call costs a dictionary look
up and an increment per metric.

Requires ``prometheus-client`` (``pip install 'llm-routes[prometheus]'``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..events import AttemptEnded, CallEnded, HealthChange, Hook

__all__ = ["DEFAULT_BUCKETS", "METRICS", "PrometheusHook"]

PREFIX = "llm_routes"

# seconds: a cached short answer (tens of ms) to a long generation (minutes)
DEFAULT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

METRICS = {
    "llm_routes_calls_total": "calls ended, by model, the route that answered (none: '') and "
    "outcome (ok or the error's class)",
    "llm_routes_call_duration_seconds": "a call's whole time, all attempts (a stream: to its end)",
    "llm_routes_attempts_total": "attempts ended, by route, outcome and HTTP status",
    "llm_routes_attempt_duration_seconds": "an attempt's time, by route and outcome",
    "llm_routes_time_to_first_token_seconds": "a streamed attempt's time to its first token",
    "llm_routes_retries_total": "attempts after a call's first, by route and the reason",
    "llm_routes_failovers_total": "calls answered by another route than their first attempt's",
    "llm_routes_fallbacks_total": "calls answered by the fallback route",
    "llm_routes_tokens_total": "tokens of the answers, by route and kind (prompt, completion, "
    "cached)",
    "llm_routes_health_changes_total": "routes ejected, found misconfigured or healthy again",
    "llm_routes_hedges_total": "hedges, by route and result: started (sent to the route), won "
    "(its answer taken), cancelled (an attempt on the route cancelled: another answered first)",
    "llm_routes_in_flight": "calls in flight per route (gauge)",
    "llm_routes_route_healthy": "1 while a route takes calls, 0 while it is ejected (gauge)",
    "llm_routes_load_running": "requests running on a route, as it last reported (gauge)",
    "llm_routes_load_waiting": "requests waiting on a route, as it last reported (gauge)",
    "llm_routes_load_kv_cache_usage_ratio": "a route's KV-cache usage, 0 to 1 (gauge)",
    "llm_routes_load_report_age_seconds": "age of a route's last load report (gauge)",
}


_CANCELLED = frozenset({"hedge_lost", "stalled"})  # an attempt's outcomes when a race cancels it


def _help(name: str) -> str:
    return METRICS[name]


class PrometheusHook(Hook):
    """Counters and histograms of calls and attempts, and (once attached to a provider) the
    gauges of its routes, in ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = registry if registry is not None else REGISTRY
        reg, b = self.registry, tuple(buckets)
        self._calls = Counter(
            f"{PREFIX}_calls",
            _help("llm_routes_calls_total"),
            ["model", "route", "outcome"],
            registry=reg,
        )
        self._call_seconds = Histogram(
            f"{PREFIX}_call_duration_seconds",
            _help("llm_routes_call_duration_seconds"),
            ["model", "outcome"],
            buckets=b,
            registry=reg,
        )
        self._attempts = Counter(
            f"{PREFIX}_attempts",
            _help("llm_routes_attempts_total"),
            ["route", "outcome", "status"],
            registry=reg,
        )
        self._attempt_seconds = Histogram(
            f"{PREFIX}_attempt_duration_seconds",
            _help("llm_routes_attempt_duration_seconds"),
            ["route", "outcome"],
            buckets=b,
            registry=reg,
        )
        self._ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            _help("llm_routes_time_to_first_token_seconds"),
            ["route"],
            buckets=b,
            registry=reg,
        )
        self._retries = Counter(
            f"{PREFIX}_retries",
            _help("llm_routes_retries_total"),
            ["route", "reason"],
            registry=reg,
        )
        self._failovers = Counter(
            f"{PREFIX}_failovers", _help("llm_routes_failovers_total"), ["model"], registry=reg
        )
        self._fallbacks = Counter(
            f"{PREFIX}_fallbacks", _help("llm_routes_fallbacks_total"), ["model"], registry=reg
        )
        self._tokens = Counter(
            f"{PREFIX}_tokens", _help("llm_routes_tokens_total"), ["route", "kind"], registry=reg
        )
        self._health = Counter(
            f"{PREFIX}_health_changes",
            _help("llm_routes_health_changes_total"),
            ["route", "change"],
            registry=reg,
        )
        self._hedges = Counter(
            f"{PREFIX}_hedges",
            _help("llm_routes_hedges_total"),
            ["route", "result"],
            registry=reg,
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        self._state = _RouteState()
        reg.register(self._state)

    def __repr__(self) -> str:
        return "<PrometheusHook>"

    def attach(self, provider: Any) -> None:
        """Read ``provider.stats()`` for the gauges at each scrape (called by ``add_hook``)."""
        self._state.providers.add(provider)

    def unregister(self) -> None:
        """Take every metric of this hook out of its registry (tests, a provider replaced)."""
        for collector in (
            self._calls,
            self._call_seconds,
            self._attempts,
            self._attempt_seconds,
            self._ttft,
            self._retries,
            self._failovers,
            self._fallbacks,
            self._tokens,
            self._health,
            self._hedges,
            self._state,
        ):
            self.registry.unregister(collector)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = metric.labels(*labels)
        return child

    def _of_attempt(self, key: tuple[str, str, int | None]) -> tuple[Any, ...]:
        route, outcome, status = key
        shown = "" if status is None else str(status)
        children = (
            self._child(self._attempts, route, outcome, shown),
            self._child(self._attempt_seconds, route, outcome),
            self._child(self._ttft, route),
            self._child(self._tokens, route, "prompt"),
            self._child(self._tokens, route, "completion"),
            self._child(self._tokens, route, "cached"),
        )
        self._children[key] = children
        return children

    # -- events ------------------------------------------------------------------------

    def attempt_ended(self, event: AttemptEnded) -> None:
        key = (event.route, event.outcome, event.status_code)
        children = self._children.get(key) or self._of_attempt(key)
        count, seconds, ttft, prompt, completion, cached = children
        count.inc()
        seconds.observe(event.duration_s)
        if event.ttft_s is not None:
            ttft.observe(event.ttft_s)
        if event.retry_reason is not None:
            self._child(self._retries, event.route, event.retry_reason).inc()
        if event.prompt_tokens:
            prompt.inc(event.prompt_tokens)
        if event.completion_tokens:
            completion.inc(event.completion_tokens)
        if event.cached_tokens:
            cached.inc(event.cached_tokens)
        if event.hedge:
            self._child(self._hedges, event.route, "started").inc()
            if event.outcome == "ok":
                self._child(self._hedges, event.route, "won").inc()
        if event.outcome in _CANCELLED:
            self._child(self._hedges, event.route, "cancelled").inc()

    def call_ended(self, event: CallEnded) -> None:
        model, route = event.call.model or "", event.route or ""
        key = ("call", model, route, event.outcome)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self._child(self._calls, model, route, event.outcome),
                self._child(self._call_seconds, model, event.outcome),
            )
        count, seconds = children
        count.inc()
        seconds.observe(event.duration_s)
        if event.failover:
            self._child(self._failovers, model).inc()
        if event.fallback:
            self._child(self._fallbacks, model).inc()

    def route_health(self, event: HealthChange) -> None:
        self._child(self._health, event.route, event.kind).inc()


class _RouteState(Collector):
    """The gauges, read from the attached providers' ``stats()`` at each scrape."""

    def __init__(self) -> None:
        self.providers: weakref.WeakSet[Any] = weakref.WeakSet()

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        in_flight, healthy, running, waiting, kv, age = families
        for provider in list(self.providers):
            try:
                stats = provider.stats()
            except Exception:  # noqa: BLE001 - a closed or broken provider: no gauges, no error
                continue
            for name, route in stats.items():
                in_flight.add_metric([name], route["in_flight"])
                healthy.add_metric([name], 1.0 if route["state"] == "healthy" else 0.0)
                load = route.get("load") or {}
                for family, key in (
                    (running, "reported_running"),
                    (waiting, "reported_waiting"),
                    (kv, "kv_cache_usage"),
                    (age, "report_age_s"),
                ):
                    value = load.get(key)
                    if value is not None:
                        family.add_metric([name], float(value))
        yield from families

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return tuple(
            GaugeMetricFamily(name, METRICS[name], labels=["route"])
            for name in (
                "llm_routes_in_flight",
                "llm_routes_route_healthy",
                "llm_routes_load_running",
                "llm_routes_load_waiting",
                "llm_routes_load_kv_cache_usage_ratio",
                "llm_routes_load_report_age_seconds",
            )
        )
