"""The hedging benchmark's machinery (scripts/bench_hedge.py, llm/perf/hedge_bench.py): one
small live run on loopback fake servers, and its targets' arithmetic. Not its figures: those
come from a full run."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from llm.perf.hedge_bench import (
    SCENARIOS,
    UNFINISHED_STREAMING,
    Report,
    ScenarioResult,
    Settings,
    make_servers,
    percentile,
    render_text,
    run_scenario,
    targets,
)
from llm.testing.processes import start_all

ROOT = Path(__file__).resolve().parent.parent
NO_FAILED = "frozen, hedge: no failed call (but streams frozen after their first token)"


def script() -> ModuleType:
    path = ROOT / "scripts" / "bench_hedge.py"
    spec = importlib.util.spec_from_file_location("bench_hedge", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def result(name: str, calls: int, p99: float, failed: int = 0, attempts: int = 0) -> ScenarioResult:
    return ScenarioResult(
        name=name,
        frozen=name.startswith("frozen"),
        hedge=name.endswith(", hedge"),
        calls=calls,
        ok=calls - failed,
        failed=failed,
        unfinished=failed,
        errors={"unfinished": failed} if failed else {},
        p50_ms=p99 / 2,
        p99_ms=p99,
        p999_ms=p99 * 1.5,
        max_ms=p99 * 2,
        over_1s=failed,
        ok_p99_ms=p99,
        calls_per_second=calls / 2,
        attempts=attempts or calls,
        extra_attempts=(attempts or calls) - calls,
        extra_attempts_pct=100.0 * ((attempts or calls) - calls) / calls,
        hedges={"started": 0, "won": 0, "cancelled": 0},
        frozen_route="s0" if name.startswith("frozen") else None,
        cpu_us_per_call=None,
    )


def test_percentile_is_the_nearest_rank():
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([float(n) for n in range(1, 1001)], 99.9) == 999.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 99) is None


def test_targets_pass_and_miss_on_their_bounds():
    names = [scenario.name for scenario in SCENARIOS]
    passing = [
        result(names[0], 1000, 150.0),
        result(names[1], 1000, 200.0, attempts=1050),  # exactly 5 %
        result(names[2], 1000, 20000.0, failed=20),
        result(names[3], 1000, 450.0),  # exactly 3x
    ]
    found, ratio = targets(passing)
    assert ratio == 3.0
    assert [target.passed for target in found] == [True, True, True]
    missing = [
        passing[0],
        result(names[1], 1000, 200.0, attempts=1051),
        passing[2],
        result(names[3], 1000, 451.0, failed=1),
    ]
    found, ratio = targets(missing)
    assert ratio == 3.01
    assert [target.passed for target in found] == [False, False, False]
    text = render_text(Report(Settings(), missing, found, ratio, None))
    assert text.count("MISS") == 3 and "PASS" not in text


def test_streams_the_frozen_server_had_begun_are_counted_apart():
    name = SCENARIOS[3].name
    begun = result(name, 1000, 150.0, failed=2)
    begun.errors = {UNFINISHED_STREAMING: 2}
    (target,) = targets([begun])[0]
    assert target.name == NO_FAILED and target.passed and "2 with those streams" in target.detail
    other = result(name, 1000, 150.0, failed=3)
    other.errors = {UNFINISHED_STREAMING: 2, "AllRoutesFailedError": 1}
    (target,) = targets([other])[0]
    assert not target.passed and target.value == 1.0


def test_the_script_measures_the_no_fault_scenarios_from_the_routes_stats(tmp_path, capsys):
    """Three loopback fake servers, 16 calls in flight (half of them streamed), 2 s windows:
    the JSON has every figure, and the attempts are the routes' requests in the window."""
    out = tmp_path / "hedge.json"
    chosen = [SCENARIOS[0].name, SCENARIOS[1].name]
    code = script().main(
        [
            "--seconds", "2", "--warmup", "1", "--in-flight", "16", "--stream-fraction", "0.5",
            "--drain", "1", "--json", str(out), "--scenarios", *chosen,
        ]
    )  # fmt: skip
    assert code == 0
    shown = capsys.readouterr().out
    assert "no-fault, hedge: extra attempts" in shown and ("PASS" in shown or "MISS" in shown)
    report = json.loads(out.read_text())
    assert report["settings"]["in_flight"] == 16
    results = {item["name"]: item for item in report["scenarios"]}
    assert list(results) == chosen
    for item in results.values():
        assert item["calls"] > 50 and item["failed"] == 0, item["errors"]
        assert item["p50_ms"] <= item["p99_ms"] <= item["p999_ms"] <= item["max_ms"]
        assert item["over_1s"] == 0
        routes = item["routes"]
        assert set(routes) == {"s0", "s1", "s2"}
        assert item["attempts"] == sum(route["requests"] for route in routes.values())
        assert item["extra_attempts"] == item["attempts"] - item["calls"]
        assert item["extra_attempts_pct"] == pytest.approx(
            100 * item["extra_attempts"] / item["calls"], abs=0.01
        )
        hedges = item["hedges"]
        assert hedges["started"] == sum(route["hedges_started"] for route in routes.values())
    reference = results[SCENARIOS[0].name]
    assert reference["hedges"] == {"started": 0, "won": 0, "cancelled": 0}
    assert reference["extra_attempts"] == 0  # no hedge, no fault: one attempt per call
    hedged = results[SCENARIOS[1].name]
    assert hedged["budget_mean"] is not None and hedged["budget_at_freeze"] is None
    assert [target["name"] for target in report["targets"]] == [
        "no-fault, hedge: extra attempts ≤ 5 % of calls"
    ]


def test_hedges_answer_every_call_stranded_on_a_frozen_server():
    """One of three servers SIGSTOPped 0.5 s into a 2 s window with 16 calls in flight: every
    call stranded there is answered by its hedge. A stranded call left without a hedge would
    still be waiting for its 30 s timeout when the 1 s drain ends, and count as failed.

    Non-streamed calls only: a stream frozen after its first token is past hedging."""
    settings = Settings(
        seconds=2, warmup=1, in_flight=16, freeze_after=0.5, drain=1, stream_fraction=0
    )
    servers = make_servers(settings)
    try:
        start_all(servers)
        frozen = asyncio.run(run_scenario(SCENARIOS[3], servers, settings))
        assert not servers[0]._frozen  # thawed after its scenario
    finally:
        for server in servers:
            server.stop()
    assert frozen.frozen_route == "s0" and frozen.calls > 50
    assert frozen.failed == 0 and frozen.unfinished == 0, frozen.errors
    assert frozen.hedges["won"] > 0  # the stranded calls were answered by their hedges
    assert frozen.hedges["started"] >= frozen.hedges["won"]
    assert frozen.routes["s0"]["hedges_cancelled"] > 0  # their first attempts, abandoned
    assert frozen.budget_at_freeze is not None
    found, _ = targets([frozen])
    assert [target.name for target in found] == [NO_FAILED]
    assert found[0].passed
