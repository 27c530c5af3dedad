"""The benchmark command: pure report arithmetic, and end to end against fake servers."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm.cli.bench import Progress, progress_line, settings_from, target_source
from llm.cli.bench_report import distribution_ms, percentile, summarize
from llm.cli.loadtest import BenchSettings, CallRecord
from llm.config import parse_config
from llm.errors import Attempt, ConfigError
from llm.testing import FakeVLLM

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "scripts" / "bench_vllm.py")


# -- pure ------------------------------------------------------------------------------------


def test_percentile_interpolates_and_hits_the_ends():
    values = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 50.0
    assert percentile(values, 50) == 30.0
    assert percentile(values, 95) == pytest.approx(48.0)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_distribution_is_in_milliseconds():
    dist = distribution_ms([0.010, 0.030, 0.020])
    assert dist == {"min": 10.0, "max": 30.0, "mean": 20.0, "median": 20.0, "p95": 29.0,
                    "p99": 29.8}
    assert distribution_ms([]) is None


CONFIG = parse_config(
    {
        "llm": {
            "routes": {
                "a": {"base_url": "http://127.0.0.1:1/v1", "model": "m"},
                "b": {"base_url": "http://127.0.0.1:2/v1", "model": "m"},
                "fb": {"base_url": "http://127.0.0.1:3/v1", "model": "small"},
            },
            "fallback_route": "fb",
        }
    },
    environ={},
)


def ok(route: str, *failed_first: Attempt, latency: float = 0.02) -> CallRecord:
    attempts = (*failed_first, Attempt(route, "ok", 200, None, latency))
    return CallRecord(route, latency, attempts, completion_tokens=8)


def test_summary_counts_add_up_and_name_what_happened():
    refused = Attempt("a", "connect_error", None, "connection refused")
    busy = Attempt("b", "status", 503, "busy")
    records = [
        ok("a"),
        ok("a"),
        ok("b", refused),  # saved by failover
        ok("fb", refused, busy),  # saved by the fallback
        CallRecord(None, 0.5, (refused, busy), error_kind="AllRoutesFailedError: ServerError 503"),
    ]
    settings = BenchSettings(concurrency=2, requests=5, config_path="x.yaml")
    report = summarize(records, 2.0, settings, CONFIG)

    summary = report["summary"]
    assert summary["total_requests"] == 5
    assert summary["successful_requests"] == 4 and summary["failed_requests"] == 1
    assert summary["success_rate"] == 0.8
    assert summary["requests_per_second"] == 2.5 and summary["successful_rps"] == 2.0
    assert report["benchmark_config"]["routes"] == {
        "a": "http://127.0.0.1:1/v1",
        "b": "http://127.0.0.1:2/v1",
        "fb": "http://127.0.0.1:3/v1",
    }
    routes = report["routes"]
    assert {name: entry["requests"] for name, entry in routes.items()} == {"a": 2, "b": 1, "fb": 1}
    assert sum(entry["share"] for entry in routes.values()) == pytest.approx(1.0)
    assert routes["a"]["first_attempts"] == 5
    retries = report["retries"]
    assert retries["extra_attempts"] == 1 + 2 + 1
    assert retries["calls_retried"] == 3
    assert retries["failovers"] == 2
    assert retries["answered_by_fallback"] == 1
    assert retries["failed_attempts"] == {"a": {"connect_error": 3}, "b": {"status 503": 2}}
    assert report["errors"] == {"AllRoutesFailedError: ServerError 503": 1}
    assert report["tokens"]["completion_tokens"] == 32
    assert report["tokens"]["tokens_per_second"] == 16.0
    assert report["latency_ms"]["max"] == 20.0  # only successful calls count
    assert report["ttft_ms"] is None  # not a streamed run


def test_summary_of_a_single_base_url_names_it():
    single = parse_config(
        {"llm": {"routes": {"vllm": {"base_url": "http://h:8000/v1", "model": "m"}}}}, environ={}
    )
    report = summarize([ok("vllm")], 1.0, BenchSettings(requests=1), single)
    assert report["benchmark_config"]["base_url"] == "http://h:8000/v1"
    assert "routes" not in report["benchmark_config"]


def test_progress_line():
    assert progress_line(5, 10, 1, 2.0, width=10) == (
        "[#####.....] 5/10      2.5 req/s  failed 1"
    )
    assert progress_line(10, 10, 0, 1.0, width=4).startswith("[####] 10/10")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_only_on_a_tty():
    tty = FakeTTY()
    progress = Progress(2, tty)
    progress(ok("a"))
    progress(CallRecord(None, 0.1, (), error_kind="X"))
    progress.finish()
    assert "2/2" in tty.getvalue() and "failed 1" in tty.getvalue()
    assert tty.getvalue().endswith("\n")
    pipe = io.StringIO()
    quiet = Progress(2, pipe)
    quiet(ok("a"))
    quiet.finish()
    assert pipe.getvalue() == "" and quiet.done == 1


def namespace(**overrides: Any) -> argparse.Namespace:
    values: dict[str, Any] = {
        "concurrency": None,
        "requests": None,
        "stream": False,
        "max_tokens": 128,
        "prompt": "p",
        "api": "async",
        "config": None,
    }
    values.update(overrides)
    return argparse.Namespace(**values)


def test_settings_flags_override_the_environment():
    environ = {"CONC": "8", "NREQ": "40", "VLLM_BASE": "http://h:1/v1", "VLLM_MODEL": "m"}
    settings = settings_from(namespace(), environ)
    assert (settings.concurrency, settings.requests) == (8, 40)
    assert (settings.base_url, settings.model) == ("http://h:1/v1", "m")
    settings = settings_from(namespace(concurrency=3, requests=9), environ)
    assert (settings.concurrency, settings.requests) == (3, 9)
    defaults = settings_from(namespace(), {})
    assert (defaults.concurrency, defaults.requests, defaults.model) == (64, 256, None)


def test_the_server_variable_is_the_configs_name_or_the_seeds():
    """VLLM_BASE_URL, as the config reads it; the seed's VLLM_BASE still works."""
    new, old = {"VLLM_BASE_URL": "http://u:1/v1"}, {"VLLM_BASE": "http://s:1/v1"}
    assert settings_from(namespace(), new).base_url == "http://u:1/v1"
    assert settings_from(namespace(), old).base_url == "http://s:1/v1"
    assert settings_from(namespace(), {**new, **old}).base_url == "http://u:1/v1"


