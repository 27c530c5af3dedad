"""Health changes the balancer reports: a route ejected, misconfigured, healthy again.

The balancer is pure and does not log. It hands each change to the listener it was given
(``Balancer(on_health=...)``), after releasing its lock; the provider gives it one that logs
(``llm.send.log``) and hands the change to the hooks (``llm.events``), and a test can give it
a list's ``append``. A listener must not raise: it runs inside the call that caused the
change. ``HealthChange`` itself is defined with the other events, in ``llm.events``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..events import ChangeKind, HealthChange

__all__ = ["ChangeKind", "HealthChange", "HealthListener"]

HealthListener = Callable[[HealthChange], None]
