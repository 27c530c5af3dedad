"""Security, proven on loopback servers.

1. Secrets (api keys, ``Authorization`` values, secret ``routes.X.headers`` values) never show
   in logs (loguru enabled at DEBUG), reprs, results, errors (str, repr, args, tracebacks,
   attributes, causes, attempts), ``stats()``, ``health()``, healthcheck output or the bench
   report, nor in a ``ConfigError`` about a bad key or header value.
2. A route's key goes to that route's server only: failover, streams, concurrency, the httpx
   client path (OpenAI SDK and raw httpx); the client's own key goes nowhere.
3. Redirects are never followed: the redirecting route fails (ejected, failover, or a typed
   error naming the status) and the redirect target never receives a request.
4. TLS is verified by default, and ``verify`` (false, or a CA bundle) is per route.

The servers: FakeVLLM, and ``MiniServer`` below (a threaded http.server, optionally TLS with a
trustme certificate), all on 127.0.0.1, started and stopped by the tests with bounded waits.
Every scenario runs through the sync and the async API (``Api``: one event loop throughout,
so the async engine keeps its aiohttp sessions).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import socketserver
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
import trustme
import yaml
from loguru import logger

from llm.cli import bench, healthcheck
from llm.config import LLMConfig, RouteConfig, load_config, parse_config
from llm.errors import (
    AllRoutesFailedError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    InvalidResponseError,
    LLMError,
    NoRouteError,
    RouteConnectionError,
    RouteTimeoutError,
    ServerError,
    StreamInterruptedError,
)
from llm.factory import LLMFactory
from llm.providers.vllm_openai import VLLMOpenAIProvider
from llm.results import ChatResult, StreamEvent
from llm.send.transport import RoutesTimeoutError, RoutesUnavailableError
from llm.testing import FakeVLLM

# what the routed httpx clients raise when no route answered (a connect error or a timeout);
# with openai 3, http_client() is an httpx2 client, with httpx2's
UNAVAILABLE: tuple[type[Exception], ...] = (RoutesUnavailableError, RoutesTimeoutError)
try:
    from llm.send.transport_httpx2 import Routes2TimeoutError, Routes2UnavailableError

    UNAVAILABLE += (Routes2UnavailableError, Routes2TimeoutError)
except ImportError:
    pass

SECRET = "sk-SECRET-5e1f9a"  # route keys
SECRET_B = "sk-SECRET-b7c3d2"
SECRET_C = "sk-SECRET-c81f07"
HEADER_SECRET = "hdr-SECRET-0c4d8e"  # a secret value in routes.X.headers
CLIENT_KEY = "sk-CLIENT-9d2e4f"  # what an OpenAI SDK user passes: must reach no server
OTHER_KEY = "sk-OTHER-3a6b1c"  # the key a "locked" server wants (no route has it)
SECRETS = (SECRET, SECRET_B, SECRET_C, HEADER_SECRET)
MESSAGES = [{"role": "user", "content": "hello"}]
CALL_TIMEOUT = 30.0  # bound on any one async call of a test

T = TypeVar("T")


# -- looking for secrets -----------------------------------------------------------------


def _needles(secret: str) -> list[str]:
    """The secret, its distinctive tail, and its base64 forms at the three byte alignments
    (so ``Bearer <secret>``, ``user:<secret>`` ... encoded anywhere in a text are found)."""
    raw = secret.encode()
    found = {secret, secret.lower(), secret[-6:]}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode()
        middle = encoded[-(-8 * shift // 6) : 8 * (shift + len(raw)) // 6]
        found.add(middle)
        found.add(middle.replace("+", "-").replace("/", "_"))
    return sorted(found)


NEEDLES = {secret: _needles(secret) for secret in SECRETS}


def assert_clean(*texts: object) -> None:
    """No secret, in any form, in any of ``texts`` (non-strings are repr'd)."""
    for text in texts:
        shown = text if isinstance(text, str) else repr(text)
        for secret, needles in NEEDLES.items():
            for needle in needles:
                at = shown.find(needle)
                context = shown[max(0, at - 160) : at + 80]
                assert at < 0, f"secret {secret!r} leaked (as {needle!r}): ...{context!r}"


def error_texts(error: BaseException) -> list[str]:
    """What an error can show: str, repr, args, the formatted traceback (with the causes and
    contexts Python prints), its attributes, its attempts, and the same for its last_error."""
    texts: list[str] = []
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [
            str(current),
            repr(current),
            repr(current.args),
            "".join(traceback.format_exception(current)),
            repr(getattr(current, "__dict__", {})),
        ]
        texts += [attempt.describe() for attempt in getattr(current, "attempts", None) or ()]
        last = getattr(current, "last_error", None)
        pending.append(last if isinstance(last, BaseException) else None)
        pending.append(current.__cause__)
        if not current.__suppress_context__:
            pending.append(current.__context__)
    return texts


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Everything the library logs at DEBUG and above, while the test runs."""
    lines: list[str] = []
    sink = logger.add(
        lambda message: lines.append(str(message)),
        level="DEBUG",
        format="{level} {name}:{function} {message} {extra}",
    )
    logger.enable("llm")
    try:
        yield lines
    finally:
        logger.remove(sink)
        logger.disable("llm")


# -- configs and the two APIs ----------------------------------------------------------


def route(url: str, model: str = "m", **settings: Any) -> dict[str, Any]:
    return {"base_url": url, "model": model, "timeout": 3, **settings}


def config_for(
    routes: Mapping[str, Any],
    *,
    params: Mapping[str, Any] | None = None,
    health: Mapping[str, Any] | None = None,
    **llm: Any,
) -> dict[str, Any]:
    return {
        "llm": {
            "routes": dict(routes),
            "params": {"max_tokens": 8, "timeout": 3, "deadline": 8, **(params or {})},
            "retry": {"backoff_initial": 0.01, "backoff_max": 0.05},
            "health": {"cooldown": 0.05, "max_cooldown": 0.2, **_cooldowns(health)},
            **llm,
        }
    }


def _cooldowns(health: Mapping[str, Any] | None) -> dict[str, Any]:
    settings = dict(health or {})
    if "cooldown" in settings:  # a long cooldown keeps an ejected route ejected for the test
        settings.setdefault("max_cooldown", settings["cooldown"])
    return settings


class Api:
    """One provider driven through its sync methods, or its async ones on one event loop."""

    def __init__(self, provider: VLLMOpenAIProvider, kind: str, follow_redirects: bool) -> None:
        self.provider = provider
        self.kind = kind
        self.loop = asyncio.new_event_loop() if kind == "async" else None
        sdk_options: dict[str, Any] = {
            "base_url": "http://llm-routes/v1",
            "api_key": CLIENT_KEY,
            "default_headers": {"X-Api-Key": CLIENT_KEY},
            "max_retries": 0,
        }
        if self.loop is None:
            self.http = provider.http_client(follow_redirects=follow_redirects)
            self.sdk = openai.OpenAI(
                http_client=provider.http_client(follow_redirects=follow_redirects),
                **sdk_options,
            )
        else:
            self.ahttp = provider.async_http_client(follow_redirects=follow_redirects)
            self.asdk = openai.AsyncOpenAI(
                http_client=provider.async_http_client(follow_redirects=follow_redirects),
                **sdk_options,
            )

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        assert self.loop is not None
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, CALL_TIMEOUT))

    def chat(self, **options: Any) -> ChatResult:
        if self.loop is None:
            return self.provider.chat_completion(MESSAGES, **options)
        return self._run(self.provider.achat_completion(MESSAGES, **options))

    def stream(self, **options: Any) -> list[StreamEvent]:
        if self.loop is None:
            return list(self.provider.stream_events(MESSAGES, **options))

        async def collect() -> list[StreamEvent]:
            events = self.provider.astream_events(MESSAGES, **options)
            try:
                return [event async for event in events]
            finally:
                await events.aclose()

        return self._run(collect())

    def many_chats(self, count: int) -> list[ChatResult]:
        """``count`` calls at once (threads, or tasks)."""
        if self.loop is None:
            with ThreadPoolExecutor(max_workers=4) as pool:
                return list(pool.map(lambda _: self.chat(), range(count)))

        async def gather() -> list[ChatResult]:
            calls = (self.provider.achat_completion(MESSAGES) for _ in range(count))
            return list(await asyncio.gather(*calls))

        return self._run(gather())

    def health(self) -> dict[str, dict[str, Any]]:
        if self.loop is None:
            return self.provider.health()
        return self._run(self.provider.ahealth())

    def sdk_chat(self, model: str, *, stream: bool = False) -> str:
        """One chat through the OpenAI SDK on the provider's httpx client; the text."""
        if self.loop is None:
            if stream:
                chunks = self.sdk.chat.completions.create(
                    model=model, messages=MESSAGES, max_tokens=8, stream=True
                )
                return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            answer = self.sdk.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8)
            return answer.choices[0].message.content or ""

        async def call() -> str:
            if stream:
                chunks = await self.asdk.chat.completions.create(
                    model=model, messages=MESSAGES, max_tokens=8, stream=True
                )
                pieces = [c.choices[0].delta.content or "" async for c in chunks if c.choices]
                return "".join(pieces)
            answer = await self.asdk.chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=8
            )
            return answer.choices[0].message.content or ""

        return self._run(call())

    def http_post(self, payload: dict[str, Any]) -> httpx.Response:
        """A raw httpx POST /chat/completions carrying the client's own credentials."""
        headers = {"Authorization": f"Bearer {CLIENT_KEY}", "X-Api-Key": CLIENT_KEY}
        if self.loop is None:
            return self.http.post("/chat/completions", json=payload, headers=headers)
        return self._run(self.ahttp.post("/chat/completions", json=payload, headers=headers))

    def http_stream(self, payload: dict[str, Any]) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {CLIENT_KEY}", "X-Api-Key": CLIENT_KEY}
        body = {**payload, "stream": True}
        if self.loop is None:
            with self.http.stream("POST", "/chat/completions", json=body, headers=headers) as r:
                return r.status_code, r.read()

        async def call() -> tuple[int, bytes]:
            async with self.ahttp.stream(
                "POST", "/chat/completions", json=body, headers=headers
            ) as r:
                return r.status_code, await r.aread()

        return self._run(call())

    def close(self) -> None:
        if self.loop is None:
            self.sdk.close()
            self.http.close()
            self.provider.close()
            return

        async def shut() -> None:
            await self.asdk.close()
            await self.ahttp.aclose()
            await self.provider.aclose()

        try:
            self._run(shut())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


