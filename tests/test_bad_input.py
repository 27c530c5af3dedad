"""Bad input, table-driven: every malformed config and every malformed call fails cleanly.

CONFIGS: each row is a YAML document written to a file and loaded with ``load_config``. It
must raise exactly one ``ConfigError`` (never a yaml / httpx / Python exception) whose message
starts with the key path (or, for errors about the file as a whole, the file's path), says
what is wrong, fits on a line or two and shows no Python repr nor any secret.

CALLS: a provider whose transport records every request. Each bad call raises a typed
``LLMError`` (``InvalidRequestError`` or ``NoRouteError``) before any request is sent, from
the sync and async entry points alike; streams raise at their first ``next()``.
"""

from __future__ import annotations

import datetime
import enum
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm import (
    BadRequestError,
    ContextWindowError,
    InvalidRequestError,
    LLMError,
    NoRouteError,
    VLLMOpenAIProvider,
    load_config,
    parse_config,
)
from llm.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-s3cr3t-value-42"
FILE = "<the config file>"  # expected "key path" of errors about the file as a whole

# --------------------------------------------------------------------------- CONFIGS

ROUTE_A = '{base_url: "http://127.0.0.1:8001/v1", model: big}'
ROUTES_BC = """\
    gpu_b: {base_url: "http://127.0.0.1:8002/v1", model: big}
    small: {base_url: "http://127.0.0.1:8009/v1", model: tiny}
"""


def doc(llm_lines: str = "", *, route_a: str = ROUTE_A) -> str:
    """A valid config (routes gpu_a, gpu_b, small; default gpu_a) plus ``llm_lines`` under
    ``llm:``; ``route_a`` replaces gpu_a's flow mapping."""
    body = textwrap.indent(textwrap.dedent(llm_lines), "  ") if llm_lines else ""
    return f"llm:\n  routes:\n    gpu_a: {route_a}\n{ROUTES_BC}  default_route: gpu_a\n{body}"


def route_a(fields: str) -> str:
    """The config with gpu_a written as ``{fields}`` (a YAML flow mapping's inside)."""
    return doc(route_a="{" + fields + "}")


def params(fields: str) -> str:
    return doc("params: {" + fields + "}\n")


URL = 'base_url: "http://127.0.0.1:8001/v1"'


def row(
    ident: str,
    text: str,
    path: str,
    fragment: str,
    env: dict[str, str] | None = None,
) -> Any:
    return pytest.param(text, path, fragment, env or {}, id=ident)


