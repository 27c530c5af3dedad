"""Prefix affinity, without sockets: the key of a call, the homes of a key, going home or not.

How this works
--------------
``call.affinity`` turns a call into a key; ``routing.affinity`` ranks a pool's routes for a
key by rendezvous hashing and decides whether a call goes home. The tests check the key's
rules on messages, that the ranking is the same in another process (another hash seed: what
every app replica computes), that a route leaving or joining moves only its own keys, that
weights shape the shares, and the bounded-load rule on a real ``Balancer`` with a fake clock.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections import Counter

import pytest
from conftest import FakeClock, route_config
from hypothesis import given, settings
from hypothesis import strategies as st

from llm.call.affinity import MIN_HEAD, affinity_key, chat_key, prompt_key, session_key
from llm.config import AffinityConfig, HealthConfig
from llm.config.model import AFFINITY_BLOCK
from llm.errors import InvalidRequestError
from llm.factory import LLMFactory
from llm.providers.vllm_openai import VLLMOpenAIProvider
from llm.routing import Balancer
from llm.routing.affinity import DECAY, HOT_MIN_CALLS, ranked, rendezvous_score
from llm.routing.load import estimated_load, record_report
from llm.routing.state import WARMUP_SAMPLES, Pool, RouteState
from llm.send.transport import SESSION_HEADER
from llm.testing import FakeVLLM

QUIET = HealthConfig(stall_factor=0)
LONG_SYSTEM = "You are a careful assistant. " * 40  # 1,160 characters
KEYS = [f"key-{i}".encode() for i in range(2000)]


def balancer_of(n: int, *, clock: FakeClock, homes: int = 2, **weights: float) -> Balancer:
    configs = [route_config(f"r{i}", weight=weights.get(f"r{i}", 1.0)) for i in range(n)]
    return Balancer(
        configs,
        policy="least_load",
        health=QUIET,
        clock=clock,
        rng=random.Random(0),
        affinity=AffinityConfig(homes=homes),
    )


# -- the key of a call -----------------------------------------------------------------------


def test_every_turn_of_a_conversation_has_the_key_of_its_system_prompt() -> None:
    first = [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "Hi"}]
    later = [*first, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "?"}]
    key = chat_key(first, 4096)
    assert key is not None and key == chat_key(later, 4096)
    other = [{"role": "system", "content": LONG_SYSTEM + " Be brief."}, first[1]]
    assert chat_key(other, 4096) == key  # same head up to the last whole block of it?
    shorter = [{"role": "system", "content": LONG_SYSTEM[:-100]}, first[1]]
    assert chat_key(shorter, 4096) != key


def test_a_short_system_prompt_takes_the_first_user_message_along() -> None:
    system = {"role": "system", "content": "Be helpful."}
    opening_a = {"role": "user", "content": "Tell me about ships. " * 20}
    opening_b = {"role": "user", "content": "Tell me about trains. " * 20}
    a = chat_key([system, opening_a], 4096)
    b = chat_key([system, opening_b], 4096)
    assert a is not None and b is not None and a != b
    turn_two = [system, opening_a, {"role": "assistant", "content": "Ships float."}]
    assert chat_key([*turn_two, {"role": "user", "content": "More"}], 4096) == a


def test_a_head_shorter_than_one_block_has_no_key_and_the_tail_past_a_block_is_ignored() -> None:
    assert chat_key([{"role": "user", "content": "hi"}], 4096) is None
    text = "x" * (3 * AFFINITY_BLOCK)
    a = chat_key([{"role": "user", "content": text}], 4096)
    b = chat_key([{"role": "user", "content": text + "tail"}], 4096)
    assert a is not None and a == b  # "tail" ends inside a block that is not whole
    assert prompt_key("p" * (AFFINITY_BLOCK - 1), 4096) is None
    assert prompt_key("p" * 500, 256) == prompt_key("p" * 300, 256)  # cut at prefix_chars
    assert prompt_key([1, 2, 3], 4096) is None  # token ids: nothing to hash


def test_role_boundaries_and_content_parts_count() -> None:
    text = "y" * MIN_HEAD
    split_a = [{"role": "system", "content": text[:10]}, {"role": "user", "content": text[10:]}]
    split_b = [{"role": "system", "content": text[:20]}, {"role": "user", "content": text[20:]}]
    assert chat_key(split_a, 4096) != chat_key(split_b, 4096)
    parts = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    plain = [{"role": "user", "content": text}]
    assert chat_key(parts, 4096) == chat_key(plain, 4096)


def test_a_session_gives_a_key_whatever_the_config_and_wins_over_the_prompt() -> None:
    body = {"messages": [{"role": "system", "content": LONG_SYSTEM}]}
    assert affinity_key(None, body, False, 4096) is None
    assert affinity_key(None, body, True, 4096) == chat_key(body["messages"], 4096)
    assert affinity_key("s1", body, True, 4096) == session_key("s1") != session_key("s2")
    assert affinity_key(None, {"prompt": "z" * 200}, True, 4096) == prompt_key("z" * 200, 4096)


# -- homes by rendezvous hashing ---------------------------------------------------------------


def test_every_process_ranks_alike_whatever_its_hash_seed() -> None:
    names = [f"r{i}" for i in range(6)]
    here = [
        [name for _, name in sorted((-rendezvous_score(k, n), n) for n in names)][:2]
        for k in KEYS[:50]
    ]
    code = (
        "import json,sys\n"
        "from llm.routing.affinity import rendezvous_score as s\n"
        f"names={names!r}\n"
        "keys=[f'key-{i}'.encode() for i in range(50)]\n"
        "print(json.dumps([[n for _,n in sorted((-s(k,n),n) for n in names)][:2] for k in keys]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    import json

    assert json.loads(out.stdout) == here


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 12), gone=st.integers(0, 11), homes=st.integers(1, 3))
def test_a_route_that_leaves_moves_only_the_keys_it_was_home_to(
    n: int, gone: int, homes: int
) -> None:
    balancer = balancer_of(n, clock=FakeClock())
    routes = list(balancer.routes.values())
    leaving = routes[gone % n]
    rest = [route for route in routes if route is not leaving]
    for key in KEYS[:300]:
        before = ranked(key, routes, homes)
        after = ranked(key, rest, homes)
        if leaving not in before:
            assert after == before  # untouched
        else:  # the others keep their order; the next-ranked route fills the gap
            assert after[: homes - 1] == tuple(r for r in before if r is not leaving)


def test_a_route_that_joins_takes_keys_only_for_itself() -> None:
    balancer = balancer_of(6, clock=FakeClock())
    routes = list(balancer.routes.values())
    old = routes[:5]
    newcomer = routes[5]
    moved = 0
    for key in KEYS:
        before, after = ranked(key, old, 1), ranked(key, routes, 1)
        if after != before:
            assert after == (newcomer,)
            moved += 1
    assert 0.10 < moved / len(KEYS) < 0.24  # about 1/6 of the keys


def test_first_homes_follow_the_weights() -> None:
    balancer = balancer_of(3, clock=FakeClock(), r0=1.0, r1=1.0, r2=2.0)
    routes = list(balancer.routes.values())
    firsts = Counter(ranked(key, routes, 1)[0].name for key in KEYS)
    assert 0.42 < firsts["r2"] / len(KEYS) < 0.58  # weight 2 of 4
    assert 0.18 < firsts["r0"] / len(KEYS) < 0.32


# -- going home, or not --------------------------------------------------------------------------


def _report(balancer: Balancer, name: str, running: float, waiting: float = 0.0) -> None:
    with balancer.lock:
        record_report(balancer.routes[name], balancer.clock(), waiting, running)


def test_calls_with_one_key_go_to_its_first_home_while_it_has_a_free_slot() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of(4, clock=clock)
    for name in balancer.routes:
        _report(balancer, name, running=4.0)  # 4 slots known everywhere, all idle now...
        _report(balancer, name, running=0.0)
    pool = balancer.pool("m")
    assert pool is not None
    key = b"tenant-a"
    home = ranked(key, pool.routes, 1)[0]
    chosen = []
    for _ in range(4):
        route = balancer.pick(pool, (), False, 32, key)
        assert route is not None
        balancer.dispatch(route, 32)
        chosen.append(route)
    assert chosen == [home] * 4  # its 4 slots
    assert home.home_calls == 4
    # full now, while the other routes have room: the next calls spill over
    spilled = balancer.pick(pool, (), False, 32, key)
    assert spilled is not None and spilled is not home
    assert home.home_spills == 1 or spilled.home_calls == 1  # spilled to home 2, or away


def _occupancy(route: RouteState, now: float) -> float:
    return estimated_load(route, now) / max(route.slots, 1.0)


def _pool_occupancy(pool: Pool, now: float) -> float:
    return sum(estimated_load(r, now) for r in pool.routes) / sum(r.slots for r in pool.routes)


def _measured(route: RouteState, token_time: float) -> None:
    route.latency_samples = WARMUP_SAMPLES
    route.token_time = token_time
    route.latency_ewma = 64 * token_time


def test_a_home_that_has_not_answered_yet_takes_calls_only_into_a_free_slot() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of(4, clock=clock, homes=1)
    for name in balancer.routes:
        _report(balancer, name, running=4.0, waiting=2.0)  # 4 slots, all busy, queues of 2
    pool = balancer.pool("m")
    assert pool is not None
    _many_keys_seen(balancer, pool)
    key = b"tenant-c"
    home = ranked(key, pool.routes, 1)[0]
    # measured, the home would take it within the load bound (all alike); unmeasured, it is
    # no home while it has no free slot: its speed, and so its capacity, is unknown
    calls, spills = home.home_calls, home.home_spills
    balancer.pick(pool, (), False, 32, key, 2048)  # the policy's choice, whichever it is
    assert (home.home_calls, home.home_spills) == (calls, spills + 1)
    for route in pool.routes:
        _measured(route, 0.01)
    assert balancer.pick(pool, (), False, 32, key, 2048) is home
    assert home.home_calls == calls + 1
    home.latency_samples = 0
    _report(balancer, home.name, running=3.0, waiting=0.0)  # a free slot now
    assert balancer.pick(pool, (), False, 32, key, 2048) is home
    assert home.home_calls == calls + 2


def _many_keys_seen(balancer: Balancer, pool: Pool, calls: int = 400) -> None:
    """``calls`` calls of 100 keys, each ended at once: the pool's key counts, no load."""
    for i in range(calls):
        route = balancer.pick(pool, (), False, 32, KEYS[1000 + i % 100], 2048)
        assert route is not None
        balancer.finished(route, balancer.dispatch(route, 32), 32)


