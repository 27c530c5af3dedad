"""Classification of answers and exceptions: verdicts, server messages, typed errors."""

from __future__ import annotations

import asyncio
import email.utils
import types
from datetime import datetime, timedelta, timezone

import aiohttp
import httpx
import pytest

from llm.errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    NotFoundError,
    RateLimitError,
    RouteConnectionError,
    RouteError,
    RouteTimeoutError,
    ServerError,
)
from llm.judge import status as outcomes
from llm.judge.error_body import server_message
from llm.judge.status import (
    Verdict,
    outcome_name,
    retry_after_seconds,
    status_error,
    verdict_for_status,
)
from llm.send.failures import transport_error

# Verbatim vLLM 0.32.0 error bodies (from the captured protocol samples).
VLLM_404 = (
    b'{"error":{"message":"The model `no-such-model` does not exist. Valid aliases: tiny.",'
    b'"type":"NotFoundError","param":"model","code":404}}'
)
VLLM_400_VALIDATION = (
    b"{\"error\":{\"message\":\"1 validation error:\\n  {'type': 'missing', 'loc': "
    b"'body.messages', 'msg': 'Field required', 'input': '<dict of 2 items>'}\","
    b'"type":"Bad Request","param":"body.messages","code":400}}'
)
OLD_FLAT = (
    b'{"object":"error","message":"max_tokens must be at least 1, got 0.",'
    b'"type":"BadRequestError","param":null,"code":400}'
)
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


# -- verdicts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.OK),
        (201, Verdict.OK),
        (204, Verdict.OK),
        (400, Verdict.CALLER_FAULT),
        (401, Verdict.MISCONFIGURED),
        (403, Verdict.MISCONFIGURED),
        (404, Verdict.MISCONFIGURED),
        (408, Verdict.ROUTE_FAILURE),
        (409, Verdict.CALLER_FAULT),
        (413, Verdict.CALLER_FAULT),
        (422, Verdict.CALLER_FAULT),
        (429, Verdict.ROUTE_FAILURE),
        (500, Verdict.ROUTE_FAILURE),
        (502, Verdict.ROUTE_FAILURE),
        (503, Verdict.ROUTE_FAILURE),
        (504, Verdict.ROUTE_FAILURE),
        (302, Verdict.MISCONFIGURED),  # redirects are not followed: fix the base_url
        (307, Verdict.MISCONFIGURED),
        (101, Verdict.ROUTE_FAILURE),
    ],
)
def test_verdict_for_status(status: int, verdict: Verdict) -> None:
    assert verdict_for_status(status) is verdict


@pytest.mark.parametrize("status", [404, 405])
def test_a_missing_endpoint_other_than_completions_is_the_requests_fault(status):
    assert verdict_for_status(status, other_endpoint=True) is Verdict.CALLER_FAULT
    expected = Verdict.MISCONFIGURED if status == 404 else Verdict.CALLER_FAULT
    assert verdict_for_status(status) is expected  # (chat) completions: the base_url is wrong


# -- server messages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            VLLM_404,
            ("The model `no-such-model` does not exist. Valid aliases: tiny.", "NotFoundError"),
        ),
        (OLD_FLAT, ("max_tokens must be at least 1, got 0.", "BadRequestError")),
        (b'{"error":"Unauthorized"}', ("Unauthorized", None)),
        (b'{"detail":"Not Found"}', ("Not Found", None)),
        (b"", (None, None)),
        (b"  \n ", (None, None)),
        (b"[1, 2]", (None, None)),
        (b'"oops"', (None, None)),
        (b"42", (None, None)),
        (b"null", (None, None)),
        (b"{}", (None, None)),
        (b'{"error": {}}', (None, None)),
        (b'{"foo": "bar"}', (None, None)),
    ],
)
def test_server_message(body: bytes, expected: tuple[str | None, str | None]) -> None:
    assert server_message(body) == expected