def test_the_target_is_found_as_the_healthcheck_finds_the_config(tmp_path):
    local = tmp_path / "config.yaml"
    server = {"VLLM_BASE_URL": "http://u:1/v1"}
    # no config.yaml here: one server, at $VLLM_BASE_URL or the default
    assert target_source(None, {}, str(tmp_path)) is None
    assert target_source(None, server, str(tmp_path)) is None
    local.write_text("llm: {}")
    assert target_source(None, {}, str(tmp_path)) == str(local)
    assert target_source(None, server, str(tmp_path)) is None  # the variable names a server
    chosen = {"LLM_CONFIG": "/etc/llm.yaml", **server}  # the config, overridden by the variable
    assert target_source(None, chosen, str(tmp_path)) == "/etc/llm.yaml"
    assert target_source("given.yaml", chosen, str(tmp_path)) == "given.yaml"


@pytest.mark.parametrize(
    ("overrides", "environ", "named"),
    [
        ({}, {"CONC": "lots"}, "CONC"),
        ({}, {"NREQ": "0"}, "NREQ"),
        ({"concurrency": -1}, {}, "--concurrency"),
        ({"max_tokens": 0}, {}, "--max-tokens"),
    ],
)
def test_bad_settings_name_the_setting(overrides, environ, named):
    with pytest.raises(ConfigError) as caught:
        settings_from(namespace(**overrides), environ)
    assert str(caught.value).startswith(named)


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture
def fleet() -> Iterator[dict[str, FakeVLLM]]:
    """Two healthy instances, one that is down from the start, and a fallback."""
    servers = {
        "a": FakeVLLM("tiny", name="a", latency=0.005),
        "b": FakeVLLM("tiny", name="b", latency=0.005),
        "dead": FakeVLLM("tiny", name="dead"),
        "fb": FakeVLLM("small", name="fb"),
    }
    try:
        for server in servers.values():
            server.start()
        servers["dead"].down()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def write_config(folder: Path, servers: dict[str, FakeVLLM]) -> Path:
    config = {
        "llm": {
            "routes": {
                name: {"base_url": server.base_url, "model": server.model, "timeout": 5}
                for name, server in servers.items()
            },
            "default_route": "a",
            "fallback_route": "fb",
            "params": {"max_tokens": 8},
            "retry": {"backoff_initial": 0.01, "backoff_max": 0.05},
        }
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    unset = ("CONC", "NREQ", "VLLM_BASE", "VLLM_BASE_URL")
    environ = {k: v for k, v in os.environ.items() if k not in unset}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
    )