@contextlib.contextmanager
def routed(
    routes_or_config: Mapping[str, Any] | LLMConfig,
    kind: str,
    *,
    follow_redirects: bool = False,
    **options: Any,
) -> Iterator[Api]:
    config = (
        routes_or_config
        if isinstance(routes_or_config, LLMConfig)
        else parse_config(config_for(routes_or_config, **options), environ={})
    )
    api = Api(LLMFactory.create_provider(config=config), kind, follow_redirects)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A base_url whose port is bound but not listening: connecting is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        sock.close()


# -- a small loopback server of our own (redirects, TLS) --------------------------------


@dataclass(frozen=True)
class Seen:
    """One request a MiniServer received (header names lower-cased, duplicates kept)."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


Responder = Callable[[Seen], tuple[int, dict[str, str], bytes]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5.0  # bounds every read of a kept-alive connection
    server: _ThreadedServer

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        # headers and body are two writes: without this, Nagle + delayed ACK cost ~40 ms each
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # in this thread, bounded by the timeout
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = tuple((name.lower(), value) for name, value in self.headers.items())
        seen = Seen(self.command, self.path, headers, body)
        owner = self.server.owner
        owner.record(seen)
        status, extra, payload = owner.respond(seen)
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_HEAD = _answer


class _ThreadedServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: MiniServer

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        self.owner.connected()
        context = self.owner.ssl_context
        if context is not None:  # the handshake happens in the handler's thread
            sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.owner.errors += 1  # failed handshakes, clients going away: expected here


class MiniServer:
    """A threaded HTTP(S) server on 127.0.0.1 answering with ``respond``; records requests."""

    def __init__(self, respond: Responder, ssl_context: ssl.SSLContext | None = None) -> None:
        self.respond = respond
        self.ssl_context = ssl_context
        self.connections = 0
        self.errors = 0
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = _ThreadedServer(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    def connected(self) -> None:
        with self._lock:
            self.connections += 1

    def __enter__(self) -> MiniServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        stopper = threading.Thread(target=self._server.shutdown, daemon=True)
        stopper.start()
        stopper.join(5.0)
        self._server.server_close()
        self._thread.join(5.0)
        assert not self._thread.is_alive(), "MiniServer did not stop within 5 s"


JSON_TYPE = {"Content-Type": "application/json"}


def vllm_like(model: str) -> Responder:
    """/health, /v1/models and non-streamed /v1/chat/completions, shaped like vLLM's."""

    def respond(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        if seen.path == "/health":
            return 200, {}, b""
        if seen.path == "/v1/models":
            entry = {"id": model, "object": "model", "max_model_len": 512}
            models = {"object": "list", "data": [entry]}
            return 200, JSON_TYPE, json.dumps(models).encode()
        if seen.method == "POST" and seen.path == "/v1/chat/completions":
            answer = {
                "id": "chatcmpl-tls",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "over tls"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }
            return 200, JSON_TYPE, json.dumps(answer).encode()
        error = {"error": {"message": "not found", "type": "NotFoundError", "code": 404}}
        return 404, JSON_TYPE, json.dumps(error).encode()

    return respond


def redirect_to(target: str, status: int) -> Responder:
    """Every request is answered ``status`` with a Location on ``target`` (same path), whose
    userinfo and query carry a secret: an error naming the target must not show them."""
    with_credentials = target.replace("://", f"://user:{SECRET_C}@", 1)

    def respond(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        location = f"{with_credentials}{seen.path}?api_key={SECRET_C}"
        headers = {"Location": location, "Content-Type": "text/html"}
        return status, headers, b"<html><body>moved</body></html>"

    return respond


# ======================================================================================
# 1. secrets never show
# ======================================================================================


def test_reprs_of_configs_provider_balancer_and_stats_hide_secrets(tmp_path: Path) -> None:
    nowhere = "http://127.0.0.1:9/v1"
    data = {
        "llm": {
            "routes": {
                "a": {
                    "base_url": nowhere,
                    "model": "m",
                    "api_key": SECRET,
                    "headers": {"X-Api-Key": HEADER_SECRET, "Authorization": f"Bearer {SECRET_C}"},
                },
                "b": {"base_url": nowhere, "model": "m", "api_key": "${ROUTE_B_KEY}"},
                "c": {"base_url": nowhere, "model": "m"},  # its key comes from VLLM_API_KEY
            }
        }
    }
    environ = {"ROUTE_B_KEY": SECRET_B, "VLLM_API_KEY": SECRET_C}
    config = parse_config(data, environ=environ)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    from_file = load_config(path, environ=environ)
    for loaded in (config, from_file):  # the secrets really are in there
        assert loaded.route("a").api_key == SECRET
        assert loaded.route("a").headers["X-Api-Key"] == HEADER_SECRET
        assert loaded.route("b").api_key == SECRET_B
        assert loaded.route("c").api_key == SECRET_C
    provider = LLMFactory.create_provider(config=config)
    try:
        balancer = provider.balancer
        texts = [
            repr(config),
            str(config),
            f"{config}",
            repr(from_file),
            repr(config.routes),
            *(repr(r) for r in config.routes.values()),
            *(str(r) for r in config.routes.values()),
            repr(provider),
            str(provider),
            repr(vars(provider)),
            repr(balancer.routes),
            repr(balancer.pool("m")),
            repr(provider.stats()),
            json.dumps(provider.stats()),
        ]
    finally:
        provider.close()
    assert "name='a'" in repr(config.route("a"))  # the reprs are real ones
    assert_clean(*texts)


_NOWHERE_ROUTE = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
_SECRET_HEADERS = {"X-Api-Key": HEADER_SECRET}


@pytest.mark.parametrize(
    ("settings", "key_path"),
    [
        pytest.param({"api_key": [SECRET]}, "llm.routes.a.api_key", id="api_key-list"),
        pytest.param({"api_key": {"value": SECRET}}, "llm.routes.a.api_key", id="api_key-map"),
        pytest.param(
            {"headers": {"X-Api-Key": [HEADER_SECRET]}},
            "llm.routes.a.headers.X-Api-Key",
            id="header-list",
        ),
        pytest.param(
            {"headers": {"X-Api-Key": {"value": HEADER_SECRET}}},
            "llm.routes.a.headers.X-Api-Key",
            id="header-map",
        ),
        pytest.param(
            {"headers": f"X-Api-Key: {HEADER_SECRET}"}, "llm.routes.a.headers", id="headers-text"
        ),
        pytest.param(
            {"api_key": f"{SECRET}${{NOT_SET_ANYWHERE}}"},
            "llm.routes.a.api_key",
            id="api_key-missing-variable",
        ),
        pytest.param(
            {"api_key": SECRET, "headers": _SECRET_HEADERS, "timeout": -1},
            "llm.routes.a.timeout",
            id="another-key-wrong",
        ),
        pytest.param(
            {"api_key": SECRET, "headers": _SECRET_HEADERS, "verify": 3},
            "llm.routes.a.verify",
            id="verify-wrong",
        ),
    ],
)
def test_config_errors_never_show_a_key_or_header_value(
    settings: dict[str, Any], key_path: str, tmp_path: Path
) -> None:
    data = {"llm": {"routes": {"a": {**_NOWHERE_ROUTE, **settings}}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    for load in (lambda: parse_config(data, environ={}), lambda: load_config(path, environ={})):
        with pytest.raises(ConfigError) as caught:
            load()
        assert caught.value.key_path == key_path
        assert_clean(*error_texts(caught.value))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            f'llm:\n  routes:\n    a: {{base_url: "http://127.0.0.1:9/v1", model: m, '
            f'api_key: "{SECRET}}}\n',
            id="unterminated-quote",
        ),
        pytest.param(
            "llm:\n  routes:\n    a:\n      base_url: http://127.0.0.1:9/v1\n      model: m\n"
            f"      api_key: {SECRET}\n      api_key: {SECRET_B}\n",
            id="duplicate-api_key",
        ),
        pytest.param(
            "llm:\n  routes:\n    a:\n      base_url: http://127.0.0.1:9/v1\n      model: m\n"
            f"      api_key: {SECRET}: {SECRET_B}\n",
            id="colon-in-api_key",
        ),
    ],
)
def test_yaml_errors_on_a_key_line_never_show_the_key(text: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert "invalid YAML" in str(caught.value)
    assert_clean(*error_texts(caught.value))


@pytest.fixture
def trouble(refused_url: str) -> Iterator[dict[str, Any]]:
    """A fleet where every kind of failure happens, every route carrying secrets."""
    servers = {
        "good": FakeVLLM("g", name="good", api_key=SECRET_B),
        "wrong_key": FakeVLLM("m", name="locked", api_key=OTHER_KEY),
        "five_hundred": FakeVLLM("m", name="broken"),
        "hung": FakeVLLM("m", name="hung"),
        "garbage": FakeVLLM("m", name="garbage"),
        "cut": FakeVLLM("c", name="cut"),
    }
    with contextlib.ExitStack() as stack:
        for server in servers.values():
            stack.enter_context(server)
        servers["five_hundred"].fail_fraction(1.0, 500)
        servers["hung"].hang(True)
        servers["garbage"].respond_garbage("malformed_json")
        servers["cut"].cut_streams_after(3)  # the role chunk, two tokens, then the cut
        secret = {"api_key": SECRET, "headers": _SECRET_HEADERS}
        routes = {
            "good": route(servers["good"].base_url, "g", api_key=SECRET_B),
            "wrong_key": route(servers["wrong_key"].base_url, **secret),
            "five_hundred": route(servers["five_hundred"].base_url, **secret),
            "refused": route(refused_url, **secret),
            "hung": route(servers["hung"].base_url, timeout=0.15, **secret),
            "garbage": route(servers["garbage"].base_url, **secret),
            "cut": route(servers["cut"].base_url, "c", **secret),
            "refused_only": route(refused_url, "r", **secret),
        }
        yield {"servers": servers, "routes": routes}


def test_real_failures_keep_secrets_out_of_errors_results_stats_health_and_logs(
    trouble: dict[str, Any], kind: str, logs: list[str]
) -> None:
    texts: list[str] = []
    with routed(trouble["routes"], kind) as api:
        result = api.chat(route="good")
        events = api.stream(route="good")
        assert result.route == "good" and result.content
        assert events[-1].kind == "end" and events[-1].route == "good"
        texts += [repr(result), str(result), repr(events)]

        expected: dict[str, tuple[type[LLMError], int | None]] = {
            "wrong_key": (AuthenticationError, 401),
            "five_hundred": (ServerError, 500),
            "refused": (RouteConnectionError, None),
            "hung": (RouteTimeoutError, None),
            "garbage": (InvalidResponseError, None),
        }
        for name, (error_class, status) in expected.items():
            for call in (api.chat, api.stream):
                with pytest.raises(AllRoutesFailedError) as caught:
                    call(route=name, max_retries=0)
                last = caught.value.last_error
                assert isinstance(last, error_class), (name, repr(caught.value))
                assert getattr(last, "status_code", None) == status
                texts += error_texts(caught.value)

        with pytest.raises(AllRoutesFailedError) as caught:  # a whole pool, several attempts
            api.chat(model="m", max_retries=5)
        assert len(caught.value.attempts) >= 4
        assert len({attempt.route for attempt in caught.value.attempts}) >= 4
        texts += error_texts(caught.value)

        with pytest.raises(StreamInterruptedError) as interrupted:
            api.stream(route="cut")
        with pytest.raises(BadRequestError) as bad:
            api.chat(route="good", max_tokens=100_000)
        with pytest.raises(NoRouteError) as unknown:
            api.chat(route="nowhere")
        assert bad.value.status_code == 400
        for error in (interrupted.value, bad.value, unknown.value):
            texts += error_texts(error)

        # the httpx client path: raw httpx and the OpenAI SDK
        with pytest.raises(UNAVAILABLE) as unavailable:
            api.http_post({"model": "r", "messages": MESSAGES})
        texts += error_texts(unavailable.value)
        try:
            response = api.http_post({"model": "m", "messages": MESSAGES})
        except UNAVAILABLE as error:  # the last attempt was a connect error or a timeout
            texts += error_texts(error)
        else:
            assert response.status_code >= 400
            texts += [response.text, repr(response.headers), repr(response.extensions)]
        for model in ("r", "m", "g"):
            try:
                texts.append(api.sdk_chat(model))
            except openai.OpenAIError as error:
                texts += error_texts(error)

        trouble["servers"]["five_hundred"].reset()  # the broken server recovers
        assert api.chat(route="five_hundred").route == "five_hundred"

        stats = api.provider.stats()
        health = api.health()
    assert stats["wrong_key"]["failures"] >= 1 and stats["refused"]["failures"] >= 1
    assert health["wrong_key"]["healthy"] is False and "401" in health["wrong_key"]["error"]
    assert health["refused"]["error"] == "connection refused"
    texts += [repr(stats), json.dumps(stats), repr(health), json.dumps(health)]
    assert any("wrong_key is misconfigured" in line for line in logs), logs
    assert any("refused ejected" in line for line in logs), logs
    assert any("five_hundred is healthy again" in line for line in logs), logs
    assert_clean(*texts, *logs)


def test_active_check_ejections_are_logged_without_secrets(
    refused_url: str, logs: list[str]
) -> None:
    with FakeVLLM("m", name="locked", api_key=OTHER_KEY) as locked:
        routes = {
            "wrong_key": route(locked.base_url, api_key=SECRET, headers=_SECRET_HEADERS),
            "refused": route(refused_url, api_key=SECRET_B, headers=_SECRET_HEADERS),
        }
        config = parse_config(config_for(routes, health={"check_interval": 0.05}), environ={})
        provider = LLMFactory.create_provider(config=config)
        try:
            give_up = time.monotonic() + 5.0
            while time.monotonic() < give_up:
                checked = " ".join(line for line in logs if "by an active check" in line)
                if "wrong_key ejected" in checked and "refused ejected" in checked:
                    break
                time.sleep(0.02)
            stats = provider.stats()
        finally:
            provider.close()
        sent = {r.headers.get("authorization") for r in locked.requests}
    assert f"Bearer {SECRET}" in sent  # the checks did carry the key
    assert any("wrong_key ejected" in line and "401" in line for line in logs), logs
    assert any("refused ejected" in line and "connection refused" in line for line in logs), logs
    assert_clean(*logs, repr(stats))


def test_healthcheck_output_hides_secrets(
    refused_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], logs: list[str]
) -> None:
    with FakeVLLM("m", name="keyed", api_key=SECRET) as keyed, FakeVLLM(
        "m", name="locked", api_key=OTHER_KEY
    ) as locked:
        routes = {
            "keyed": route(keyed.base_url, api_key=SECRET, headers=_SECRET_HEADERS),
            "wrong_key": route(locked.base_url, api_key=SECRET_B, headers=_SECRET_HEADERS),
            "dead": route(refused_url, api_key=SECRET_C, headers=_SECRET_HEADERS),
        }
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config_for(routes)))
        human_code = healthcheck.main(["--config", str(path), "--timeout", "2"])
        human = capsys.readouterr()
        json_code = healthcheck.main(["--config", str(path), "--json", "--timeout", "2"])
        machine = capsys.readouterr()
        report = healthcheck.run_checks(load_config(path), 2.0)
        sent = {r.headers.get("authorization") for r in keyed.requests}
    assert human_code == json_code == 1
    assert sent == {f"Bearer {SECRET}"}  # the key really travelled, to its own server
    found = {entry["name"]: entry for entry in json.loads(machine.out)["routes"]}
    assert found["keyed"]["healthy"] is True
    assert "401" in found["wrong_key"]["error"]
    assert found["dead"]["error"] == "connection refused"
    assert "✅" in human.out and "401" in human.out and "connection refused" in human.out
    texts = [
        human.out,
        human.err,
        machine.out,
        machine.err,
        repr(report),
        healthcheck.render_human(report, color=True),
        healthcheck.render_json(report, indent=None),
    ]
    assert_clean(*texts, *logs)


