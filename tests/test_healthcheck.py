"""The healthcheck command: end to end as a subprocess, and its pure parts in-process.

Routes point at fake vLLM servers on 127.0.0.1, at a port bound by nobody listening (connection
refused) or at a socket that listens but never answers (a hung server).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm.cli.healthcheck import (
    Report,
    _use_color,
    exit_code,
    fit_warnings,
    main,
    render_human,
    render_json,
    run_checks,
)
from llm.config import load_config, parse_config
from llm.factory import LLMFactory
from llm.probes.check import RouteCheck
from llm.testing import FakeVLLM

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "healthcheck_vllm.py"
ANSI = re.compile(r"\x1b\[")
SECRET = "sk-test-9f8e7d6c5b4a"
ROUTE_KEYS = {
    "name",
    "base_url",
    "model",
    "healthy",
    "latency_ms",
    "health_ms",
    "models_ms",
    "models",
    "max_model_len",
    "error",
    "warnings",
}


# -- helpers ----------------------------------------------------------------------------


@pytest.fixture
def fleet() -> Iterator[dict[str, FakeVLLM]]:
    servers = {
        "a": FakeVLLM("tiny", name="a").start(),
        "b": FakeVLLM("tiny", name="b").start(),
        "fb": FakeVLLM("small", name="fb", max_model_len=2048).start(),
    }
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A URL whose port is bound but not listening: connecting is refused, and no one else can
    take the port while the test runs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        sock.close()


@pytest.fixture
def hung_url() -> Iterator[str]:
    """A server that accepts connections (kernel backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        sock.close()


def route(url: str, model: str = "tiny", **extra: Any) -> dict[str, Any]:
    return {"base_url": url, "model": model, "timeout": 2, **extra}


def write_config(path: Path, routes: dict[str, dict[str, Any]], **llm: Any) -> Path:
    body: dict[str, Any] = {"routes": routes, "default_route": next(iter(routes))}
    body.update(llm)
    path.write_text(yaml.safe_dump({"llm": body}), encoding="utf-8")
    return path


def fleet_config(tmp_path: Path, fleet: dict[str, FakeVLLM], **extra_routes: Any) -> Path:
    routes = {
        "a": route(fleet["a"].base_url),
        "b": route(fleet["b"].base_url),
        **extra_routes,
        "fb": route(fleet["fb"].base_url, "small"),
    }
    return write_config(
        tmp_path / "routes.yaml", routes, fallback_route="fb", lb_policy="least_latency"
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LLM_CONFIG", "NO_COLOR", "VLLM_BASE_URL", "VLLM_MODEL", "VLLM_API_KEY")
    }
    env.update(extra)
    return env


def run_script(
    *args: str, cwd: Path, env: dict[str, str] | None = None, command: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(command or [sys.executable, str(SCRIPT)]), *args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in document["routes"]}


def check(name: str, healthy: bool, **fields: Any) -> RouteCheck:
    return RouteCheck(name, f"http://127.0.0.1:9/{name}/v1", "tiny", healthy, **fields)


def sample_report() -> Report:
    return Report(
        source="/etc/llm/config.yaml",
        default_route="a",
        fallback_route="fb",
        lb_policy="round_robin",
        checks=(
            check(
                "a",
                True,
                latency_ms=3.5,
                health_ms=1.5,
                models_ms=2.0,
                models=["tiny"],
                max_model_len=512,
            ),
            check("b", False, error="connection refused"),
            check(
                "fb",
                False,
                latency_ms=2.0,
                health_ms=1.0,
                models_ms=1.0,
                error="/health answered HTTP 503",
            ),
        ),
        checked_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        timeout=2.0,
    )


# -- end to end (subprocess) ------------------------------------------------------------


def test_all_healthy_json_has_the_exact_shape_and_exits_0(tmp_path, fleet):
    config = fleet_config(tmp_path, fleet)
    done = run_script("--config", str(config), "--json", "--timeout", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    document = json.loads(done.stdout)  # one document and nothing else on stdout
    assert set(document) == {"config", "routes", "summary", "checked_at"}
    assert document["config"] == {
        "source": str(config),
        "default_route": "a",
        "fallback_route": "fb",
        "lb_policy": "least_latency",
    }
    assert document["summary"] == {"healthy": 3, "total": 3}
    assert [entry["name"] for entry in document["routes"]] == ["a", "b", "fb"]
    for entry in document["routes"]:
        assert set(entry) == ROUTE_KEYS
        assert entry["healthy"] is True and entry["error"] is None
        assert isinstance(entry["base_url"], str) and isinstance(entry["model"], str)
        for key in ("latency_ms", "health_ms", "models_ms"):
            assert isinstance(entry[key], float) and entry[key] >= 0
        assert entry["latency_ms"] >= entry["health_ms"]
        assert entry["models"] == [entry["model"]]
    routes = by_name(document)
    assert routes["a"]["base_url"] == fleet["a"].base_url
    assert routes["a"]["max_model_len"] == 512 and routes["fb"]["max_model_len"] == 2048
    checked_at = datetime.fromisoformat(document["checked_at"].replace("Z", "+00:00"))
    assert checked_at.utcoffset() is not None
    assert abs((datetime.now(timezone.utc) - checked_at).total_seconds()) < 60


def test_a_route_that_is_down_makes_exit_1_and_says_connection_refused(
    tmp_path, fleet, refused_url
):
    config = fleet_config(tmp_path, fleet, dead=route(refused_url))
    done = run_script("--config", str(config), "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    assert document["summary"] == {"healthy": 3, "total": 4}
    dead = by_name(document)["dead"]
    assert dead["healthy"] is False and dead["error"] == "connection refused"
    assert dead["latency_ms"] is None and dead["models"] == []


def test_human_output_names_every_route_without_colour_when_piped(tmp_path, fleet, refused_url):
    config = fleet_config(tmp_path, fleet, dead=route(refused_url))
    done = run_script("--config", str(config), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    out = done.stdout
    for name, url in [
        ("a", fleet["a"].base_url),
        ("b", fleet["b"].base_url),
        ("fb", fleet["fb"].base_url),
        ("dead", refused_url),
    ]:
        assert re.search(rf"^[✅❌] {name}\b.*{re.escape(url)}$", out, re.MULTILINE), name
    assert "❌ dead  " in out and "connection refused" in out
    assert out.rstrip().endswith("3/4 routes healthy")
    assert str(config) in out and "least_latency" in out and "fallback fb" in out
    assert not ANSI.search(out) and not ANSI.search(done.stderr)


@pytest.mark.parametrize(
    ("routes", "llm", "key_path"),
    [
        (
            {"a": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}},
            {"lb_policy": "fastest"},
            "llm.lb_policy",
        ),
        ({"a": {"model": "m"}}, {}, "llm.routes.a.base_url"),
    ],
    ids=["unknown-policy", "missing-base-url"],
)
def test_config_error_exits_2_naming_the_key_path(tmp_path, routes, llm, key_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"llm": {"routes": routes, **llm}}), encoding="utf-8")
    done = run_script("--config", str(config), "--json", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"healthcheck: {key_path}: ")
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


def console_script() -> list[str]:
    path = Path(sys.executable).parent / "llm-healthcheck"
    if not path.exists():
        pytest.skip("llm-healthcheck is not installed (pip install -e .)")
    return [str(path)]


@pytest.mark.parametrize("entry", ["script", "console-script"])
def test_missing_config_file_exits_2_with_a_clear_message(tmp_path, entry):
    command = console_script() if entry == "console-script" else None
    done = run_script("--config", str(tmp_path / "nope.yaml"), cwd=tmp_path, command=command)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "healthcheck: " in done.stderr and "config file not found" in done.stderr
    assert "nope.yaml" in done.stderr and "Traceback" not in done.stderr
    # no --config, no $LLM_CONFIG and no ./config.yaml: the same, for the default path
    done = run_script(cwd=tmp_path, command=command)
    assert done.returncode == 2 and "config.yaml: config file not found" in done.stderr


def test_default_lookup_uses_llm_config_and_env_overrides(tmp_path, fleet, refused_url):
    # The file points the default route at a dead port; VLLM_BASE_URL moves it to a live one.
    config = write_config(tmp_path / "elsewhere.yaml", {"main": route(refused_url)})
    env = clean_env(LLM_CONFIG=str(config), VLLM_BASE_URL=fleet["b"].base_url)
    done = run_script("--json", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(done.stdout)
    assert document["config"]["source"] == str(config)
    assert by_name(document)["main"]["base_url"] == fleet["b"].base_url
    human = run_script(cwd=tmp_path, env=env)
    assert "LLM_CONFIG, VLLM_BASE_URL" in human.stdout and human.returncode == 0


def test_watch_prints_a_round_per_interval_and_exits_130_on_ctrl_c(tmp_path, fleet):
    config = fleet_config(tmp_path, fleet)
    for mode in ("json", "human"):
        out_path = tmp_path / f"watch-{mode}.out"
        flags = ["--json"] if mode == "json" else []
        with out_path.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), "--config", str(config), "--watch", "0.2", *flags],
                cwd=tmp_path,
                env=clean_env(),
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                deadline = time.monotonic() + 10
                marker = '"summary"' if mode == "json" else "routes healthy"
                while out_path.read_text().count(marker) < 4 and time.monotonic() < deadline:
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    time.sleep(0.05)
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate(timeout=5)
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err
        text = out_path.read_text()
        if mode == "json":
            lines = text.splitlines()
            assert len(lines) >= 4
            documents = [json.loads(line) for line in lines]  # JSON Lines: one per line
            assert all(d["summary"] == {"healthy": 3, "total": 3} for d in documents)
            stamps = [d["checked_at"] for d in documents]
            assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        else:
            rounds = re.findall(r"^──── round (\d+) · \S+Z ─+$", text, re.MULTILINE)
            assert rounds[:4] == ["1", "2", "3", "4"]
            assert text.count("3/3 routes healthy") >= 4 and not ANSI.search(text)