CONFIGS = [
    # -- the file as a whole
    row("empty-file", "", FILE, "config file is empty"),
    row("only-whitespace", "\n   \n", FILE, "config file is empty"),
    row("only-comments", "# llm:\n#   routes: {}\n", FILE, "config file is empty"),
    row(
        "yaml-unclosed-flow-mapping",
        "llm:\n  routes:\n    gpu_a: {base_url: x, model: big\n  default_route: gpu_a\n",
        FILE,
        "invalid YAML at line 4",
    ),
    row("yaml-tab-indent", "llm:\n\troutes: {}\n", FILE, "invalid YAML at line 2"),
    row("yaml-unclosed-quote", 'llm:\n  provider: "vllm\n', FILE, "invalid YAML at line"),
    row("yaml-bad-indent", "llm:\n  routes:\n    a: 1\n   b: 2\n", FILE, "invalid YAML at line 4"),
    row("yaml-python-tag", "llm: !!python/object:os.system {}\n", FILE, "invalid YAML at line 1"),
    row("top-level-list", "- llm\n- routes\n", FILE, "expected a mapping with an 'llm' key"),
    row("top-level-scalar", "just some text\n", FILE, "found 'just some text'"),
    row("top-level-number", "42\n", FILE, "found 42"),
    row("dup-key-top-level", doc() + "llm: {}\n", FILE, "found duplicate key 'llm'"),
    row(
        "dup-route-name",
        doc(route_a=ROUTE_A).replace("  default_route", f"    gpu_a: {ROUTE_A}\n  default_route"),
        FILE,
        "found duplicate key 'gpu_a'",
    ),
    row("dup-key-in-route", route_a(f"{URL}, model: big, model: other"), FILE, "duplicate key"),
    row("dup-key-in-params", params("temperature: 0, temperature: 1"), FILE, "duplicate key"),
    row("dup-llm-key", doc("default_route: gpu_b\n"), FILE, "duplicate key 'default_route'"),
    # -- top level and the llm section
    row("empty-mapping", "{}\n", "llm", "missing required key"),
    row("unknown-top-key", doc() + "extra: 1\n", "extra", "unknown key (allowed: llm)"),
    row("top-key-typo", "lmm:\n  routes: {}\n", "lmm", "did you mean 'llm'?"),
    row("non-string-top-key", doc() + "1: one\n", "1", "expected a string key"),
    row("llm-null", "llm:\n", "llm", "expected a mapping, found null"),
    row("llm-list", "llm: [a, b]\n", "llm", "expected a mapping, found a list"),
    row("llm-string", "llm: vllm_openai\n", "llm", "expected a mapping, found 'vllm_openai'"),
    row("unknown-llm-key", doc("fallback: small\n"), "llm.fallback", "mean 'fallback_route'?"),
    row("llm-key-typo", doc("lb_polcy: round_robin\n"), "llm.lb_polcy", "did you mean 'lb_policy'"),
    row("provider-empty", doc("provider: ''\n"), "llm.provider", "found an empty string"),
    # -- routes
    row("no-routes", "llm:\n  provider: vllm_openai\n", "llm.routes", "missing required key"),
    row("routes-null", "llm:\n  routes:\n", "llm.routes", "found null"),
    row("routes-empty", "llm:\n  routes: {}\n", "llm.routes", "found an empty mapping"),
    row("routes-empty-list", "llm:\n  routes: []\n", "llm.routes", "found an empty list"),
    row(
        "routes-a-list",
        f"llm:\n  routes:\n    - {ROUTE_A}\n",
        "llm.routes",
        "found a list",
    ),
    row("routes-a-string", "llm:\n  routes: gpu_a\n", "llm.routes", "found 'gpu_a'"),
    row(
        "route-a-string",
        doc(route_a='"http://127.0.0.1:8001/v1"'),
        "llm.routes.gpu_a",
        "expected a mapping, found 'http://127.0.0.1:8001/v1'",
    ),
    row("route-null", doc(route_a=""), "llm.routes.gpu_a", "expected a mapping, found null"),
    row(
        "route-name-not-string",
        "llm:\n  routes:\n    7: {base_url: 'http://h:1/v1', model: m}\n",
        "llm.routes.7",
        "expected a non-empty string as the route name, found 7",
    ),
    row("missing-base-url", route_a("model: big"), "llm.routes.gpu_a.base_url", "missing"),
    row("missing-model", route_a(URL), "llm.routes.gpu_a.model", "missing required key"),
    row(
        "base-url-no-scheme",
        route_a("base_url: 127.0.0.1:8001/v1, model: big"),
        "llm.routes.gpu_a.base_url",
        "did you mean 'http://127.0.0.1:8001/v1'?",
    ),
    row(
        "base-url-words",
        route_a("base_url: not a url, model: big"),
        "llm.routes.gpu_a.base_url",
        "found 'not a url' (no scheme)",
    ),
    row(
        "base-url-ftp",
        route_a("base_url: 'ftp://127.0.0.1/v1', model: big"),
        "llm.routes.gpu_a.base_url",
        "found 'ftp://127.0.0.1/v1'",
    ),
    row(
        "base-url-no-host",
        route_a("base_url: 'http:///v1', model: big"),
        "llm.routes.gpu_a.base_url",
        "URL with a host, found 'http:///v1'",
    ),
    row(
        "base-url-spaces",
        route_a("base_url: 'http://my host:8001/v1', model: big"),
        "llm.routes.gpu_a.base_url",
        "found 'http://my host:8001/v1'",
    ),
    row(
        "base-url-bad-port",
        route_a("base_url: 'http://127.0.0.1:99999/v1', model: big"),
        "llm.routes.gpu_a.base_url",
        "a valid port",
    ),
    row(
        "base-url-password-redacted",
        route_a(f"base_url: 'ftp://user:{SECRET}@h/v1', model: big"),
        "llm.routes.gpu_a.base_url",
        "ftp://***@h/v1",
    ),
    row(
        "base-url-number",
        route_a("base_url: 8001, model: big"),
        "llm.routes.gpu_a.base_url",
        "expected a non-empty string, found 8001",
    ),
    row("model-empty", route_a(f"{URL}, model: ''"), "llm.routes.gpu_a.model", "an empty string"),
    row("model-blank", route_a(f"{URL}, model: '  '"), "llm.routes.gpu_a.model", "non-empty"),
    row("model-number", route_a(f"{URL}, model: 7"), "llm.routes.gpu_a.model", "found 7"),
    row("model-list", route_a(f"{URL}, model: [a]"), "llm.routes.gpu_a.model", "found a list"),
    row(
        "timeout-negative",
        route_a(f"{URL}, model: big, timeout: -1"),
        "llm.routes.gpu_a.timeout",
        "expected a positive number, found -1",
    ),
    row(
        "timeout-zero",
        route_a(f"{URL}, model: big, timeout: 0"),
        "llm.routes.gpu_a.timeout",
        "expected a positive number, found 0",
    ),
    row(
        "timeout-string",
        route_a(f"{URL}, model: big, timeout: soon"),
        "llm.routes.gpu_a.timeout",
        "found 'soon'",
    ),
    row(
        "timeout-bool",
        route_a(f"{URL}, model: big, timeout: true"),
        "llm.routes.gpu_a.timeout",
        "found a bool (true)",
    ),
    row(
        "timeout-nan",
        route_a(f"{URL}, model: big, timeout: .nan"),
        "llm.routes.gpu_a.timeout",
        "expected a positive number, found nan",
    ),
    row(
        "timeout-inf",
        route_a(f"{URL}, model: big, timeout: .inf"),
        "llm.routes.gpu_a.timeout",
        "expected a positive number, found inf",
    ),
    row(
        "weight-zero",
        route_a(f"{URL}, model: big, weight: 0"),
        "llm.routes.gpu_a.weight",
        "expected a positive number, found 0",
    ),
    row(
        "weight-negative",
        route_a(f"{URL}, model: big, weight: -2"),
        "llm.routes.gpu_a.weight",
        "found -2",
    ),
    row(
        "api-key-number",
        route_a(f"{URL}, model: big, api_key: 4242424242"),
        "llm.routes.gpu_a.api_key",
        "expected a non-empty string, found an integer",
    ),
    row(
        "api-key-list",
        route_a(f"{URL}, model: big, api_key: [{SECRET}]"),
        "llm.routes.gpu_a.api_key",
        "found a list",
    ),
    row(
        "headers-list",
        route_a(f"{URL}, model: big, headers: [{SECRET}]"),
        "llm.routes.gpu_a.headers",
        "expected a mapping, found a list",
    ),
    row(
        "headers-string",
        route_a(f"{URL}, model: big, headers: 'X-Key: {SECRET}'"),
        "llm.routes.gpu_a.headers",
        "expected a mapping",
    ),
    row(
        "header-value-number",
        route_a(f"{URL}, model: big, headers: {{X-Token: 4242424242}}"),
        "llm.routes.gpu_a.headers.X-Token",
        "expected a string (quote it in YAML), found an integer",
    ),
    row(
        "header-name-number",
        route_a(f"{URL}, model: big, headers: {{1: {SECRET}}}"),
        "llm.routes.gpu_a.headers.1",
        "a non-empty header name",
    ),
    row(
        "send-model-number",
        route_a(f"{URL}, model: big, send_model: 1"),
        "llm.routes.gpu_a.send_model",
        "expected true or false, found 1",
    ),
    row(
        "send-model-word",
        route_a(f"{URL}, model: big, send_model: sometimes"),
        "llm.routes.gpu_a.send_model",
        "found 'sometimes'",
    ),
    row(
        "verify-number",
        route_a(f"{URL}, model: big, verify: 0"),
        "llm.routes.gpu_a.verify",
        "expected true, false or the path of a CA bundle, found 0",
    ),
    row(
        "verify-list",
        route_a(f"{URL}, model: big, verify: [a.pem]"),
        "llm.routes.gpu_a.verify",
        "found a list",
    ),
    row(
        "unknown-route-key",
        route_a(f"{URL}, model: big, retries: 3"),
        "llm.routes.gpu_a.retries",
        "unknown key",
    ),
    row(
        "route-key-url",
        route_a("url: 'http://127.0.0.1:8001/v1', model: big"),
        "llm.routes.gpu_a.url",
        "did you mean 'base_url'?",
    ),
    row(
        "route-key-typo",
        route_a(f"{URL}, modle: big"),
        "llm.routes.gpu_a.modle",
        "did you mean 'model'?",
    ),
    # -- default / fallback / policy
    row(
        "default-route-unknown",
        doc("fallback_route: small\n").replace("default_route: gpu_a", "default_route: gpua"),
        "llm.default_route",
        "found 'gpua'; did you mean 'gpu_a'?",
    ),
    row(
        "default-route-number",
        doc().replace("default_route: gpu_a", "default_route: 3"),
        "llm.default_route",
        "expected a route name (one of: gpu_a, gpu_b, small), found 3",
    ),
    row(
        "fallback-unknown",
        doc("fallback_route: smal\n"),
        "llm.fallback_route",
        "did you mean 'small'?",
    ),
    row(
        "fallback-is-default",
        doc("fallback_route: gpu_a\n"),
        "llm.fallback_route",
        "a route other than default_route",
    ),
    row(
        "policy-unknown",
        doc("lb_policy: random\n"),
        "llm.lb_policy",
        "one of: round_robin, least_latency",
    ),
    row(
        "policy-typo",
        doc("lb_policy: least_latncy\n"),
        "llm.lb_policy",
        "did you mean 'least_latency'?",
    ),
    row("policy-number", doc("lb_policy: 1\n"), "llm.lb_policy", "found 1"),
    row("policy-list", doc("lb_policy: [round_robin]\n"), "llm.lb_policy", "found a list"),
    # -- params: control keys
    row("params-list", doc("params: [1]\n"), "llm.params", "expected a mapping, found a list"),
    row(
        "max-retries-negative",
        params("max_retries: -1"),
        "llm.params.max_retries",
        "expected an integer >= 0, found -1",
    ),
    row("max-retries-float", params("max_retries: 1.5"), "llm.params.max_retries", "found 1.5"),
    row("max-retries-bool", params("max_retries: false"), "llm.params.max_retries", "a bool"),
    row("deadline-zero", params("deadline: 0"), "llm.params.deadline", "a positive number"),
    row("deadline-negative", params("deadline: -5"), "llm.params.deadline", "found -5"),
    row("params-timeout-zero", params("timeout: 0"), "llm.params.timeout", "a positive number"),
    row(
        "connect-timeout-string",
        params("connect_timeout: fast"),
        "llm.params.connect_timeout",
        "found 'fast'",
    ),
    row(
        "max-response-bytes-small",
        params("max_response_bytes: 100"),
        "llm.params.max_response_bytes",
        "expected an integer >= 1024, found 100",
    ),
    row(
        "max-response-bytes-float",
        params("max_response_bytes: 2048.5"),
        "llm.params.max_response_bytes",
        "found 2048.5",
    ),
    # -- params: body keys
    row(
        "params-unknown-typo",
        params("temprature: 0.1"),
        "llm.params.temprature",
        "did you mean 'temperature'?",
    ),
    row(
        "params-unknown-key",
        params("vllm_only_knob: 1"),
        "llm.params.vllm_only_knob",
        "put server-specific keys under extra_body",
    ),
    row("params-model", params("model: big"), "llm.params.model", "the model is set per route"),
    row("params-stream", params("stream: true"), "llm.params.stream", "streaming is chosen"),
    row(
        "params-api-key",
        params(f"api_key: {SECRET}"),
        "llm.params.api_key",
        "api_key is set per route",
    ),
    row(
        "params-non-string-key",
        params("1: one"),
        "llm.params.1",
        "expected a string key, found 1",
    ),
    row(
        "temperature-word",
        params("temperature: hot"),
        "llm.params.temperature",
        "expected a number >= 0, found 'hot'",
    ),
    row("temperature-nan", params("temperature: .nan"), "llm.params.temperature", "found nan"),
    row("top-p-zero", params("top_p: 0"), "llm.params.top_p", "a number in (0, 1]"),
    row(
        "max-tokens-zero",
        params("max_tokens: 0"),
        "llm.params.max_tokens",
        "expected a positive integer, found 0",
    ),
    row("max-tokens-float", params("max_tokens: 1.5"), "llm.params.max_tokens", "found 1.5"),
    row("max-tokens-bool", params("max_tokens: true"), "llm.params.max_tokens", "a bool (true)"),
    row("stop-number", params("stop: 5"), "llm.params.stop", "a string or a list of strings"),
    row("stop-item-number", params("stop: [a, 5]"), "llm.params.stop[1]", "expected a string"),
    row(
        "tools-mapping",
        params("tools: {type: function}"),
        "llm.params.tools",
        "expected a list, found a mapping",
    ),
    row("tools-string", params("tools: get_weather"), "llm.params.tools", "expected a list"),
    row("logprobs-word", params("logprobs: maybe"), "llm.params.logprobs", "true or false"),
    row(
        "response-format-list",
        params("response_format: [json]"),
        "llm.params.response_format",
        "expected a mapping, found a list",
    ),
    row(
        "guided-choice-empty-item",
        params("guided_choice: [yes_, '']"),
        "llm.params.guided_choice[1]",
        "found an empty string",
    ),
    row(
        "nested-nan",
        params("logit_bias: {'50256': .nan}"),
        "llm.params.logit_bias.50256",
        "a finite number, found nan",
    ),
    row(
        "nested-non-string-key",
        params("chat_template_kwargs: {1: x}"),
        "llm.params.chat_template_kwargs.1",
        "expected a string key",
    ),
    row(
        "extra-body-list",
        params("extra_body: [1]"),
        "llm.params.extra_body",
        "expected a mapping, found a list",
    ),
    row(
        "extra-body-repeats-param",
        params("temperature: 0, extra_body: {temperature: 1}"),
        "llm.params.extra_body.temperature",
        "also set as llm.params.temperature",
    ),
    # -- retry and health
    row("retry-list", doc("retry: [1]\n"), "llm.retry", "expected a mapping"),
    row(
        "backoff-max-below-initial",
        doc("retry: {backoff_initial: 1, backoff_max: 0.5}\n"),
        "llm.retry.backoff_max",
        "expected a number >= backoff_initial (1), found 0.5",
    ),
    row(
        "backoff-initial-zero",
        doc("retry: {backoff_initial: 0}\n"),
        "llm.retry.backoff_initial",
        "a positive number",
    ),
    row(
        "retry-unknown-typo",
        doc("retry: {backoff_inital: 1}\n"),
        "llm.retry.backoff_inital",
        "did you mean 'backoff_initial'?",
    ),
    row(
        "retry-max-retries",
        doc("retry: {max_retries: 2}\n"),
        "llm.retry.max_retries",
        "max_retries is set in llm.params",
    ),
    row(
        "max-cooldown-below-cooldown",
        doc("health: {cooldown: 10, max_cooldown: 5}\n"),
        "llm.health.max_cooldown",
        "expected a number >= cooldown (10), found 5",
    ),
    row(
        "ewma-alpha-zero",
        doc("health: {ewma_alpha: 0}\n"),
        "llm.health.ewma_alpha",
        "expected a number in (0, 1], found 0",
    ),
    row(
        "ewma-alpha-above-one",
        doc("health: {ewma_alpha: 1.5}\n"),
        "llm.health.ewma_alpha",
        "found 1.5",
    ),
    row(
        "check-interval-negative",
        doc("health: {check_interval: -1}\n"),
        "llm.health.check_interval",
        "expected a number >= 0, found -1",
    ),
    row(
        "health-unknown-typo",
        doc("health: {cooldow: 5}\n"),
        "llm.health.cooldow",
        "did you mean 'cooldown'?",
    ),
    row("health-string", doc("health: fast\n"), "llm.health", "expected a mapping, found 'fast'"),
    # -- environment
    row(
        "env-var-missing",
        route_a("base_url: 'http://${LLM_TEST_HOST}:8001/v1', model: big"),
        "llm.routes.gpu_a.base_url",
        "environment variable 'LLM_TEST_HOST' is not set",
    ),
    row(
        "env-var-missing-in-params",
        params("seed: '${LLM_TEST_SEED}'"),
        "llm.params.seed",
        "'LLM_TEST_SEED' is not set",
    ),
    row(
        "env-var-malformed",
        route_a("base_url: 'http://${HOST:8001/v1', model: big"),
        "llm.routes.gpu_a.base_url",
        "malformed '${' reference",
    ),
    row(
        "env-var-bad-value",
        route_a(f"{URL}, model: big, timeout: '${{LLM_TEST_TIMEOUT}}'"),
        "llm.routes.gpu_a.timeout",
        "found 'ten'",
        env={"LLM_TEST_TIMEOUT": "ten"},
    ),
    row(
        "env-override-bad-url",
        doc(),
        "llm.routes.gpu_a.base_url",
        "set from $VLLM_BASE_URL",
        env={"VLLM_BASE_URL": "localhost:8000"},
    ),
]