@pytest.mark.parametrize(("api_name", "stream"), [("async", True), ("sync", False)])
def test_bench_report_hides_secrets(
    api_name: str,
    stream: bool,
    refused_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    logs: list[str],
) -> None:
    with FakeVLLM("m", name="a", api_key=SECRET) as a, FakeVLLM(
        "m", name="locked", api_key=OTHER_KEY
    ) as locked, FakeVLLM("small", name="fb", api_key=SECRET_B) as fb:
        routes = {
            "a": route(a.base_url, api_key=SECRET, headers=_SECRET_HEADERS),
            "wrong_key": route(locked.base_url, api_key=SECRET_B, headers=_SECRET_HEADERS),
            "dead": route(refused_url, api_key=SECRET_C, headers=_SECRET_HEADERS),
            "fb": route(fb.base_url, "small", api_key=SECRET_B),
        }
        config = config_for(
            routes, default_route="a", fallback_route="fb", health={"cooldown": 5}
        )
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        out = tmp_path / "report.json"
        argv = ["--config", str(path), "--requests", "16", "--concurrency", "4"]
        argv += ["--api", api_name, "--json-out", str(out)] + (["--stream"] if stream else [])
        code = bench.main(argv)
        captured = capsys.readouterr()
    assert code != 2, captured.err
    report = json.loads(captured.out)
    assert code == 0, report["errors"]  # failover saved every call
    failed = report["retries"]["failed_attempts"]
    assert "status 401" in failed["wrong_key"] and "connect_error" in failed["dead"]
    assert_clean(captured.out, captured.err, out.read_text(), *logs)


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"api_key": SECRET + "\n"}, id="api_key-trailing-newline"),
        pytest.param({"api_key": SECRET + " "}, id="api_key-trailing-space"),
        pytest.param(
            {"api_key": SECRET, "headers": {"X-Api-Key": HEADER_SECRET + "\r\nX-Injected: 1"}},
            id="header-crlf-injection",
        ),
        pytest.param(
            {"api_key": SECRET, "headers": {"X-Api-Key": HEADER_SECRET + "é"}},
            id="header-non-ascii",
        ),
    ],
)
def test_a_key_or_header_value_unfit_for_http_never_leaks(
    settings: dict[str, Any], kind: str, logs: list[str]
) -> None:
    """A key with a trailing newline (a YAML block scalar, a key file) and the like: refusing
    it at load is fine, and so is a typed error at call time, as long as nothing shows it."""
    with FakeVLLM("m", name="a", api_key=SECRET) as server:
        data = config_for({"a": route(server.base_url, **settings)}, params={"max_retries": 0})
        try:
            config = parse_config(data, environ={})
        except ConfigError as error:
            assert error.key_path is not None and error.key_path.startswith("llm.routes.a.")
            assert_clean(*error_texts(error))
            return
        texts: list[str] = []
        with routed(config, kind) as api:
            for call in (api.chat, api.stream):
                try:  # anything but an LLMError escaping fails the test
                    texts.append(repr(call()))
                except LLMError as error:
                    texts += error_texts(error)
            texts += [repr(api.health()), repr(api.provider.stats())]
        report = healthcheck.run_checks(config, 2.0)
        texts += [healthcheck.render_json(report), healthcheck.render_human(report, color=False)]
        injected = [r for r in server.requests if "x-injected" in r.headers]
    assert injected == []  # no header injection either
    assert_clean(*texts, *logs)