# -- the checks (in-process) ------------------------------------------------------------


def report_for(tmp_path: Path, routes: dict[str, dict[str, Any]], timeout: float = 1.0) -> Report:
    return run_checks(load_config(write_config(tmp_path / "c.yaml", routes)), timeout)


def test_a_route_serving_another_model_is_unhealthy(tmp_path, fleet):
    report = report_for(
        tmp_path, {"a": route(fleet["a"].base_url), "x": route(fleet["fb"].base_url)}
    )
    assert exit_code(report) == 1 and (report.healthy, report.total) == (1, 2)
    wrong = report.checks[1]
    assert wrong.healthy is False and wrong.models == ["small"]
    assert wrong.error == "model 'tiny' not served (serves: small)"


def test_a_base_url_without_v1_is_named_as_requested(tmp_path, fleet):
    # /health beside the base_url's /v1 only; the models list at base_url + /models
    report = report_for(
        tmp_path,
        {"bare": route(fleet["a"].url), "prefixed": route(fleet["b"].url + "/openai/v1")},
    )
    bare, prefixed = report.checks
    assert bare.health_ms is not None  # GET /health answered
    hint = "(check the route's base_url: vLLM's ends in /v1)"
    assert bare.error == f"/models answered HTTP 404 {hint}"
    assert prefixed.error == "/openai/health answered HTTP 404"


