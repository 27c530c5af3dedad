"""Every route looked at at once: threads for the sync side, tasks for the async side."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ..config import RouteConfig
from ..send.protocols import AsyncSender, SyncSender
from ._async.look import acheck_route
from ._sync.look import check_route
from .check import CheckSettings, RouteCheck

_MAX_THREADS = 16


def check_routes(
    routes: Sequence[RouteConfig], sender: SyncSender, settings: CheckSettings
) -> list[RouteCheck]:
    """Check every route at once (threads); results in the order of ``routes``."""
    if not routes:
        return []
    with ThreadPoolExecutor(max_workers=min(_MAX_THREADS, len(routes))) as pool:
        return list(pool.map(lambda route: check_route(sender, route, settings), routes))


async def acheck_routes(
    routes: Sequence[RouteConfig], sender: AsyncSender, settings: CheckSettings
) -> list[RouteCheck]:
    """Check every route at once (tasks); results in the order of ``routes``."""
    looks = (acheck_route(sender, route, settings) for route in routes)
    return list(await asyncio.gather(*looks))
