"""Running two attempts of one call at once: the hedge's race, for each engine.

How this works
--------------
The engines (``_async/engine.py``, and its generated sync twin) race a call's attempt with
its hedge through a *racer*, which has the same three verbs in both worlds::

    run = racer.start(attempt, *args)    # the attempt runs on its own
    done = await racer.wait(seconds)     # the runs that ended since the last wait ([]: time up)
    racer.cancel(run, discard)           # stop a run; an answer it made anyway is discarded

``AsyncRacer`` runs each attempt as an asyncio task; cancelling the task closes its
connection (aiohttp and httpx drop a connection whose request was cancelled), and vLLM aborts
a request whose client went away. ``SyncRacer`` runs each attempt on a worker thread (a
shared pool, made on the first hedged call), since a blocked socket read cannot wait for two
answers at once; a run is cancelled by shutting down the socket it is reading or writing
(``Cancel``, which the sync sender's streams register with, ``httpcore_sender.py``), so that
its blocked read returns at once. A connection still being set up cannot be interrupted: its
thread goes on until the connect timeout, but the call does not wait for it.

The racers only run and stop; which attempt wins and what is reported is the engine's and the
plan's business (the loser is reported as abandoned *before* it is stopped, so whatever it
raises then is no report at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeAlias, TypeVar

T = TypeVar("T")

# what the engines race, and what cleans up an answer that lost (one spelling per world, so
# that scripts/unasync.py turns the async engine's into the sync one's)
AsyncAttempt: TypeAlias = Callable[..., Awaitable[T]]
SyncAttempt: TypeAlias = Callable[..., T]
AsyncDiscard: TypeAlias = Callable[[T], Awaitable[None]]
SyncDiscard: TypeAlias = Callable[[T], None]

WORKERS = 256  # threads of the sync racers' shared pool, at most (made as needed)


class AsyncRacer(Generic[T]):
    """Attempts as tasks of the running loop."""

    __slots__ = ("_done", "_loop", "_waiter")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._done: list[asyncio.Task[T | None]] = []
        self._waiter: asyncio.Future[None] | None = None

    def start(self, attempt: AsyncAttempt[T | None], *args: Any) -> asyncio.Task[T | None]:
        task: asyncio.Task[T | None] = self._loop.create_task(attempt(*args))  # type: ignore[arg-type]
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[T | None]) -> None:
        self._done.append(task)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, seconds: float | None) -> list[asyncio.Task[T | None]]:
        """The runs that ended since the last call; [] when ``seconds`` passed first."""
        if not self._done:
            waiter = self._waiter = self._loop.create_future()
            timer = None
            if seconds is not None:
                timer = self._loop.call_later(seconds, _wake, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        done, self._done = self._done, []
        return done

    def cancel(self, run: asyncio.Task[T | None], discard: AsyncDiscard[T]) -> None:
        """Stop ``run``; an answer it had already made is handed to ``discard``."""
        if not run.done():
            run.cancel()
        run.add_done_callback(lambda task: _discard_async(task, discard))


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _discard_async(task: asyncio.Task[T | None], discard: AsyncDiscard[T]) -> None:
    if task.cancelled() or task.exception() is not None:  # retrieved: no "never retrieved"
        return
    result = task.result()
    if result is not None:
        task.get_loop().create_task(discard(result))  # type: ignore[arg-type]


class Cancel:
    """A sync run's cancellation: the sockets its streams use, shut down on ``cancel``."""

    __slots__ = ("_lock", "_sockets", "cancelled")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.cancelled = False

    def watch(self, sock: socket.socket | None) -> bool:
        """Keep ``sock`` to shut down on cancel; False when the run is cancelled already."""
        with self._lock:
            if self.cancelled:
                return False
            if sock is not None and sock not in self._sockets:
                self._sockets.append(sock)
            return True

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                # the plain socket's shutdown, under TLS too: a blocked read returns at once
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


CURRENT_CANCEL: contextvars.ContextVar[Cancel | None] = contextvars.ContextVar(
    "llm_routes_cancel", default=None
)


class SyncRacer(Generic[T]):
    """Attempts on worker threads of a shared pool."""

    __slots__ = ("_cancels", "_condition", "_done")

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._done: list[Future[T | None]] = []
        self._cancels: dict[Future[T | None], Cancel] = {}

    def start(self, attempt: SyncAttempt[T | None], *args: Any) -> Future[T | None]:
        cancel = Cancel()
        run: Future[T | None] = _executor().submit(_run, cancel, attempt, args)
        self._cancels[run] = cancel
        run.add_done_callback(self._ended)
        return run

    def _ended(self, run: Future[T | None]) -> None:
        with self._condition:
            self._done.append(run)
            self._condition.notify()

    def wait(self, seconds: float | None) -> list[Future[T | None]]:
        """The runs that ended since the last call; [] when ``seconds`` passed first."""
        with self._condition:
            if not self._done:
                self._condition.wait(seconds)
            done, self._done = self._done, []
        return done

    def cancel(self, run: Future[T | None], discard: SyncDiscard[T]) -> None:
        """Stop ``run``; an answer it had already made is handed to ``discard``."""
        cancel = self._cancels.get(run)
        if cancel is not None:
            cancel.cancel()
        run.add_done_callback(lambda ended: _discard_sync(ended, discard))


def _run(cancel: Cancel, attempt: Callable[..., T], args: tuple[Any, ...]) -> T:
    token = CURRENT_CANCEL.set(cancel)
    try:
        return attempt(*args)
    finally:
        CURRENT_CANCEL.reset(token)


def _discard_sync(run: Future[T | None], discard: SyncDiscard[T]) -> None:
    if run.cancelled() or run.exception() is not None:
        return
    result = run.result()
    if result is not None:
        with contextlib.suppress(Exception):
            discard(result)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    pool = _pool
    if pool is None:
        with _pool_lock:
            pool = _pool
            if pool is None:
                pool = _pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="llm-routes-race")
    return pool


def _forget_pool() -> None:  # in a forked child: the parent's threads do not exist here
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)