def test_in_a_fleet_that_queues_everywhere_a_key_goes_home_within_the_load_bound() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of(4, clock=clock)  # load_bound 1.5
    for name in balancer.routes:
        _report(balancer, name, running=8.0, waiting=4.0)  # 8 slots, a queue of 4 each
        _measured(balancer.routes[name], 0.01)
    pool = balancer.pool("m")
    assert pool is not None
    _many_keys_seen(balancer, pool)  # tenant-b is one tenant of many, not a hot key
    key = b"tenant-b"
    first = ranked(key, pool.routes, 1)[0]
    # no free slot anywhere: the home still takes the call (its queue is no longer)
    before = first.home_calls
    route = balancer.pick(pool, (), False, 32, key, 2048)
    assert route is first and first.home_calls == before + 1
    for _ in range(30):
        route = balancer.pick(pool, (), False, 32, key, 2048)
        assert route is not None
        balancer.dispatch(route, 32)
    assert first.home_spills > 0  # it filled up to the bound, then the rest spilled
    # what the bound promises: no home pushed past 1.5 times the pool's occupancy (+ the
    # one call that decided it)
    now = clock()
    assert _occupancy(first, now) <= 1.5 * _pool_occupancy(pool, now) + 1 / 8
    assert _occupancy(first, now) > _pool_occupancy(pool, now)  # yet fuller than the rest