def test_server_message_of_a_multi_line_vllm_validation_error() -> None:
    message, error_type = server_message(VLLM_400_VALIDATION)
    assert error_type == "Bad Request"
    assert message is not None
    assert message.startswith("1 validation error:\n")
    assert "Field required" in message


def test_server_message_of_an_html_page_is_its_text() -> None:
    message, error_type = server_message(HTML_502)
    assert error_type is None
    assert message is not None and "502 Bad Gateway" in message
    assert not message.startswith(("\r", "\n")) and not message.endswith(("\r", "\n"))


def test_server_message_of_a_long_or_broken_body_is_bounded() -> None:
    message, _ = server_message(b"x" * 10_000)
    assert message == "x" * 300
    message, _ = server_message(b"\xff\xfe bad bytes")
    assert message is not None and "bad bytes" in message


# -- typed status errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (409, BadRequestError),
        (422, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
    ],
)
def test_status_error_class(status: int, cls: type[APIStatusError]) -> None:
    error = status_error("r1", status, b'{"error":{"message":"nope","type":"X"}}')
    assert type(error) is cls
    assert error.status_code == status
    assert error.route == "r1"
    assert error.server_message == "nope"
    assert error.error_type == "X"
    assert f"HTTP {status}: nope" in str(error)
    assert "r1" in str(error)


def test_status_error_from_a_real_vllm_404() -> None:
    error = status_error("gpu1", 404, VLLM_404)
    assert isinstance(error, NotFoundError)
    assert error.server_message == (
        "The model `no-such-model` does not exist. Valid aliases: tiny."
    )
    assert error.error_type == "NotFoundError"
    assert error.body == VLLM_404.decode()
    assert "does not exist" in str(error)


def test_status_error_without_a_message() -> None:
    error = status_error("r", 502, b"")
    assert isinstance(error, ServerError)
    assert error.server_message is None
    assert "HTTP 502" in str(error)


def test_status_error_redirect_is_the_base_class() -> None:
    error = status_error("r", 302, b"")
    assert type(error) is APIStatusError
    assert "redirect to elsewhere not followed" in str(error)


def test_status_error_redirect_names_the_target_without_credentials() -> None:
    error = status_error(
        "r", 307, b"", location="https://user:pw@other.example:8443/v1/chat?token=abc#x"
    )
    assert error.status_code == 307 and error.route == "r"
    assert "https://other.example:8443/v1/chat" in str(error)
    for secret in ("user", "pw", "token", "abc"):
        assert secret not in str(error)
    assert "invalid location" in str(status_error("r", 301, b"", location="http://[::1"))


def test_status_error_body_is_truncated() -> None:
    error = status_error("r", 500, b"y" * 5000)
    assert error.body == "y" * 2000


# -- transport errors --------------------------------------------------------------------


def _connector_error() -> aiohttp.ClientConnectorError:
    key = types.SimpleNamespace(host="127.0.0.1", port=1, ssl=None)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))  # type: ignore[arg-type]