# ======================================================================================
# 2. a route's key goes to that route only
# ======================================================================================


def test_each_route_key_reaches_its_own_server_only(kind: str) -> None:
    with FakeVLLM("m", name="a", api_key=SECRET) as a, FakeVLLM(
        "m", name="b", api_key=SECRET_B
    ) as b, FakeVLLM("m", name="c") as c:
        routes = {
            "a": route(a.base_url, api_key=SECRET, headers=_SECRET_HEADERS),
            "b": route(b.base_url, api_key=SECRET_B),
            "c": route(c.base_url),  # no key: vLLM's convention, "Bearer EMPTY"
        }
        payload = {"model": "m", "messages": MESSAGES, "max_tokens": 8}
        with routed(routes, kind) as api:
            results = [api.chat() for _ in range(9)]
            a.fail_next(2, 503)
            b.fail_next(1, 500)
            results += [api.chat() for _ in range(6)]
            time.sleep(0.3)  # every cooldown (<= 0.2 s, jittered) is over: "a" takes streams
            a.fail_next(1, 503)
            streams = [api.stream() for _ in range(6)]
            c.down()
            results += [api.chat() for _ in range(4)]
            c.up()
            time.sleep(0.3)  # every cooldown (<= 0.2 s, jittered) is over
            results += api.many_chats(16)
            time.sleep(0.3)
            a.fail_next(1, 503)
            sdk = [api.sdk_chat("m") for _ in range(6)]
            sdk += [api.sdk_chat("m", stream=True) for _ in range(3)]
            raw = [api.http_post(payload) for _ in range(4)]
            raw_streams = [api.http_stream(payload) for _ in range(4)]
            health = api.health()
    assert any(len(r.attempts) > 1 and r.attempts[0].route != r.route for r in results)
    assert any(len(events[-1].attempts) > 1 for events in streams)  # a stream failed over
    assert all(sdk) and all(r.status_code == 200 for r in raw)
    assert all(status == 200 and b"[DONE]" in body for status, body in raw_streams)
    assert all(entry["healthy"] for entry in health.values())
    own = {
        a: (f"Bearer {SECRET}", HEADER_SECRET, {SECRET, HEADER_SECRET}),
        b: (f"Bearer {SECRET_B}", None, {SECRET_B}),
        c: ("Bearer EMPTY", None, set()),
    }
    for server, (authorization, x_api_key, mine) in own.items():
        seen = server.requests
        posts = [r for r in seen if r.method == "POST"]
        assert len(posts) >= 4, (server.name, len(posts))
        assert any(isinstance(r.json, dict) and r.json.get("stream") for r in posts)
        assert any(r.path == "/health" for r in seen) and any(r.path == "/v1/models" for r in seen)
        foreign = (set(SECRETS) | {CLIENT_KEY}) - mine
        for r in seen:
            assert r.headers.get("authorization") == authorization, (server.name, r.path)
            assert r.headers.get("x-api-key") == x_api_key, (server.name, r.path)
            everything = repr(r.headers) + r.body.decode("utf-8", "replace")
            assert not [key for key in foreign if key in everything], (server.name, r.path)