def test_a_hot_key_is_spread_over_the_whole_pool_once_it_is_most_of_the_calls() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of(4, clock=clock)
    for name in balancer.routes:
        _report(balancer, name, running=8.0)
        _report(balancer, name, running=0.0)
    pool = balancer.pool("m")
    assert pool is not None
    key = b"the-hot-one"
    for _ in range(HOT_MIN_CALLS):  # counted, each going home while it has room
        route = balancer.pick(pool, (), False, 32, key, 2048)
        assert route is not None
        balancer.finished(route, balancer.dispatch(route, 32), 32)
    homes_before = sum(r.home_calls for r in pool.routes)
    assert homes_before >= HOT_MIN_CALLS - 1
    for _ in range(32):  # every call has this key: the policy decides, over the pool
        route = balancer.pick(pool, (), False, 32, key, 2048)
        assert route is not None
        balancer.dispatch(route, 32)
    assert sum(r.home_calls for r in pool.routes) == homes_before
    loads = sorted(r.in_flight for r in pool.routes)
    assert loads[0] >= 6 and loads[-1] <= 10  # least load's spread, not two homes' queue


def test_a_rare_key_among_many_keeps_its_homes() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of(4, clock=clock)
    pool = balancer.pool("m")
    assert pool is not None
    for i in range(200):  # 200 calls of 100 keys: each 1 %
        route = balancer.pick(pool, (), False, 32, KEYS[i % 100], 2048)
        assert route is not None
        balancer.finished(route, balancer.dispatch(route, 32), 32)
    assert pool.keyed_calls == 200 and len(pool.key_calls) == 100
    key = KEYS[7]
    assert balancer.pick(pool, (), False, 32, key, 2048) is ranked(key, pool.routes, 1)[0]