REPR_MARKS = (
    " at 0x",
    "Traceback",
    "<class ",
    "Error(",
    "yaml.constructor",
    "yaml.scanner",
    "httpx.",
)


def load_bad(tmp_path: Path, text: str, env: dict[str, str]) -> tuple[ConfigError, str]:
    """Load ``text`` from a file; return the ConfigError it raises and the file's path."""
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path, environ=env)
    except Exception as error:  # noqa: BLE001 - the type itself is under test
        assert type(error) is ConfigError, f"{type(error).__name__}: {error}"
        return error, str(path)
    raise AssertionError("no error raised")


@pytest.mark.parametrize(("text", "path", "fragment", "env"), CONFIGS)
def test_bad_config_is_one_clear_config_error(
    tmp_path: Path, text: str, path: str, fragment: str, env: dict[str, str]
) -> None:
    error, file = load_bad(tmp_path, text, env)
    message = str(error)
    assert len(error.args) == 1 and isinstance(error.args[0], str)
    if path == FILE:
        assert error.key_path is None
        assert message.startswith(f"{file}: "), message
    else:
        assert error.key_path == path
        assert message.startswith(f"{path}: "), message
        assert message.endswith(f"(in {file})") or "(set from $" in message, message
    assert fragment in message, message
    # one message, readable: no chained exception, no repr, no secret, a line or a short block
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    assert message.count("\n") <= 2 and len(message) <= 1000, message
    assert not any(mark in message for mark in REPR_MARKS), message
    assert SECRET not in message and "4242424242" not in message, message


