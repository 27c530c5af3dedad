"""Hooks: what a provider saw, handed out as typed events as it happens.

How this works
--------------
A hook is a :class:`Hook` (override only the methods you need) or a plain function of one
event; ``provider.add_hook(hook)``, ``LLMFactory.create_provider(..., hooks=[...])`` or the
config's ``llm.hooks`` register it. The events, in the order one call makes them:

- ``CallStarted``: a call was planned (``call`` is its :class:`CallInfo`, the same object in
  every event of that call, with a ``context`` dict a hook may keep its own state in);
- ``AttemptStarted``: an attempt is about to be sent to ``route``; a hook may add request
  headers to ``headers`` (trace context, say);
- ``AttemptEnded``: how it ended (``outcome`` as in ``Attempt``), with its latency, time to
  first token and tokens, and, for an attempt after the first, why the call went on
  (``retry_reason``) and the backoff it waited;
- ``CallEnded``: the call's outcome, the route that answered, its attempts and tokens;
- ``HealthChange``: a route ejected, misconfigured or healthy again (any time);
- ``LoadReported``: a load report of a route (vLLM's ORCA header or ``/metrics``).

The library's own code calls a :class:`Hooks` dispatcher, which exists only once a hook is
registered: with none, a call pays for one ``is None`` test per emission point. The
dispatcher calls, per event, only the hooks that override that event's method. A hook that
raises never breaks a call: the error goes to the dispatcher's ``on_error`` (the provider
logs it once per hook and event kind) and the other hooks still run.

This module is pure: no I/O, no logging; ``routing`` and ``send`` emit, ``observe`` consumes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import Attempt, LLMError

__all__ = [
    "AttemptEnded",
    "AttemptStarted",
    "CallEnded",
    "CallInfo",
    "CallStarted",
    "ChangeKind",
    "Event",
    "HealthChange",
    "Hook",
    "Hooks",
    "LoadReported",
    "Wanted",
    "as_hook",
]

_ids = itertools.count(1)


@dataclass(slots=True, eq=False)
class CallInfo:
    """One call, as every event of it names it.

    ``operation`` is ``chat``, ``text_completion``, or the path of another endpoint without
    its slashes (SDK path: ``embeddings``, ``models``...); ``model`` the model asked for (the
    pool); ``route`` the route a call was pinned to; ``started_at`` a reading of the
    provider's clock (seconds); ``context`` is the hooks' own: a span, a timer, anything to
    carry from start to end.
    """

    operation: str
    model: str | None
    stream: bool
    route: str | None
    started_at: float
    id: int = field(default_factory=lambda: next(_ids))
    context: MutableMapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(slots=True)  # read-only by convention: a frozen one costs µs to make
class CallStarted:
    call: CallInfo


@dataclass(slots=True)
class AttemptStarted:
    """An attempt about to be sent: ``number`` counts from 1; ``server_address`` and
    ``server_port`` are the route's host and port; ``delay_s`` the backoff waited before it;
    ``fallback`` whether ``route`` is the fallback route; ``hedge`` whether this attempt is a
    hedge (sent while an earlier one still waits). ``headers`` starts empty: what a hook puts
    there is sent with this attempt's request (never secrets of the route's)."""

    call: CallInfo
    number: int
    route: str
    model: str
    server_address: str
    server_port: int | None
    delay_s: float
    fallback: bool
    headers: dict[str, str] = field(default_factory=dict)
    hedge: bool = False


@dataclass(slots=True)  # read-only by convention: a frozen one costs µs to make
class AttemptEnded:
    """How an attempt ended. ``outcome`` is ``ok`` or a failure (``timeout``,
    ``connect_error``, ``status``, ``stream_cut``, ``invalid_response``...), ``status_code``
    the HTTP status when one came; ``duration_s`` the attempt's whole time, ``latency_s`` from
    sending to the answer's end (``None`` for a stream closed early), ``ttft_s`` to a stream's
    first token. Tokens are the answer's usage (``completion_tokens`` of a stream: counted
    from its events when it sent no usage). ``retry_reason`` is the previous attempt's outcome
    when this one is a retry. ``error`` is the failure's text, masked of secrets. ``hedge``
    says the attempt was a hedge; an attempt cancelled because another one of its call
    answered first ends with the outcome ``hedge_lost`` (or ``stalled``, when its route had
    answered nothing for a stall's length: that counts against the route); one cut short
    otherwise, ``cancelled`` (the call cancelled or ended) or ``closed`` (the provider)."""

    call: CallInfo
    number: int
    route: str
    model: str
    server_address: str
    server_port: int | None
    outcome: str
    status_code: int | None
    duration_s: float
    latency_s: float | None
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int | None
    cached_tokens: int
    retry_reason: str | None
    delay_s: float
    fallback: bool
    error: str | None
    hedge: bool = False


@dataclass(slots=True)  # read-only by convention: a frozen one costs µs to make
class CallEnded:
    """How a call ended: ``outcome`` is ``ok`` or the name of the error it raised
    (``AllRoutesFailedError``, ``BadRequestError``, ``cancelled``...). ``route`` and
    ``model`` are those of the attempt that answered (``None`` when none did); ``failover``
    is true when that was not the first attempt's route, ``fallback`` when it was the
    fallback route. ``duration_s`` runs from the call's start to its end (a stream's end).
    ``hedged`` says a hedge was sent, ``hedge_won`` that the answer was the hedge's (a call
    answered by its hedge is not counted a ``failover``)."""

    call: CallInfo
    outcome: str
    route: str | None
    model: str | None
    attempts: tuple[Attempt, ...]
    duration_s: float
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int | None
    cached_tokens: int
    failover: bool
    fallback: bool
    error: LLMError | None = None
    hedged: bool = False
    hedge_won: bool = False


ChangeKind = Literal["ejected", "misconfigured", "recovered"]


@dataclass(frozen=True, slots=True)
class HealthChange:
    """One change of one route's health.

    - ``ejected``: ``reason`` says why, ``cooldown_s`` for how long; ``by_check`` when an
      active check ejected it rather than a call.
    - ``misconfigured``: a failure no retry will cure (401, 403, 404, a redirect); the
      route is ejected as well (an ``ejected`` change follows unless it was ejected already).
    - ``recovered``: a request sent after the ejection succeeded; the route is healthy.
    """

    kind: ChangeKind
    route: str
    reason: str | None = None
    cooldown_s: float | None = None
    by_check: bool = False


@dataclass(frozen=True, slots=True)
class LoadReported:
    """A load report of ``route``: from vLLM's ORCA header on an answer (``orca``: waiting
    and KV-cache usage) or its ``/metrics`` (``metrics``: running, waiting, usage)."""

    route: str
    source: Literal["orca", "metrics"]
    running: float | None
    waiting: float | None
    kv_usage: float | None


Event = CallStarted | AttemptStarted | AttemptEnded | CallEnded | HealthChange | LoadReported


class Hook:
    """Override the methods of the events you want; the others cost nothing."""

    def call_started(self, event: CallStarted) -> None:
        """A call was planned."""

    def attempt_started(self, event: AttemptStarted) -> None:
        """An attempt is about to be sent (add headers to ``event.headers``)."""

    def attempt_ended(self, event: AttemptEnded) -> None:
        """An attempt ended."""

    def call_ended(self, event: CallEnded) -> None:
        """A call ended (a stream: when it was read to its end, failed, or closed)."""

    def route_health(self, event: HealthChange) -> None:
        """A route was ejected, found misconfigured, or is healthy again."""

    def load_reported(self, event: LoadReported) -> None:
        """A load report of a route was read."""


class _FunctionHook(Hook):
    """A function of one event, as a hook of every event."""

    def __init__(self, function: Callable[[Event], object]) -> None:
        self.function = function

    def __repr__(self) -> str:
        return f"<hook {getattr(self.function, '__qualname__', self.function)!r}>"

    def call_started(self, event: CallStarted) -> None:
        self.function(event)

    def attempt_started(self, event: AttemptStarted) -> None:
        self.function(event)

    def attempt_ended(self, event: AttemptEnded) -> None:
        self.function(event)

    def call_ended(self, event: CallEnded) -> None:
        self.function(event)

    def route_health(self, event: HealthChange) -> None:
        self.function(event)

    def load_reported(self, event: LoadReported) -> None:
        self.function(event)


def as_hook(hook: Hook | Callable[[Event], object]) -> Hook:
    """``hook`` itself, or a function of one event wrapped as a hook."""
    if isinstance(hook, Hook):
        return hook
    if callable(hook):
        return _FunctionHook(hook)
    raise TypeError(f"a hook is a llm.events.Hook or a function of one event, not {hook!r}")


ErrorReport = Callable[[Hook, str, BaseException], None]


Wanted = tuple[tuple[Hook, Callable[[Any], object]], ...]  # (hook, its bound method)


class Hooks:
    """The dispatcher: for each kind of event, the bound methods of the hooks that want it
    (``on_call_started``...: empty when no hook overrides that method). Immutable: adding a
    hook makes a new dispatcher (``with_hook``), swapped in at once."""

    __slots__ = (
        "hooks",
        "on_attempt_ended",
        "on_attempt_started",
        "on_call_ended",
        "on_call_started",
        "on_error",
        "on_load_reported",
        "on_route_health",
    )

    def __init__(self, hooks: Iterable[Hook], on_error: ErrorReport | None = None) -> None:
        self.hooks = tuple(hooks)
        self.on_error = on_error
        self.on_call_started = self._wanting("call_started")
        self.on_attempt_started = self._wanting("attempt_started")
        self.on_attempt_ended = self._wanting("attempt_ended")
        self.on_call_ended = self._wanting("call_ended")
        self.on_route_health = self._wanting("route_health")
        self.on_load_reported = self._wanting("load_reported")

    def _wanting(self, name: str) -> Wanted:
        base = getattr(Hook, name)
        return tuple(
            (hook, getattr(hook, name))
            for hook in self.hooks
            if getattr(type(hook), name, base) is not base
        )

    def with_hook(self, hook: Hook) -> Hooks:
        return Hooks((*self.hooks, hook), self.on_error)

    def without_hook(self, hook: object) -> Hooks | None:
        """This dispatcher less ``hook`` (or the wrapper of that function); None if empty."""
        kept = [h for h in self.hooks if h is not hook and getattr(h, "function", None) is not hook]
        return Hooks(kept, self.on_error) if kept else None

    def emit(self, wanted: Wanted, event: Any) -> None:
        """Hand ``event`` to each of ``wanted`` (one of the ``on_*`` tuples); a hook that
        raises is reported to ``on_error`` and the others still run."""
        for hook, method in wanted:
            try:
                method(event)
            except Exception as exc:  # noqa: BLE001 - a hook never breaks a call
                if self.on_error is not None:
                    self.on_error(hook, type(event).__name__, exc)
