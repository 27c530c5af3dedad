"""Discovered instances: addresses, joining after a check, draining, and calls that never fail.

How this works
--------------
The pure parts first: an instances file's lines, a member's route config, and the balancer's
``set_members`` (join, retire, drain, plans that held an old pool) on a fake clock. Then fake
vLLM servers on one port of several loopback addresses (127.0.0.2, 127.0.0.3 ... are all
loopback) stand for a headless Service's pods, and an injected resolver for its DNS name; the
last test adds and removes instances while 64 calls are in flight.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock

from llm.config import Discovery, RetryConfig, RouteConfig, parse_config
from llm.config.members import member, parse_instances
from llm.errors import ConfigError, NoRouteError
from llm.factory import LLMFactory
from llm.providers.vllm_openai import VLLMOpenAIProvider
from llm.routing import Balancer
from llm.routing.plan import plan_call
from llm.testing import FakeVLLM

SERVICE = "http://vllm.default.svc:{port}/v1"


# -- addresses and members -----------------------------------------------------------------------


def test_an_instances_file_gives_addresses_and_names_each_line_it_cannot_read() -> None:
    text = (
        "# pods\n10.0.0.1\n10.0.0.2:9000  # a comment\n[::1]:8001\nhttp://h.example:81/v1\n\n"
        "not a host\nhttp://user:secret@x:1/v1\n10.0.0.1\n10.0.0.3:99999\n"
    )
    addresses, problems = parse_instances(text, 8000)
    assert addresses == [
        ("10.0.0.1", 8000),
        ("10.0.0.2", 9000),
        ("::1", 8001),
        ("h.example", 81),
    ]
    assert len(problems) == 3
    assert problems[0].startswith("line 7: not an address: 'not a host'")
    assert "secret" not in " ".join(problems)
    assert "line 10" in problems[2]


def test_a_member_is_the_template_at_its_address_named_alike_everywhere() -> None:
    template = RouteConfig(
        "fleet", "https://vllm.svc:8443/v1", "m", api_key="k", discover=Discovery(dns=True)
    )
    one = member(template, "10.1.2.3", 8443)
    assert one.name == "fleet@10.1.2.3:8443" and one.base_url == "https://10.1.2.3:8443/v1"
    assert one.group == "fleet" and one.discover is None and one.api_key == "k"
    assert member(template, "fd00::1", 8443).base_url == "https://[fd00::1]:8443/v1"


def test_the_config_reads_discover_and_refuses_what_cannot_work() -> None:
    def routes(**fleet: Any) -> dict[str, Any]:
        return {
            "llm": {
                "routes": {
                    "fleet": {"base_url": "http://svc:8000/v1", "model": "m", **fleet},
                    "one": {"base_url": "http://one:8000/v1", "model": "m"},
                }
            }
        }

    assert parse_config(routes(discover="dns")).routes["fleet"].discover == Discovery(dns=True)
    by_file = parse_config(routes(discover={"file": "/etc/pods", "interval": 1}))
    assert by_file.routes["fleet"].discover == Discovery(file="/etc/pods", interval=1.0)
    for bad, fragment in (
        ({"dns": True, "file": "x"}, "exactly one of dns: true or file"),
        ({}, "exactly one of"),
        ("DNS", "'dns' or a mapping"),
        ({"dns": True, "every": 3}, "unknown key"),
        ({"dns": True, "interval": 0}, "interval"),
    ):
        with pytest.raises(ConfigError, match=fragment):
            parse_config(routes(discover=bad))
    data = routes(discover="dns")
    data["llm"]["fallback_route"] = "fleet"
    data["llm"]["default_route"] = "one"
    with pytest.raises(ConfigError, match="the fallback must be one server"):
        parse_config(data)


# -- the balancer's members ------------------------------------------------------------------------


def group_balancer(clock: FakeClock) -> tuple[Balancer, RouteConfig]:
    template = RouteConfig("fleet", "http://svc:8000/v1", "m", discover=Discovery(dns=True))
    balancer = Balancer([template], clock=clock, rng=random.Random(0))
    return balancer, template


def test_members_join_and_leave_the_pool_and_a_retired_one_drains() -> None:
    clock = FakeClock(10.0)
    balancer, template = group_balancer(clock)
    assert balancer.pool("m") is None and balancer.routes == {}
    a, b, c = (member(template, f"10.0.0.{i}", 8000) for i in (1, 2, 3))
    assert balancer.set_members("fleet", [a, b]) == ([a.name, b.name], [])
    pool = balancer.pool("m")
    assert pool is not None and {r.name for r in pool.routes} == {a.name, b.name}
    busy = balancer.routes[a.name]
    started = balancer.dispatch(busy)
    assert balancer.set_members("fleet", [b, c]) == ([c.name], [a.name])
    assert pool.stale
    new_pool = balancer.pool("m")
    assert new_pool is not None and {r.name for r in new_pool.routes} == {b.name, c.name}
    assert balancer.stats()[a.name]["state"] == "draining"  # its call is still in flight
    assert balancer.stats()[c.name]["discovered_by"] == "fleet"
    for _ in range(20):
        assert balancer.pick(new_pool) is not busy
    balancer.succeeded(busy, started, 0.1)
    assert a.name not in balancer.routes  # drained: gone
    assert balancer.set_members("fleet", [b, c]) == ([], [])  # no change, no rebuild
    assert balancer.pool("m") is new_pool


def test_a_plan_that_held_the_old_pool_takes_the_new_one_on_its_next_attempt() -> None:
    clock = FakeClock(10.0)
    balancer, template = group_balancer(clock)
    a, b = member(template, "10.0.0.1", 8000), member(template, "10.0.0.2", 8000)
    balancer.set_members("fleet", [a])
    plan = plan_call(balancer, route=None, model="m", retry=RetryConfig(), deadline=10.0)
    first = plan.next()
    assert first is not None and first.name == a.name
    started = plan.start(first)
    balancer.set_members("fleet", [b])  # a leaves while its attempt is out
    plan.failed(first, started, _error(first.name), "connect_error")
    second = plan.next()
    assert second is not None and second.name == b.name


def _error(route: str) -> Any:
    from llm.errors import RouteConnectionError

    return RouteConnectionError("connection refused", route=route)


def test_no_instance_yet_is_a_no_route_error_saying_what_discovery_saw() -> None:
    balancer, _ = group_balancer(FakeClock())
    balancer.group_status["fleet"] = "lookup failed: svc did not resolve"
    with pytest.raises(NoRouteError, match="route 'fleet' discovers its instances: lookup failed"):
        plan_call(balancer, route=None, model="m", retry=RetryConfig(), deadline=1.0)
    with pytest.raises(NoRouteError, match="route 'fleet' has no instance now"):
        plan_call(balancer, route="fleet", model="m", retry=RetryConfig(), deadline=1.0)


# -- over real sockets ---------------------------------------------------------------------


def free_port(hosts: list[str]) -> int:
    """A port free on every one of ``hosts`` (the same port on each: a Service's pods)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
            return int(port)
        except OSError:
            continue
    raise RuntimeError("no port free on every host")


HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]