def test_config_table_covers_every_section() -> None:
    """The table is complete on its own: every section of the schema has failing rows."""
    paths = {values[1] for values in (p.values for p in CONFIGS)}
    for prefix in (
        "llm.routes.gpu_a.",
        "llm.params.",
        "llm.retry.",
        "llm.health.",
        "llm.default_route",
        "llm.fallback_route",
        "llm.lb_policy",
    ):
        assert any(p.startswith(prefix) for p in paths), prefix
    assert len(CONFIGS) >= 100
    assert len({p.id for p in CONFIGS}) == len(CONFIGS)


def test_env_default_is_used_when_the_variable_is_unset_or_empty(tmp_path: Path) -> None:
    text = route_a(
        "base_url: 'http://${LLM_TEST_HOST:-127.0.0.1}:${LLM_TEST_PORT:-8001}/v1', "
        "model: '${LLM_TEST_MODEL:-big}', api_key: '${LLM_TEST_KEY:-EMPTY}'"
    )
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path, environ={"LLM_TEST_PORT": ""})
    route = config.route("gpu_a")
    assert route.base_url == "http://127.0.0.1:8001/v1"
    assert route.model == "big" and route.api_key == "EMPTY"
    config = load_config(path, environ={"LLM_TEST_HOST": "10.1.2.3", "LLM_TEST_MODEL": "m2"})
    assert config.route("gpu_a").base_url == "http://10.1.2.3:8001/v1"
    assert config.route("gpu_a").model == "m2"


