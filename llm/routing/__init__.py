"""Routing decisions: pure, thread-safe, clock and randomness injected, no I/O."""

from .balancer import Balancer
from .events import HealthChange, HealthListener
from .health import RouteHealth, State
from .plan import CallPlan, backoff_delay, plan_call
from .policies import POLICIES, LeastLatency, LeastLoad, Policy, RoundRobin
from .state import Pool, RouteState

__all__ = [
    "POLICIES",
    "Balancer",
    "CallPlan",
    "HealthChange",
    "HealthListener",
    "LeastLatency",
    "LeastLoad",
    "Policy",
    "Pool",
    "RoundRobin",
    "RouteHealth",
    "RouteState",
    "State",
    "backoff_delay",
    "plan_call",
]
