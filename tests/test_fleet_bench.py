"""The fleet benchmark's machinery: workload, oracle, statistics, report; one live smoke run.

The figures themselves live in docs/fleet.md; nothing here times the routing policies.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import math
import random
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from llm.perf import fleet_workloads as workloads
from llm.perf.fleet import (
    FleetSpec,
    Report,
    Run,
    Settings,
    affinity_accepted,
    affinity_page,
    affinity_section,
    as_json,
    chart_svg,
    default_clients,
    document,
    fleet_spec,
    from_json,
    render_markdown,
    render_text,
)
from llm.perf.fleet_client import closed_loop, open_loop, provider_config
from llm.perf.fleet_model import (
    CHARS_PER_TOKEN,
    SYSTEM_TOKENS,
    Call,
    Figures,
    assign_replicas,
    capacity,
    imbalance,
    make_workload,
    mix_call,
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


# -- the prefix and hot workloads -----------------------------------------------------------


def test_each_workload_is_seeded_and_deterministic():
    for name in ("prefix", "hot", "tenants"):
        first = workloads.make_calls(name, 5, 6.0, 30.0, (16, 160))
        assert first == workloads.make_calls(name, 5, 6.0, 30.0, (16, 160))
        other = workloads.make_calls(name, 6, 6.0, 30.0, (16, 160))
        assert [c.messages for c in other] != [c.messages for c in first]
        assert [c.index for c in first] == list(range(len(first)))
        times = [c.at for c in first]
        assert times == sorted(times) and times[0] >= 0 and times[-1] < 30
        again = workloads.closed_sessions(name, 5, (16, 160))
        groups = workloads.closed_sessions(name, 5, (16, 160))
        assert [next(groups) for _ in range(20)] == [next(again) for _ in range(20)]
    assert workloads.make_calls("mixed", 5, 6.0, 30.0, (16, 160)) == make_workload(5, 6.0, 30.0)


def test_the_mixed_closed_loop_draws_the_calls_it_drew_before_there_were_workloads():
    rng = random.Random("saturation-3")  # what fleet_client.closed_loop drew by itself
    before = [mix_call(rng, i, 0.0, (16, 160), system_prompts(), "s3-") for i in range(50)]
    groups = workloads.closed_sessions("mixed", 3, (16, 160))
    assert [next(groups) for _ in range(50)] == [[call] for call in before]


def test_a_sessions_next_turn_resends_its_last_prompt_and_answer_byte_for_byte():
    from llm.testing.fleet import block_hashes, chat_units

    block = fleet_spec("prefix").block_size
    for number in range(30):
        rng = random.Random(f"t-{number}")
        turns = workloads.make_session(rng, f"x{number}", (16, 160))
        lo, hi = workloads.SESSION_TURNS
        assert lo <= len(turns) <= hi and {t.session for t in turns} == {f"x{number}"}
        assert [t.at for t in turns] == sorted(t.at for t in turns) and turns[0].at == 0
        assert all(b.at - a.at >= workloads.THINK_MIN for a, b in itertools.pairwise(turns))
        for before, after in itertools.pairwise(turns):
            head = len(before.messages)
            assert after.messages[:head] == before.messages  # the whole last prompt
            (role, answer), last = after.messages[head], after.messages[-1]
            assert role == "assistant" and answer and len(after.messages) == head + 2
            assert last[0] == "user" and last[1] not in (m[1] for m in before.messages)
            # as the fake vLLM sees it: the last prompt and its answer are a prefix of the
            # next prompt's token units, and so are their cache blocks
            asked = [*before.as_messages(), {"role": "assistant", "content": answer}]
            assert chat_units(after.as_messages()).startswith(chat_units(asked))
            hashes = block_hashes(chat_units(after.as_messages()), block)
            earlier = block_hashes(chat_units(before.as_messages()), block)
            assert hashes[: len(earlier)] == earlier and len(hashes) > len(earlier)
        assert turns[0].messages[0] == ("system", workloads.prefix_prompts()[turns[0].shared])


def test_sessions_in_a_run_keep_their_turns_in_order_and_began_before_it_too():
    calls = workloads.prefix_workload(2, rate=8.0, duration=60.0)
    sessions = workloads.session_turns(calls)
    assert len(sessions) > 60
    for turns in sessions.values():
        sizes = [len(t.messages) for t in turns]
        assert sizes == list(range(sizes[0], sizes[0] + 2 * len(sizes), 2))  # turn after turn
        assert len({t.shared for t in turns}) == 1
    # sessions start before the run (LEAD), so its first second has later turns already (a
    # session started within the run has its second turn THINK_MIN after its first at least)
    assert any(c.at < workloads.THINK_MIN and len(c.messages) > 2 for c in calls)


def test_the_prefix_workloads_rate_and_popularity():
    calls = workloads.prefix_workload(1, rate=10.0, duration=200.0)
    assert 1700 < len(calls) < 2300  # 2000 expected
    assert 0.4 < sum(c.stream for c in calls) / len(calls) < 0.6
    assert all(16 <= c.max_tokens <= 160 for c in calls)
    starts = [turns[0].shared for turns in workloads.session_turns(calls).values()]
    weights = workloads.zipf_weights()
    assert weights == sorted(weights, reverse=True) and sum(weights) == pytest.approx(1)
    top = starts.count(0) / len(starts)
    assert top == pytest.approx(weights[0], abs=0.06)  # ~30 %: a few hot...
    assert len(set(starts)) >= 20  # ...and a long tail


def test_the_prefixes_outgrow_one_instances_cache_but_not_the_fleets():
    spec = fleet_spec("prefix")
    assert (spec.cache_blocks, spec.block_size) == (workloads.CACHE_BLOCKS, 16) == (1024, 16)
    assert spec.cache_tokens == 16384 and spec.prefill_ms_per_token == 0.2
    assert spec.speeds == FleetSpec().speeds and fleet_spec("mixed") == FleetSpec()
    prompts = workloads.prefix_prompts()
    assert len(set(prompts)) == len(prompts) == workloads.PREFIX_PROMPTS == 24
    # tokens as the fake counts them, per distinct system prompt
    sizes = [len(p) // CHARS_PER_TOKEN for p in prompts]
    assert sizes == list(workloads.prefix_prompt_tokens())
    assert min(sizes) >= 1024 and max(sizes) <= 2048
    total = sum(sizes)
    assert total > 2 * spec.cache_tokens  # 36,853 > 16,384: one cache holds under half
    assert total < len(spec.speeds) * spec.cache_tokens  # < 65,536: the fleet's caches hold them
    # and a run does use them: the prompts its sessions pick outgrow one cache too
    used = {c.shared for c in workloads.prefix_workload(0, rate=5.0, duration=50.0)}
    assert sum(sizes[k] for k in used if k is not None) > spec.cache_tokens
    # a miss on the longest prompt costs a visible part of a TTFT at speed 1
    assert max(sizes) * spec.prefill_ms_per_token >= 400


def test_the_hot_workload_has_its_hot_share_on_one_long_prompt():
    assert workloads.HOT_SHARE == 0.8
    calls = workloads.hot_workload(3, rate=20.0, duration=150.0)
    assert 2700 < len(calls) < 3300
    hot = [c for c in calls if c.shared is not None]
    assert len(hot) / len(calls) == pytest.approx(0.8, abs=0.025)
    system = {c.messages[0] for c in hot}
    assert system == {("system", workloads.hot_prompt())}
    assert len(workloads.hot_prompt()) // CHARS_PER_TOKEN == workloads.HOT_TOKENS == 2048
    assert {c.shared for c in hot} == {0} and all(c.session is None for c in calls)
    unique = [c.messages[0][1] for c in calls if c.shared is None]
    assert all(len(c.messages) == 1 for c in calls if c.shared is None)
    assert len({text[:24] for text in unique}) == len(unique)
    groups = workloads.closed_sessions("hot", 0, (16, 160))
    closed = [next(groups) for _ in range(3000)]
    assert all(len(group) == 1 for group in closed)
    share = sum(group[0].shared is not None for group in closed) / len(closed)
    assert share == pytest.approx(0.8, abs=0.025)  # capacity is measured on the same mix


def test_the_tenants_outgrow_one_cache_but_not_the_fleets_and_spread_over_many():
    spec = FleetSpec(**workloads.fleet_overrides("tenants"))
    sizes = workloads.tenant_prompt_tokens()
    assert len(sizes) == workloads.TENANTS == 40
    total = sum(sizes)
    assert total > 3 * spec.cache_tokens  # 60,000 > 3 x 16,384: one cache holds a quarter
    assert total < len(spec.speeds) * spec.cache_tokens  # the four together hold them all
    for k, prompt in enumerate(workloads.tenant_prompts()[:3]):
        assert len(prompt) // CHARS_PER_TOKEN == sizes[k]
    calls = workloads.tenants_workload(2, rate=20.0, duration=100.0)
    picked = Counter(c.shared for c in calls)
    assert len(picked) == 40 and max(picked.values()) / len(calls) < 0.15  # no single hot one
    assert all(c.messages[0] == ("system", workloads.tenant_prompts()[c.shared]) for c in calls)
    groups = workloads.closed_sessions("tenants", 0, (16, 160))
    assert all(len(next(groups)) == 1 for _ in range(50))


def test_a_session_call_survives_json_and_an_old_call_still_reads():
    calls = workloads.prefix_workload(4, rate=5.0, duration=10.0)
    assert calls and all(c.session for c in calls)
    again = [Call.from_json(item) for item in json.loads(json.dumps([c.to_json() for c in calls]))]
    assert again == calls
    old = [0, 1.5, [["user", "x"]], 16, False, None]  # six fields: before sessions
    assert Call.from_json(old) == Call(0, 1.5, (("user", "x"),), 16, False, None, None)
    assert Call(0, 0.0, (), 1, False, None).to_json() == [0, 0.0, (), 1, False, None]


def test_the_closed_loop_sends_a_sessions_turns_in_order_one_after_another():
    sent: list[Call] = []

    async def send(call: Call, due: float) -> dict:
        sent.append(call)
        await asyncio.sleep(0.01)
        return {"inst": "i0", "ttft": None}

    async def main() -> list[dict]:
        anchor = asyncio.get_running_loop().time()
        return await closed_loop(send, anchor, 0.4, 3, 0, [16, 160], "prefix")

    records = asyncio.run(main())
    assert records and all(r["ok"] for r in records)
    by_session: dict[str, list[int]] = {}
    for call in sent:
        assert call.session is not None
        by_session.setdefault(call.session, []).append(call.index)  # index: the turn
    assert len(by_session) >= 3
    for turns in by_session.values():
        assert turns == list(range(len(turns)))
    assert max(len(turns) for turns in by_session.values()) >= 2


def test_affinity_clients_and_their_provider_config():
    options = workloads.client_options("least_load+affinity")
    assert (options.policy, options.affinity, options.session) == (
        "least_load", {"by_prefix": True}, True,
    )  # fmt: skip
    assert workloads.client_options("least_load+by_prefix").session is False
    assert workloads.client_options("round_robin") == workloads.ClientOptions(
        "round_robin", None, session=False
    )
    instances = [{"name": "i0", "url": "http://127.0.0.1:9", "speed": 1.0}]
    config = provider_config({"client": "least_load+affinity", "model": "m",
                              "instances": instances, "load_poll": 0.5})  # fmt: skip
    assert config["llm"]["lb_policy"] == "least_load"
    assert config["llm"]["affinity"] == {"by_prefix": True}
    plain = provider_config({"client": "least_load", "model": "m", "instances": instances})
    assert "affinity" not in plain["llm"] and plain["llm"]["lb_policy"] == "least_load"
    if affinity_accepted():
        from llm.config import parse_config

        parse_config(config, environ={})  # the config takes what the client sends
    policies = ["round_robin", "least_latency", "least_load"]
    assert default_clients("mixed", True) == policies  # docs/fleet.md stays comparable
    assert default_clients("prefix", False) == policies
    assert default_clients("prefix", True) == [*policies, "least_load+affinity",
                                               "least_load+by_prefix"]  # fmt: skip
    assert default_clients("hot", True) == [*policies, "least_load+affinity"]


def test_only_the_affinity_client_passes_session(monkeypatch: pytest.MonkeyPatch):
    import llm.factory
    from llm.perf.fleet_client import _provider_client

    seen: list[dict] = []

    class FakeProvider:
        async def achat_completion(self, messages: list, **options: object) -> object:
            seen.append(dict(options))
            return type("Result", (), {"route": "i0", "usage": None})()

        async def aclose(self) -> None:
            pass

    monkeypatch.setattr(
        llm.factory.LLMFactory, "create_provider", staticmethod(lambda *a, **k: FakeProvider())
    )
    call = workloads.prefix_workload(0, rate=5.0, duration=10.0)[0]
    call = Call(call.index, call.at, call.messages, call.max_tokens, False, 0, call.session)
    instances = [{"name": "i0", "url": "http://127.0.0.1:9", "speed": 1.0}]

    async def main(client: str) -> dict:
        spec = {"client": client, "model": "m", "instances": instances}
        send, close = await _provider_client(spec)
        record = await send(call, 0.0)
        await close()
        return record

    for client in ("least_load+affinity", "least_load+by_prefix", "least_load"):
        assert asyncio.run(main(client))["inst"] == "i0"
    assert seen == [
        {"max_tokens": call.max_tokens, "session": call.session},
        {"max_tokens": call.max_tokens},
        {"max_tokens": call.max_tokens},
    ]


def _bench_script():
    path = ROOT / "scripts" / "bench_fleet.py"
    spec = importlib.util.spec_from_file_location("bench_fleet_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_workload_option_selects_calls_and_fleet(capsys: pytest.CaptureFixture[str]):
    script = _bench_script()
    args, settings = script.parse([])
    assert args.workload == settings.workload == "mixed" and settings.fleet == FleetSpec()
    assert settings == Settings()
    args, settings = script.parse(["--workload", "prefix", "--quick", "--seed", "3"])
    assert settings.workload == "prefix" and settings.fleet == fleet_spec("prefix")
    assert settings.fleet.cache_blocks == 1024 and settings.duration == 3.0
    assert settings.seed == 3 and settings.max_tokens == Settings.quick().max_tokens
    _, settings = script.parse(["--workload", "hot", "--policies", "least_load+affinity"])
    assert settings.workload == "hot" and settings.policies == ("least_load+affinity",)
    assert settings.duration == Settings().duration
    for bad in (["--workload", "prefixes"], ["--policies", "least_load+cache"]):
        with pytest.raises(SystemExit) as stop:
            script.parse(bad)
        assert stop.value.code == 2
    assert "prefixes" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown workload"):
        Settings(workload="nope")
    with pytest.raises(ValueError, match="unknown workload"):
        workloads.make_calls("nope", 0, 1.0, 1.0, (16, 160))


def affinity_report(workload: str, affinity_p99: float = 9.0) -> Report:
    """A report of ``workload`` with the oracle, least_load and least_load+affinity."""
    spec = fleet_spec(workload)
    names = spec.names

    def run(client: str, p99: float, hit: float) -> Run:
        records = [record(i, p99 * (i + 1) / 8, names[i % 4], p99 / 4) for i in range(8)]
        figures = summarize(client, 1, records, names, [[3, 1, 0, 0]], hit)
        return Run(figures, wall=60.0, fleet_cpu=20.0, client_cpu=10.0)

    runs = [run("oracle", 4.0, 40.0), run("least_load", 8.0, 35.0),
            run("least_load+affinity", affinity_p99, 70.0)]  # fmt: skip
    with_ratios([r.figures for r in runs], runs[0].figures)
    from llm.perf.fleet import _settings_dict

    settings = Settings.for_workload(workload, replicas=(1,))
    return Report(
        settings=_settings_dict(settings), capacity=5.0, rate=4.0, calls=200,
        policies=["least_load", "least_load+affinity"], load_polling=True, tables={1: runs},
        cores=2, wall=100.0, cpu=50.0, affinity=True,
    )  # fmt: skip


def test_the_text_and_markdown_of_a_prefix_run_show_hits_and_tails_against_both_references():
    report = affinity_report("prefix", affinity_p99=6.0)
    assert report.workload == "prefix"
    text = render_text(report)
    assert "workload prefix; prefix cache 16384 tokens per instance, prefill 0.2 ms/token" in text
    assert "p99 ÷ least_load" in text and "prefix hit %" in text
    summary = text.split("prefix cache and tails, 1 app replica(s):")[1]
    line = next(row for row in summary.splitlines() if row.startswith("least_load+affinity"))
    # hits, TTFT p99, p99 (the 99th percentile of 8 calls up to 6 s), then the ratios
    assert line.split()[1:] == ["70", "1.50", "5.95", "1.50×", "1.50×", "0.75×", "0.75×"]
    page = render_markdown(report)
    assert "| least_load+affinity | 70 | 1.50 | 5.95 | 1.50× | 1.50× | 0.75× | 0.75× |" in page
    # a mixed report keeps its tables as they were: no summary
    assert "p99 ÷ least_load" not in render_markdown(sample_report())
    again = from_json(json.loads(json.dumps(as_json(report))))
    assert again.workload == "prefix" and again.affinity and render_text(again) == text
    old = as_json(sample_report())
    del old["affinity"], old["settings"]["workload"]  # a JSON from before the workloads
    assert from_json(old).workload == "mixed" and not from_json(old).affinity


def test_the_hot_section_says_whether_affinity_kept_within_a_tenth_of_least_load():
    met = affinity_section(affinity_report("hot", 8.5), date="d", machine="m", chart_file="h.svg")
    assert "p99 1.06× `least_load`'s (aim ≤ 1.10×: met)" in met
    assert "prefix-cache hits 70 %, 2.00× `least_load`'s (35 %)" in met
    assert "The ceiling: 93 % of the prompt tokens could be hits at all" in met
    missed = affinity_section(affinity_report("hot", 9.2), date="d", machine="m", chart_file="x")
    assert "(aim ≤ 1.10×: NOT met)" in missed
    assert "`python scripts/bench_fleet.py --workload hot --write`" in met
    longer = affinity_report("hot", 9.2)
    longer.settings["duration"] = 150.0
    shown = affinity_section(longer, date="d", machine="m", chart_file="x")
    assert "`python scripts/bench_fleet.py --workload hot --duration 150 --write`" in shown
    assert met.startswith("<!-- fleet-affinity:hot -->")
    assert met.endswith("<!-- /fleet-affinity:hot -->")
    assert "![p99 and TTFT p99 per client, workload hot](h.svg)" in met
    words = " ".join(met.split())  # the prose is wrapped
    assert "80% of the calls begin with the same system prompt of 2,048 tokens" in words
    with pytest.raises(ValueError):
        affinity_section(sample_report(), date="d", machine="m", chart_file="x")


def test_the_affinity_page_replaces_its_own_section_and_keeps_the_others():
    hot = affinity_section(affinity_report("hot"), date="D1", machine="m", chart_file="h.svg")
    page = affinity_page(None, "hot", hot)
    assert page.startswith("# Fleet latency with prefix affinity")
    assert hot in page and "Not run yet: `python scripts/bench_fleet.py --workload prefix" in page
    assert page.index("fleet-affinity:prefix") < page.index("fleet-affinity:hot")
    prefix = affinity_section(affinity_report("prefix"), date="D2", machine="m", chart_file="p")
    words = " ".join(prefix.split())  # the prose is wrapped
    assert "36,853 tokens in all: 2.25× what one instance's prefix cache holds" in words
    # 70 % against 35 %: 2x the hits, TTFT p99 (9 s against 8 s) not lower
    assert "(aim hits ≥ 1.5×, TTFT p99 lower: NOT met)" in words
    better = affinity_section(affinity_report("prefix", 6.0), date="D", machine="m", chart_file="p")
    assert "(aim hits ≥ 1.5×, TTFT p99 lower: met)" in " ".join(better.split())
    both = affinity_page(page, "prefix", prefix)
    assert hot in both and prefix in both
    assert "Not run yet: `python scripts/bench_fleet.py --workload prefix" not in both
    assert "Not run yet: `python scripts/bench_fleet.py --workload tenants" in both
    newer = hot.replace("D1 (m)", "D3 (m)")
    assert newer != hot
    last = affinity_page(both, "hot", newer)
    assert newer in last and hot not in last and prefix in last
    assert last.count("<!-- fleet-affinity:hot -->") == 1
    with pytest.raises(ValueError):
        affinity_page(None, "mixed", "")


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