# ======================================================================================
# 3. redirects are not followed
# ======================================================================================


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed_and_carry_no_credentials(
    status: int, kind: str, logs: list[str]
) -> None:
    texts: list[str] = []
    with FakeVLLM("m", name="target") as target, FakeVLLM(
        "m", name="good", api_key=SECRET_B
    ) as good, MiniServer(redirect_to(target.url, status)) as redirector:
        redirecting = {"api_key": SECRET, "headers": _SECRET_HEADERS}
        routes = {
            "redir": route(redirector.url + "/v1", **redirecting),
            "good": route(good.base_url, api_key=SECRET_B),
            "solo": route(redirector.url + "/v1", "solo", **redirecting),  # a pool of its own
        }
        with routed(routes, kind, follow_redirects=True, health={"cooldown": 5}) as api:
            results = [api.chat() for _ in range(2)]
            assert [r.route for r in results] == ["good", "good"]
            tried = [a for r in results for a in r.attempts if a.route == "redir"]
            assert tried and tried[0].outcome == "status" and tried[0].status_code == status
            assert api.provider.stats()["redir"]["state"] == "ejected"
            assert api.stream()[-1].route == "good"

            for call in (api.chat, api.stream):
                with pytest.raises(AllRoutesFailedError) as caught:
                    call(route="redir", max_retries=0)
                last = caught.value.last_error
                assert isinstance(last, APIStatusError) and last.status_code == status
                assert f"HTTP {status}" in str(caught.value)
                texts += error_texts(caught.value)

            health = api.health()
            assert health["redir"]["healthy"] is False
            assert health["redir"]["error"] == f"/health answered HTTP {status}"

            # the httpx client path, on clients that would follow redirects
            assert api.sdk_chat("m")  # answered by "good"
            with pytest.raises(openai.APIStatusError) as sdk_error:
                api.sdk_chat("solo")
            assert sdk_error.value.status_code == status
            texts += error_texts(sdk_error.value)
            response = api.http_post({"model": "solo", "messages": MESSAGES})
            assert response.status_code == status
            assert "location" not in response.headers and response.history == []
            stats = api.provider.stats()
        assert target.requests == []  # not one request followed a redirect
        seen = redirector.requests
        assert len(seen) >= 8
        assert {tuple(r.values("authorization")) for r in seen} == {(f"Bearer {SECRET}",)}
    assert stats["solo"]["state"] == "ejected"
    assert any("redir ejected" in line and str(status) in line for line in logs), logs
    assert_clean(*texts, repr(stats), *logs)


