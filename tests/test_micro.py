"""The routing micro-benchmark (llm.perf.micro): it runs, its results are sane, and the routing
work per call does not grow with the number of routes where it must not (counted, not timed:
speed targets live in the benchmark, not in timed unit tests)."""

from __future__ import annotations

import importlib.util
import json
import math
import threading
from typing import Any

import pytest

from llm.perf import micro
from llm.routing.balancer import Balancer
from llm.routing.state import WARMUP_SAMPLES

SIZES = (2, 10, 100)


def test_measure_routing_returns_one_sane_figure_per_setting() -> None:
    figures = micro.measure_routing(micro.POLICIES, (2, 10), number=30, repeat=2)
    settings = [(f.policy, f.routes, f.ejected) for f in figures]
    assert settings == [
        (policy, routes, ejected)
        for policy in micro.POLICIES
        for routes in (2, 10)
        for ejected in (0, routes // 2)
    ]
    for f in figures:
        for value in (f.pick_report_us, f.call_us, f.examined_per_pick):
            assert math.isfinite(value) and value > 0
        assert f.pick_report_us < 10_000 and f.call_us < 10_000  # microseconds, not a unit slip
        assert f.plan_overhead_us == pytest.approx(f.call_us - f.pick_report_us)
        # a few routes per pick, never the whole pool (least load: two draws, more when half
        # the pool is ejected; see below)
        assert 1 <= f.examined_per_pick <= (6 if f.policy == "least_load" else 3)


def test_time_step_calls_the_step_number_times_repeat() -> None:
    calls = 0

    def step() -> None:
        nonlocal calls
        calls += 1

    ns = micro.time_step(step, number=50, repeat=3)
    assert calls == 150
    assert ns > 0


@pytest.mark.parametrize("policy", micro.POLICIES)
def test_the_steps_leave_the_balancer_consistent(policy: str) -> None:
    setup = micro.make_setup(policy, 10, 5)
    for step in (micro.pick_and_report(setup), micro.call_routing(setup)):
        for _ in range(100):
            step()
    stats = setup.balancer.stats()
    assert all(s["in_flight"] == 0 for s in stats.values())
    ejected = [name for name, s in stats.items() if s["state"] == "ejected"]
    assert ejected == [f"r{i}" for i in range(5)]  # stay ejected, never picked
    # the setup measures every route past its warm-up, then 200 calls succeed
    assert sum(s["successes"] for s in stats.values()) == 10 * WARMUP_SAMPLES + 200


def test_round_robin_examines_the_same_few_routes_per_pick_at_any_size() -> None:
    # the cursor makes the next route the first one looked at; an ejected half costs one
    # extra look per pick on average, whatever the number of routes
    assert [micro.routes_examined("round_robin", n) for n in SIZES] == [1.0, 1.0, 1.0]
    assert [micro.routes_examined("round_robin", n, n // 2) for n in SIZES] == [2.0, 2.0, 2.0]


@pytest.mark.parametrize(("policy", "looks"), [("weighted_round_robin", 1), ("least_latency", 2)])
def test_indexed_policies_examine_the_same_few_routes_per_pick_at_any_size(
    policy: str, looks: int
) -> None:
    # weighted round robin looks at the top of its deadline heap; least latency at the top of
    # its latency heap and of its last-measured heap. An ejected half is parked the first
    # time each of its routes comes up (then waits out its cooldown off the heaps): a few
    # looks in all, not a few per pick.
    for n in SIZES:
        assert micro.routes_examined(policy, n) == pytest.approx(looks, abs=0.01)
        assert looks <= micro.routes_examined(policy, n, n // 2) <= looks + 0.15


def test_least_load_draws_two_routes_at_any_size_and_a_few_more_with_half_ejected() -> None:
    # two random draws; with half the pool ejected each draw succeeds one time in two, so
    # about four looks, and never a scan of the pool (a pool of 8 or fewer is listed)
    for n in SIZES:
        assert micro.routes_examined("least_load", n) == pytest.approx(2, abs=0.01)
    assert micro.routes_examined("least_load", 2, 1) == pytest.approx(2, abs=0.01)
    for n in SIZES[1:]:
        assert 3 <= micro.routes_examined("least_load", n, n // 2) <= 6


def test_the_scan_the_indexes_replaced_would_have_looked_at_every_route() -> None:
    """The counter sees a policy that scans the pool (so the flat figures above are not
    the counter missing looks)."""
    from llm.routing.state import Pool, RouteState

    class Scan:
        name = "scan"

        def choose(
            self, pool: Pool, exclude: object, now: float, stream: bool, tokens: int = 0
        ) -> RouteState | None:
            usable = [r for r in pool.routes if r.health.healthy]
            return usable[0] if usable else None

    for n in SIZES:
        setup = micro.make_setup("round_robin", n)
        setup.balancer.policy = Scan()
        tally = micro._count_looks(setup.balancer)
        step = micro.pick_and_report(setup)
        for _ in range(10):
            step()
        assert tally.looked_at == 10 * n


class _CountingLock:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acquired = 0

    def acquire(self, *args: Any) -> bool:
        self.acquired += 1
        return self.lock.acquire(*args)

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class _CountingClock:
    def __init__(self) -> None:
        self.calls = 0
        self.now = 1000.0

    def __call__(self) -> float:
        self.calls += 1
        return self.now


@pytest.mark.parametrize("policy", micro.POLICIES)
def test_the_balancer_s_own_work_per_call_does_not_depend_on_the_pool_size(policy: str) -> None:
    """Lock acquisitions and clock readings per pick + report, and per call through a
    CallPlan, are the same at 2 and at 100 routes."""
    per_size = []
    for n in (2, 100):
        clock = _CountingClock()
        setup = micro.make_setup(policy, n, n // 2, clock=clock)
        lock = _CountingLock()
        balancer: Balancer = setup.balancer
        balancer.lock = lock  # type: ignore[assignment]
        counts = []
        for step in (micro.pick_and_report(setup), micro.call_routing(setup)):
            clock.calls = lock.acquired = 0
            for _ in range(10):
                step()
            counts.append((clock.calls, lock.acquired))
        per_size.append(counts)
    assert per_size[0] == per_size[1]
    assert per_size[0][0] == (30, 30)  # pick, dispatch, succeeded: one reading, one lock each


def test_render_markdown_has_a_row_per_figure_and_the_import_table() -> None:
    results = micro.MicroResults(
        routing=micro.measure_routing(("round_robin",), (2,), number=10, repeat=1),
        imports=[micro.ImportFigure("import llm", "import llm", 41.5, 40.0, 3)],
        loaded={"aiohttp": False, "httpx": False},
        profile=[micro.ImportCost("llm", 0.4, 0.9)],
    )
    text = micro.render_markdown(results)
    assert text.count("| round robin | 2 |") == 2
    assert "| `import llm` | 41.5 | 40.0 |" in text
    assert "`import llm` loads none of `aiohttp`, `httpx`." in text
    assert "| `llm` | 0.40 | 0.90 |" in text
    data = json.loads(json.dumps(results.as_dict()))
    assert data["routing"][0]["plan_overhead_us"] == pytest.approx(
        data["routing"][0]["call_us"] - data["routing"][0]["pick_report_us"]
    )


@pytest.mark.parametrize("installed", [True, False])
def test_litellm_is_timed_for_reference_only_when_installed(
    monkeypatch: pytest.MonkeyPatch, installed: bool
) -> None:
    found = importlib.util.find_spec("json")
    monkeypatch.setattr(
        micro.importlib.util, "find_spec", lambda name, *a: found if installed else None
    )
    codes = micro.import_codes()
    assert codes[: len(micro.IMPORT_CODES)] == micro.IMPORT_CODES
    assert (micro.LITELLM_IMPORT in codes) == installed


def test_render_markdown_compares_with_litellm_when_it_was_timed() -> None:
    figures = [
        micro.ImportFigure("import llm", "import llm", 30.0, 28.0, 3),
        micro.ImportFigure("entry", micro.FACTORY_IMPORT, 150.0, 140.0, 3),
        micro.ImportFigure(*micro.LITELLM_IMPORT, 3000.0, 2900.0, 3),
    ]
    text = micro.render_markdown(micro.MicroResults(imports=figures))
    assert "| `import litellm` | 3000.0 | 2900.0 |" in text
    assert "`import llm` takes 0.010× the time of `import litellm`" in text
    assert f"`{micro.FACTORY_IMPORT}` 0.050×" in text
    without = micro.render_markdown(micro.MicroResults(imports=figures[:2]))
    assert "litellm" not in without


def test_measure_import_time_and_loaded_modules_run() -> None:
    figures = micro.measure_import_time(runs=1, codes=(("interpreter alone", "pass"),))
    assert len(figures) == 1 and figures[0].runs == 1
    assert 0 < figures[0].min_ms <= figures[0].median_ms < 60_000
    loaded = micro.loaded_modules("import json", ("json", "aiohttp"))
    assert loaded == {"json": True, "aiohttp": False}


def test_main_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    micro.main(["--json", "--quick", "--routing-only"])
    data = json.loads(capsys.readouterr().out)
    assert len(data["routing"]) == len(micro.POLICIES) * len(micro.ROUTE_COUNTS) * 2
    assert data["imports"] == []
