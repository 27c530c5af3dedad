"""``llm-bench`` / ``scripts/bench_vllm.py``: the load test as a command; ``--demo`` runs the demo.

Settings come from flags over environment variables (``VLLM_BASE_URL``, as the config reads
it, or the seed's ``VLLM_BASE``; ``VLLM_MODEL``, ``CONC``, ``NREQ``) over defaults. The JSON
report goes to stdout (and ``--json-out``), a progress bar to stderr when it is a terminal.

The target (``target_source``): ``--config PATH``, else ``$LLM_CONFIG`` (as the library and the
healthcheck read them); else one server, when ``VLLM_BASE_URL`` (or ``VLLM_BASE``) names it;
else ``./config.yaml`` when there is one; else one server at ``DEFAULT_BASE_URL``.

Exit code: 0 when every call succeeded, 1 when some failed, 2 on a bad setting or config,
130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from ..config.load import DEFAULT_PATH
from ..errors import ConfigError
from ..providers.vllm_openai import VLLMOpenAIProvider
from . import demo
from .bench_report import exit_code, summarize
from .loadtest import (
    DEFAULT_BASE_URL,
    DEFAULT_PROMPT,
    BenchSettings,
    CallRecord,
    execute,
    target_config,
)

# -- progress -----------------------------------------------------------------------------


def progress_line(done: int, total: int, failed: int, elapsed_s: float, width: int = 30) -> str:
    filled = width * done // total if total else width
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        f"  {rate:7.1f} req/s  failed {failed}"
    )


class Progress:
    """A progress bar on a TTY stream, redrawn at most ten times a second; silent otherwise."""

    def __init__(self, total: int, stream: TextIO, *, enabled: bool | None = None) -> None:
        self.total = total
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.done = 0
        self.failed = 0
        self._started = time.perf_counter()
        self._drawn_at = 0.0

    def __call__(self, record: CallRecord) -> None:
        self.done += 1
        self.failed += not record.ok
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._drawn_at >= 0.1 or self.done == self.total:
            self._drawn_at = now
            line = progress_line(self.done, self.total, self.failed, now - self._started)
            self.stream.write("\r" + line)
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# -- the command --------------------------------------------------------------------------


def benchmark(
    settings: BenchSettings,
    environ: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run one benchmark and return its report. Raises ``ConfigError`` for a bad target."""
    config = target_config(settings, environ)
    with VLLMOpenAIProvider(config) as provider:
        records, elapsed = execute(provider, settings, on_done=progress)
    if progress is not None:
        progress.finish()
    return summarize(records, elapsed, settings, config)


def _positive_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{name}: expected a positive integer, got {text!r}", key_path=name)
    return value


def target_source(
    config_flag: str | None, environ: Mapping[str, str], cwd: str | None = None
) -> str | None:
    """The config file to benchmark, or ``None`` for one server (see the module's text)."""
    if config_flag is not None:
        return config_flag
    if environ.get("LLM_CONFIG"):  # then VLLM_BASE_URL is the config's override, as ever
        return environ["LLM_CONFIG"]
    if environ.get("VLLM_BASE_URL") or environ.get("VLLM_BASE"):
        return None
    local = os.path.join(cwd if cwd is not None else os.getcwd(), DEFAULT_PATH)
    return local if os.path.isfile(local) else None


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> BenchSettings:
    """Flags over environment variables over defaults. Raises ``ConfigError``."""
    defaults = BenchSettings()

    def number(flag: int | None, variable: str, default: int, name: str) -> int:
        if flag is not None:
            return _positive_int(name, str(flag))
        if variable in environ:
            return _positive_int(variable, environ[variable])
        return default

    return BenchSettings(
        concurrency=number(args.concurrency, "CONC", defaults.concurrency, "--concurrency"),
        requests=number(args.requests, "NREQ", defaults.requests, "--requests"),
        stream=args.stream,
        max_tokens=_positive_int("--max-tokens", str(args.max_tokens)),
        prompt=args.prompt,
        api=args.api,
        config_path=target_source(args.config, environ),
        base_url=environ.get("VLLM_BASE_URL") or environ.get("VLLM_BASE") or DEFAULT_BASE_URL,
        model=environ.get("VLLM_MODEL") or None,
    )


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="bench_vllm",
        description=(
            "Load test through the llm-routes provider; prints a JSON report on stdout. "
            "Target: the default pool and fallback of --config, else of $LLM_CONFIG; else one "
            "server at $VLLM_BASE_URL (or $VLLM_BASE) when set; else the routes of "
            f"./config.yaml when there is one; else one server at {DEFAULT_BASE_URL}. A single "
            "server serves "
            "$VLLM_MODEL (default: the first model it lists). Exit code 0 when every call "
            "succeeded, 1 when some failed, 2 on a bad setting."
        ),
        epilog="--demo runs the built-in demo on local fake vLLM servers instead "
        "(see `--demo --help`).",
    )
    cli.add_argument("--demo", action="store_true", help="run the demo on fake local servers")
    cli.add_argument(
        "--config",
        help="a config file: benchmark its default pool and fallback (default: $LLM_CONFIG; "
        "else ./config.yaml unless $VLLM_BASE_URL is set)",
    )
    cli.add_argument("--concurrency", type=int, help="calls in flight (env CONC, default 64)")
    cli.add_argument("--requests", type=int, help="calls to make (env NREQ, default 256)")
    cli.add_argument("--stream", action="store_true", help="stream the answers (adds ttft_ms)")
    cli.add_argument("--max-tokens", type=int, default=BenchSettings.max_tokens)
    cli.add_argument("--prompt", default=DEFAULT_PROMPT)
    cli.add_argument("--api", choices=("async", "sync"), default="async")
    cli.add_argument("--json-out", metavar="FILE", help="also write the report to FILE")
    return cli


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if "--demo" in arguments:
        return demo.main([a for a in arguments if a != "--demo"])
    args = parser().parse_args(arguments)
    try:
        settings = settings_from(args, os.environ)
        # Opened before the run, so that a bad path fails at once rather than after it.
        json_out = open(args.json_out, "w", encoding="utf-8") if args.json_out else None  # noqa: SIM115
    except (ConfigError, OSError) as error:
        print(f"bench_vllm: {error}", file=sys.stderr)
        return 2
    with json_out or contextlib.nullcontext():
        try:
            report = benchmark(settings, os.environ, Progress(settings.requests, sys.stderr))
        except ConfigError as error:
            print(f"bench_vllm: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("\nbench_vllm: interrupted", file=sys.stderr)
            return 130
        text = json.dumps(report, indent=2)
        if json_out is not None:
            json_out.write(text + "\n")
    print(text)
    return exit_code(report)


if __name__ == "__main__":
    sys.exit(main())
