"""What a validated configuration is: frozen dataclasses, their defaults and the policies known.

How this works
--------------
``LLMConfig`` is the whole ``llm:`` section; it holds one ``RouteConfig`` per server, a
``RetryConfig`` and a ``HealthConfig``. Every class is a frozen, slotted dataclass; its
mappings (``routes``, ``params``, ``headers``) are read-only copies
(``types.MappingProxyType``), rebuilt from plain dicts when pickled (``__reduce__``), since a
mapping proxy does not pickle. Reprs show no secret: a route's ``api_key`` and ``headers`` are
left out and a ``user:password@`` in its ``base_url`` is masked (``shown_url``; the config
takes one out of the URL at load, into an ``Authorization: Basic`` header, but a
``RouteConfig`` built by hand keeps its URL as given).

``serving`` says which routes serve a model: the pool rule, for the config
(``LLMConfig.pool``) and the balancer (``Balancer.pool``) alike.

Nothing here reads or checks raw data: ``sections`` does, then builds these classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .redact import redact_url

KNOWN_POLICIES: tuple[str, ...] = ("round_robin", "least_latency", "least_load")

DEFAULT_PROVIDER = "vllm_openai"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
AFFINITY_BLOCK = 64  # characters of a prompt's head hashed as one block (about 16 tokens)


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy of ``value`` (kept as is when it already is read-only)."""
    if isinstance(value, MappingProxyType):
        return value
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True)
class Discovery:
    """Where a route's instances come from (``llm.routes.<name>.discover``): the A/AAAA
    records of its ``base_url``'s host (``dns``), or the lines of a ``file``; looked at again
    every ``interval`` seconds (``probes/discovery.py``)."""

    dns: bool = False
    file: str | None = None
    interval: float = 10.0


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One inference server instance: where it is and which model it serves."""

    name: str
    base_url: str
    model: str
    timeout: float = DEFAULT_TIMEOUT
    api_key: str = field(default="EMPTY", repr=False)
    weight: float = 1.0
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)
    send_model: bool = True
    verify: bool | str = True
    max_model_len: int | None = None
    discover: Discovery | None = None  # a group of instances, found at run time
    group: str | None = None  # the discovering route this instance was found by

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _frozen_mapping(self.headers))

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType does not pickle; rebuild from a plain dict.
        return (
            type(self),
            (
                self.name,
                self.base_url,
                self.model,
                self.timeout,
                self.api_key,
                self.weight,
                dict(self.headers),
                self.send_model,
                self.verify,
                self.max_model_len,
                self.discover,
                self.group,
            ),
        )

    def __repr__(self) -> str:
        extra = "".join(
            f", {key}={value!r}"
            for key, value in (
                ("max_model_len", self.max_model_len),
                ("discover", self.discover),
                ("group", self.group),
            )
            if value is not None
        )
        return (
            f"RouteConfig(name={self.name!r}, base_url={self.shown_url!r}, model={self.model!r}, "
            f"timeout={self.timeout!r}, weight={self.weight!r}, send_model={self.send_model!r}, "
            f"verify={self.verify!r}{extra})"
        )

    @property
    def shown_url(self) -> str:
        """``base_url`` fit to show (logs, stats, reports): a ``user:password@`` is masked."""
        return redact_url(self.base_url)

    @property
    def server_url(self) -> str:
        """``base_url`` without a trailing ``/v1``: where ``/health`` and ``/metrics`` live."""
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """How often and how patiently a call is retried."""

    max_retries: int = 3
    backoff_initial: float = 0.1
    backoff_max: float = 2.0
    retry_after_max: float = 10.0


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Ejection cooldowns, active checks and latency smoothing."""

    cooldown: float = 5.0
    max_cooldown: float = 60.0
    check_interval: float = 0.0
    reprobe_interval: float = 10.0
    ewma_alpha: float = 0.3
    stall_factor: float = 4.0
    stall_min: float = 1.0


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """Where routing learns each route's load (``llm.load``; see the README, "Load").

    ``poll_interval``: seconds between two reads of a route's ``/metrics`` (jittered; 0: never);
    ``None`` means 1 s under ``least_load`` and never under the other policies.
    ``orca``: ask for vLLM's load report on every non-streamed answer; ``None`` means yes under
    ``least_load`` only. ``max_age``: a report older than this is ignored (stale load herds).
    """

    poll_interval: float | None = None
    orca: bool | None = None
    max_age: float = 3.0

    def polls(self, policy: str) -> float:
        """Seconds between two polls of a route's ``/metrics`` under ``policy`` (0: never)."""
        if self.poll_interval is not None:
            return self.poll_interval
        return 1.0 if policy == "least_load" else 0.0

    def asks_orca(self, policy: str) -> bool:
        return self.orca if self.orca is not None else policy == "least_load"