def _caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "cls", "words"),
    [
        (httpx.ConnectError("refused"), RouteConnectionError, "could not connect"),
        (httpx.ReadTimeout("slow"), RouteTimeoutError, "timed out"),
        (httpx.ConnectTimeout("slow"), RouteTimeoutError, "timed out"),
        (httpx.WriteTimeout("slow"), RouteTimeoutError, "timed out"),
        (httpx.PoolTimeout("slow"), RouteTimeoutError, "timed out"),
        (httpx.RemoteProtocolError("peer closed"), RouteConnectionError, "connection failed"),
        (httpx.ReadError("reset"), RouteConnectionError, "connection failed"),
        (TimeoutError(), RouteTimeoutError, "timed out"),
        (asyncio.TimeoutError(), RouteTimeoutError, "timed out"),
        (ConnectionRefusedError(111, "refused"), RouteConnectionError, "could not connect"),
        (ConnectionResetError(104, "reset"), RouteConnectionError, "connection failed"),
        # httpx-aiohttp reports a dropped connection as ConnectTimeout: the cause decides
        (
            _caused(httpx.ConnectTimeout("x"), aiohttp.ServerDisconnectedError()),
            RouteConnectionError,
            "connection failed",
        ),
        (
            _caused(httpx.ConnectTimeout("x"), _connector_error()),
            RouteConnectionError,
            "could not connect",
        ),
        (
            _caused(httpx.ConnectError("x"), _connector_error()),
            RouteConnectionError,
            "could not connect",
        ),
        (
            _caused(httpx.ReadTimeout("x"), aiohttp.ServerTimeoutError("read")),
            RouteTimeoutError,
            "timed out",
        ),
        # a cause that is not aiohttp's does not override httpx's own classification
        (_caused(httpx.ConnectTimeout("x"), OSError("inner")), RouteTimeoutError, "timed out"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_transport_error(exc: BaseException, cls: type, words: str) -> None:
    error = transport_error("r7", exc)
    assert type(error) is cls
    assert error.route == "r7"
    assert words in str(error)


def test_transport_error_keeps_a_route_error() -> None:
    original = RouteTimeoutError("already typed", route="r")
    assert transport_error("other", original) is original


def test_transport_error_names_the_exception_when_it_has_no_text() -> None:
    error = transport_error("r", httpx.ReadTimeout(""))
    assert "ReadTimeout" in str(error)


@pytest.mark.parametrize(
    ("error", "name"),
    [
        (ServerError("x", status_code=500), "status"),
        (RateLimitError("x", status_code=429), "status"),
        (RouteTimeoutError("x"), "timeout"),
        (RouteConnectionError("x"), "connect_error"),
        (InvalidResponseError("x"), "invalid_response"),
    ],
)
def test_outcome_name(error: RouteError, name: str) -> None:
    assert outcome_name(error) == name


# -- Retry-After -------------------------------------------------------------------------

NOW = datetime(2026, 11, 21, 18, 12, 18, tzinfo=timezone.utc)


@pytest.fixture
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcomes, "time", types.SimpleNamespace(time=NOW.timestamp))


def http_date(delta: float) -> str:
    return email.utils.format_datetime(NOW + timedelta(seconds=delta), usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        ("0.5", 0.5),
        (" 2 ", 2.0),
        ("0", 0.0),
        ("3600", 10.0),  # capped
        ("inf", 10.0),
        ("1e9", 10.0),
    ],
)
def test_retry_after_delta_seconds(value: str, expected: float) -> None:
    assert retry_after_seconds({"retry-after": value}, 10.0) == expected


@pytest.mark.parametrize("value", ["soon", "nan", "", "Mon, 99 Foo 2026 99:99:99 GMT"])
def test_retry_after_garbage_is_none(value: str) -> None:
    assert retry_after_seconds({"retry-after": value}, 10.0) is None


def test_retry_after_missing_is_none() -> None:
    assert retry_after_seconds({}, 10.0) is None
    assert retry_after_seconds(httpx.Headers({"content-type": "text/plain"}), 10.0) is None


@pytest.mark.parametrize("value", ["-5", "-0.1"])
def test_retry_after_negative_means_no_wait(value: str) -> None:
    assert not retry_after_seconds({"retry-after": value}, 10.0)  # 0.0 or None


def test_retry_after_from_httpx_headers_is_case_insensitive() -> None:
    assert retry_after_seconds(httpx.Headers({"Retry-After": "4"}), 10.0) == 4.0


@pytest.mark.usefixtures("frozen_time")
def test_retry_after_http_date() -> None:
    value = http_date(10)
    assert value == "Sat, 21 Nov 2026 18:12:28 GMT"
    assert retry_after_seconds({"retry-after": value}, 60.0) == pytest.approx(10.0)


@pytest.mark.usefixtures("frozen_time")
def test_retry_after_http_date_is_capped_and_not_negative() -> None:
    assert retry_after_seconds({"retry-after": http_date(3600)}, 30.0) == 30.0
    assert retry_after_seconds({"retry-after": http_date(-60)}, 30.0) == 0.0
