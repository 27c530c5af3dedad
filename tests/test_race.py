"""The hedge's race itself (llm/send/race.py), async and sync, over a stub plan and stub
attempts: who wins, what is reported for the other, what the caller gets, and cancellation
from outside (the call's own) against the race's own."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from typing import Any

import pytest

from llm.errors import BadRequestError
from llm.send.race import AsyncRace, SyncRace


class Plan:
    """What a race asks of a plan, recorded."""

    timeout = 5.0
    attempt_headers = None

    def __init__(self, hedge_routes: list[str | None] | None = None) -> None:
        self.hedge_routes = list(hedge_routes if hedge_routes is not None else ["b"])
        self.reports: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def hedge(self) -> str | None:
        return self.hedge_routes.pop(0) if self.hedge_routes else None

    def hedge_again(self, delay: float) -> bool:
        return bool(self.hedge_routes)

    def start(self, route: str, hedge: bool = False) -> float:
        self.record("start", route)
        return 0.0

    def abandon(self, route: str, started: float) -> None:
        self.record("abandon", route)

    def finished(self, route: str, started: float) -> None:
        self.record("finished", route)

    def won(self, route: str, hedge: bool) -> None:
        if hedge:  # the real plan only notes a hedge's win
            self.record("won", route)

    def record(self, what: str, route: str) -> None:
        with self.lock:
            self.reports.append((what, route))


def bad() -> BadRequestError:
    return BadRequestError("bad", route="b", status_code=400)


def behaviours(**by_route: Any) -> dict[str, Any]:
    """route -> (seconds, outcome): outcome is an answer, None (failed), or an exception."""
    return by_route


def async_attempt(table: dict[str, Any], seen: list[str]) -> Any:
    async def attempt(plan: Any, spec: Any, route: str, *rest: Any) -> Any:
        seconds, outcome = table[route]
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            seen.append(f"cancelled {route}")
            raise
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return attempt


async def discard_async(answer: Any) -> None:
    pass


def run_async(plan: Plan, table: dict[str, Any], delay: float = 0.05) -> tuple[Any, list[str]]:
    seen: list[str] = []

    async def go() -> Any:
        race: AsyncRace[Any] = AsyncRace(plan, delay, lambda route: b"{}", discard_async)
        try:
            return await race.run(async_attempt(table, seen), None, "a", 0.0, b"{}")
        finally:
            await asyncio.sleep(0.05)  # the losers' cancellations run

    return asyncio.run(go()), seen


def test_async_the_first_answer_in_time_sends_no_hedge() -> None:
    plan = Plan()
    answer, seen = run_async(plan, behaviours(a=(0.01, "A"), b=(0.01, "B")))
    assert answer == "A" and plan.reports == [] and seen == []


def test_async_a_hedge_that_answers_first_wins_and_the_first_is_cancelled() -> None:
    plan = Plan()
    answer, seen = run_async(plan, behaviours(a=(5.0, "A"), b=(0.01, "B")))
    assert answer == "B"
    assert plan.reports == [("start", "b"), ("abandon", "a"), ("won", "b")]
    assert seen == ["cancelled a"]


def test_async_the_first_answering_after_the_hedge_started_wins() -> None:
    plan = Plan()
    answer, seen = run_async(plan, behaviours(a=(0.1, "A"), b=(5.0, "B")))
    assert answer == "A"
    assert plan.reports == [("start", "b"), ("abandon", "b")]
    assert seen == ["cancelled b"]


def test_async_a_failed_first_leaves_the_hedge_to_decide() -> None:
    plan = Plan()
    answer, _ = run_async(plan, behaviours(a=(0.1, None), b=(0.2, "B")))
    assert answer == "B" and ("won", "b") in plan.reports
    plan = Plan()
    answer, _ = run_async(plan, behaviours(a=(0.1, None), b=(0.2, None)))
    assert answer is None  # both failed: the engine goes on


def test_async_the_callers_fault_on_the_hedge_ends_the_call() -> None:
    plan = Plan()
    with pytest.raises(BadRequestError):
        run_async(plan, behaviours(a=(5.0, "A"), b=(0.01, bad())))
    # (a plan ignores a second report of the hedge, which the race makes on its way out)
    assert plan.reports[:2] == [("start", "b"), ("finished", "a")]


def test_async_a_refused_hedge_is_asked_for_again() -> None:
    plan = Plan(hedge_routes=[None, "b"])  # refused once (the budget), then given
    answer, _ = run_async(plan, behaviours(a=(5.0, "A"), b=(0.01, "B")))
    assert answer == "B"


def test_async_the_calls_own_cancellation_goes_through() -> None:
    """Cancelled from outside while both attempts run: the call is cancelled, the hedge is
    reported without evidence and cancelled too."""
    plan = Plan()
    seen: list[str] = []
    table = behaviours(a=(5.0, "A"), b=(5.0, "B"))

    async def go() -> None:
        race: AsyncRace[Any] = AsyncRace(plan, 0.02, lambda route: b"{}", discard_async)
        task = asyncio.ensure_future(race.run(async_attempt(table, seen), None, "a", 0.0, b""))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.02)

    asyncio.run(go())
    assert ("finished", "b") in plan.reports and sorted(seen) == ["cancelled a", "cancelled b"]


def test_async_a_cancellation_from_outside_as_the_hedge_wins_is_not_swallowed() -> None:
    """The caller cancels the call in the very turn the hedge wins (here: from the plan's
    report of the loser, just before the race cancels its first attempt): the race takes
    back its own cancellation only, and the caller's goes through."""
    seen: list[str] = []
    table = behaviours(a=(5.0, "A"), b=(0.05, "B"))

    class CancelledAsTheHedgeWins(Plan):
        task: asyncio.Task[Any] | None = None

        def abandon(self, route: str, started: float) -> None:
            super().abandon(route, started)
            assert self.task is not None
            self.task.cancel()  # the caller's

    plan = CancelledAsTheHedgeWins()

    async def go() -> None:
        race: AsyncRace[Any] = AsyncRace(plan, 0.01, lambda route: b"{}", discard_async)
        task = asyncio.ensure_future(race.run(async_attempt(table, seen), None, "a", 0.0, b""))
        plan.task = task
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert ("abandon", "a") in plan.reports


