"""The fleet benchmark's machinery: workload, oracle, statistics, report; one live smoke run.

The figures themselves live in docs/fleet.md; nothing here times the routing policies.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from llm.perf.fleet import (
    FleetSpec,
    Report,
    Run,
    as_json,
    chart_svg,
    document,
    from_json,
    render_text,
)
from llm.perf.fleet_client import open_loop
from llm.perf.fleet_model import (
    CHARS_PER_TOKEN,
    SYSTEM_TOKENS,
    Call,
    Figures,
    assign_replicas,
    capacity,
    imbalance,
    make_workload,
    oracle_choice,
    percentile,
    prefix_hit_rate,
    shares,
    summarize,
    system_prompts,
    with_ratios,
)

ROOT = Path(__file__).resolve().parent.parent


# -- the workload ---------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_calls_and_another_seed_others():
    first = make_workload(7, rate=10, duration=20)
    assert first == make_workload(7, rate=10, duration=20)
    other = make_workload(8, rate=10, duration=20)
    assert [c.at for c in other] != [c.at for c in first]


def test_arrivals_are_poisson_at_the_rate_and_within_the_duration():
    calls = make_workload(1, rate=10, duration=300)
    times = [c.at for c in calls]
    assert times == sorted(times) and times[0] > 0 and times[-1] < 300
    assert 2700 < len(calls) < 3300  # 3000 expected, sd ~55
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.mean(gaps) == pytest.approx(0.1, rel=0.05)
    # exponential gaps: the standard deviation equals the mean (a fixed period would give 0)
    assert statistics.stdev(gaps) == pytest.approx(statistics.mean(gaps), rel=0.1)
    assert [c.index for c in calls] == list(range(len(calls)))


def test_the_mix_half_shared_half_streamed_and_max_tokens_within_bounds():
    calls = make_workload(2, rate=20, duration=100, max_tokens=(16, 160))
    shared = [c for c in calls if c.shared is not None]
    assert 0.45 < len(shared) / len(calls) < 0.55
    assert 0.45 < sum(c.stream for c in calls) / len(calls) < 0.55
    budgets = [c.max_tokens for c in calls]
    assert min(budgets) >= 16 and max(budgets) <= 160
    assert statistics.mean(budgets) == pytest.approx(88, rel=0.05)
    assert {c.shared for c in shared} == {0, 1, 2, 3}


def test_shared_calls_begin_with_a_long_system_prompt_and_unique_ones_share_no_prefix():
    prompts = system_prompts()
    assert len(prompts) == 4 and len(set(prompts)) == 4
    for prompt, tokens in zip(prompts, SYSTEM_TOKENS, strict=True):
        assert 400 <= tokens <= 800
        assert len(prompt) == tokens * CHARS_PER_TOKEN  # the fake counts len // 4
    calls = make_workload(3, rate=20, duration=30)
    for call in calls:
        if call.shared is not None:
            assert call.messages[0] == ("system", prompts[call.shared])
            assert call.messages[1][0] == "user"
        else:
            assert len(call.messages) == 1 and call.messages[0][0] == "user"
    unique = [c.messages[0][1] for c in calls if c.shared is None]
    heads = {text[:24] for text in unique}
    assert len(heads) == len(unique)  # they differ from their first tokens on


def test_a_call_survives_json_as_the_client_processes_read_it():
    calls = make_workload(4, rate=5, duration=10)
    again = [Call.from_json(item) for item in json.loads(json.dumps([c.to_json() for c in calls]))]
    assert again == calls
    assert again[0].as_messages()[-1]["role"] == "user"


def test_replicas_split_the_calls_by_a_seeded_draw():
    owners = assign_replicas(4000, 4, seed=0)
    assert owners == assign_replicas(4000, 4, seed=0)
    assert owners != assign_replicas(4000, 4, seed=1)
    counts = [owners.count(r) for r in range(4)]
    assert all(900 < n < 1100 for n in counts)
    assert assign_replicas(10, 1, seed=0) == [0] * 10
    # not a rotation: a replica sees a random subset (round robin would give period 4)
    assert owners[:8] != [0, 1, 2, 3, 0, 1, 2, 3]
    with pytest.raises(ValueError):
        assign_replicas(10, 0, seed=0)


# -- the oracle -----------------------------------------------------------------------------


def test_the_oracle_joins_the_shortest_queue_weighted_by_speed():
    speeds = [1.0, 1.0, 0.5, 0.25]
    assert oracle_choice([0, 0, 0, 0], speeds) == 0  # tie: the lowest index
    assert oracle_choice([1, 0, 0, 0], speeds) == 1
    assert oracle_choice([1, 1, 0, 0], speeds) == 0  # costs 2, 2, 2, 4: the lowest index
    assert oracle_choice([2, 2, 0, 0], speeds) == 2  # costs 3, 3, 2, 4
    assert oracle_choice([4, 4, 2, 0], speeds) == 3  # costs 5, 5, 6, 4
    assert oracle_choice([0, 9], [0.1, 10.0]) == 1  # costs 10, 1: speed beats a short queue


def test_the_oracle_fills_instances_in_proportion_to_their_speed():
    speeds = [1.0, 1.0, 0.5, 0.25]
    outstanding = [0, 0, 0, 0]
    for _ in range(110):  # calls that never finish: the counts grow as the speeds
        outstanding[oracle_choice(outstanding, speeds)] += 1
    assert outstanding == [40, 40, 20, 10]


# -- the client's schedule -------------------------------------------------------------------


def test_open_loop_sends_at_absolute_times_without_waiting_for_earlier_calls():
    calls = [Call(i, 0.05 * i, (("user", "x"),), 16, False, None) for i in range(5)]

    async def send(call: Call, due: float) -> dict:
        await asyncio.sleep(0.6 if call.index == 0 else 0.01)  # the first call is slow
        return {"inst": "i0", "ttft": None}

    async def main() -> list[dict]:
        anchor = asyncio.get_running_loop().time() + 0.05
        return await open_loop(send, calls, anchor, bound=30)

    records = sorted(asyncio.run(main()), key=lambda r: r["end"])
    assert [r["i"] for r in records] == [1, 2, 3, 4, 0]  # nobody waited for call 0
    assert all(r["ok"] for r in records)
    assert max(r["lag"] for r in records) < 0.04
    assert records[-1]["lat"] == pytest.approx(0.6, abs=0.1)


def test_open_loop_counts_calls_unfinished_at_the_bound_as_failures():
    calls = [Call(i, 0.0, (("user", "x"),), 16, True, None) for i in range(3)]

    async def send(call: Call, due: float) -> dict:
        await asyncio.sleep(0 if call.index == 0 else 60)
        return {"inst": "i1", "ttft": 0.0}

    async def main() -> list[dict]:
        return await open_loop(send, calls, asyncio.get_running_loop().time(), bound=0.2)

    records = asyncio.run(main())
    assert len(records) == 3
    failed = sorted(r["i"] for r in records if not r["ok"])
    assert failed == [1, 2]
    assert all(r["err"] == "unfinished at the run's bound" for r in records if not r["ok"])
    assert summarize("x", 1, records, ["i1"]).failed == 2


# -- statistics -----------------------------------------------------------------------------


def test_percentiles_interpolate_between_order_statistics():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50.5
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1 and percentile(values, 100) == 100
    assert percentile([5.0], 99) == 5.0
    assert percentile([3, 1, 2], 50) == 2  # unsorted input
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_imbalance_counts_only_samples_with_a_queue():
    samples = [
        [0, 0, 0, 0],  # mean 0: not counted
        [1, 0, 0, 1],  # mean 0.5: not counted
        [2, 2, 2, 2],  # 1.0
        [8, 0, 0, 0],  # mean 2, max 8: 4.0
        [3, 1, 1, 3],  # mean 2: 1.5
    ]
    worst, mean, counted = imbalance(samples)
    assert (worst, counted) == (4.0, 3)
    assert mean == pytest.approx((1.0 + 4.0 + 1.5) / 3)
    assert imbalance([[0, 0], [1, 0]]) == (None, None, 0)
    assert imbalance([]) == (None, None, 0)


def test_shares_sum_to_a_hundred_and_name_idle_instances():
    names = ["i0", "i1", "i2", "i3"]
    got = shares(["i0", "i0", "i1", None, "i2"], names)
    assert got == {"i0": 50.0, "i1": 25.0, "i2": 25.0, "i3": 0.0}
    assert sum(got.values()) == pytest.approx(100)
    assert shares([], names) == dict.fromkeys(names, 0.0)


def test_prefix_hit_rate_from_counter_deltas_summed_over_instances():
    before = {"a": (100.0, 50.0), "b": (0.0, 0.0)}
    after = {"a": (300.0, 150.0), "b": (200.0, 20.0)}
    assert prefix_hit_rate(before, after) == pytest.approx(100 * 120 / 400)
    # a restarted instance (counters went down) counts from zero
    assert prefix_hit_rate({"a": (500.0, 400.0)}, {"a": (100.0, 10.0)}) == pytest.approx(10)
    assert prefix_hit_rate(after, after) is None  # no queries in between


def test_capacity_counts_completions_within_the_window_only():
    completions = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 9.0]
    assert capacity(completions, 1.0, 3.0) == 2.0  # 1.0, 1.5, 2.0, 2.5 over 2 s
    with pytest.raises(ValueError):
        capacity(completions, 3.0, 3.0)


def record(i: int, lat: float, inst: str, ttft: float | None = None, ok: bool = True) -> dict:
    return {"i": i, "at": float(i), "lat": lat, "ttft": ttft, "inst": inst, "ok": ok,
            "lag": 0.001 * i, "err": None if ok else "ServerError: 503"}  # fmt: skip


def test_summary_of_per_call_records():
    names = ["i0", "i1"]
    records = [record(i, 1.0 + i / 10, "i0" if i % 4 else "i1", 0.2 if i % 2 else None)
               for i in range(20)]  # fmt: skip
    records.append(record(20, 0.0, "i0", ok=False))
    figures = summarize("round_robin", 4, records, names, [[2, 0], [1, 1]], 42.0)
    assert (figures.calls, figures.failed) == (21, 1)
    assert figures.errors == ["ServerError: 503"]
    assert figures.p50 is not None and figures.p95 is not None and figures.p99 is not None
    assert figures.p50 < figures.p95 < figures.p99 <= 2.9
    assert figures.ttft_p50 == figures.ttft_p99 == 0.2  # streamed calls only
    assert figures.shares == {"i0": 75.0, "i1": 25.0}  # failed calls are not counted
    # 20 completed from the first arrival (0) to the last completion (19 + 2.9)
    assert figures.calls_per_s == pytest.approx(20 / 21.9)
    assert figures.imbalance_worst == 2.0 and figures.imbalance_mean == 1.5
    assert figures.prefix_hit == 42.0 and figures.max_lag == pytest.approx(0.02)


def test_ratios_to_the_oracle():
    def fig(client: str, p99: float, ttft: float | None) -> Figures:
        return summarize(client, 1, [record(0, p99, "i0", ttft)], ["i0"])

    oracle, rr = fig("oracle", 2.0, 0.5), fig("round_robin", 6.0, None)
    with_ratios([oracle, rr], oracle)
    assert oracle.p99_ratio == 1.0 and rr.p99_ratio == 3.0
    assert rr.ttft_p99_ratio is None


# -- the report -----------------------------------------------------------------------------


def sample_report() -> Report:
    names = FleetSpec().names

    def run(client: str, replicas: int, p99: float) -> Run:
        records = [record(i, p99 * (i + 1) / 8, names[i % 4], p99 / 5) for i in range(8)]
        figures = summarize(client, replicas, records, names, [[3, 1, 0, 0]], 30.0)
        return Run(figures, wall=60.0, fleet_cpu=20.0, client_cpu=10.0)

    tables = {}
    for replicas in (1, 4):
        runs = [run("oracle", 1, 2.0), run("round_robin", replicas, 8.0)]
        with_ratios([r.figures for r in runs], runs[0].figures)
        tables[replicas] = runs
    from llm.perf.fleet import Settings, _settings_dict

    return Report(
        settings=_settings_dict(Settings()), capacity=9.5, rate=7.6, calls=380,
        policies=["round_robin"], load_polling=False, tables=tables, cores=2, wall=300.0,
        cpu=150.0,
    )  # fmt: skip


def test_text_and_markdown_name_every_client_and_the_ratios():
    report = sample_report()
    text = render_text(report)
    assert "oracle (1 process)" in text and "round_robin" in text
    assert "4.00×" in text  # round robin's p99 over the oracle's
    assert "25 / 25 / 25 / 25" in text
    page = document(report, date="2026-01-01", machine="2 cores", chart_file="fleet-latency.svg")
    assert "![p99 and TTFT p99 per client](fleet-latency.svg)" in page
    assert "9.50 calls/s" in page and "one app replica" in page and "4 app replicas" in page
    assert "`round_robin` ×4: p99 4.00×" in page


def test_a_report_survives_json_for_writing_the_docs_again():
    report = sample_report()
    again = from_json(json.loads(json.dumps(as_json(report))))
    assert sorted(again.tables) == [1, 4]  # JSON made the keys strings
    assert again.tables[4][1].figures.p99_ratio == 4.0
    assert render_text(again) == render_text(report)


def test_the_chart_is_valid_svg_with_two_bars_per_client():
    svg = chart_svg(sample_report())
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    bars = [r for r in root.iter(f"{ns}rect") if r.get("fill") in ("#4c78a8", "#f58518")]
    assert len(bars) == 2 * 4 + 2  # p99 and TTFT p99 for 4 rows, plus the legend
    labels = "".join(t.text or "" for t in root.iter(f"{ns}text"))
    assert "round_robin ×4" in labels and "oracle (1 process), ×4 table" in labels
    assert "(4.00×)" in labels
    widths = [float(r.get("width", 0)) for r in bars[2:]]
    assert max(widths) > min(widths)  # bars scale with their values


# -- one live run ---------------------------------------------------------------------------


def _simulator_missing() -> bool:
    try:
        from llm.testing import BatchingSpec  # noqa: F401
    except ImportError:
        return True
    return False


@pytest.mark.skipif(_simulator_missing(), reason="llm.testing has no BatchingSpec yet")
@pytest.mark.timeout(60)
def test_quick_run_end_to_end(tmp_path: Path):
    out = tmp_path / "fleet.json"
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_fleet.py"), "--quick",
         "--policies", "round_robin", "--replicas", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=55, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - began < 30
    report = json.loads(out.read_text())
    assert report["capacity"] > 0 and report["calls"] > 0
    runs = {run["figures"]["client"]: run["figures"] for run in report["tables"]["1"]}
    assert set(runs) == {"oracle", "round_robin"}
    for figures in runs.values():
        assert figures["failed"] == 0, figures["errors"]
        assert figures["calls"] == report["calls"]
        assert sum(figures["shares"].values()) == pytest.approx(100)
        assert figures["p50"] <= figures["p95"] <= figures["p99"]
        assert figures["ttft_p50"] <= figures["ttft_p99"] <= figures["p99"]
        assert figures["calls_per_s"] > 0
    assert all(share > 0 for share in runs["oracle"]["shares"].values())
    assert runs["oracle"]["p99_ratio"] == 1.0
    assert math.isfinite(runs["round_robin"]["p99_ratio"])
    assert "oracle (1 process)" in done.stdout