@pytest.mark.parametrize("api", ["async", "sync"])
def test_bench_through_a_config_with_a_dead_route(fleet, tmp_path, api):
    config = write_config(tmp_path, fleet)
    out = tmp_path / "report.json"
    done = bench("--config", str(config), "--requests", "60", "--concurrency", "8",
                 "--api", api, "--json-out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress bar when stderr is not a terminal
    report = json.loads(done.stdout)
    assert json.loads(out.read_text()) == report
    assert set(report) == {
        "benchmark_config", "summary", "latency_ms", "ttft_ms", "tokens", "routes", "retries",
        "errors",
    }
    assert set(report["summary"]) == {
        "total_requests", "successful_requests", "failed_requests", "success_rate",
        "total_time_seconds", "requests_per_second", "successful_rps",
    }
    assert set(report["latency_ms"]) == {"min", "max", "mean", "median", "p95", "p99"}
    assert report["ttft_ms"] is None and report["errors"] == {}

    assert report["benchmark_config"]["num_requests"] == 60
    assert report["benchmark_config"]["concurrency"] == 8
    assert set(report["benchmark_config"]["routes"]) == {"a", "b", "dead", "fb"}
    summary = report["summary"]
    assert summary["total_requests"] == 60
    assert summary["successful_requests"] + summary["failed_requests"] == 60
    assert summary["failed_requests"] == 0  # the dead route costs nothing
    routes = report["routes"]
    assert sum(entry["requests"] for entry in routes.values()) == 60
    assert routes["dead"]["requests"] == 0
    assert routes["a"]["requests"] > 0 and routes["b"]["requests"] > 0
    assert report["retries"]["failed_attempts"]["dead"]["connect_error"] >= 1
    assert report["retries"]["failovers"] >= 1
    served = fleet["a"].request_count + fleet["b"].request_count + fleet["fb"].request_count
    assert served == 60
    latency = report["latency_ms"]
    assert latency["min"] <= latency["median"] <= latency["p95"] <= latency["p99"]
    assert latency["p99"] <= latency["max"]


def test_bench_streams_report_time_to_first_token(fleet, tmp_path):
    config = write_config(tmp_path, fleet)
    done = bench("--config", str(config), "--requests", "30", "--concurrency", "4", "--stream")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    ttft, latency = report["ttft_ms"], report["latency_ms"]
    assert ttft is not None and 0 < ttft["median"] <= latency["median"]
    assert report["tokens"]["completion_tokens"] > 0  # counted from the stream's usage


def test_bench_with_every_route_down_counts_failures_and_exits_1(tmp_path):
    with FakeVLLM("tiny") as server:
        url = server.base_url
    done = bench("--requests", "6", "--concurrency", "3",
                 env={"VLLM_BASE": url, "VLLM_MODEL": "tiny"})
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["summary"]["failed_requests"] == 6
    assert sum(report["errors"].values()) == 6
    assert all("RouteConnectionError" in kind for kind in report["errors"])
    assert report["latency_ms"] is None


def test_bench_asks_the_server_for_its_model(tmp_path):
    with FakeVLLM("served-model") as server:
        done = bench("--requests", "4", env={"VLLM_BASE": server.base_url})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["benchmark_config"]["model"] == "served-model"
        paths = [request.path for request in server.requests]
        assert paths.count("/v1/models") == 1 and paths.count("/v1/chat/completions") == 4
        assert all(r.json["model"] == "served-model" for r in server.requests if r.json)


@pytest.mark.parametrize(
    ("config_text", "named"),
    [
        ("llm:\n  routes: {a: {model: m}}\n", "llm.routes.a.base_url"),
        ("llm:\n  routes: {a: {base_url: 'http://h/v1', model: m}}\n  lb_policy: fastest\n",
         "llm.lb_policy"),
    ],
)
def test_bench_config_error_exits_2_naming_the_key(tmp_path, config_text, named):
    path = tmp_path / "config.yaml"
    path.write_text(config_text)
    done = bench("--config", str(path))
    assert done.returncode == 2
    assert named in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_bench_unreachable_server_without_model_exits_2(tmp_path):
    with FakeVLLM("tiny") as server:
        url = server.base_url
    done = bench(env={"VLLM_BASE": url})
    assert done.returncode == 2
    assert "VLLM_MODEL" in done.stderr and "Traceback" not in done.stderr


def test_bench_bad_json_out_path_fails_before_running(tmp_path):
    done = bench("--json-out", str(tmp_path / "missing" / "r.json"),
                 env={"VLLM_BASE": "http://127.0.0.1:9/v1", "VLLM_MODEL": "m"})
    assert done.returncode == 2
    assert "r.json" in done.stderr and done.stdout == ""


@pytest.mark.parametrize("api", ["async", "sync"])
def test_bench_stops_cleanly_on_ctrl_c(api):
    with FakeVLLM("tiny", latency=0.05) as server:
        process = subprocess.Popen(
            [sys.executable, SCRIPT, "--requests", "100000", "--concurrency", "4", "--api", api],
            env={**os.environ, "VLLM_BASE": server.base_url, "VLLM_MODEL": "tiny"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while server.request_count < 8:  # it is running
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=30)  # a bound, not a speed claim
        finally:
            process.kill()
    assert process.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    assert out == ""