def test_a_window_too_small_for_params_max_tokens_is_warned_of(tmp_path, fleet):
    routes = {
        "a": route(fleet["a"].base_url),  # the fake's window: 512
        "fb": route(fleet["fb"].base_url, "small"),  # 2048
        "said": route(fleet["b"].base_url, max_model_len=8192),  # the config's word wins
    }
    path = write_config(tmp_path / "c.yaml", routes, params={"max_tokens": 1500})
    report = run_checks(load_config(path), 1.0)
    assert exit_code(report) == 0  # a warning, not a failure
    assert report.warnings == {
        "a": (
            "params.max_tokens 1500 >= max_model_len 512: the server refuses every call "
            "(lower params.max_tokens, or start the server with a larger --max-model-len)",
        ),
        "fb": (
            "params.max_tokens 1500 leaves 548 tokens of max_model_len 2048 for the prompt: "
            "a call with a longer prompt is refused",
        ),
    }
    assert "warning  params.max_tokens 1500 >= max_model_len 512" in render_human(report, False)
    document = json.loads(render_json(report))
    assert [entry["warnings"] for entry in document["routes"]] == [
        list(report.warnings["a"]),
        list(report.warnings["fb"]),
        [],
    ]


@pytest.mark.parametrize(
    ("params", "window", "warned"),
    [
        ({"max_tokens": 1024}, 2048, False),  # 1024 + a typical prompt of 1024 fit exactly
        ({"max_tokens": 1025}, 2048, True),
        ({"max_completion_tokens": 2048}, 2048, True),
        ({}, 16, False),  # no max_tokens in the config: each call says its own
        ({"max_tokens": 4096}, None, False),  # window unknown (a failed check)
    ],
)
def test_fit_warnings_rule(params, window, warned):
    config = parse_config(
        {"llm": {"routes": {"r": {"base_url": "http://h/v1", "model": "m"}}, "params": params}}
    )
    check = RouteCheck("r", "http://h/v1", "m", healthy=True, max_model_len=window)
    warnings = fit_warnings(config, [check])
    assert bool(warnings) is warned
    if warned:
        assert warnings["r"][0].startswith(f"params.{next(iter(params))} ")


