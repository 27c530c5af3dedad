"""Two attempts of one call at once: an attempt raced with its hedge, for each engine.

How this works
--------------
The engines (``_async/engine.py``, and its generated sync twin) hand a call's attempt to a
race when the plan says the call may hedge::

    race = AsyncRace(plan, delay, content, discard)      # SyncRace in the sync twin
    answer = await race.run(attempt, spec, route, started, payload)

``run`` makes the attempt; if it has not answered (a stream: its first token) within
``delay``, a hedge goes to the route ``plan.hedge()`` gives (refused for now: asked again
after another ``delay``). The first answer wins; the other attempt is reported abandoned
(``plan.abandon``) *before* it is stopped, so that whatever it raises then is no report at
all, and an answer it made anyway is handed to ``discard`` (a stream's connection is closed
unread). An attempt that fails leaves the other to decide; the call's own fault (a 400) on
either ends the call. ``run`` returns None when both failed: the engine goes on to its next
attempt.

``AsyncRace`` runs the first attempt in the calling task itself: a call that answers in time
pays for an entry in a heap, not for a task or a timer of its own (the hedge alone is a
task). The delays of every race of an event loop are kept by one ``_Ticker``: a heap of due
times and one timer handle, woken at most every ``TICK`` seconds. A hedge that wins (or
raises the call's own fault) cancels the calling task, which is then waiting inside the
first attempt (aiohttp and httpx close the cancelled request's connection, and vLLM aborts a
request whose client went away); ``run`` takes that cancellation back (``uncancel``), and
lets any other one through.

``SyncRace`` cannot do that in one thread: a blocked socket read cannot wait for two answers.
Both attempts run on worker threads of a shared pool (made on the first hedged call) while
the caller waits; a loser is stopped by shutting down the socket it is reading or writing
(``Cancel``, which the sync sender's streams register with, ``httpcore_sender.py``), so that
its blocked read returns at once. A connection still being set up cannot be interrupted: its
thread goes on until the connect timeout, but the call does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import os
import socket
import threading
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

if TYPE_CHECKING:
    from ..call.spec import CallSpec
    from ..routing.plan import CallPlan
    from ..routing.state import RouteState

T = TypeVar("T")

# what the engines race, and what cleans up an answer that lost (one spelling per world, so
# that scripts/unasync.py turns the async engine's into the sync one's)
AsyncAttempt: TypeAlias = Callable[..., Awaitable[T]]
SyncAttempt: TypeAlias = Callable[..., T]
AsyncDiscard: TypeAlias = Callable[[T], Awaitable[None]]
SyncDiscard: TypeAlias = Callable[[T], None]
Content: TypeAlias = "Callable[[RouteState], bytes | None]"

WORKERS = 256  # threads of the sync races' shared pool, at most (made as needed)
TICK = 0.005  # seconds: a hedge may go this much after its delay (the ticker's grain)


class AsyncRace(Generic[T]):
    """One call's attempt and its hedge, the first attempt in the calling task."""

    __slots__ = (
        "_attempt",
        "_content",
        "_context",
        "_decided",
        "_delay",
        "_discard",
        "_first",
        "_hedge",
        "_hedge_of",
        "_plan",
        "_running",
        "_spec",
        "_task",
    )

    def __init__(
        self, plan: CallPlan, delay: float, content: Content, discard: AsyncDiscard[T]
    ) -> None:
        self._plan = plan
        self._delay = delay
        self._content = content  # an attempt's body for a route
        self._discard = discard
        self._running = False  # the first attempt is going, in ``_task``
        self._decided = False  # the hedge ended the call: its answer or its error
        self._hedge: asyncio.Task[T | None] | None = None
        self._hedge_of: tuple[RouteState, float] | None = None

    async def run(
        self,
        attempt: AsyncAttempt[T | None],
        spec: CallSpec,
        route: RouteState,
        started: float,
        payload: bytes | None,
    ) -> T | None:
        """The first answer of the attempt on ``route`` (started) and its hedge; None when
        both failed; raises the call's own fault, or what cancelled the call."""
        plan = self._plan
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._context = contextvars.copy_context()  # the hedge runs in the call's context
        self._attempt, self._spec, self._first = attempt, spec, (route, started)
        _ticker(loop).add(loop.time() + self._delay, self)
        self._running = True
        try:
            try:
                answer = await attempt(
                    plan, spec, route, started, payload, plan.timeout, plan.attempt_headers
                )
            except asyncio.CancelledError:
                if not self._decided or _uncancel(self._task):
                    raise  # not (only) the hedge's doing
                answer = None
            finally:
                self._running = False
            if answer is not None:
                self._stop_hedge(True)
                return answer
            hedge = self._hedge
            if hedge is None:
                return None  # the first failed before any hedge: the engine goes on
            # the hedge decided the call, or the first failed while the hedge goes on
            answer = hedge.result() if self._decided else await hedge
            if answer is not None and self._hedge_of is not None:
                plan.won(self._hedge_of[0], True)
            return answer
        except BaseException:
            self._stop_hedge(False)
            raise
        finally:
            # the ticker keeps this race until its delay's end: keep nothing big meanwhile
            # (the call's body, its task, its context), and nothing that holds the loop
            del self._spec, self._attempt, self._content, self._context, self._plan
            self._task = self._hedge = None

    def due(self) -> None:
        """The delay passed (``_Ticker``): if the first attempt still waits, the hedge goes."""
        if self._running:
            self._context.run(self._fire)

    def _fire(self) -> None:
        plan = self._plan
        try:
            loop = asyncio.get_running_loop()
            other = plan.hedge()
            if other is None:  # refused for now: ask again after another delay
                if plan.hedge_again(self._delay):
                    _ticker(loop).add(loop.time() + self._delay, self)
                return
            content = self._content(other)
        except Exception:  # noqa: BLE001 - a timer's callback must not raise; no hedge, then
            return
        begun = plan.start(other, hedge=True)
        self._hedge_of = (other, begun)
        hedge: asyncio.Task[T | None] = loop.create_task(
            self._attempt(  # type: ignore[arg-type]
                plan, self._spec, other, begun, content, plan.timeout, plan.attempt_headers
            )
        )
        hedge.add_done_callback(self._hedge_ended)
        self._hedge = hedge

    def _hedge_ended(self, hedge: asyncio.Task[T | None]) -> None:
        """The hedge ended: if it answered (or raised the call's own fault) while the first
        attempt still waits, the first is reported, then cancelled where it waits."""
        if hedge.cancelled():
            return
        error = hedge.exception()
        if error is None and hedge.result() is None:
            return  # the hedge failed (reported): the first attempt goes on
        if not self._running or self._task is None:
            return  # the first attempt ended first: ``run`` deals with the hedge
        self._decided = True
        route, started = self._first
        if error is None:
            self._plan.abandon(route, started)
        else:
            self._plan.finished(route, started)
        # The calling task is waiting inside the first attempt (callbacks run between
        # steps), or is about to be resumed there: the cancellation lands in the attempt.
        self._task.cancel()

    def _stop_hedge(self, lost: bool) -> None:
        """A hedge still going is reported (``lost``: the first attempt answered first, else
        the call failed or was cancelled: no evidence either way) and cancelled."""
        hedge, of = self._hedge, self._hedge_of
        if hedge is None or of is None:
            return
        if lost:
            self._plan.abandon(*of)
        else:
            self._plan.finished(*of)
        if not hedge.done():
            hedge.cancel()
        hedge.add_done_callback(lambda ended: _discard_async(ended, self._discard))


