"""Tests for llm.config: loading, interpolation, env overrides and every validation error."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import pickle
from pathlib import Path
from typing import Any

import pytest

from llm.config import (
    KNOWN_POLICIES,
    HealthConfig,
    LLMConfig,
    RetryConfig,
    RouteConfig,
    load_config,
    parse_config,
)
from llm.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

SEED_YAML = """\
llm:
  provider: vllm_openai
  routes:
    gpt20_a: {base_url: http://127.0.0.1:8002/v1, model: gpt_oss_20b, timeout: 60}
    gpt20_b: {base_url: http://127.0.0.1:8202/v1, model: gpt_oss_20b, timeout: 60}
    tiny_qwen: {base_url: http://127.0.0.1:8001/v1, model: qwen2_5_0_5b, timeout: 60}
  default_route: gpt20_a
  fallback_route: tiny_qwen
  lb_policy: least_latency
  params: {temperature: 0.0, max_tokens: 1024, top_p: 1.0, timeout: 60, max_retries: 3}
"""

SECRET = "sk-VERY-SECRET-123"
ENV = {"HOST": "10.0.0.5", "PORT": "9000", "EMPTY_VAR": "", "T": "abc"}

A = {"base_url": "http://127.0.0.1:8002/v1", "model": "gpt_oss_20b"}
B = {"base_url": "http://127.0.0.1:8202/v1", "model": "gpt_oss_20b"}
Q = {"base_url": "http://127.0.0.1:8001/v1", "model": "qwen"}
DROP = object()


def cfg(**section: Any) -> dict[str, Any]:
    """A valid config (routes gpt20_a, gpt20_b, tiny_qwen) with ``section`` keys replaced."""
    llm: dict[str, Any] = {
        "routes": {"gpt20_a": dict(A), "gpt20_b": dict(B), "tiny_qwen": dict(Q)},
        "default_route": "gpt20_a",
        "fallback_route": "tiny_qwen",
    }
    for key, value in section.items():
        if value is DROP:
            llm.pop(key, None)
        else:
            llm[key] = value
    return {"llm": llm}


def route(**fields: Any) -> dict[str, Any]:
    """A valid config whose route gpt20_a has ``fields`` replaced."""
    data = cfg()
    target = data["llm"]["routes"]["gpt20_a"]
    for key, value in fields.items():
        if value is DROP:
            target.pop(key, None)
        else:
            target[key] = value
    return data


def params(**values: Any) -> dict[str, Any]:
    return cfg(params=values)


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> LLMConfig:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ={} if environ is None else environ)


def config_error(data: Any, tmp_path: Path, environ: dict[str, str] | None = None) -> ConfigError:
    env = ENV if environ is None else environ
    with pytest.raises(ConfigError) as info:
        if isinstance(data, str):
            load_text(tmp_path, data, env)
        else:
            parse_config(data, environ=env)
    return info.value


# --------------------------------------------------------------------------- loading


def test_seed_config_loads_with_values_and_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, SEED_YAML)
    assert config.provider == "vllm_openai"
    assert list(config.routes) == ["gpt20_a", "gpt20_b", "tiny_qwen"]
    a = config.route("gpt20_a")
    assert a == RouteConfig(
        name="gpt20_a", base_url="http://127.0.0.1:8002/v1", model="gpt_oss_20b", timeout=60.0
    )
    assert a.api_key == "EMPTY" and a.weight == 1.0 and a.send_model is True
    assert a.verify is True and dict(a.headers) == {}
    assert a.server_url == "http://127.0.0.1:8002"
    assert config.default_route == "gpt20_a"
    assert config.fallback_route == "tiny_qwen"
    assert config.lb_policy == "least_latency"
    assert dict(config.params) == {"temperature": 0.0, "max_tokens": 1024, "top_p": 1.0}
    assert config.timeout == 60.0
    assert config.connect_timeout == 10.0
    assert config.deadline == 120.0
    assert config.retry == RetryConfig(max_retries=3)
    assert config.health == HealthConfig()
    assert config.default_model == "gpt_oss_20b"
    assert config.source == str(tmp_path / "config.yaml")


def test_repo_config_yaml_loads() -> None:
    config = load_config(REPO / "config.yaml", environ={})
    assert list(config.routes) == ["gpt20_a", "gpt20_b", "tiny_qwen"]
    assert all("127.0.0.1" in r.base_url for r in config.routes.values())
    assert config.fallback_route == "tiny_qwen"
    assert config.lb_policy == "least_load"
    assert config.load.polls(config.lb_policy) == 1.0 and config.load.max_age == 3.0
    assert config.pool() == ("gpt20_a", "gpt20_b")


def test_inner_mapping_is_accepted() -> None:
    config = parse_config(cfg()["llm"], environ={})
    assert config.default_route == "gpt20_a"
    assert config.source is None


def test_defaults_of_a_minimal_config() -> None:
    config = parse_config({"llm": {"routes": {"only": dict(A)}}}, environ={})
    assert config.provider == "vllm_openai"
    assert config.default_route == "only"
    assert config.fallback_route is None
    assert config.lb_policy == "round_robin" == KNOWN_POLICIES[0]
    assert dict(config.params) == {}
    assert config.retry == RetryConfig() and config.health == HealthConfig()


def test_route_timeout_defaults_to_params_timeout() -> None:
    data = cfg(params={"timeout": 30})
    data["llm"]["routes"]["gpt20_b"]["timeout"] = 5
    config = parse_config(data, environ={})
    assert config.timeout == 30.0
    assert config.route("gpt20_a").timeout == 30.0
    assert config.route("gpt20_b").timeout == 5.0


def test_deadline_and_connect_timeout_defaults() -> None:
    config = parse_config(params(timeout=4), environ={})
    assert config.deadline == 8.0
    assert config.connect_timeout == 4.0
    config = parse_config(params(timeout=25, deadline=30, connect_timeout=2), environ={})
    assert (config.timeout, config.deadline, config.connect_timeout) == (25.0, 30.0, 2.0)


def test_max_response_bytes_default_bound_and_not_sent() -> None:
    assert parse_config(params(), environ={}).max_response_bytes == 32 * 1024 * 1024
    config = parse_config(params(max_response_bytes=4096), environ={})
    assert config.max_response_bytes == 4096 and "max_response_bytes" not in config.params
    with pytest.raises(ConfigError) as caught:
        parse_config(params(max_response_bytes=100), environ={})
    assert caught.value.key_path == "llm.params.max_response_bytes"
    assert ">= 1024" in str(caught.value)


def test_control_keys_leave_params_and_extra_body_is_merged() -> None:
    data = params(
        temperature=0.2,
        timeout=10,
        connect_timeout=3,
        deadline=50,
        max_retries=5,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}, "vendor_flag": [1, 2]},
    )
    config = parse_config(data, environ={})
    assert dict(config.params) == {
        "temperature": 0.2,
        "chat_template_kwargs": {"enable_thinking": False},
        "vendor_flag": [1, 2],
    }
    assert config.retry.max_retries == 5
    assert config.deadline == 50.0


def test_strings_are_accepted_for_numbers_and_bools() -> None:
    data = route(timeout="12.5", weight="3", send_model="False", verify="false")
    data["llm"]["params"] = {"max_tokens": "256", "temperature": "0.7", "logprobs": "TRUE"}
    config = parse_config(data, environ={})
    a = config.route("gpt20_a")
    assert (a.timeout, a.weight, a.send_model, a.verify) == (12.5, 3.0, False, False)
    assert dict(config.params) == {"max_tokens": 256, "temperature": 0.7, "logprobs": True}


def test_route_options() -> None:
    data = route(
        base_url="https://example.com/v1/",
        api_key=SECRET,
        weight=2,
        headers={"X-Team": "search"},
        send_model=False,
        verify="/etc/ssl/ca.pem",
    )
    a = parse_config(data, environ={}).route("gpt20_a")
    assert a.base_url == "https://example.com/v1"
    assert a.server_url == "https://example.com"
    assert a.api_key == SECRET
    assert a.weight == 2.0
    assert dict(a.headers) == {"X-Team": "search"}
    assert a.send_model is False
    assert a.verify == "/etc/ssl/ca.pem"


def test_server_url_without_v1() -> None:
    a = parse_config(route(base_url="http://h:1/api"), environ={}).route("gpt20_a")
    assert a.server_url == a.base_url == "http://h:1/api"


def test_retry_and_health_sections() -> None:
    data = cfg(
        retry={"backoff_initial": 0.5, "backoff_max": 4, "retry_after_max": 0},
        health={
            "cooldown": 2,
            "max_cooldown": 30,
            "check_interval": 15,
            "reprobe_interval": 3,
            "ewma_alpha": 1,
        },
    )
    config = parse_config(data, environ={})
    assert config.retry == RetryConfig(3, 0.5, 4.0, 0.0)
    assert config.health == HealthConfig(2.0, 30.0, 15.0, 3.0, 1.0)


def test_dependent_defaults_follow_their_minimum() -> None:
    config = parse_config(cfg(retry={"backoff_initial": 5}, health={"cooldown": 90}), environ={})
    assert config.retry.backoff_max == 5.0
    assert config.health.max_cooldown == 90.0


def test_null_optional_sections_read_as_empty() -> None:
    config = parse_config(cfg(params=None, retry=None, health=None), environ={})
    assert config.retry == RetryConfig() and dict(config.params) == {}


def test_pool_excludes_fallback_and_keeps_file_order() -> None:
    data = cfg()
    routes = data["llm"]["routes"]
    routes["tiny_b"] = dict(Q)
    routes["gpt20_c"] = dict(A)
    data["llm"]["routes"] = {
        k: routes[k] for k in ("gpt20_b", "tiny_qwen", "tiny_b", "gpt20_c", "gpt20_a")
    }
    config = parse_config(data, environ={})
    assert config.pool() == ("gpt20_b", "gpt20_c", "gpt20_a")
    assert config.pool("gpt_oss_20b") == config.pool()
    assert config.pool("qwen") == ("tiny_b",)
    assert config.pool("nope") == ()


def test_config_is_frozen_and_mappings_are_read_only() -> None:
    config = parse_config(route(headers={"X-A": "1"}), environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.timeout = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.routes["x"] = config.route("gpt20_a")  # type: ignore[index]
    with pytest.raises(TypeError):
        config.params["temperature"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        config.route("gpt20_a").headers["X-B"] = "2"  # type: ignore[index]
    with pytest.raises(KeyError):
        config.route("missing")


def test_direct_construction_freezes_mappings_and_pickles() -> None:
    headers = {"X-A": "1"}
    r = RouteConfig(name="r", base_url="http://h/v1", model="m", headers=headers)
    headers["X-B"] = "2"
    assert dict(r.headers) == {"X-A": "1"}
    assert hash(r) == hash(RouteConfig(name="r", base_url="http://h/v1", model="m"))
    config = parse_config(cfg(), environ={})
    assert pickle.loads(pickle.dumps(config)) == config
    assert pickle.loads(pickle.dumps(r)) == r
    assert isinstance(hash(config), int)


def test_parse_config_does_not_modify_its_input() -> None:
    data = route(base_url="http://${HOST}/v1")
    before = copy.deepcopy(data)
    parse_config(data, environ={"HOST": "h", "VLLM_MODEL": "x", "VLLM_API_KEY": "k"})
    assert data == before


# --------------------------------------------------------------------------- interpolation


def test_interpolation() -> None:
    data = route(
        base_url="http://${HOST}:${PORT:-8000}/v1",
        model="${MODEL:-gpt_oss_20b}",
        api_key="${EMPTY_VAR:-fallback-key}",
        timeout="${PORT}",
        headers={"X-Lit": "$${NOT_A_VAR}", "X-Plain": "${HOST}"},
    )
    data["llm"]["params"] = {"stop": ["${HOST}", "end"], "extra_body": {"tag": "${PORT}"}}
    config = parse_config(data, environ=ENV)
    a = config.route("gpt20_a")
    assert a.base_url == "http://10.0.0.5:9000/v1"
    assert a.model == "gpt_oss_20b"
    assert a.api_key == "fallback-key"  # ":-" also applies to an empty variable
    assert a.timeout == 9000.0
    assert dict(a.headers) == {"X-Lit": "${NOT_A_VAR}", "X-Plain": "10.0.0.5"}
    assert config.params["stop"] == ["10.0.0.5", "end"]
    assert config.params["tag"] == "9000"


def test_interpolation_of_a_set_but_empty_variable_without_default() -> None:
    config = parse_config(route(headers={"X": "a${EMPTY_VAR}b"}), environ=ENV)
    assert config.route("gpt20_a").headers["X"] == "ab"


def test_interpolation_uses_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_TEST_HOST", "envhost")
    for name in ("VLLM_BASE_URL", "VLLM_MODEL", "VLLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    config = parse_config(route(base_url="http://${LLM_TEST_HOST}/v1"))
    assert config.route("gpt20_a").base_url == "http://envhost/v1"


# --------------------------------------------------------------------------- env overrides


def test_vllm_base_url_and_model_override_the_default_route() -> None:
    env = {"VLLM_BASE_URL": "http://other:9/v1/", "VLLM_MODEL": "llama"}
    config = parse_config(cfg(default_route="gpt20_b"), environ=env)
    b = config.route("gpt20_b")
    assert (b.base_url, b.model) == ("http://other:9/v1", "llama")
    assert config.route("gpt20_a").base_url == A["base_url"]
    assert config.default_model == "llama"
    assert config.pool() == ("gpt20_b",)


def test_overrides_apply_to_first_route_when_no_default_route() -> None:
    config = parse_config(cfg(default_route=DROP), environ={"VLLM_MODEL": "llama"})
    assert config.route("gpt20_a").model == "llama"


def test_vllm_api_key_fills_routes_without_one() -> None:
    data = cfg()
    data["llm"]["routes"]["gpt20_b"]["api_key"] = "explicit"
    config = parse_config(data, environ={"VLLM_API_KEY": SECRET})
    assert config.route("gpt20_a").api_key == SECRET
    assert config.route("gpt20_b").api_key == "explicit"
    assert config.route("tiny_qwen").api_key == SECRET
    assert SECRET not in repr(config)


def test_empty_override_variables_are_ignored() -> None:
    env = {"VLLM_BASE_URL": "", "VLLM_MODEL": "", "VLLM_API_KEY": ""}
    config = parse_config(cfg(), environ=env)
    assert config.route("gpt20_a") == parse_config(cfg(), environ={}).route("gpt20_a")


def test_bad_override_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(cfg(), environ={"VLLM_BASE_URL": "ftp://x"})
    assert info.value.key_path == "llm.routes.gpt20_a.base_url"
    assert "set from $VLLM_BASE_URL" in str(info.value)


# --------------------------------------------------------------------------- files


def test_llm_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.yaml"
    path.write_text(SEED_YAML, encoding="utf-8")
    config = load_config(environ={"LLM_CONFIG": str(path)})
    assert config.source == str(path)
    assert config.fallback_route == "tiny_qwen"


def test_default_path_is_config_yaml_in_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.yaml").write_text(SEED_YAML, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert load_config(environ={}).source == "config.yaml"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(str(path))
    assert "not found" in message and "LLM_CONFIG" in message
    assert info.value.key_path is None


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path, environ={})


def test_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    text = SEED_YAML.replace("timeout: 60, max_retries", "timeout: -1, max_retries")
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert info.value.key_path == "llm.params.timeout"
    assert str(info.value).startswith("llm.params.timeout: expected a positive number, found -1")
    assert str(tmp_path / "config.yaml") in str(info.value)


# --------------------------------------------------------------------------- every error

ERROR_CASES: list[tuple[str, Any, str | None, str]] = [
    # whole document (YAML text is written to a file and loaded)
    ("yaml-syntax", "llm:\n  routes:\n    a: b: c\n", None, "invalid YAML at line 3, column"),
    ("yaml-unclosed", "llm:\n  routes: [\n", None, "invalid YAML at line 3"),
    ("yaml-bad-indent", "llm:\n  a: 1\n b: 2\n", None, "line 3, column 2"),
    ("empty-file", "", None, "config file is empty"),
    ("comments-only", "# nothing\n", None, "config file is empty"),
    ("top-level-list", "- a\n- b\n", None, "expected a mapping with an 'llm' key"),
    ("top-level-scalar", "42\n", None, "found 42"),
    ("duplicate-key", "llm:\n  routes:\n    a: {}\n    a: {}\n", None, "duplicate key 'a'"),
    (
        "top-level-none",
        None,
        None,
        "config: expected a mapping with an 'llm' key at the top level, found null",
    ),
    # top level
    ("top-unknown", {"lm": {}}, "lm", "unknown key; did you mean 'llm'? (allowed: llm)"),
    ("top-extra", {**cfg(), "logging": 1}, "logging", "unknown key"),
    ("top-missing-llm", {}, "llm", "missing required key"),
    ("llm-not-mapping", {"llm": [1]}, "llm", "expected a mapping, found a list"),
    ("llm-null", {"llm": None}, "llm", "expected a mapping, found null"),
    # llm section
    ("llm-unknown", cfg(default_rout="x"), "llm.default_rout", "did you mean 'default_route'?"),
    ("provider-type", cfg(provider=5), "llm.provider", "expected a non-empty string, found 5"),
    ("provider-empty", cfg(provider=""), "llm.provider", "found an empty string"),
    ("routes-missing", cfg(routes=DROP), "llm.routes", "missing required key"),
    ("routes-empty", cfg(routes={}), "llm.routes", "expected a non-empty mapping"),
    ("routes-list", cfg(routes=[A]), "llm.routes", "found a list"),
    ("route-name-int", cfg(routes={1: A}), "llm.routes.1", "non-empty string as the route name"),
    ("route-name-empty", cfg(routes={"": A}), "llm.routes.", "found an empty string"),
    (
        "route-not-mapping",
        cfg(routes={"gpt20_a": A["base_url"], "tiny_qwen": Q}),
        "llm.routes.gpt20_a",
        "expected a mapping, found 'http",
    ),
    # routes
    ("route-no-base-url", route(base_url=DROP), "llm.routes.gpt20_a.base_url", "missing required"),
    ("route-no-model", route(model=DROP), "llm.routes.gpt20_a.model", "missing required key"),
    (
        "route-unknown",
        route(base_ur="x"),
        "llm.routes.gpt20_a.base_ur",
        "unknown key; did you mean 'base_url'? (allowed: api_key, base_url, discover, "
        "headers, max_model_len, model, send_model, timeout, verify, weight)",
    ),
    ("route-url-key", route(url="x"), "llm.routes.gpt20_a.url", "did you mean 'base_url'?"),
    (
        "url-no-scheme",
        route(base_url="127.0.0.1:8000/v1"),
        "llm.routes.gpt20_a.base_url",
        "no scheme",
    ),
    (
        "url-ftp",
        route(base_url="ftp://h/v1"),
        "llm.routes.gpt20_a.base_url",
        "expected an http:// or https:// URL with a host, found 'ftp://h/v1'",
    ),
    ("url-no-host", route(base_url="http:///v1"), "llm.routes.gpt20_a.base_url", "with a host"),
    ("url-only-scheme", route(base_url="http://"), "llm.routes.gpt20_a.base_url", "with a host"),
    ("url-bad-port", route(base_url="http://h:99999/v1"), "llm.routes.gpt20_a.base_url", "port"),
    ("url-space", route(base_url="http://h st/v1"), "llm.routes.gpt20_a.base_url", "with a host"),
    ("url-type", route(base_url=8000), "llm.routes.gpt20_a.base_url", "found 8000"),
    ("model-empty", route(model=""), "llm.routes.gpt20_a.model", "found an empty string"),
    ("model-type", route(model=7), "llm.routes.gpt20_a.model", "expected a non-empty string"),
    (
        "timeout-negative",
        route(timeout=-5),
        "llm.routes.gpt20_a.timeout",
        "expected a positive number, found -5",
    ),
    ("timeout-zero", route(timeout=0), "llm.routes.gpt20_a.timeout", "found 0"),
    ("timeout-string", route(timeout="abc"), "llm.routes.gpt20_a.timeout", "found 'abc'"),
    ("timeout-bool", route(timeout=True), "llm.routes.gpt20_a.timeout", "found a bool (true)"),
    ("timeout-null", route(timeout=None), "llm.routes.gpt20_a.timeout", "found null"),
    ("timeout-inf", route(timeout=float("inf")), "llm.routes.gpt20_a.timeout", "found inf"),
    ("timeout-list", route(timeout=[1]), "llm.routes.gpt20_a.timeout", "found a list"),
    ("weight-zero", route(weight=0), "llm.routes.gpt20_a.weight", "expected a positive number"),
    ("weight-bool", route(weight=False), "llm.routes.gpt20_a.weight", "found a bool (false)"),
    ("api-key-type", route(api_key=12345), "llm.routes.gpt20_a.api_key", "found an integer"),
    ("api-key-empty", route(api_key=""), "llm.routes.gpt20_a.api_key", "found an empty string"),
    ("headers-type", route(headers=["a"]), "llm.routes.gpt20_a.headers", "found a list"),
    (
        "header-value-int",
        route(headers={"X-N": 5}),
        "llm.routes.gpt20_a.headers.X-N",
        "expected a string (quote it in YAML), found an integer",
    ),
    ("header-name", route(headers={"": "v"}), "llm.routes.gpt20_a.headers.", "header name"),
    ("send-model-str", route(send_model="yes"), "llm.routes.gpt20_a.send_model", "found 'yes'"),
    ("send-model-int", route(send_model=1), "llm.routes.gpt20_a.send_model", "true or false"),
    ("verify-int", route(verify=0), "llm.routes.gpt20_a.verify", "CA bundle"),
    ("verify-empty", route(verify=""), "llm.routes.gpt20_a.verify", "found an empty string"),
    # default / fallback / policy
    (
        "default-missing",
        cfg(default_route="gpt20"),
        "llm.default_route",
        "expected a route name (one of: gpt20_a, gpt20_b, tiny_qwen), found 'gpt20'; "
        "did you mean 'gpt20_a'?",
    ),
    ("default-type", cfg(default_route=5), "llm.default_route", "found 5"),
    ("fallback-missing", cfg(fallback_route="tiny"), "llm.fallback_route", "one of: gpt20_a"),
    (
        "fallback-is-default",
        cfg(fallback_route="gpt20_a"),
        "llm.fallback_route",
        "expected a route other than default_route, found 'gpt20_a'",
    ),
    (
        "policy-typo",
        cfg(lb_policy="least_latncy"),
        "llm.lb_policy",
        "did you mean 'least_latency'?",
    ),
    (
        "policy-unknown",
        cfg(lb_policy="random"),
        "llm.lb_policy",
        "one of: round_robin, least_latency",
    ),
    ("policy-type", cfg(lb_policy=["round_robin"]), "llm.lb_policy", "found a list"),
    # params
    ("params-type", cfg(params=[1]), "llm.params", "expected a mapping, found a list"),
    (
        "params-unknown",
        params(temprature=1),
        "llm.params.temprature",
        "did you mean 'temperature'?",
    ),
    ("params-unknown-advice", params(foo_bar=1), "llm.params.foo_bar", "under extra_body"),
    ("params-model", params(model="m"), "llm.params.model", "the model is set per route"),
    ("params-timeout", params(timeout=-1), "llm.params.timeout", "expected a positive number"),
    ("params-timeout-bool", params(timeout=True), "llm.params.timeout", "found a bool"),
    ("params-connect-timeout", params(connect_timeout=0), "llm.params.connect_timeout", "found 0"),
    ("params-deadline", params(deadline=-3), "llm.params.deadline", "positive number, found -3"),
    ("max-retries-negative", params(max_retries=-1), "llm.params.max_retries", "an integer >= 0"),
    ("max-retries-float", params(max_retries=1.5), "llm.params.max_retries", "found 1.5"),
    ("max-retries-bool", params(max_retries=False), "llm.params.max_retries", "found a bool"),
    ("temperature-negative", params(temperature=-0.1), "llm.params.temperature", "a number >= 0"),
    ("temperature-string", params(temperature="hot"), "llm.params.temperature", "found 'hot'"),
    ("top-p-zero", params(top_p=0), "llm.params.top_p", "a number in (0, 1], found 0"),
    ("top-p-high", params(top_p=1.5), "llm.params.top_p", "found 1.5"),
    ("max-tokens-zero", params(max_tokens=0), "llm.params.max_tokens", "a positive integer"),
    ("max-tokens-float", params(max_tokens=10.5), "llm.params.max_tokens", "found 10.5"),
    ("max-tokens-bool", params(max_tokens=True), "llm.params.max_tokens", "found a bool (true)"),
    ("n-zero", params(n=0), "llm.params.n", "a positive integer, found 0"),
    ("seed-string", params(seed="abc"), "llm.params.seed", "expected an integer, found 'abc'"),
    ("stop-type", params(stop=5), "llm.params.stop", "a string or a list of strings"),
    ("stop-item", params(stop=["a", 1]), "llm.params.stop[1]", "expected a string, found 1"),
    ("logprobs-type", params(logprobs="maybe"), "llm.params.logprobs", "true or false"),
    ("response-format", params(response_format="json"), "llm.params.response_format", "mapping"),
    ("params-nan", params(temperature=float("nan")), "llm.params.temperature", "found nan"),
    (
        "params-not-json",
        params(chat_template_kwargs={"when": datetime.date(2024, 1, 1)}),
        "llm.params.chat_template_kwargs.when",
        "expected a JSON value (string, number, bool, null, list or mapping), found a date",
    ),
    (
        "extra-body-not-json",
        params(extra_body={"when": datetime.date(2024, 1, 1)}),
        "llm.params.extra_body.when",
        "expected a JSON value",
    ),
    ("extra-body-type", params(extra_body=[1]), "llm.params.extra_body", "expected a mapping"),
    (
        "extra-body-conflict",
        params(temperature=0, extra_body={"temperature": 1}),
        "llm.params.extra_body.temperature",
        "also set as llm.params.temperature",
    ),
    # retry
    ("retry-type", cfg(retry=[1]), "llm.retry", "expected a mapping"),
    ("retry-unknown", cfg(retry={"backof_max": 1}), "llm.retry.backof_max", "'backoff_max'?"),
    ("retry-max-retries", cfg(retry={"max_retries": 1}), "llm.retry.max_retries", "in llm.params"),
    ("backoff-initial", cfg(retry={"backoff_initial": 0}), "llm.retry.backoff_initial", "positive"),
    (
        "backoff-max",
        cfg(retry={"backoff_initial": 0.5, "backoff_max": 0.1}),
        "llm.retry.backoff_max",
        "expected a number >= backoff_initial (0.5), found 0.1",
    ),
    ("retry-after-max", cfg(retry={"retry_after_max": -1}), "llm.retry.retry_after_max", ">= 0"),
    # health
    ("health-type", cfg(health="on"), "llm.health", "expected a mapping, found 'on'"),
    ("health-unknown", cfg(health={"cooldwn": 1}), "llm.health.cooldwn", "'cooldown'?"),
    ("cooldown-zero", cfg(health={"cooldown": 0}), "llm.health.cooldown", "a positive number"),
    (
        "max-cooldown",
        cfg(health={"cooldown": 10, "max_cooldown": 5}),
        "llm.health.max_cooldown",
        "expected a number >= cooldown (10), found 5",
    ),
    ("check-interval", cfg(health={"check_interval": -1}), "llm.health.check_interval", ">= 0"),
    ("reprobe", cfg(health={"reprobe_interval": 0}), "llm.health.reprobe_interval", "positive"),
    ("ewma-zero", cfg(health={"ewma_alpha": 0}), "llm.health.ewma_alpha", "in (0, 1], found 0"),
    ("ewma-high", cfg(health={"ewma_alpha": 1.5}), "llm.health.ewma_alpha", "found 1.5"),
    # interpolation
    (
        "env-missing",
        route(base_url="http://${NOPE}:8000/v1"),
        "llm.routes.gpt20_a.base_url",
        "environment variable 'NOPE' is not set",
    ),
    ("env-malformed", route(model="${1abc}"), "llm.routes.gpt20_a.model", "malformed '${'"),
    ("env-unclosed", route(model="${HOST"), "llm.routes.gpt20_a.model", "malformed"),
    ("env-in-list", params(stop=["${NOPE}"]), "llm.params.stop[0]", "'NOPE' is not set"),
    ("env-bad-number", route(timeout="${T}"), "llm.routes.gpt20_a.timeout", "found 'abc'"),
    (
        "env-yaml",
        "llm:\n  routes:\n    a: {base_url: 'http://${NOPE}/v1', model: m}\n",
        "llm.routes.a.base_url",
        "'NOPE' is not set",
    ),
]

# Cases whose message must not contain a "did you mean" hint (nothing is close).
NO_HINT_CASES = [
    (cfg(zzzzzz=1), "llm.zzzzzz"),
    (route(qqqq=1), "llm.routes.gpt20_a.qqqq"),
    (cfg(default_route="zzzzzz"), "llm.default_route"),
]


@pytest.mark.parametrize(
    ("data", "key_path", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in ERROR_CASES],
)
def test_config_errors(data: Any, key_path: str | None, fragment: str, tmp_path: Path) -> None:
    err = config_error(data, tmp_path)
    message = str(err)
    assert err.key_path == key_path
    assert fragment in message, message
    if key_path is not None:
        assert message.startswith(f"{key_path}: "), message
    elif isinstance(data, str):
        assert message.startswith(str(tmp_path / "config.yaml")), message
    assert "Traceback" not in message


@pytest.mark.parametrize(("data", "key_path"), NO_HINT_CASES)
def test_no_hint_when_nothing_is_close(data: Any, key_path: str, tmp_path: Path) -> None:
    err = config_error(data, tmp_path)
    assert err.key_path == key_path
    assert "did you mean" not in str(err)


def test_errors_are_not_chained_to_internal_exceptions(tmp_path: Path) -> None:
    err = config_error("llm: [\n", tmp_path)
    assert err.__cause__ is None and err.__suppress_context__


# --------------------------------------------------------------------------- secrets

SECRET_CASES = [
    pytest.param(route(api_key=[SECRET]), id="api-key-list"),
    pytest.param(route(api_key={"value": SECRET}), id="api-key-mapping"),
    pytest.param(route(api_key=987654321), id="api-key-int"),
    pytest.param(route(headers=f"Bearer {SECRET}"), id="headers-string"),
    pytest.param(route(headers={"Authorization": 987654321}), id="header-int"),
    pytest.param(route(headers={"Authorization": [SECRET]}), id="header-list"),
    pytest.param(route(api_key=SECRET, headers={"X-Key": SECRET}, timeout=-1), id="other-error"),
    pytest.param(route(api_key=f"{SECRET}${{NOPE}}"), id="interpolation-missing"),
    pytest.param(route(api_key=f"{SECRET}${{1}}"), id="interpolation-malformed"),
]


@pytest.mark.parametrize("data", SECRET_CASES)
def test_secrets_never_appear_in_errors(data: Any, tmp_path: Path) -> None:
    err = config_error(data, tmp_path)
    assert SECRET not in str(err)
    assert "987654321" not in str(err)


def test_secret_from_env_override_not_in_error() -> None:
    data = route(timeout=0)
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ={"VLLM_API_KEY": SECRET})
    assert SECRET not in str(info.value)


def test_secrets_never_appear_in_repr() -> None:
    data = route(api_key=SECRET, headers={"Authorization": f"Bearer {SECRET}"})
    config = parse_config(data, environ={})
    assert config.route("gpt20_a").api_key == SECRET
    for text in (repr(config), str(config), repr(config.route("gpt20_a")), repr(config.routes)):
        assert SECRET not in text