# -- sync ------------------------------------------------------------------------------------


def sync_attempt(table: dict[str, Any], seen: list[str]) -> Any:
    def attempt(plan: Any, spec: Any, route: str, *rest: Any) -> Any:
        seconds, outcome = table[route]
        time.sleep(seconds)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return attempt


def run_sync(plan: Plan, table: dict[str, Any], delay: float = 0.05) -> Any:
    race: SyncRace[Any] = SyncRace(plan, delay, lambda route: b"{}", lambda answer: None)
    return race.run(sync_attempt(table, []), None, "a", 0.0, b"{}")


def test_sync_races_as_the_async_one() -> None:
    plan = Plan()
    assert run_sync(plan, behaviours(a=(0.01, "A"), b=(0.01, "B"))) == "A"
    assert plan.reports == []
    plan = Plan()
    assert run_sync(plan, behaviours(a=(1.0, "A"), b=(0.01, "B"))) == "B"
    assert plan.reports == [("start", "b"), ("won", "b"), ("abandon", "a")]
    plan = Plan()
    assert run_sync(plan, behaviours(a=(0.1, None), b=(0.2, "B"))) == "B"
    plan = Plan()
    with pytest.raises(BadRequestError):
        run_sync(plan, behaviours(a=(1.0, "A"), b=(0.01, bad())))
    assert ("finished", "a") in plan.reports


def test_an_ended_race_keeps_neither_the_call_nor_the_loop() -> None:
    """The ticker keeps a race until its delay's end (here a minute): by then it must hold
    nothing of the call (its body is in the spec) and nothing that keeps the loop alive."""

    class Spec:
        body = bytearray(1_000_000)

    spec_ref: weakref.ref[Spec] | None = None
    loop_ref: weakref.ref[asyncio.AbstractEventLoop] | None = None

    async def go() -> None:
        nonlocal spec_ref, loop_ref
        loop_ref = weakref.ref(asyncio.get_running_loop())
        spec = Spec()
        spec_ref = weakref.ref(spec)
        race: AsyncRace[Any] = AsyncRace(Plan(), 60.0, lambda route: b"{}", discard_async)
        table = behaviours(a=(0.0, "A"))
        assert await race.run(async_attempt(table, []), spec, "a", 0.0, b"") == "A"
        del spec, race
        gc.collect()
        assert spec_ref() is None

    asyncio.run(go())
    gc.collect()
    assert loop_ref is not None and loop_ref() is None
