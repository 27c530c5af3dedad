"""Secrets a server echoes back never leave the library: errors, tracebacks, stats, logs, reports.

Some gateways quote the key they refused ("invalid api key sk-..."), or a URL's user and
password. Raw servers (``raw_server.RawServer``) answer like that, in error statuses, in a
2xx body that is not JSON, in an error event of a stream and in a model list; every text the
library lets out must have every form of every secret of the config masked: the error's text
and ``repr``, its traceback, the status error's server message and body, ``stats()``, the log
lines, the health checks and the healthcheck command's output. Sync, async and streamed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from loguru import logger
from raw_server import RawRequest, RawServer, answer, sse

from llm import VLLMOpenAIProvider, parse_config
from llm.errors import LLMError

KEY = "sk-live-7f3a9c2e1b8d4f60aa"
HEADER = "hdr-5e2c7a91d04b3f"
PASSWORD = "p4ss-w0rd-9z8y"
MSG = [{"role": "user", "content": "hi"}]
ROOT = Path(__file__).resolve().parent.parent
KINDS = ["sync", "async", "stream", "astream"]
SECRETS = (KEY, HEADER, PASSWORD, f"gateway:{PASSWORD}", KEY.strip())


def echo(*texts: str) -> str:
    return "invalid credentials: " + ", ".join(texts)


ANSWERS = {
    "401-nested": answer({"error": {"message": echo(KEY), "type": "auth"}}, status=401),
    "401-plain-text": answer(echo(KEY, HEADER).encode(), status=401, content_type="text/plain"),
    "403-basic": answer({"error": echo(f"gateway:{PASSWORD}")}, status=403),
    "500-body": answer({"detail": echo(HEADER, PASSWORD)}, status=500),
    "200-not-json": answer(("garbage " + KEY).encode()),
    "200-error-object": answer({"error": {"message": echo(KEY)}}),
    "stream-error-event": sse([{"error": {"message": echo(KEY, PASSWORD)}}]),
}


@pytest.fixture
def logs() -> Iterator[list[str]]:
    lines: list[str] = []
    logger.enable("llm")
    sink = logger.add(lines.append, level="DEBUG", format="{level} {message}")
    try:
        yield lines
    finally:
        logger.remove(sink)
        logger.disable("llm")


def provider_for(url: str) -> VLLMOpenAIProvider:
    base = url.replace("http://", f"http://gateway:{PASSWORD}@") + "/v1"
    config = {
        "llm": {
            "routes": {
                "keyed": {"base_url": url + "/v1", "model": "m", "api_key": KEY,
                          "headers": {"X-Tenant": HEADER}},
                "basic": {"base_url": base, "model": "m"},
            },
            "params": {"timeout": 2, "max_retries": 1},
        }
    }
    return VLLMOpenAIProvider(parse_config(config, environ={}))


def call(provider: VLLMOpenAIProvider, kind: str) -> LLMError:
    """The error a call of ``kind`` raises (every route answers badly)."""
    try:
        if kind == "sync":
            provider.chat(MSG)
        elif kind == "stream":
            list(provider.stream(MSG))
        else:

            async def run() -> None:
                try:
                    if kind == "async":
                        await provider.achat(MSG)
                    else:
                        [piece async for piece in provider.astream(MSG)]
                finally:
                    await provider.aclose()

            asyncio.run(run())
    except LLMError as error:
        return error
    raise AssertionError("the call succeeded")


def texts_of(error: BaseException) -> list[str]:
    found = [str(error), repr(error), "".join(traceback.format_exception(error))]
    last = getattr(error, "last_error", None)
    for candidate in (error, last):
        for name in ("server_message", "body"):
            value = getattr(candidate, name, None)
            if isinstance(value, str):
                found.append(value)
    found.extend(attempt.error or "" for attempt in getattr(error, "attempts", ()))
    return found


def assert_clean(*texts: Any) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in str(text), f"{secret!r} leaked in {str(text)[:300]!r}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ANSWERS)
def test_a_secret_echoed_by_a_server_is_masked_everywhere(
    name: str, kind: str, logs: list[str]
) -> None:
    with RawServer(ANSWERS[name]) as server:
        provider = provider_for(server.url)
        try:
            error = call(provider, kind)
            stats = provider.stats()
        finally:
            provider.close()
    assert any(text for text in texts_of(error))
    assert_clean(*texts_of(error), json.dumps(stats), *logs)
    if not (name.startswith("200") and kind.endswith("stream")):  # no body read: nothing shown
        assert "***" in " ".join(texts_of(error)) + json.dumps(stats)  # masked, not dropped


async def models_echoing(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    body = (
        json.dumps({"object": "list", "data": [{"id": f"{KEY}-model"}]}).encode()
        if request.path.endswith("/models")
        else b"{}"
    )
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )


def test_checks_and_the_healthcheck_command_mask_a_secret_a_server_echoes(
    tmp_path: Path,
) -> None:
    with RawServer(models_echoing) as server:
        provider = provider_for(server.url)
        try:
            checks = provider.health_checks(timeout=2)

            async def run() -> Any:
                try:
                    return await provider.ahealth_checks(timeout=2)
                finally:
                    await provider.aclose()

            async_checks = asyncio.run(run())
        finally:
            provider.close()
        routes = {"keyed": {"base_url": server.url + "/v1", "model": "m", "api_key": KEY}}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({"llm": {"routes": routes}}))
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "healthcheck_vllm.py"), "--config",
             str(path), "--timeout", "2"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert all(check.error and "not served" in check.error for check in checks + async_checks)
    assert_clean(*(repr(check) for check in checks + async_checks))
    assert done.returncode == 1 and "not served" in done.stdout, done.stdout + done.stderr
    assert_clean(done.stdout, done.stderr)