@pytest.fixture
def pods() -> Iterator[dict[str, FakeVLLM]]:
    port = free_port(HOSTS)
    servers = {
        host: FakeVLLM("m", host=host, port=port, latency=0.05, max_model_len=2048).start()
        for host in HOSTS[:3]
    }
    servers["port"] = port  # type: ignore[assignment]
    try:
        yield servers
    finally:
        for host in HOSTS[:3]:
            servers[host].stop()


class Dns:
    """A resolver whose answer a test sets (and that can fail)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.fail = False
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if self.fail:
            raise socket.gaierror(-2, "Name or service not known")
        return list(self.addresses)


def provider_for(port: int, dns: Dns, **extra: Any) -> VLLMOpenAIProvider:
    routes = {
        "fleet": {
            "base_url": SERVICE.format(port=port),
            "model": "m",
            "timeout": 5,
            "discover": {"dns": True, "interval": 0.2},
        }
    }
    config = {"llm": {"routes": routes, **extra}}
    provider = LLMFactory.create_provider("vllm_openai", config=config, resolver=dns)
    assert isinstance(provider, VLLMOpenAIProvider)
    return provider


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_instances_join_after_a_passing_check_and_leave_when_their_record_goes(
    pods: dict[str, Any],
) -> None:
    port = pods["port"]
    dns = Dns("127.0.0.2", "127.0.0.3", "127.0.0.5")  # .5 has no server: it never joins
    provider = provider_for(port, dns)
    try:
        assert dns.asked[0] == ("vllm.default.svc", port)
        stats = provider.stats()
        names = set(stats)
        assert names == {f"fleet@127.0.0.2:{port}", f"fleet@127.0.0.3:{port}"}  # at once
        assert {(s["max_model_len"], s["max_model_len_source"]) for s in stats.values()} == {
            (2048, "models")  # their join checks read /v1/models
        }
        health = provider.health()
        assert set(health) == names and all(h["max_model_len"] == 2048 for h in health.values())
        for _ in range(6):
            provider.chat([{"role": "user", "content": "hi"}])
        assert pods["127.0.0.2"].request_count + pods["127.0.0.3"].request_count == 6
        dns.addresses = ["127.0.0.3", "127.0.0.4"]
        wait_for(lambda: f"fleet@127.0.0.4:{port}" in provider.stats())
        wait_for(lambda: f"fleet@127.0.0.2:{port}" not in provider.stats())
        before = pods["127.0.0.2"].request_count
        for _ in range(6):
            provider.chat([{"role": "user", "content": "hi"}], route="fleet")
        assert pods["127.0.0.2"].request_count == before
        assert pods["127.0.0.4"].request_count > 0
        dns.fail = True  # a DNS hiccup changes nothing
        time.sleep(0.5)
        assert set(provider.stats()) == {f"fleet@127.0.0.3:{port}", f"fleet@127.0.0.4:{port}"}
        assert "lookup failed" in provider.balancer.group_status["fleet"]
        dns.fail = False
        dns.addresses = []  # resolved, and empty: the Service has no ready pod
        wait_for(lambda: provider.stats() == {})
        with pytest.raises(NoRouteError, match="no instance serves model 'm' now"):
            provider.chat([{"role": "user", "content": "hi"}])
    finally:
        provider.close()


def test_an_instances_file_is_read_again_when_it_changes(
    pods: dict[str, Any], tmp_path: Path
) -> None:
    port = pods["port"]
    listing = tmp_path / "instances"
    listing.write_text(f"127.0.0.2:{port}\n")
    routes = {
        "fleet": {
            "base_url": "http://pods.invalid:1/v1",
            "model": "m",
            "timeout": 5,
            "discover": {"file": str(listing), "interval": 0.1},
        }
    }
    provider = LLMFactory.create_provider("vllm_openai", config={"llm": {"routes": routes}})
    try:
        assert set(provider.stats()) == {f"fleet@127.0.0.2:{port}"}
        listing.write_text(f"127.0.0.3:{port}\n127.0.0.4:{port}\n# 127.0.0.2 went\n")
        wait_for(
            lambda: set(provider.stats()) == {f"fleet@127.0.0.3:{port}", f"fleet@127.0.0.4:{port}"}
        )
        assert provider.chat([{"role": "user", "content": "hi"}])
    finally:
        provider.close()


def test_adding_and_removing_instances_under_64_calls_in_flight_fails_none(
    pods: dict[str, Any],
) -> None:
    port = pods["port"]
    dns = Dns("127.0.0.2", "127.0.0.3")
    provider = provider_for(port, dns, lb_policy="least_load")
    failures: list[BaseException] = []
    served: list[str] = []

    async def one(index: int) -> None:
        try:
            result = await provider.achat_completion([{"role": "user", "content": f"q{index}"}])
            served.append(result.route)
        except Exception as exc:  # noqa: BLE001 - every failure is the finding
            failures.append(exc)

    async def storm() -> None:
        calls = [asyncio.create_task(one(i)) for i in range(64)]
        await asyncio.sleep(0.02)
        dns.addresses = ["127.0.0.3", "127.0.0.4"]  # .4 joins, .2 retires: 64 in flight
        more = []
        for round_ in range(8):  # and calls keep coming while the change lands
            more += [asyncio.create_task(one(100 + 8 * round_ + i)) for i in range(8)]
            await asyncio.sleep(0.1)
        await asyncio.gather(*calls, *more)
        await provider.aclose()

    try:
        asyncio.run(asyncio.wait_for(storm(), 30))
        assert failures == []
        assert len(served) == 128
        assert f"fleet@127.0.0.4:{port}" in served  # the newcomer took calls
        assert f"fleet@127.0.0.2:{port}" in served  # the retired one finished its own
        stats = provider.stats()
        assert f"fleet@127.0.0.2:{port}" not in stats  # and was dropped once drained
    finally:
        provider.close()


def test_a_thread_safe_membership_change_under_sync_calls(pods: dict[str, Any]) -> None:
    port = pods["port"]
    dns = Dns("127.0.0.2")
    provider = provider_for(port, dns)
    errors: list[BaseException] = []

    def caller() -> None:
        for i in range(15):
            try:
                provider.chat([{"role": "user", "content": f"s{i}"}])
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for addresses in (["127.0.0.2", "127.0.0.3"], ["127.0.0.3"], ["127.0.0.3", "127.0.0.4"]):
            dns.addresses = addresses
            time.sleep(0.3)
        for thread in threads:
            thread.join(timeout=30)
        assert errors == []
    finally:
        provider.close()