# ======================================================================================
# 4. TLS: verified by default, configurable per route
# ======================================================================================


@dataclass(frozen=True)
class TLSFiles:
    ca_pem: Path
    other_ca_pem: Path  # a CA that did not sign the server's certificate
    server_context: ssl.SSLContext


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    ca, other = trustme.CA(), trustme.CA()
    folder = tmp_path_factory.mktemp("tls")
    ca_pem, other_pem = folder / "ca.pem", folder / "other-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    other.cert_pem.write_to_path(str(other_pem))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return TLSFiles(ca_pem, other_pem, context)


@pytest.fixture
def https_server(tls: TLSFiles) -> Iterator[MiniServer]:
    with MiniServer(vllm_like("m"), ssl_context=tls.server_context) as server:
        yield server


def _refused_for_tls(error: AllRoutesFailedError) -> None:
    assert isinstance(error.last_error, RouteConnectionError), repr(error)
    assert "certificate" in str(error).lower(), str(error)


def test_tls_is_verified_by_default_and_the_call_fails_over(
    https_server: MiniServer, kind: str
) -> None:
    with FakeVLLM("m", name="plain", api_key=SECRET_B) as plain:
        routes = {
            "tls": route(https_server.url + "/v1", api_key=SECRET),
            "plain": route(plain.base_url, api_key=SECRET_B),
        }
        with routed(routes, kind, health={"cooldown": 5}) as api:
            results = [api.chat() for _ in range(2)]
            assert [r.route for r in results] == ["plain", "plain"]
            refused = [a for r in results for a in r.attempts if a.route == "tls"]
            assert refused and refused[0].outcome == "connect_error"
            assert "certificate" in (refused[0].error or "").lower(), refused[0]
            with pytest.raises(AllRoutesFailedError) as caught:
                api.chat(route="tls", max_retries=0)
            _refused_for_tls(caught.value)
            health = api.health()
    assert health["plain"]["healthy"] is True
    assert health["tls"]["healthy"] is False
    assert "certificate" in health["tls"]["error"].lower(), health["tls"]
    assert https_server.connections >= 2  # the client did connect...
    assert https_server.requests == []  # ...and sent nothing (no key) over an unverified link