def test_key_counts_decay_so_that_a_key_that_cooled_down_gets_its_homes_back() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of(4, clock=clock)
    pool = balancer.pool("m")
    assert pool is not None
    hot = b"was-hot"
    for i in range(DECAY * 3):
        key = hot if i < DECAY else KEYS[i % 1000]
        route = balancer.pick(pool, (), False, 32, key, 2048)
        assert route is not None
        balancer.finished(route, balancer.dispatch(route, 32), 32)
    assert pool.keyed_calls < DECAY  # halved as it went
    assert pool.key_calls[hot] < 0.1 * pool.keyed_calls  # its share faded from 100 %
    assert len(pool.key_calls) <= 1000  # keys that faded away are dropped
    assert balancer.pick(pool, (), False, 32, hot, 2048) is ranked(hot, pool.routes, 1)[0]


def test_a_slower_home_is_worth_it_for_a_long_prompt_only() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of(2, clock=clock, homes=1)  # spill_ratio 2
    pool = balancer.pool("m")
    assert pool is not None
    key = next(k for k in KEYS if ranked(k, pool.routes, 1)[0].name == "r0")
    r0, r1 = balancer.routes["r0"], balancer.routes["r1"]
    r0.token_time, r1.token_time = 0.04, 0.01  # the home is 4 times slower...
    assert balancer.pick(pool, (), False, 32, key, 2048) is r0  # ...but still warming up
    r0.latency_samples = r1.latency_samples = WARMUP_SAMPLES  # measured now
    assert balancer.pick(pool, (), False, 32, key, 2048) is r1  # 4x > spill_ratio
    r0.token_time = 0.018  # 1.8 times
    assert balancer.pick(pool, (), False, 32, key, 2048) is r0  # a long prompt: worth it
    assert balancer.pick(pool, (), False, 32, key, 1024) is r0  # from 1,024 tokens on
    assert balancer.pick(pool, (), False, 32, key, 512) is r1  # 512: up to 1.5x only
    assert balancer.pick(pool, (), False, 32, key, 0) is r1  # unknown: as fast or not at all
    r0.token_time = 0.01
    assert balancer.pick(pool, (), False, 32, key, 0) is r0  # as fast: home


def test_an_ejected_or_tried_home_hands_its_calls_to_the_next_ranked_route() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of(5, clock=clock, homes=1)
    pool = balancer.pool("m")
    assert pool is not None
    key = b"session-42"
    first, second = ranked(key, pool.routes, 2)
    assert balancer.pick(pool, (), False, 0, key) is first
    assert balancer.pick(pool, {first}, False, 0, key) is second  # a retry after `first`
    started = balancer.dispatch(first)
    balancer.failed(first, started, "boom")  # ejected
    assert balancer.pick(pool, (), False, 0, key) is second


def test_calls_without_a_key_draw_nothing_more_from_the_balancers_random_source() -> None:
    a = balancer_of(3, clock=FakeClock())
    b = Balancer(
        [route_config(f"r{i}") for i in range(3)],
        policy="least_load",
        health=QUIET,
        clock=FakeClock(),
        rng=random.Random(0),
    )
    assert a.rng.random() == b.rng.random()


# -- over real sockets -------------------------------------------------------------------------


def _provider(servers: list[FakeVLLM], **affinity: object) -> VLLMOpenAIProvider:
    routes = {
        f"r{i}": {"base_url": server.base_url, "model": "m", "timeout": 5}
        for i, server in enumerate(servers)
    }
    config = {"llm": {"routes": routes, "lb_policy": "least_load", "affinity": affinity}}
    provider = LLMFactory.create_provider("vllm_openai", config=config)
    assert isinstance(provider, VLLMOpenAIProvider)
    return provider


def _counts(servers: list[FakeVLLM]) -> list[int]:
    return [server.request_count for server in servers]


