"""RouteHealth: the per-route state machine (pure, clock passed in)."""

from __future__ import annotations

import random

import pytest

from llm.routing.health import RouteHealth, State, cooldown_for


class FixedRandom(random.Random):
    """rng.random() always returns ``value`` (0.0: no jitter, ~1.0: the full 20% jitter)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


NO_JITTER = FixedRandom(0.0)


def eject(health: RouteHealth, now: float, rng: random.Random = NO_JITTER, **kw: float) -> float:
    """A request dispatched at ``now`` fails at ``now``; returns the cooldown it got."""
    health.on_dispatch(now)
    assert health.on_failure(now, now, rng, **kw) is True
    return health.ejected_until - now


def probe_and_fail(health: RouteHealth, rng: random.Random = NO_JITTER) -> float:
    """Wait for the cooldown to end, send the trial, have it fail; returns the new cooldown."""
    now = health.ejected_until
    assert health.state(now) is State.PROBING
    return eject(health, now, rng)


def test_new_route_is_healthy_and_available() -> None:
    health = RouteHealth(5, 60)
    assert health.state(0.0) is State.HEALTHY
    assert health.available(0.0)
    assert health.ejections == 0 and health.consecutive_ejections == 0


def test_failure_ejects_a_healthy_route() -> None:
    health = RouteHealth(5, 60)
    health.on_dispatch(10.0)
    assert health.on_failure(10.0, 11.0, NO_JITTER) is True
    assert health.state(11.0) is State.EJECTED
    assert not health.available(11.0)
    assert health.ejected_at == 11.0
    assert health.ejected_until == pytest.approx(16.0)
    assert health.ejections == 1 and health.consecutive_ejections == 1


def test_cooldown_doubles_with_each_consecutive_ejection_up_to_the_cap() -> None:
    health = RouteHealth(5, 60)
    cooldowns = [eject(health, 0.0)]
    for _ in range(6):
        cooldowns.append(probe_and_fail(health))
    assert cooldowns == pytest.approx([5, 10, 20, 40, 60, 60, 60])
    assert health.consecutive_ejections == 7
    assert health.ejections == 7


@pytest.mark.parametrize(
    ("consecutive", "expected"),
    [(1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0), (5, 60.0), (6, 60.0), (100, 60.0), (10**6, 60.0)],
)
def test_cooldown_for_without_jitter(consecutive: int, expected: float) -> None:
    assert cooldown_for(consecutive, 5.0, 60.0, NO_JITTER) == pytest.approx(expected)


@pytest.mark.parametrize("consecutive", [1, 2, 3, 4, 5, 8])
def test_cooldown_jitter_goes_down_by_at_most_20_percent(consecutive: int) -> None:
    raw = min(60.0, 5.0 * 2 ** (consecutive - 1))
    rng = random.Random(consecutive)
    values = [cooldown_for(consecutive, 5.0, 60.0, rng) for _ in range(2000)]
    assert all(0.8 * raw <= v <= raw for v in values)
    assert all(v <= 60.0 for v in values)
    # Really jittered: values spread over most of the band, not one value.
    assert max(values) - min(values) > 0.15 * raw
    # The extreme of the band.
    assert cooldown_for(consecutive, 5.0, 60.0, FixedRandom(0.999999)) == pytest.approx(
        0.8 * raw, rel=1e-5
    )


def test_state_is_ejected_before_ejected_until_and_probing_from_then_on() -> None:
    health = RouteHealth(5, 60)
    eject(health, 0.0)
    assert health.state(0.0) is State.EJECTED
    assert health.state(4.999) is State.EJECTED
    assert health.state(5.0) is State.PROBING
    assert health.state(500.0) is State.PROBING
    assert not health.available(4.999)
    assert health.available(5.0)


def test_probing_gives_exactly_one_trial_slot() -> None:
    health = RouteHealth(5, 60)
    eject(health, 0.0)
    assert health.available(6.0)
    health.on_dispatch(6.0)  # the trial
    assert not health.available(6.0)  # a second caller is refused...
    assert not health.available(100.0)  # ...however long it waits, until the trial reports
    assert health.state(7.0) is State.PROBING


def test_trial_success_heals_and_resets_the_consecutive_count() -> None:
    health = RouteHealth(5, 60)
    eject(health, 0.0)
    probe_and_fail(health)
    assert health.consecutive_ejections == 2
    now = health.ejected_until + 1
    health.on_dispatch(now)
    health.on_success(now)
    assert health.state(now) is State.HEALTHY
    assert health.available(now)
    assert health.consecutive_ejections == 0
    assert health.ejections == 2  # the lifetime counter is kept
    # The next ejection starts again from the base cooldown.
    assert eject(health, now + 1) == pytest.approx(5.0)


def test_trial_failure_ejects_again_for_longer() -> None:
    health = RouteHealth(5, 60)
    first = eject(health, 0.0)
    now = health.ejected_until + 0.5
    health.on_dispatch(now)
    assert health.on_failure(now, now + 0.1, NO_JITTER) is True
    assert health.state(now + 0.1) is State.EJECTED
    assert health.ejected_until - (now + 0.1) == pytest.approx(2 * first)
    assert health.consecutive_ejections == 2
    assert not health.trial_in_flight  # the slot is free again once the next cooldown ends
    assert health.available(health.ejected_until)


def test_failure_of_a_request_started_before_the_ejection_does_not_bump_it() -> None:
    health = RouteHealth(5, 60)
    health.on_dispatch(0.0)  # request A
    health.on_dispatch(0.5)  # request B, in flight concurrently
    assert health.on_failure(0.0, 1.0, NO_JITTER) is True  # A fails: ejected until 6
    until = health.ejected_until
    assert health.on_failure(0.5, 2.0, NO_JITTER) is False  # B fails later: same period
    assert health.ejected_until == until
    assert health.consecutive_ejections == 1
    assert health.ejections == 1
    # Even once the route is probing, the old request's failure changes nothing.
    assert health.on_failure(0.5, until + 1, NO_JITTER) is False
    assert health.state(until + 1) is State.PROBING
    assert health.available(until + 1)


def test_success_of_a_request_started_before_the_ejection_does_not_heal() -> None:
    health = RouteHealth(5, 60)
    health.on_dispatch(0.0)
    health.on_dispatch(0.5)
    health.on_failure(0.0, 1.0, NO_JITTER)
    health.on_success(0.5)
    assert health.state(2.0) is State.EJECTED
    assert health.consecutive_ejections == 1
    # Not even during probing, and it does not take or free the trial slot.
    later = health.ejected_until + 1
    health.on_dispatch(later)  # the real trial
    health.on_success(0.5)
    assert health.state(later) is State.PROBING
    assert not health.available(later)


def test_failure_of_a_request_from_before_the_ejection_does_not_eject_a_healed_route() -> None:
    # "Requests that were already in flight when the route was ejected do not move the state":
    # also not once the route has healed while they were still hanging.
    health = RouteHealth(5, 60)
    health.on_dispatch(0.0)  # a slow request, still in flight
    eject(health, 1.0)  # another request fails: ejected until 6
    health.on_dispatch(7.0)
    health.on_success(7.0)  # the trial heals it
    assert health.state(7.0) is State.HEALTHY
    assert health.on_failure(0.0, 8.0, NO_JITTER) is False  # the slow one times out at last
    assert health.state(8.0) is State.HEALTHY
    assert health.ejections == 1


def test_neutral_outcome_frees_the_trial_slot_without_healing() -> None:
    health = RouteHealth(5, 60)
    eject(health, 0.0)
    health.on_dispatch(6.0)
    assert not health.available(6.0)
    health.on_neutral(6.0)
    assert health.available(6.0)
    assert health.state(6.0) is State.PROBING
    assert health.consecutive_ejections == 1


def test_neutral_outcome_of_an_old_request_keeps_the_trial_slot_taken() -> None:
    health = RouteHealth(5, 60)
    health.on_dispatch(0.0)  # old request
    eject(health, 1.0)
    health.on_dispatch(7.0)  # trial
    health.on_neutral(0.0)  # the old request ends without evidence
    assert not health.available(7.0)


def test_neutral_outcome_on_a_healthy_route_changes_nothing() -> None:
    health = RouteHealth(5, 60)
    health.on_dispatch(0.0)
    health.on_neutral(0.0)
    assert health.state(0.0) is State.HEALTHY
    assert health.ejections == 0


@pytest.mark.parametrize(
    ("min_cooldown", "expected"),
    [
        (0.0, 5.0),  # no hint: the base cooldown
        (3.0, 5.0),  # a shorter hint does not shorten the cooldown
        (30.0, 30.0),  # Retry-After raises it
        (60.0, 60.0),
        (1000.0, 60.0),  # but never above the cap
    ],
)
def test_min_cooldown_raises_the_cooldown_but_stays_under_the_cap(
    min_cooldown: float, expected: float
) -> None:
    health = RouteHealth(5, 60)
    assert eject(health, 10.0, min_cooldown=min_cooldown) == pytest.approx(expected)


def test_min_cooldown_is_not_jittered_below_the_hint() -> None:
    health = RouteHealth(20, 60)
    cooldown = eject(health, 0.0, FixedRandom(0.999999), min_cooldown=19.0)
    assert cooldown == pytest.approx(19.0)  # jitter would give 16; the hint wins