def test_tls_verify_with_a_ca_bundle(https_server: MiniServer, tls: TLSFiles, kind: str) -> None:
    routes = {
        "trusted": route(https_server.url + "/v1", api_key=SECRET, verify=str(tls.ca_pem)),
        "wrong_ca": route(https_server.url + "/v1", api_key=SECRET_B, verify=str(tls.other_ca_pem)),
    }
    with routed(routes, kind) as api:
        result = api.chat(route="trusted")
        with pytest.raises(AllRoutesFailedError) as caught:
            api.chat(route="wrong_ca", max_retries=0)
        health = api.health()
    assert result.route == "trusted" and result.content == "over tls"
    _refused_for_tls(caught.value)
    assert health["trusted"]["healthy"] is True
    assert health["wrong_ca"]["healthy"] is False
    assert "certificate" in health["wrong_ca"]["error"].lower()
    seen = https_server.requests
    assert len(seen) >= 3  # the chat, /health, /v1/models
    assert {tuple(r.values("authorization")) for r in seen} == {(f"Bearer {SECRET}",)}


def test_tls_verify_false_accepts_any_certificate(https_server: MiniServer, kind: str) -> None:
    routes = {"insecure": route(https_server.url + "/v1", api_key=SECRET, verify=False)}
    with routed(routes, kind) as api:
        result = api.chat()
        health = api.health()
    assert result.route == "insecure" and result.content == "over tls"
    assert health["insecure"]["healthy"] is True
    assert any(r.path == "/v1/chat/completions" for r in https_server.requests)


