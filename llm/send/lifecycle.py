"""A provider's calls in flight, and whether it is closing: what ``close`` waits for.

Both engines of a provider share one ``Lifecycle``. Every call enters it when it starts and
leaves it when it ends (a stream when it is closed or read to its end), so ``close`` knows
what is in flight. Closing is three steps:

1. ``close()``: no new call is taken; a call that starts now raises ``ProviderClosedError``
   at once (and opens no connection);
2. ``wait_idle`` / ``await_idle``: the calls in flight may finish, for a bounded time;
3. the provider closes its connections; a call still running then ends with
   ``ProviderClosedError`` too, and no route is blamed for what the closing did.

After a fork the child has no call in flight: ``fork_reset`` starts it afresh (the parent's
lock may have been held by a thread that does not exist in the child).
"""

from __future__ import annotations

import asyncio
import threading
import time

from ..errors import ProviderClosedError

_POLL = 0.01  # seconds between two looks at the count while an event loop waits


def closed_error() -> ProviderClosedError:
    return ProviderClosedError("the provider is closed: no call is taken or finished after it")


class Lifecycle:
    __slots__ = ("_calls", "_idle", "_lock", "closed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._calls = 0
        self.closed = False

    @property
    def calls(self) -> int:
        return self._calls

    def enter(self) -> None:
        """A call starts; ``ProviderClosedError`` once the provider is closing."""
        with self._lock:
            if self.closed:
                raise closed_error()
            self._calls += 1

    def leave(self) -> None:
        with self._lock:
            self._calls -= 1
            if not self._calls:
                self._idle.notify_all()

    def close(self) -> None:
        with self._lock:
            self.closed = True

    def wait_idle(self, timeout: float) -> bool:
        """Block until no call is in flight or ``timeout`` passes; True when idle."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._calls, timeout)

    async def await_idle(self, timeout: float) -> bool:
        """``wait_idle`` for an event loop: the calls on this loop go on meanwhile."""
        deadline = time.monotonic() + timeout
        while self._calls:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(_POLL, left))
        return True

    def fork_reset(self) -> None:
        """In a forked child: no call is in flight here; a fresh lock."""
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._calls = 0
