"""How loaded is a route now? Its own calls in flight, corrected by what the server reported.

How this works
--------------
A vLLM server says how loaded it is in two ways (``llm.judge.load_report`` parses both):
the ORCA header ``endpoint-load-metrics`` on a non-streamed answer (requests *waiting*), and
its ``/metrics`` gauges, polled in the background (requests *running* and *waiting*). Either
reaches the route as a *report*, stored with the moment it arrived and with this client's own
calls in flight at that moment.

The estimate for a new call (``estimated_load``) is the report brought up to date with what
this client did since::

    waiting + running + (sent since the report) - (ended since the report)

that is, plus the change of our own in-flight count since the report; never less than this
client's own calls in flight (they are on the server, whatever it said), and just those when
the report is older than ``max_age``: old load information herds (every client piles onto
whatever looked idle a while ago), and our own in-flight count is always exact. An ORCA
report carries no running count: the last ``/metrics`` one stands in while it is fresh, else
our own calls in flight at the moment of the report. A server that reports nothing (not
vLLM, or an old one) leaves the estimate at our own in-flight count.

The calls other clients (other app replicas) sent since the report are not seen; the policy
that uses this (``least_load``) picks the better of two random routes rather than the least
loaded of all, so that such errors spread calls instead of herding them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .state import RouteState

DEFAULT_MAX_AGE = 3.0


def record_report(
    route: RouteState,
    now: float,
    waiting: float | None,
    running: float | None = None,
    kv_usage: float | None = None,
    source: str = "metrics",
) -> None:
    """Keep a load report of ``route`` made at ``now`` (call under the balancer's lock).
    Missing or nonsensical numbers (None, NaN, negative) are not kept; a report with no
    usable number leaves the route as it was."""
    waiting = _count(waiting)
    running = _count(running)
    if waiting is None and running is None:
        return
    route.report_waiting = waiting or 0.0
    if running is not None:
        route.report_running = running
        route.running_at = now
        if running > route.slots:
            route.slots = running
    if kv_usage is not None and 0.0 <= kv_usage <= 1.0:
        route.kv_usage = kv_usage
    route.report_at = now
    route.report_own = route.in_flight
    route.report_source = source


def estimated_load(route: RouteState, now: float, max_age: float = DEFAULT_MAX_AGE) -> float:
    """Requests on the server now, as far as this client can tell (see the module's doc)."""
    own = route.in_flight
    if now - route.report_at > max_age:
        return float(own)
    running = route.report_running
    if running is None or now - route.running_at > max_age:
        running = float(route.report_own)
    # sent since the report, less ended since: our in-flight count's change since then
    estimate = route.report_waiting + running + route.in_flight - route.report_own
    return estimate if estimate > own else float(own)


def load_snapshot(
    route: RouteState, now: float, max_age: float = DEFAULT_MAX_AGE
) -> dict[str, Any]:
    """The route's load for ``stats()``: the estimate and the last report, with its age."""
    fresh = now - route.report_at <= max_age
    age = now - route.report_at
    return {
        "estimate": round(estimated_load(route, now, max_age), 3),
        "reported_waiting": route.report_waiting if route.report_source else None,
        "reported_running": route.report_running,
        "kv_cache_usage": route.kv_usage,
        "slots": route.slots or None,
        "report_source": route.report_source,
        "report_age_s": round(age, 3) if math.isfinite(age) else None,
        "report_fresh": fresh,
    }


def _count(value: float | None) -> float | None:
    """A count a server reported, or None when it is not one (NaN, infinite, negative)."""
    if value is None or not (0.0 <= value < 1e9):  # False for NaN too
        return None
    return float(value)