@dataclass(frozen=True, slots=True)
class AffinityConfig:
    """Prefix affinity (``llm.affinity``; see ``routing/affinity.py`` and the README).

    ``by_prefix``: derive an affinity key from each call's prompt head (a call's ``session=``
    gives one whatever this says); ``homes``: how many home routes a key has; ``load_bound``:
    a home takes a call while its occupancy is at most this many times the pool's;
    ``spill_ratio``: a call with a long prompt leaves home when home's expected time is more
    than this many times the policy's choice's (less for shorter prompts);
    ``prefix_chars``: how much of the prompt's head makes the key at most.
    """

    by_prefix: bool = False
    homes: int = 2
    load_bound: float = 1.5
    spill_ratio: float = 2.0
    prefix_chars: int = 4096


@dataclass(frozen=True, slots=True)
class HedgeConfig:
    """Hedged attempts (``llm.hedge``; see ``routing/hedge.py`` and docs/failure-handling.md).

    ``enabled``: calls hedge unless they say ``hedge=False`` (else only those saying
    ``hedge=True``); ``quantile``: an attempt still without its answer (a stream: its first
    token) after this quantile of what its route (else its model's pool) usually takes gets a
    second attempt on another route; ``min_delay``/``max_delay`` bound that wait (``max_delay``
    is also the wait before enough has been measured); ``budget``: the fraction of calls that
    may hedge over time, with ``burst`` hedges in reserve for a sudden fault.
    """

    enabled: bool = False
    quantile: float = 0.95
    min_delay: float = 0.05
    max_delay: float = 10.0
    budget: float = 0.05
    burst: int = 20


@dataclass(frozen=True, slots=True)
class LLMConfig:
    """The whole ``llm:`` section, validated."""

    provider: str
    routes: Mapping[str, RouteConfig] = field(hash=False)
    default_route: str
    fallback_route: str | None = None
    lb_policy: str = "round_robin"
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = 10.0
    deadline: float = 2 * DEFAULT_TIMEOUT
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    retry: RetryConfig = field(default_factory=RetryConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    source: str | None = None
    load: LoadConfig = field(default_factory=LoadConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    context_fallback: str | None = None
    hooks: tuple[str, ...] = ()  # references to hooks (llm.events), resolved by the provider
    hedge: HedgeConfig = field(default_factory=HedgeConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "routes", _frozen_mapping(self.routes))
        object.__setattr__(self, "params", _frozen_mapping(self.params))

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (
                self.provider,
                dict(self.routes),
                self.default_route,
                self.fallback_route,
                self.lb_policy,
                dict(self.params),
                self.timeout,
                self.connect_timeout,
                self.deadline,
                self.max_response_bytes,
                self.retry,
                self.health,
                self.source,
                self.load,
                self.affinity,
                self.context_fallback,
                self.hooks,
                self.hedge,
            ),
        )

    def route(self, name: str) -> RouteConfig:
        """The route called ``name`` (``KeyError`` if there is none)."""
        return self.routes[name]

    @property
    def default_model(self) -> str:
        """The model of the default route: what a call serves when it names no model."""
        return self.routes[self.default_route].model

    def pool(self, model: str | None = None) -> tuple[str, ...]:
        """Names of the routes serving ``model`` (default: ``default_model``), in file order:
        without the fallback route, unless only the fallback serves it (see ``serving``)."""
        wanted = self.default_model if model is None else model
        return tuple(
            route.name for route in serving(self.routes.values(), wanted, self.fallback_route)
        )


def serving(
    routes: Iterable[RouteConfig], model: str, fallback_route: str | None
) -> list[RouteConfig]:
    """The routes that serve ``model``, in the given order: the pool a call for it uses.

    The fallback route is kept out of a pool it shares with other routes (it is tried only
    once the pool has failed); when no other route serves ``model``, the fallback alone does
    (asking for the fallback's own model finds it). No route with that model: an empty list.
    The config (``LLMConfig.pool``) and the balancer (``Balancer.pool``) both follow it.
    """
    matching = [route for route in routes if route.model == model]
    return [route for route in matching if route.name != fallback_route] or matching
