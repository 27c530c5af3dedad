"""Servers in child processes, stopped by their process id: the fake or a real vLLM.

How this works
--------------
:class:`ServerProcess` runs one OpenAI-compatible server as a child process in a session of
its own, so its process group holds it and every process it starts (a real vLLM server runs
its engine in a child process). It waits for ``GET /health`` to answer 200, bounded in time,
and stops the group by its id, never by name. It can do to the server what a fleet does to
a replica: :meth:`kill` (SIGKILL, a crash), :meth:`terminate` (SIGTERM, as Kubernetes stops a
pod, then SIGKILL after a grace period), :meth:`freeze` / :meth:`thaw` (SIGSTOP / SIGCONT, a
hung process that still holds its sockets) and :meth:`restart` on the same address.

The child also gets ``PR_SET_PDEATHSIG`` (Linux): if the process that started it dies without
stopping it, the kernel kills it. The kernel ties that to the *thread* that started it, so
start servers from a thread that outlives them (``start_all`` launches them all from the
calling thread, then waits for each). Output goes to a log file, whose tail is quoted when the
server fails to start. :func:`fake_argv` gives the command line of the project's own fake;
``llm.testing.real_vllm`` gives a real vLLM server's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ServerProcess", "ServerStartError", "fake_argv", "free_port", "start_all"]

_PR_SET_PDEATHSIG = 1


class ServerStartError(RuntimeError):
    """A server process exited, or did not answer ``/health``, within its start timeout."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on ``host:port`` (so a server started there is the one
    answering, not an older one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def fake_argv(host: str, port: int, model: str = "tiny", *extra: str) -> list[str]:
    """The command line of the project's fake vLLM server (``llm.testing.fake_vllm``)."""
    return [
        sys.executable,
        "-m",
        "llm.testing.fake_vllm",
        "--host",
        host,
        "--port",
        str(port),
        "--model",
        model,
        *extra,
    ]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ServerProcess:
    """One server in a child process (see the module docstring).

    ``argv`` is the server's command line; ``host``/``port`` where it listens. ``env`` is
    added to this process's environment. ``start_timeout`` bounds :meth:`start`.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        host: str,
        port: int,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
        log_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.host = host
        self.port = port
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self._log_dir = log_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._frozen = False
        self.log_path: Path | None = None
        self.starts = 0
        self._launched_at = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "frozen" if self._frozen else ("running" if self.running else "stopped")
        return f"<ServerProcess {self.name} {self.url} pid={self.pid} {state}>"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> ServerProcess:
        """Start the server and wait until ``/health`` answers 200 (or raise
        :class:`ServerStartError` with the tail of its log, having stopped it)."""
        self.launch()
        self.await_health()
        return self

    def launch(self) -> None:
        """Start the process and return at once (:meth:`await_health` waits for it)."""
        if self.running:
            return
        if not port_free(self.host, self.port):
            raise ServerStartError(f"server {self.name}: {self.host}:{self.port} is in use")
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="llm-routes-servers-"))
        self.starts += 1
        self.log_path = self._log_dir / f"{self.name}.{self.starts}.log"
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        self._frozen = False
        self._launched_at = time.monotonic()

    def await_health(self) -> None:
        """Wait, up to ``start_timeout`` from the launch, for ``/health``; on failure stop
        the server and raise :class:`ServerStartError`."""
        try:
            self._wait_healthy(self._launched_at + self.start_timeout, self.start_timeout)
        except BaseException:
            self.stop()
            raise

    def wait_healthy(self, timeout: float) -> None:
        """Wait until ``GET /health`` answers 200; raise :class:`ServerStartError` if the
        process exits or ``timeout`` seconds pass first."""
        self._wait_healthy(time.monotonic() + timeout, timeout)

    def _wait_healthy(self, deadline: float, timeout: float) -> None:
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise ServerStartError(
                    f"server {self.name} ({self.url}) exited with {code} before it was healthy"
                    f"{self._log_tail()}"
                )
            if self.healthy():
                return
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"server {self.name} ({self.url}) not healthy after {timeout:g} s"
                    f"{self._log_tail()}"
                )
            time.sleep(0.1)

    def healthy(self, timeout: float = 1.0) -> bool:
        """Whether ``GET /health`` answers 200 within ``timeout`` seconds."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as answer:
                return bool(answer.status == 200)
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def _log_tail(self, lines: int = 25) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        if not tail:
            return f" (nothing in {self.log_path})"
        return f"; the last lines of {self.log_path}:\n" + "\n".join(tail)

    def _signal_group(self, signum: int) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signum)

    def kill(self) -> None:
        """SIGKILL the server and everything it started, as a crash would; wait for it."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self._frozen = False
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM the server's main process only, as Kubernetes stops a pod; returns at
        once. :meth:`wait_exit` (or :meth:`stop`) finishes the job."""
        if self._proc is not None and self._proc.poll() is None:
            self.thaw()
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)

    def wait_exit(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for the server to exit; SIGKILL its group if it has
        not. Whether it exited by itself."""
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout=grace)
            exited = True
        except subprocess.TimeoutExpired:
            exited = False
        # Whatever the main process left behind (the engine's process) goes too.
        self.kill()
        return exited

    def freeze(self) -> None:
        """SIGSTOP the group: a hung server, its sockets still open and accepting."""
        self._signal_group(signal.SIGSTOP)
        self._frozen = self._proc is not None

    def thaw(self) -> None:
        """SIGCONT the group after :meth:`freeze`."""
        if self._frozen:
            self._signal_group(signal.SIGCONT)
            self._frozen = False

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL of its group after ``grace`` seconds."""
        if self._proc is None:
            return
        self.terminate()
        self.wait_exit(grace)
        self._proc = None

    def restart(self) -> ServerProcess:
        """Stop the server (if it runs) and start it again on the same address."""
        if self._proc is not None:
            self.kill()
            self._proc = None
        return self.start()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_all(servers: Sequence[ServerProcess]) -> None:
    """Start ``servers`` side by side (a real vLLM server takes ~40 s to load its model):
    launch them all from this thread, then wait for each. If one fails, stop them all and
    raise its error."""
    try:
        for server in servers:
            server.launch()
        for server in servers:
            server.await_health()
    except BaseException:
        for server in servers:
            server.stop()
        raise