def test_the_base_document_of_the_table_is_valid(tmp_path: Path) -> None:
    """Each row breaks one thing: without it the document loads."""
    path = tmp_path / "config.yaml"
    path.write_text(doc("fallback_route: small\nparams: {max_tokens: 8}\n"), encoding="utf-8")
    config = load_config(path, environ={})
    assert list(config.routes) == ["gpu_a", "gpu_b", "small"]
    assert config.default_route == "gpu_a" and config.fallback_route == "small"


CLI_ROWS = ["yaml-unclosed-flow-mapping", "missing-base-url", "env-var-missing"]


@pytest.mark.parametrize("ident", CLI_ROWS)
def test_healthcheck_cli_exits_2_with_the_key_path(tmp_path: Path, ident: str) -> None:
    (text, path, fragment, env) = next(p.values for p in CONFIGS if p.id == ident)
    config = tmp_path / "bad.yaml"
    config.write_text(text, encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "VLLM_"))}
    environ.update(env)
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "healthcheck_vllm.py"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=environ,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done
    expected = str(config) if path == FILE else path
    assert expected in done.stderr and fragment in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) <= 3, done.stderr


# --------------------------------------------------------------------------- CALLS

A = "http://127.0.0.1:8001/v1"
B = "http://127.0.0.1:8002/v1"
S = "http://127.0.0.1:8009/v1"
CALL_CONFIG = {
    "llm": {
        "routes": {
            "gpu_a": {"base_url": A, "model": "big", "api_key": SECRET},
            "gpu_b": {"base_url": B, "model": "big"},
            "small": {"base_url": S, "model": "tiny"},
        },
        "default_route": "gpu_a",
        "fallback_route": "small",
        "params": {"max_tokens": 16, "temperature": 0.0, "timeout": 5, "max_retries": 2},
        "retry": {"backoff_initial": 0.01, "backoff_max": 0.02},
    }
}
SSE = {"content-type": "text/event-stream"}
CHAT_STREAM = (
    b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)
TOO_MANY_TOKENS = (
    "This model's maximum context length is 4096 tokens. However, you requested "
    "1000000000005 tokens (5 in the messages, 1000000000000 in the completion)."
)