def _uncancel(task: asyncio.Task[Any] | None) -> int:
    """Take back one cancellation of ``task``: how many others are still requested (0 on
    Python 3.10, which does not count them)."""
    uncancel = getattr(task, "uncancel", None)
    return int(uncancel()) if uncancel is not None else 0


class _Ticker:
    """The delays of every race of one event loop: a heap of (due, number, race) and one
    timer handle for the earliest, never sooner than ``TICK`` after the last wake. A race
    that ended stays in the heap until its time (its ``due`` then does nothing)."""

    __slots__ = ("_at", "_handle", "_heap", "_numbers")

    def __init__(self) -> None:
        # Nothing here may hold the loop, which is this ticker's key in ``_TICKERS``: not
        # the loop, not its timer handle (weakly held: the loop holds it while scheduled).
        self._heap: list[tuple[float, int, AsyncRace[Any]]] = []
        self._numbers = itertools.count()
        self._handle: weakref.ref[asyncio.TimerHandle] | None = None
        self._at = 0.0

    def add(self, due: float, race: AsyncRace[Any]) -> None:
        heapq.heappush(self._heap, (due, next(self._numbers), race))
        handle = self._handle() if self._handle is not None else None
        if handle is None:
            self._wake_at(due)
        elif due < self._at:
            handle.cancel()
            self._wake_at(due)

    def _wake_at(self, due: float) -> None:
        self._at = due
        self._handle = weakref.ref(asyncio.get_running_loop().call_at(due, self._tick))

    def _tick(self) -> None:
        self._handle = None
        heap, now = self._heap, asyncio.get_running_loop().time()
        while heap and heap[0][0] <= now:
            heapq.heappop(heap)[2].due()
        if heap:
            self._wake_at(max(heap[0][0], now + TICK))


_TICKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Ticker] = (
    weakref.WeakKeyDictionary()
)


def _ticker(loop: asyncio.AbstractEventLoop) -> _Ticker:
    ticker = _TICKERS.get(loop)
    if ticker is None:
        ticker = _TICKERS[loop] = _Ticker()
    return ticker


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


class SyncRace(Generic[T]):
    """One call's attempt and its hedge, each on a worker thread; the caller waits."""

    __slots__ = ("_cancels", "_condition", "_content", "_delay", "_discard", "_done", "_plan")

    def __init__(
        self, plan: CallPlan, delay: float, content: Content, discard: SyncDiscard[T]
    ) -> None:
        self._plan = plan
        self._delay = delay
        self._content = content
        self._discard = discard
        self._condition = threading.Condition(threading.Lock())
        self._done: list[Future[T | None]] = []
        self._cancels: dict[Future[T | None], Cancel] = {}

    def run(
        self,
        attempt: SyncAttempt[T | None],
        spec: CallSpec,
        route: RouteState,
        started: float,
        payload: bytes | None,
    ) -> T | None:
        """As ``AsyncRace.run``."""
        plan = self._plan
        first = self._start(
            attempt, plan, spec, route, started, payload, plan.timeout, plan.attempt_headers
        )
        runs = {first: (route, started, False)}
        wait: float | None = self._delay
        won = False
        try:
            while runs:
                done = self._wait(wait)
                if not done:  # the delay passed: hedge, once (refused: ask again later)
                    other = plan.hedge()
                    again = other is None and plan.hedge_again(self._delay)
                    wait = self._delay if again else None
                    if other is not None:
                        content = self._content(other)
                        begun = plan.start(other, hedge=True)
                        run = self._start(
                            attempt,
                            plan,
                            spec,
                            other,
                            begun,
                            content,
                            plan.timeout,
                            plan.attempt_headers,
                        )
                        runs[run] = (other, begun, True)
                    continue
                for run in done:
                    ended, _, hedge = runs.pop(run)
                    result = run.result()  # the attempt's own error, if it raised one
                    if result is not None:
                        won = True
                        plan.won(ended, hedge)
                        return result
            return None
        finally:
            for run, (other, begun, _) in runs.items():
                if won:
                    plan.abandon(other, begun)
                else:  # the call itself failed or was cancelled: no evidence either way
                    plan.finished(other, begun)
                self._stop(run)

    def _start(self, attempt: SyncAttempt[T | None], *args: Any) -> Future[T | None]:
        cancel = Cancel()
        run: Future[T | None] = _executor().submit(_run, cancel, attempt, args)
        self._cancels[run] = cancel
        run.add_done_callback(self._ended)
        return run

    def _ended(self, run: Future[T | None]) -> None:
        with self._condition:
            self._done.append(run)
            self._condition.notify()

    def _wait(self, seconds: float | None) -> list[Future[T | None]]:
        """The runs that ended since the last call; [] when ``seconds`` passed first."""
        with self._condition:
            if not self._done:
                self._condition.wait(seconds)
            done, self._done = self._done, []
        return done

    def _stop(self, run: Future[T | None]) -> None:
        """Stop ``run``; an answer it had already made is discarded."""
        self._cancels[run].cancel()
        run.add_done_callback(lambda ended: _discard_sync(ended, self._discard))


def _run(cancel: Cancel, attempt: SyncAttempt[T], args: tuple[Any, ...]) -> T:
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
