"""Public entry point of the fake vLLM server, and its command line.

How this works
--------------
Importing this module gives :class:`FakeVLLM`, :class:`RecordedRequest` and
:func:`start_fleet` (implemented in ``llm.testing._server``). Running it,
``python -m llm.testing.fake_vllm --port 8000 ...``, starts one FakeVLLM with the
given options, prints ``fake vLLM serving MODEL on http://HOST:PORT`` once it
listens, and serves until SIGINT/SIGTERM, then stops cleanly and exits 0.
``python -m llm.testing.fake_vllm --config config.yaml`` instead starts one fake per route of
a config file, on the route's own host and port (loopback only), serving the route's model with
a window of 8192 tokens (``--max-model-len`` to change it; a route's ``max_model_len`` wins),
so the README's examples run against it as written. It prints one line per server.

Another process can inject faults live with ``POST /_fake/control`` (JSON keys:
fail_next, fail_status, fail_message, retry_after, fail_fraction,
cut_streams_after, hang_streams_after, hang, latency, token_delay, reset,
respond_garbage) and read counters with ``GET /_fake/control``.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from urllib.parse import urlsplit

from llm.config import load_config
from llm.errors import ConfigError, LLMError
from llm.testing._server import GARBAGE_KINDS, FakeVLLM, RecordedRequest, start_fleet

CONFIG_WINDOW = 8192  # tokens of context of a fake started from a config (--config)

__all__ = ["FakeVLLM", "RecordedRequest", "main", "start_fleet"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llm.testing.fake_vllm",
        description="A fake vLLM 0.32 OpenAI-compatible server with fault injection.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="0 = ephemeral (default 8000)")
    p.add_argument("--model", default="tiny", help="the model id served (default tiny)")
    p.add_argument("--name", default=None, help="a label for logs and repr")
    p.add_argument(
        "--latency", type=float, default=0.0, help="seconds before each answer (default 0)"
    )
    p.add_argument(
        "--tokens",
        type=int,
        default=8,
        help="tokens of an answer when the call sets no lower max_tokens (default 8)",
    )
    p.add_argument(
        "--token-delay",
        type=float,
        default=0.0,
        help="seconds per generated token, streamed or not (default 0)",
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help=f"context window in tokens (default 512; {CONFIG_WINDOW} with --config)",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="PATH",
        help="start one fake per route of this llm-routes config file, on its host and port",
    )
    p.add_argument(
        "--enable-prompt-tokens-details",
        action="store_true",
        help="usage shows prompt_tokens_details.cached_tokens, as vLLM's flag of that name",
    )
    p.add_argument(
        "--reasoning", action="store_true", help="answers carry reasoning_content, as a reasoner"
    )
    p.add_argument(
        "--error-style",
        choices=("nested", "flat"),
        default="nested",
        help='error bodies {"error": {...}} as vLLM 0.32 (nested) or older flat ones',
    )
    p.add_argument("--api-key", default=None, help="demand Authorization: Bearer KEY (401 else)")
    p.add_argument(
        "--fail-next", type=int, default=0, metavar="N", help="the next N calls answer an error"
    )
    p.add_argument(
        "--fail-status",
        type=int,
        default=None,
        metavar="S",
        help="HTTP status of those errors (default 503 for --fail-next, 500 for --fail-fraction)",
    )
    p.add_argument(
        "--fail-fraction",
        type=float,
        default=0.0,
        metavar="P",
        help="each call fails with probability P, 0 to 1 (seeded)",
    )
    p.add_argument(
        "--cut-after",
        type=int,
        default=None,
        metavar="K",
        help="streams: drop the connection after K events (0: after the headers)",
    )
    p.add_argument(
        "--hang-streams-after",
        type=int,
        default=None,
        metavar="K",
        help="streams: send K events, then go silent with the connection open",
    )
    p.add_argument(
        "--garbage",
        choices=sorted(GARBAGE_KINDS),
        default=None,
        metavar="KIND",
        help="answer calls with a broken response: " + ", ".join(sorted(GARBAGE_KINDS)),
    )
    p.add_argument("--hang", action="store_true", help="read calls, never answer them")
    p.add_argument("--seed", type=int, default=0, help="seed of the random faults (default 0)")
    p.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds an idle connection is kept open (default: forever)",
    )
    return p


def _servers_for_config(path: str, window: int | None) -> list[FakeVLLM]:
    """One fake per route of the config at ``path`` (see the module docstring)."""
    config = load_config(path)
    servers = []
    for route in config.routes.values():
        url = urlsplit(route.base_url)
        host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
        if url.scheme != "http" or not _is_loopback(host):
            key = f"llm.routes.{route.name}.base_url"
            raise ConfigError(
                f"{key}: a fake serves plain http on a loopback address, not {route.shown_url}",
                key,
            )
        servers.append(
            FakeVLLM(
                route.model,
                host=host,
                port=port,
                name=route.name,
                max_model_len=route.max_model_len or window or CONFIG_WINDOW,
                api_key=None if route.api_key == "EMPTY" else route.api_key,
            )
        )
    return servers


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve_config(path: str, window: int | None) -> int:
    try:
        servers = _servers_for_config(path, window)
    except LLMError as exc:
        print(f"fake vLLM: {exc}", file=sys.stderr)
        return 2
    return _serve(servers)


def _serve(servers: Sequence[FakeVLLM], labelled: bool = True) -> int:
    """Start ``servers``, say where each listens (with its route's name when ``labelled``:
    a lone server's line is read by scripts as it is), serve until SIGINT or SIGTERM."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old_int = signal.signal(signal.SIGINT, _on_signal)
    old_term = signal.signal(signal.SIGTERM, _on_signal)
    try:
        for server in servers:
            try:
                server.start()
            except OSError as exc:
                print(f"fake vLLM: cannot listen on {server.url}: {exc}", file=sys.stderr)
                return 1
            label = f" ({server.name})" if labelled and server.name else ""
            print(f"fake vLLM serving {server.model} on {server.url}{label}", flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        for server in servers:
            server.stop()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.config is not None:
        return _serve_config(args.config, args.max_model_len)
    server = FakeVLLM(
        args.model,
        host=args.host,
        port=args.port,
        latency=args.latency,
        tokens=args.tokens,
        token_delay=args.token_delay,
        max_model_len=args.max_model_len or 512,
        reasoning=args.reasoning,
        error_style=args.error_style,
        api_key=args.api_key,
        name=args.name,
        seed=args.seed,
        keep_alive_timeout=args.keep_alive_timeout,
        prompt_tokens_details=args.enable_prompt_tokens_details,
    )
    if args.fail_next:
        server.fail_next(args.fail_next, args.fail_status or 503)
    if args.fail_fraction:
        server.fail_fraction(args.fail_fraction, args.fail_status or 500)
    if args.cut_after is not None:
        server.cut_streams_after(args.cut_after)
    if args.hang_streams_after is not None:
        server.hang_streams_after(args.hang_streams_after)
    if args.garbage is not None:
        server.respond_garbage(args.garbage)
    if args.hang:
        server.hang(True)
    return _serve([server], labelled=False)


if __name__ == "__main__":
    sys.exit(main())