class Recorder:
    """The transport of every route: records each request; answers 200, or 400 when told."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.refuse = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.refuse:
            error = {"message": TOO_MANY_TOKENS, "type": "BadRequestError", "code": 400}
            return httpx.Response(400, json={"error": error})
        body = json.loads(request.content)
        if body.get("stream"):
            return httpx.Response(200, headers=SSE, content=CHAT_STREAM)
        if request.url.path.endswith("/chat/completions"):
            message = {"role": "assistant", "content": "hi"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
        else:
            choice = {"index": 0, "text": "hi", "finish_reason": "stop"}
        return httpx.Response(200, json={"choices": [choice], "usage": {}})

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(request.content) for request in self.requests]


async def no_sleep(seconds: float) -> None:
    return None


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def provider(recorder: Recorder) -> Any:
    transport = httpx.MockTransport(recorder)
    provider = VLLMOpenAIProvider(
        parse_config(CALL_CONFIG, environ={}),
        transport=transport,
        async_transport=transport,
        sleep=lambda seconds: None,
        async_sleep=no_sleep,
    )
    yield provider
    provider.close()


MSG = [{"role": "user", "content": "hi"}]
NAN = float("nan")
WHEN = datetime.datetime(2025, 1, 2, 3, 4, 5)


def call(
    ident: str,
    messages: Any,
    keywords: dict[str, Any],
    error: type[LLMError],
    fragment: str,
    *,
    complete: bool = True,
) -> Any:
    """A bad call. With ``complete`` (and good messages) complete() gets the keywords too."""
    return pytest.param(messages, keywords, error, fragment, complete, id=ident)


BAD = InvalidRequestError
NOT_JSON = "is not JSON-serialisable"
BAD_CALLS = [
    # -- messages
    call("messages-empty", [], {}, BAD, "messages is empty"),
    call("messages-str", "hi", {}, BAD, "messages must be a list of {'role'"),
    call("messages-bytes", b"hi", {}, BAD, "messages must be a list"),
    call(
        "messages-dict",
        MSG[0],
        {},
        BAD,
        "must be a list of {'role': ..., 'content': ...} mappings, got a mapping",
    ),
    call(
        "messages-none",
        None,
        {},
        BAD,
        "messages must be a list of {'role': ..., 'content': ...} mappings, got None",
    ),
    call("messages-number", 3, {}, BAD, "got 3"),
    call(
        "message-a-string", ["hi"], {}, BAD, "messages[0] must be a mapping with a 'role', got 'hi'"
    ),
    call("message-none", [MSG[0], None], {}, BAD, "messages[1] must be a mapping"),
    call(
        "message-no-role", [{"content": "hi"}], {}, BAD, "messages[0] has no 'role' (one of: system"
    ),
    call(
        "message-unknown-role",
        [{"role": "usr", "content": "hi"}],
        {},
        BAD,
        "messages[0] has an unknown role 'usr'; did you mean 'user'?",
    ),
    call("message-role-case", [{"role": "User", "content": "hi"}], {}, BAD, "did you mean 'user'?"),
    call("message-role-typo", [{"role": "asistant", "content": "hi"}], {}, BAD,
         "did you mean 'assistant'?"),
    call("message-role-empty", [{"role": "", "content": "hi"}], {}, BAD,
         "unknown role an empty string"),
    call("message-role-number", [{"role": 1, "content": "hi"}], {}, BAD, "unknown role 1"),
    call(
        "message-role-list", [{"role": ["user"], "content": "hi"}], {}, BAD, "unknown role a list"
    ),
    call(
        "content-number",
        [{"role": "user", "content": 42}],
        {},
        BAD,
        "messages[0].content must be a string or a list of content parts, got 42",
    ),
    call(
        "content-float",
        [MSG[0], {"role": "assistant", "content": 3.5}],
        {},
        BAD,
        "messages[1].content",
    ),
    call(
        "content-mapping", [{"role": "user", "content": {"text": "hi"}}], {}, BAD, "got a mapping"
    ),
    call("content-missing", [{"role": "user"}], {}, BAD, "messages[0] (user) has no 'content'"),
    call(
        "content-none", [{"role": "system", "content": None}], {}, BAD, "(system) has no 'content'"
    ),
    call(
        "content-part-string",
        [{"role": "user", "content": ["hi"]}],
        {},
        BAD,
        "messages[0].content[0]",
    ),
    call(
        "content-part-object",
        [{"role": "user", "content": [{"type": "text", "text": object()}]}],
        {},
        BAD,
        "request body is not JSON-serialisable",
    ),
    # -- values that are not JSON
    call("param-object", MSG, {"stop": object()}, BAD, f"stop: an object {NOT_JSON}"),
    call("param-set", MSG, {"stop": {"a", "b"}}, BAD, f"stop: a set {NOT_JSON}"),
    call("param-datetime", MSG, {"user": WHEN}, BAD, f"user: a datetime {NOT_JSON}"),
    call("param-bytes", MSG, {"user": b"me"}, BAD, f"user: a bytes {NOT_JSON}"),
    call("param-function", MSG, {"logit_bias": len}, BAD, NOT_JSON),
    call(
        "param-nested-set",
        MSG,
        {"response_format": {"type": "json_schema", "json_schema": {"enum": {1, 2}}}},
        BAD,
        "request body is not JSON-serialisable: Object of type set",
    ),
    call("param-nested-nan", MSG, {"logit_bias": {"50256": NAN}}, BAD, "not JSON-serialisable"),
    call(
        "temperature-nan",
        MSG,
        {"temperature": NAN},
        BAD,
        "temperature must be a finite number, got nan",
    ),
    call("penalty-inf", MSG, {"presence_penalty": float("inf")}, BAD, "got inf"),
    call("unknown-key-nan", MSG, {"my_knob": -NAN}, BAD, "my_knob must be a finite number"),
    call(
        "temperature-word",
        MSG,
        {"temperature": "hot"},
        BAD,
        "temperature must be a finite number, got 'hot'",
    ),
    call("temperature-bool", MSG, {"temperature": True}, BAD, "got a bool (True)"),
    # -- max_tokens and the other integers
    call(
        "max-tokens-negative",
        MSG,
        {"max_tokens": -1},
        BAD,
        "max_tokens must be an integer > 0, got -1",
    ),
    call(
        "max-tokens-zero", MSG, {"max_tokens": 0}, BAD, "max_tokens must be an integer > 0, got 0"
    ),
    call("max-tokens-float", MSG, {"max_tokens": 1.5}, BAD, "got 1.5"),
    call("max-tokens-whole-float", MSG, {"max_tokens": 64.0}, BAD, "got 64.0"),
    call("max-tokens-string", MSG, {"max_tokens": "64"}, BAD, "got '64'"),
    call("max-tokens-bool", MSG, {"max_tokens": True}, BAD, "got a bool (True)"),
    call("max-tokens-list", MSG, {"max_tokens": [64]}, BAD, "got a list"),
    call(
        "max-completion-tokens-zero",
        MSG,
        {"max_completion_tokens": 0},
        BAD,
        "max_completion_tokens",
    ),
    call("n-zero", MSG, {"n": 0}, BAD, "n must be an integer > 0, got 0"),
    call("min-tokens-negative", MSG, {"min_tokens": -1}, BAD, "min_tokens must be an integer >= 0"),
    call("top-k-float", MSG, {"top_k": 1.5}, BAD, "top_k must be an integer, got 1.5"),
    call("seed-string", MSG, {"seed": "42"}, BAD, "seed must be an integer, got '42'"),
    # -- keywords that steer the call
    call(
        "deadline-zero",
        MSG,
        {"deadline": 0},
        BAD,
        "deadline must be a positive number of seconds, got 0",
    ),
    call("deadline-negative", MSG, {"deadline": -1.0}, BAD, "got -1.0"),
    call("deadline-string", MSG, {"deadline": "5"}, BAD, "got '5'"),
    call("deadline-bool", MSG, {"deadline": True}, BAD, "got a bool (True)"),
    call("deadline-nan", MSG, {"deadline": NAN}, BAD, "got nan"),
    call("deadline-inf", MSG, {"deadline": float("inf")}, BAD, "got inf"),
    call(
        "max-retries-negative",
        MSG,
        {"max_retries": -1},
        BAD,
        "max_retries must be an integer >= 0, got -1",
    ),
    call("max-retries-float", MSG, {"max_retries": 1.5}, BAD, "got 1.5"),
    call("max-retries-bool", MSG, {"max_retries": True}, BAD, "got a bool (True)"),
    call(
        "route-unknown",
        MSG,
        {"route": "gpu_c"},
        NoRouteError,
        "no route named 'gpu_c'; configured routes: gpu_a, gpu_b, small",
    ),
    call("route-empty", MSG, {"route": ""}, NoRouteError, "no route named ''"),
    call("route-number", MSG, {"route": 7}, BAD, "route must be a string, got 7"),
    call(
        "model-unknown",
        MSG,
        {"model": "gpt-9"},
        NoRouteError,
        "no route serves model 'gpt-9'; models served: big, tiny",
    ),
    call("model-list", MSG, {"model": ["big"]}, BAD, "model must be a string, got a list"),
    # -- keywords that are not what they seem
    call(
        "typo-temperature",
        MSG,
        {"temprature": 0.1},
        BAD,
        "unknown keyword 'temprature'; did you mean 'temperature'?",
    ),
    call("typo-max-tokens", MSG, {"max_token": 5}, BAD, "did you mean 'max_tokens'?"),
    call("hf-max-new-tokens", MSG, {"max_new_tokens": 5}, BAD, "did you mean 'max_tokens'?"),
    call("typo-tool-choice", MSG, {"tool_choise": "auto"}, BAD, "did you mean 'tool_choice'?"),
    call("typo-deadline", MSG, {"deadlne": 5}, BAD, "did you mean 'deadline'?"),
    call("typo-route", MSG, {"rout": "gpu_b"}, BAD, "did you mean 'route'?"),
    call("typo-model", MSG, {"modle": "tiny"}, BAD, "did you mean 'model'?"),
    call("typo-extra-body", MSG, {"extrabody": {"a": 1}}, BAD, "did you mean 'extra_body'?"),
    call(
        "timeout-keyword",
        MSG,
        {"timeout": 5},
        BAD,
        "timeout= is not a call keyword: ",
    ),
    call("stream-keyword", MSG, {"stream": True}, BAD, "streaming is chosen by the method"),
    call("api-key-keyword", MSG, {"api_key": SECRET}, BAD, "keys are set per route"),
    call("prompt-keyword", MSG, {"prompt": "hi"}, BAD, "complete()", complete=False),
    call(
        "extra-body-list", MSG, {"extra_body": [1]}, BAD, "extra_body must be a mapping, got a list"
    ),
    call(
        "extra-body-key",
        MSG,
        {"extra_body": {1: "x"}},
        BAD,
        "extra_body keys must be non-empty strings, got 1",
    ),
    call("extra-body-object", MSG, {"extra_body": {"x": object()}}, BAD, "not JSON-serialisable"),
]


def check_refused(
    error: BaseException, expected: type[LLMError], fragment: str, recorder: Recorder, where: str
) -> None:
    assert type(error) is expected, f"{where}: {type(error).__name__}: {error}"
    message = str(error)
    assert fragment in message, f"{where}: {message}"
    assert not any(mark in message for mark in REPR_MARKS), f"{where}: {message}"
    assert SECRET not in message and "\n" not in message, f"{where}: {message}"
    assert recorder.requests == [], f"{where}: a request was sent"


def check_untouched(provider: VLLMOpenAIProvider) -> None:
    """A refused call leaves no trace on the routes."""
    for name, stats in provider.stats().items():
        assert stats["in_flight"] == 0 and stats["requests"] == 0, (name, stats)
        assert stats["state"] == "healthy", (name, stats)


def refused(action: Callable[[], Any]) -> BaseException:
    try:
        action()
    except Exception as error:  # noqa: BLE001 - the type itself is under test
        return error
    raise AssertionError("the call was not refused")


async def arefused(action: Callable[[], Any]) -> BaseException:
    try:
        await action()
    except Exception as error:  # noqa: BLE001 - the type itself is under test
        return error
    raise AssertionError("the call was not refused")


ARGS = ("messages", "keywords", "error", "fragment", "complete")


@pytest.mark.parametrize(ARGS, BAD_CALLS)
def test_bad_call_is_refused_before_any_request(
    provider: VLLMOpenAIProvider,
    recorder: Recorder,
    messages: Any,
    keywords: dict[str, Any],
    error: type[LLMError],
    fragment: str,
    complete: bool,
) -> None:
    kw = keywords
    for where, action in (
        ("chat", lambda: provider.chat(messages, **kw)),
        ("chat_completion", lambda: provider.chat_completion(messages, **kw)),
    ):
        check_refused(refused(action), error, fragment, recorder, where)
    for where, opener in (
        ("stream", lambda: provider.stream(messages, **kw)),
        ("stream_events", lambda: provider.stream_events(messages, **kw)),
    ):
        stream = opener()  # a generator: nothing happens before the first next()
        assert recorder.requests == []
        check_refused(refused(stream.__next__), error, fragment, recorder, where)
        stream.close()
    if complete and messages is MSG:
        found = refused(lambda: provider.complete("Once upon", **kw))
        check_refused(found, error, fragment, recorder, "complete")
    check_untouched(provider)


@pytest.mark.parametrize(ARGS, BAD_CALLS)
async def test_bad_async_call_is_refused_before_any_request(
    provider: VLLMOpenAIProvider,
    recorder: Recorder,
    messages: Any,
    keywords: dict[str, Any],
    error: type[LLMError],
    fragment: str,
    complete: bool,
) -> None:
    kw = keywords
    for where, action in (
        ("achat", lambda: provider.achat(messages, **kw)),
        ("achat_completion", lambda: provider.achat_completion(messages, **kw)),
    ):
        check_refused(await arefused(action), error, fragment, recorder, where)
    for where, opener in (
        ("astream", lambda: provider.astream(messages, **kw)),
        ("astream_events", lambda: provider.astream_events(messages, **kw)),
    ):
        stream = opener()
        assert recorder.requests == []
        found = await arefused(stream.__anext__)
        check_refused(found, error, fragment, recorder, where)
        await stream.aclose()
    if complete and messages is MSG:
        found = await arefused(lambda: provider.acomplete("Once upon", **kw))
        check_refused(found, error, fragment, recorder, "acomplete")
    check_untouched(provider)


BAD_PROMPTS = [
    pytest.param("", id="empty-string"),
    pytest.param([], id="empty-list"),
    pytest.param(None, id="none"),
    pytest.param(5, id="number"),
    pytest.param({"text": "hi"}, id="mapping"),
]


@pytest.mark.parametrize("prompt", BAD_PROMPTS)
async def test_complete_refuses_an_empty_or_mistyped_prompt(
    provider: VLLMOpenAIProvider, recorder: Recorder, prompt: Any
) -> None:
    fragment = "prompt must be a non-empty string or list, got"
    check_refused(refused(lambda: provider.complete(prompt)), BAD, fragment, recorder, "complete")
    found = await arefused(lambda: provider.acomplete(prompt))
    check_refused(found, BAD, fragment, recorder, "acomplete")
    check_untouched(provider)


def test_the_table_covers_every_entry_point_and_kind_of_mistake() -> None:
    ids = {p.id for p in BAD_CALLS}
    assert len(ids) == len(BAD_CALLS) >= 70
    for prefix in (
        "messages-",
        "message-",
        "content-",
        "param-",
        "max-tokens-",
        "deadline-",
        "max-retries-",
        "route-",
        "model-",
        "typo-",
    ):
        assert any(i.startswith(prefix) for i in ids), prefix
    assert {p.values[2] for p in BAD_CALLS} == {InvalidRequestError, NoRouteError}


# --------------------------------------------------------------------------- left to the server


def test_huge_max_tokens_goes_to_the_server_whose_400_is_a_bad_request(
    provider: VLLMOpenAIProvider, recorder: Recorder
) -> None:
    """A well-typed max_tokens is the server's to judge until its window is known: each route
    whose window is not known yet is asked once (its 400 teaches the window, routing/fit.py),
    the last 400 is the answer, and a call after that fails before anything is sent."""
    recorder.refuse = True
    error = refused(lambda: provider.chat(MSG, max_tokens=10**12))
    assert type(error) is BadRequestError, error
    assert error.status_code == 400 and error.route == "small"
    assert error.server_message == TOO_MANY_TOKENS
    assert "maximum context length is 4096" in str(error)
    assert [a.route for a in error.attempts] == ["gpu_a", "gpu_b", "small"]
    assert recorder.bodies()[-1]["max_tokens"] == 10**12
    assert len(recorder.requests) == 3
    error = refused(lambda: next(provider.stream(MSG, max_tokens=10**12)))
    assert type(error) is ContextWindowError, error
    assert error.limits == {"gpu_a": 4096, "gpu_b": 4096, "small": 4096}
    assert len(recorder.requests) == 3  # nothing sent
    stats = provider.stats()
    assert all(s["state"] == "healthy" and s["in_flight"] == 0 for s in stats.values()), stats
    recorder.refuse = False
    assert provider.chat(MSG) == "hi"


async def test_async_huge_max_tokens_goes_to_the_server_whose_400_is_a_bad_request(
    provider: VLLMOpenAIProvider, recorder: Recorder
) -> None:
    recorder.refuse = True
    error = await arefused(lambda: provider.achat(MSG, max_tokens=10**12))
    assert type(error) is BadRequestError and error.status_code == 400
    assert error.server_message == TOO_MANY_TOKENS
    assert len(recorder.requests) == 3
    stream = provider.astream(MSG, max_tokens=10**12)
    error = await arefused(stream.__anext__)
    assert type(error) is ContextWindowError and "max_tokens 1000000000000" in str(error)
    await stream.aclose()
    assert len(recorder.requests) == 3
    stats = provider.stats()
    assert all(s["state"] == "healthy" and s["in_flight"] == 0 for s in stats.values()), stats
    recorder.refuse = False
    assert await provider.achat(MSG) == "hi"


class Role(str, enum.Enum):
    ASSISTANT = "assistant"


def test_the_checks_let_every_good_call_through(
    provider: VLLMOpenAIProvider, recorder: Recorder
) -> None:
    """The refusals above are not too eager: valid shapes and server-specific keys pass."""
    conversation = (
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": ""},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t1", "type": "function"}]},
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": Role.ASSISTANT, "content": "Sunny."},  # a str Enum is a string
        {"role": "ipython", "content": "42"},  # a role some chat templates know: passes
    )
    assert (
        provider.chat(
            conversation,
            route="gpu_b",
            max_tokens=None,  # removes the config default
            temperature=0,
            top_k=-1,
            seed=0,
            stop=("x", "y"),
            tools=[{"type": "function", "function": {"name": "f"}}],
            vllm_xargs={"k": 1},  # a server-specific key passes through as documented
            repeat_penalty=1.1,
            frequency=3,  # unknown, and no near miss of a known keyword: passes through
            extra_body={"temprature": 1, "max_new_tokens": 5},  # verbatim, unchecked
            deadline=0.5,
            max_retries=0,
        )
        == "hi"
    )
    body = recorder.bodies()[-1]
    assert recorder.requests[-1].url == f"{B}/chat/completions"
    assert "max_tokens" not in body and body["temperature"] == 0 and body["top_k"] == -1
    assert body["stop"] == ["x", "y"] and body["vllm_xargs"] == {"k": 1}
    assert body["frequency"] == 3 and body["repeat_penalty"] == 1.1
    assert body["temprature"] == 1 and body["max_new_tokens"] == 5
    assert len(body["messages"]) == 7 and body["model"] == "big"
    assert body["messages"][-2] == {"role": "assistant", "content": "Sunny."}
    assert "extra_body" not in body and "deadline" not in body and "route" not in body
    assert str(provider.complete(["Once", "upon"], max_tokens=10**12)) == "hi"
    assert recorder.bodies()[-1]["prompt"] == ["Once", "upon"]
    assert "".join(provider.stream(MSG, max_tokens=1)) == "hi"
    assert len(recorder.requests) == 3
