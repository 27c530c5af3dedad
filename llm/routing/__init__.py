"""Routing decisions: pure, thread-safe, clock and randomness injected, no I/O."""

from .balancer import Balancer
from .health import RouteHealth, State
from .plan import CallPlan, backoff_delay
from .policies import POLICIES, LeastLatency, Policy, RoundRobin
from .state import Pool, RouteState

__all__ = [
    "POLICIES",
    "Balancer",
    "CallPlan",
    "LeastLatency",
    "Policy",
    "Pool",
    "RoundRobin",
    "RouteHealth",
    "RouteState",
    "State",
    "backoff_delay",
]
