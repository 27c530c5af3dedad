"""A daemon thread that does one round of work every so often until it is stopped.

The active checker and the load poller both are one: ``pause()`` says how long to wait before
the next round (the checker a fixed interval, the poller a jittered one), ``run_once`` is
the round, and ``stop`` ends the loop and waits a bounded time for a round in progress.
"""

from __future__ import annotations

import threading
from typing import TypeVar

_Self = TypeVar("_Self", bound="Background")


class Background:
    def __init__(self, name: str, join_timeout: float) -> None:
        self._join_timeout = join_timeout
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self: _Self) -> _Self:
        self._thread.start()
        return self

    def pause(self) -> float:
        """Seconds before the next round."""
        raise NotImplementedError

    def run_once(self) -> object:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stopping.wait(self.pause()):
            self.run_once()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._join_timeout)