def test_a_sessions_calls_land_on_one_instance_sync_and_async() -> None:
    servers = [FakeVLLM("m").start() for _ in range(4)]
    provider = _provider(servers)
    try:
        for _ in range(6):
            provider.chat([{"role": "user", "content": "hi"}], session="user-7")
        after_sync = _counts(servers)
        assert sorted(after_sync) == [0, 0, 0, 6]

        async def calls() -> None:
            for _ in range(6):
                await provider.achat([{"role": "user", "content": "hi"}], session="user-7")
            await provider.aclose()  # its aiohttp session belongs to this loop

        asyncio.run(calls())
        counts = _counts(servers)
        assert sorted(counts) == [0, 0, 0, 12]
        assert counts.index(12) == after_sync.index(6)  # the same home, sync and async
        home = f"r{counts.index(12)}"
        assert provider.stats()[home]["affinity"]["home_calls"] == 12
    finally:
        provider.close()
        for server in servers:
            server.stop()


def test_an_sdk_call_takes_its_session_from_a_header_that_never_reaches_the_server() -> None:
    servers = [FakeVLLM("m").start() for _ in range(4)]
    provider = _provider(servers)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    try:
        with provider.http_client() as client:
            for _ in range(6):
                answer = client.post(
                    "http://llm-routes/v1/chat/completions",
                    json=body,
                    headers={SESSION_HEADER: "user-9"},
                )
                assert answer.status_code == 200
        assert sorted(_counts(servers)) == [0, 0, 0, 6]
        home = servers[_counts(servers).index(6)]
        # the same key as provider.chat(..., session="user-9"): the same home
        provider.chat([{"role": "user", "content": "hi"}], session="user-9")
        assert home.request_count == 7

        async def async_calls() -> None:
            async with provider.async_http_client() as client:
                for _ in range(3):
                    answer = await client.post(
                        "http://llm-routes/v1/chat/completions",
                        json=body,
                        headers={SESSION_HEADER: "user-9"},
                    )
                    assert answer.status_code == 200
            await provider.aclose()

        asyncio.run(async_calls())
        assert home.request_count == 10
        seen = [
            {k.lower() for k in r.headers}
            for r in home.requests
            if r.path.endswith("/chat/completions")
        ]
        assert seen and all(SESSION_HEADER.lower() not in headers for headers in seen)
    finally:
        provider.close()
        for server in servers:
            server.stop()


def test_by_prefix_sends_a_shared_system_prompt_home_and_spreads_distinct_ones() -> None:
    # equal speeds that measure as equal: 8 tokens of 2 ms each (no delay is all noise)
    servers = [FakeVLLM("m", token_delay=0.002, max_model_len=8192).start() for _ in range(4)]
    provider = _provider(servers, by_prefix=True, homes=1)
    try:
        for name in ("r0", "r1", "r2", "r3"):  # measured: the first answers carry the setup
            for _ in range(3):
                provider.chat([{"role": "user", "content": "warm up"}], route=name)
        start = _counts(servers)
        system = LONG_SYSTEM * 4  # 1,160 tokens or so: a home may cost up to spill_ratio
        for question in ("a", "b", "c", "d", "e"):
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ]
            provider.chat(messages)
        assert sorted(n - m for n, m in zip(_counts(servers), start, strict=True)) == [0, 0, 0, 5]
        for tenant in range(40):  # forty tenants, each with a system prompt of its own
            system = f"Tenant {tenant}. " + LONG_SYSTEM * 4
            provider.chat([{"role": "system", "content": system}, {"role": "user", "content": "q"}])
        assert min(n - m for n, m in zip(_counts(servers), start, strict=True)) >= 3  # spread
        with pytest.raises(InvalidRequestError, match="session must be a non-empty string"):
            provider.chat([{"role": "user", "content": "hi"}], session="")
    finally:
        provider.close()
        for server in servers:
            server.stop()


def test_a_pool_no_larger_than_the_homes_still_prefers_the_first_home() -> None:
    clock = FakeClock(10.0)
    balancer = balancer_of(2, clock=clock)  # homes 2: both routes are homes
    for name in balancer.routes:
        _report(balancer, name, running=4.0)
        _report(balancer, name, running=0.0)
    pool = balancer.pool("m")
    assert pool is not None
    _many_keys_seen(balancer, pool)
    key = b"a-tenant"
    first = ranked(key, pool.routes, 1)[0]
    chosen = []
    for _ in range(4):
        route = balancer.pick(pool, (), False, 32, key, 2048)
        assert route is not None
        balancer.dispatch(route, 32)
        chosen.append(route)
    assert chosen == [first] * 4  # its 4 slots, not least load's alternation