def test_tls_verify_is_per_route(https_server: MiniServer, tls: TLSFiles, kind: str) -> None:
    """One server, three routes: verify false on one does not switch it off on another, even
    with a connection of the lax route open to the same host and port."""
    url = https_server.url + "/v1"
    routes = {
        "insecure": route(url, api_key=SECRET_B, verify=False),
        "strict": route(url, api_key=SECRET),
        "trusted": route(url, api_key=SECRET_C, verify=str(tls.ca_pem)),
    }
    with routed(routes, kind) as api:
        answered = [api.chat(route="insecure").route]
        for _ in range(2):
            with pytest.raises(AllRoutesFailedError) as caught:
                api.chat(route="strict", max_retries=0)
            _refused_for_tls(caught.value)
            answered += [api.chat(route="trusted").route, api.chat(route="insecure").route]
        health = api.health()
    assert answered == ["insecure", "trusted", "insecure", "trusted", "insecure"]
    assert health["insecure"]["healthy"] is True and health["trusted"]["healthy"] is True
    assert health["strict"]["healthy"] is False
    assert "certificate" in health["strict"]["error"].lower()
    sent = {value for r in https_server.requests for value in r.values("authorization")}
    assert sent == {f"Bearer {SECRET_B}", f"Bearer {SECRET_C}"}  # never the strict route's key


def test_an_authorization_header_replaces_the_api_key(kind: str) -> None:
    """A route may carry its credentials as a header; it is then the only Authorization sent."""
    with FakeVLLM("m", api_key=SECRET) as server:
        auth = {"Authorization": f"Bearer {SECRET}"}
        with routed({"a": route(server.base_url, headers=auth)}, kind) as api:
            assert api.chat().route == "a"
            assert api.health()["a"]["healthy"] is True
        sent = [r.headers for r in server.requests]
    assert sent and all(headers["authorization"] == f"Bearer {SECRET}" for headers in sent)
    assert all("EMPTY" not in str(headers) for headers in sent)


def test_a_password_in_base_url_is_masked_where_the_route_is_shown() -> None:
    config = parse_config(
        {"llm": {"routes": {"a": route(f"http://user:{SECRET}@127.0.0.1:9/v1")}}}, environ={}
    )
    shown = config.route("a")
    with VLLMOpenAIProvider(config) as provider:
        stats = provider.stats()
    assert stats["a"]["base_url"] == "http://127.0.0.1:9/v1"
    assert_clean(repr(shown), shown.shown_url, repr(config), stats)
    assert shown.base_url == shown.shown_url == "http://127.0.0.1:9/v1"  # taken out at load
    basic = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
    assert dict(shown.headers) == {"Authorization": basic}  # what requests carry instead
    by_hand = RouteConfig(name="a", base_url=f"http://user:{SECRET}@127.0.0.1:9/v1", model="m")
    assert by_hand.shown_url == "http://***@127.0.0.1:9/v1"


def test_an_unusable_ca_bundle_fails_the_route_over_with_a_clear_error(
    kind: str, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-ca.pem")
    with FakeVLLM("m") as server:
        routes = {
            "tls": route("https://127.0.0.1:9/v1", verify=missing),
            "plain": route(server.base_url),
        }
        with routed(routes, kind) as api:
            result = api.chat(route=None)
    assert result.route == "plain"
    first = result.attempts[0]
    assert first.route == "tls" and first.outcome == "connect_error"
    assert f"cannot use llm.routes.tls.verify {missing!r}" in (first.error or "")
