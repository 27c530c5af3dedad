"""The balancer's health changes, logged: the listener every provider gives its balancer; and
what discovery found (``probes/discovery.py``).

Through loguru, silent until the application calls ``logger.enable("llm")`` (see
``llm/__init__.py``): ejections at WARNING, misconfigured routes at ERROR, recoveries at INFO.
Nothing is logged per request. Reasons are the library's own error texts, which never carry a
secret (keys are masked before they reach an error).
"""

from __future__ import annotations

from loguru import logger

from ..routing.events import HealthChange


def log_health_change(change: HealthChange) -> None:
    if change.kind == "ejected":
        how = " by an active check" if change.by_check else ""
        logger.warning(
            "route {} ejected for {:.2f}s{}: {}",
            change.route,
            change.cooldown_s or 0.0,
            how,
            change.reason,
        )
    elif change.kind == "misconfigured":
        logger.error("route {} is misconfigured: {}", change.route, change.reason)
    else:
        logger.info("route {} is healthy again", change.route)


def log_discovery(group: str, joined: list[str], retired: list[str], note: str | None) -> None:
    """Instances of a discovering route that joined or were retired, and what went wrong."""
    if joined:
        logger.info("route {}: instances joined: {}", group, ", ".join(joined))
    if retired:
        logger.info("route {}: instances retired (draining): {}", group, ", ".join(retired))
    if note:
        logger.warning("route {}: discovery: {}", group, note)