def test_a_hung_route_is_reported_after_the_timeout(tmp_path, fleet, hung_url):
    started = time.monotonic()
    report = report_for(tmp_path, {"a": route(fleet["a"].base_url), "hung": route(hung_url)}, 0.5)
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 3.0  # the routes are checked at once, each bounded by the timeout
    ok, hung = report.checks
    assert ok.healthy is True
    assert hung.healthy is False and hung.error == "no answer within 0.5s"
    assert exit_code(report) == 1


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (
            (200, b"<html><body>Sign in</body></html>", "text/html; charset=utf-8"),
            "/v1/models answered something that is not a model list (text/html)",
        ),
        (
            (200, b'{"object": "list", "data": ', "application/json"),
            "/v1/models answered something that is not a model list (application/json)",
        ),
        ((200, b"", None), "/v1/models answered something that is not a model list (empty body)"),
        (
            (200, b'{"object": "list", "data": {"id": "tiny"}}', "application/json"),
            "/v1/models answered something that is not a model list (application/json)",
        ),
        ((502, b"<html>bad gateway</html>", "text/html"), "/v1/models answered HTTP 502"),
    ],
    ids=["html", "malformed-json", "empty", "data-not-a-list", "502"],
)
def test_garbage_from_v1_models_is_reported(tmp_path, fleet, answer, error):
    fleet["a"].answer_get("/v1/models", *answer)
    report = report_for(tmp_path, {"a": route(fleet["a"].base_url)})
    (only,) = report.checks
    assert only.healthy is False and only.error == error
    assert only.health_ms is not None and only.models_ms is not None
    fleet["a"].answer_get("/v1/models", None)
    assert report_for(tmp_path, {"a": route(fleet["a"].base_url)}).checks[0].healthy is True


def test_health_503_is_reported(tmp_path, fleet):
    fleet["b"].answer_get("/health", 503)
    report = report_for(
        tmp_path, {"a": route(fleet["a"].base_url), "b": route(fleet["b"].base_url)}
    )
    assert [c.healthy for c in report.checks] == [True, False]
    assert report.checks[1].error == "/health answered HTTP 503"
    assert exit_code(report) == 1


def test_an_api_key_never_appears_in_any_output(tmp_path, capsys, refused_url):
    with FakeVLLM("tiny", name="locked", api_key=SECRET) as locked:
        host = locked.base_url.removeprefix("http://")
        routes = {
            "keyed": route(locked.base_url, api_key=SECRET),  # healthy: the key is sent
            "keyless": route(locked.base_url),  # 401
            "dead": route(refused_url, api_key=SECRET, headers={"X-Token": SECRET}),
            # its user:password@ is sent as Authorization: Basic (the locked server wants Bearer)
            "userinfo": route(f"http://user:{SECRET}@{host}"),
        }
        config = write_config(tmp_path / "keys.yaml", routes)
        outputs = []
        for flags in (["--json"], []):
            assert main(["--config", str(config), "--timeout", "1", *flags]) == 1
            captured = capsys.readouterr()
            outputs.append(captured.out + captured.err)
        assert any(r.headers.get("authorization") == f"Bearer {SECRET}" for r in locked.requests)
        basic = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
        assert any(r.headers.get("authorization") == basic for r in locked.requests)
    document = json.loads(outputs[0])
    routes_out = by_name(document)
    assert routes_out["keyed"]["healthy"] is True
    assert (
        routes_out["keyless"]["error"] == "/v1/models answered HTTP 401 (check the route's api_key)"
    )
    assert routes_out["dead"]["error"] == "connection refused"
    assert routes_out["userinfo"]["base_url"] == f"http://{host}"  # taken out at load
    for text in outputs:
        assert SECRET not in text and "Bearer" not in text and basic not in text
    assert SECRET[-8:] not in "".join(outputs)


