"""Health changes the balancer reports: a route ejected, misconfigured, healthy again.

The balancer is pure and does not log. It hands each change to the listener it was given
(``Balancer(on_health=...)``), after releasing its lock; the provider gives it one that logs
(``llm.send.log``), and a test can give it a list's ``append``. A listener must not raise: it
runs inside the call that caused the change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

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


HealthListener = Callable[[HealthChange], None]
