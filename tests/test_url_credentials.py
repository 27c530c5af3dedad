"""A ``user:password@`` in a route's base_url: decided at load, the same for sync and async.

The userinfo is taken out of ``base_url`` and becomes ``Authorization: Basic
base64(user:password)`` in the route's ``headers`` (user and password percent-decoded first).
It ends at the last ``@`` whose remainder parses as ``host[:port][/path]``, so an ``@`` in the
user name or a ``/`` in the password need no escaping. Beside an ``api_key`` or an
Authorization header it is refused: both would be sent as Authorization. No message, repr or
stats show the password.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from llm.config import RouteConfig, parse_config
from llm.errors import ConfigError
from llm.factory import LLMFactory

PASSWORD = "pw-SECRET-7f3a9c"  # distinctive: looked for in every text shown
API_KEY = "sk-SECRET-41d0e2"
WAIT = 10.0  # bound on every wait of the integration test, seconds


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def config_with(base_url: str, environ: dict[str, str] | None = None, **route: Any) -> Any:
    data = {"llm": {"routes": {"a": {"base_url": base_url, "model": "m", **route}}}}
    return parse_config(data, environ=environ or {})


def refusal(base_url: str, **route: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config_with(base_url, **route)
    return info.value


def assert_hidden(*texts: object) -> None:
    """Neither the password nor its percent-encoded form in any of ``texts``."""
    for text in texts:
        shown = text if isinstance(text, str) else repr(text)
        for needle in (PASSWORD, PASSWORD[3:], API_KEY):
            assert needle not in shown, shown


# ----------------------------------------------------------------------- at load


@pytest.mark.parametrize(
    ("url", "user", "password"),
    [
        pytest.param("http://user:pass@host:8000/v1", "user", "pass", id="plain"),
        pytest.param("http://us@er:p/ss@host:8000/v1", "us@er", "p/ss", id="at-and-slash"),
        pytest.param("http://us%40er:p%2Fss@host:8000/v1", "us@er", "p/ss", id="percent-encoded"),
        pytest.param("http://token@host:8000/v1/", "token", "", id="no-password"),
        pytest.param("http://user:pa:ss@host:8000/v1", "user", "pa:ss", id="colon-in-password"),
        pytest.param(f"https://u:{PASSWORD}@[::1]:8443/v1", "u", PASSWORD, id="ipv6"),
    ],
)
def test_userinfo_becomes_a_basic_authorization_header(url: str, user: str, password: str) -> None:
    route = config_with(url).route("a")
    scheme = url.split("://")[0]
    host = "[::1]:8443" if "[" in url else "host:8000"
    assert route.base_url == f"{scheme}://{host}/v1"
    assert dict(route.headers) == {"Authorization": basic(user, password)}
    assert route.api_key == "EMPTY"


def test_other_headers_are_kept_beside_the_basic_header() -> None:
    route = config_with(
        f"http://user:{PASSWORD}@host:8000/v1", headers={"X-Team": "search"}, api_key="EMPTY"
    ).route("a")
    assert dict(route.headers) == {"X-Team": "search", "Authorization": basic("user", PASSWORD)}


def test_vllm_base_url_goes_through_the_same_rule() -> None:
    config = config_with(
        "http://127.0.0.1:9/v1",
        environ={"VLLM_BASE_URL": f"http://us@er:{PASSWORD}@gpu-7:8000/v1"},
    )
    route = config.route("a")
    assert route.base_url == "http://gpu-7:8000/v1"
    assert dict(route.headers) == {"Authorization": basic("us@er", PASSWORD)}


def test_vllm_api_key_is_not_given_to_a_route_with_credentials_in_its_url() -> None:
    data = {
        "llm": {
            "routes": {
                "a": {"base_url": f"http://user:{PASSWORD}@host:8000/v1", "model": "m"},
                "b": {"base_url": "http://other:8000/v1", "model": "m"},
            }
        }
    }
    config = parse_config(data, environ={"VLLM_API_KEY": API_KEY})
    assert config.route("a").api_key == "EMPTY"
    assert dict(config.route("a").headers) == {"Authorization": basic("user", PASSWORD)}
    assert config.route("b").api_key == API_KEY


@pytest.mark.parametrize(
    "route",
    [
        pytest.param({"api_key": API_KEY}, id="api_key"),
        pytest.param({"headers": {"Authorization": f"Bearer {API_KEY}"}}, id="header"),
        pytest.param({"headers": {"aUtHoRiZaTiOn": f"Bearer {API_KEY}"}}, id="header-any-case"),
    ],
)
@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{PASSWORD}@host:8000/v1",
        f"http://us@er:p/{PASSWORD}@host:8000/v1",
    ],
)
def test_credentials_beside_another_authorization_are_refused(
    url: str, route: dict[str, Any]
) -> None:
    error = refusal(url, **route)
    assert error.key_path == "llm.routes.a.base_url"
    message = str(error)
    assert message.startswith("llm.routes.a.base_url: ")
    assert "both would be sent as Authorization" in message
    assert "keep one" in message
    assert_hidden(message, repr(error), error.args)


def test_the_default_api_key_is_no_conflict() -> None:
    route = config_with(f"http://user:{PASSWORD}@host:8000/v1", api_key="EMPTY").route("a")
    assert route.headers["Authorization"] == basic("user", PASSWORD)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"http://user:{PASSWORD}@host:99999/v1", id="bad-port"),
        pytest.param(f"http://us@er:p/{PASSWORD}@host:99999/v1", id="bad-port-at-and-slash"),
        pytest.param(f"http://us@er:{PASSWORD}@host:port/v1", id="port-not-a-number"),
        pytest.param(f"ftp://user:{PASSWORD}@host/v1", id="scheme"),
        pytest.param(f"user:{PASSWORD}@host:8000/v1", id="no-scheme"),
        pytest.param(f"http://user:{PASSWORD}@/v1", id="no-host"),
        pytest.param(f"http://user:{PASSWORD}@host:8000/v 1", id="space"),
        pytest.param(f"http://user:{PASSWORD}@host/v1/a@b", id="ambiguous-at"),
        pytest.param(f"http://user:8000/{PASSWORD}@host/v1", id="ambiguous-port"),
    ],
)
def test_another_problem_in_a_url_with_credentials_does_not_show_them(url: str) -> None:
    error = refusal(url)
    assert error.key_path == "llm.routes.a.base_url"
    assert_hidden(str(error), repr(error), error.args)
    assert "***@" in str(error)


def test_an_at_that_could_be_part_of_the_path_is_refused_as_ambiguous() -> None:
    error = refusal("http://host:8000/v1/team@example")
    assert error.key_path == "llm.routes.a.base_url"
    assert "%40" in str(error)
    assert config_with("http://host:8000/v1/team%40example").route("a").base_url == (
        "http://host:8000/v1/team%40example"
    )


# ----------------------------------------------------------------------- shown


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{PASSWORD}@host:8000/v1",
        f"http://us@er:p/{PASSWORD}@host:8000/v1",
        f"http://us%40er:p%2F{PASSWORD}@host:8000/v1",
    ],
)
def test_reprs_shown_url_and_stats_never_show_the_password(url: str) -> None:
    config = config_with(url)
    route = config.route("a")
    assert route.shown_url == "http://host:8000/v1"
    provider = LLMFactory.create_provider("vllm_openai", config=config)
    try:
        stats = provider.stats()
        assert stats["a"]["base_url"] == "http://host:8000/v1"
        assert_hidden(repr(route), route.shown_url, repr(config), stats, repr(provider))
    finally:
        provider.close()
    # A RouteConfig built by hand keeps its URL as given; what is shown is still masked.
    by_hand = RouteConfig(name="x", base_url=url, model="m")
    assert by_hand.shown_url == "http://***@host:8000/v1"
    assert_hidden(repr(by_hand), by_hand.shown_url)


# ----------------------------------------------------------------------- on the wire

ANSWER = json.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]]  # (path, Authorization), set per server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """A server on 127.0.0.1 that answers every POST with a chat completion and records the
    path and Authorization of each; yields its ``host:port`` and the records."""
    seen: list[tuple[str, str | None]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)
        assert not thread.is_alive()


USERINFO = [
    pytest.param("user", PASSWORD, id="plain"),
    pytest.param("us@er", f"p/{PASSWORD}", id="at-and-slash"),
]
MESSAGES = [{"role": "user", "content": "hello"}]


def provider_for(host: str, user: str, password: str) -> Any:
    url = f"http://{user}:{password}@{host}/v1"
    config = {"llm": {"routes": {"a": {"base_url": url, "model": "m", "timeout": WAIT}}}}
    return LLMFactory.create_provider("vllm_openai", config=config)


@pytest.mark.parametrize(("user", "password"), USERINFO)
def test_sync_calls_send_the_basic_header(
    recorder: tuple[str, list[tuple[str, str | None]]], user: str, password: str
) -> None:
    host, seen = recorder
    provider = provider_for(host, user, password)
    try:
        assert provider.chat(MESSAGES, max_retries=0) == "hi"
    finally:
        provider.close()
    assert seen == [("/v1/chat/completions", basic(user, password))]


@pytest.mark.asyncio
@pytest.mark.parametrize(("user", "password"), USERINFO)
async def test_async_calls_send_the_basic_header(
    recorder: tuple[str, list[tuple[str, str | None]]], user: str, password: str
) -> None:
    host, seen = recorder
    provider = provider_for(host, user, password)
    try:
        assert await asyncio.wait_for(provider.achat(MESSAGES, max_retries=0), WAIT) == "hi"
    finally:
        await provider.aclose()
    assert seen == [("/v1/chat/completions", basic(user, password))]