def test_route_check_times_each_request(tmp_path, fleet):
    provider = LLMFactory.create_provider(
        "vllm_openai", config={"llm": {"routes": {"a": route(fleet["a"].base_url)}}}
    )
    with provider:
        entry = provider.health(timeout=1)["a"]
    assert entry["healthy"] is True and entry["state"] == "healthy"
    assert 0 <= entry["health_ms"] <= entry["latency_ms"]
    assert 0 <= entry["models_ms"] <= entry["latency_ms"]


async def test_async_checks_give_the_same_reasons(refused_url, fleet):
    fleet["b"].answer_get("/health", 503)
    config = {
        "llm": {
            "routes": {
                "a": route(fleet["a"].base_url),
                "b": route(fleet["b"].base_url),
                "dead": route(refused_url),
            }
        }
    }
    async with LLMFactory.create_provider("vllm_openai", config=config) as provider:
        checks = await provider.ahealth_checks(timeout=1)
    assert [c.error for c in checks] == [None, "/health answered HTTP 503", "connection refused"]
    assert checks[0].health_ms is not None and checks[0].models_ms is not None


@pytest.mark.filterwarnings("ignore:`verify=<str>` is deprecated:DeprecationWarning")
def test_a_bad_ca_bundle_is_a_failed_check_not_an_exception(tmp_path):
    missing = str(tmp_path / "no-ca.pem")
    report = report_for(tmp_path, {"tls": route("https://127.0.0.1:9/v1", verify=missing)})
    (only,) = report.checks
    assert only.healthy is False
    assert only.error is not None and only.error.startswith(f"cannot use verify {missing!r}")


# -- pure parts -------------------------------------------------------------------------


def test_render_human_colour_on_and_off():
    report = sample_report()
    plain = render_human(report, color=False)
    coloured = render_human(report, color=True)
    assert not ANSI.search(plain)
    assert ANSI.search(coloured)
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain
    assert "✅ a (default)  http://127.0.0.1:9/a/v1" in plain
    assert "❌ b  http://127.0.0.1:9/b/v1" in plain and "❌ fb (fallback)" in plain
    assert "connection refused" in plain and "/health answered HTTP 503" in plain
    assert "max_model_len 512" in plain and "3.5 ms (/health 1.5 ms, /v1/models 2.0 ms)" in plain
    assert "default a, fallback fb, policy round_robin, 3 routes" in plain
    assert plain.splitlines()[-1] == "1/3 routes healthy"


def test_render_human_neutralises_escape_sequences_from_servers():
    report = sample_report()
    evil = check("x", False, models=["\x1b[2Jm"], error="bad \x1b]0;title\x07 answer")
    text = render_human(Report(**{**_fields(report), "checks": (evil,)}), color=False)
    assert "\x1b" not in text and "\x07" not in text


def _fields(report: Report) -> dict[str, Any]:
    return {name: getattr(report, name) for name in Report.__dataclass_fields__}


def test_render_json_and_exit_code():
    report = sample_report()
    document = json.loads(render_json(report))
    assert document["summary"] == {"healthy": 1, "total": 3}
    assert document["checked_at"] == "2025-01-02T03:04:05.000Z"
    assert by_name(document)["b"]["error"] == "connection refused"
    assert "\n" not in render_json(report, indent=None)
    assert exit_code(report) == 1
    healthy = Report(**{**_fields(report), "checks": report.checks[:1]})
    assert exit_code(healthy) == 0


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_colour_only_on_a_terminal_without_no_color():
    assert _use_color(_Stream(True), {}) is True  # type: ignore[arg-type]
    assert _use_color(_Stream(False), {}) is False  # type: ignore[arg-type]
    assert _use_color(_Stream(True), {"NO_COLOR": "1"}) is False  # type: ignore[arg-type]
    assert _use_color(_Stream(True), {"TERM": "dumb"}) is False  # type: ignore[arg-type]


@pytest.mark.parametrize("flags", [["--timeout", "0"], ["--timeout", "soon"], ["--watch", "-1"]])
def test_bad_flags_exit_2(flags, capsys):
    with pytest.raises(SystemExit) as exc_info:
        main(flags)
    assert exc_info.value.code == 2
    assert "usage:" in capsys.readouterr().err
