"""The fleet simulation (llm.perf.fleet_sim): the benchmark's workloads through real balancers
on a fake clock. No sockets, no sleeping: every figure is deterministic for its seed, so these
tests pin what affinity does to the prefix-cache hit rate and where the calls go."""

from __future__ import annotations

import pytest

from llm.perf import fleet_sim as fs
from llm.perf.fleet_workloads import AFFINITY, BY_PREFIX


@pytest.fixture(scope="module")
def tenants_rate() -> float:
    return 0.8 * fs.capacity("tenants")


def test_a_run_is_the_same_for_the_same_seed_and_moves_with_another(tenants_rate: float) -> None:
    one = fs.simulate("tenants", AFFINITY, 2, rate=tenants_rate, duration=30)
    two = fs.simulate("tenants", AFFINITY, 2, rate=tenants_rate, duration=30)
    other = fs.simulate("tenants", AFFINITY, 2, rate=tenants_rate, duration=30, seed=1)
    assert one == two
    assert one.calls > 100 and abs(sum(one.shares) - 1.0) < 1e-9
    assert other.p99 != one.p99


def test_capacity_is_the_oracles_closed_loop_and_grows_with_the_fleet() -> None:
    small = fs.capacity(
        "tenants", fs.FleetSpec(speeds=(1.0, 1.0), prefill_ms_per_token=0.2, cache_blocks=1024)
    )
    full = fs.capacity("tenants")
    assert 0 < small < full  # the default fleet has 2.75 speed units, this one 2


def test_the_oracle_joins_the_shortest_speed_weighted_queue(tenants_rate: float) -> None:
    oracle = fs.simulate("tenants", fs.ORACLE, rate=tenants_rate, duration=60)
    shares = oracle.shares
    assert shares[0] > shares[2] > shares[3]  # speeds 1, 0.5, 0.25: the slower, the fewer
    assert oracle.home_calls == 0


@pytest.mark.parametrize("replicas", [1, 4])
def test_affinity_lifts_the_tenants_hit_rate_without_a_tail_on_time_to_first_token(
    tenants_rate: float, replicas: int
) -> None:
    hits, ttft = [], []
    for seed in range(2):
        plain = fs.simulate(
            "tenants", "least_load", replicas, rate=tenants_rate, duration=100, seed=seed
        )
        keyed = fs.simulate(
            "tenants", AFFINITY, replicas, rate=tenants_rate, duration=100, seed=seed
        )
        assert plain.prefix_hit and keyed.prefix_hit and plain.ttft_p99 and keyed.ttft_p99
        hits.append(keyed.prefix_hit / plain.prefix_hit)
        ttft.append(keyed.ttft_p99 / plain.ttft_p99)
        # most keyed calls go home even though the fleet queues: the free-slot-only rule
        # this replaced sent 90 % of them elsewhere
        assert keyed.home_calls > 0.8 * (keyed.home_calls + keyed.home_spills)
    assert sum(hits) / 2 >= 1.4
    assert sum(ttft) / 2 < 1.0


def test_one_hot_prefix_is_spread_like_least_load_spreads_it() -> None:
    rate = 0.8 * fs.capacity("hot")
    plain = fs.simulate("hot", "least_load", 1, rate=rate, duration=100)
    keyed = fs.simulate("hot", AFFINITY, 1, rate=rate, duration=100)
    # the hot prefix is 80 % of the calls: were it held to its two homes, they would take
    # 80 % of the calls; spread, every instance's share stays near least load's
    assert max(abs(a - b) for a, b in zip(keyed.shares, plain.shares, strict=True)) < 0.06
    assert keyed.prefix_hit == pytest.approx(plain.prefix_hit, abs=0.01)


def test_the_ceiling_bounds_every_client_and_the_prefix_workload_cannot_reach_1_5x() -> None:
    rate = 0.8 * fs.capacity("prefix")
    ceiling = fs.hit_ceiling("prefix", rate, duration=60)
    plain = fs.simulate("prefix", "least_load", 1, rate=rate, duration=60)
    keyed = fs.simulate("prefix", BY_PREFIX, 1, rate=rate, duration=60)
    assert plain.prefix_hit and keyed.prefix_hit
    assert plain.prefix_hit < keyed.prefix_hit <= ceiling
    assert ceiling < 1.5 * plain.prefix_hit  # why docs/fleet-affinity.md reports the ceiling


def test_the_command_line_prints_a_row_per_client_and_replica_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert fs.main(["--workload", "hot", "--seeds", "1", "--duration", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("workload")
    rows = [line.split() for line in lines[1:]]
    assert [(row[0], row[1], row[2]) for row in rows] == [
        ("hot", AFFINITY, "1"),
        ("hot", AFFINITY, "4"),
    ]
