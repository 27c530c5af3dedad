"""A provider in a forked child: fresh connections, nothing in flight, its checker running again.

A pre-fork server (gunicorn, uWSGI) or multiprocessing's ``fork`` start method copies a
provider into the child, connections and all, and a parent and a child sharing one keep-alive
socket read each other's answers. So every live provider is told, in the child right after
the fork (``os.register_at_fork``), to forget its connections (without closing them: they
still serve the parent), to count nothing in flight, and to restart its background checker
(threads do not survive a fork). The hook is registered once, with the first provider.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Protocol


class ForkAware(Protocol):
    def _reset_after_fork(self) -> None: ...


_LIVE: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_lock = threading.Lock()
_registered = False


def track(provider: ForkAware) -> None:
    """Reset ``provider`` in every child forked while it lives."""
    global _registered
    with _lock:
        if not _registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_reset_all)
            _registered = True
        _LIVE.add(provider)


def _reset_all() -> None:
    global _lock
    _lock = threading.Lock()  # another thread of the parent may have held it
    for provider in list(_LIVE):
        provider._reset_after_fork()
