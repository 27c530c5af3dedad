"""``llm-healthcheck`` / ``scripts/healthcheck_vllm.py``: is every configured route healthy?

How this works
--------------
1. **Config.** ``main`` parses the flags, then loads the config: ``--config PATH``, else the
   library's own lookup (``load_config(None)``: ``$LLM_CONFIG``, else ``./config.yaml``, with
   the ``VLLM_BASE_URL`` / ``VLLM_MODEL`` / ``VLLM_API_KEY`` overrides). A ``ConfigError`` (a
   missing file included) is printed as ``healthcheck: <message>`` on stderr: exit 2.
2. **Checks** (``run_checks``, the only function doing I/O). A provider is built from the
   loaded config with background checks turned off, ``provider.health_checks(timeout)`` looks
   at every route at once (one thread each: ``GET /health``, then ``GET /v1/models``, each
   bounded by ``timeout``), and the provider is closed. The result is a ``Report``: the config
   summary, one ``RouteCheck`` per route (healthy, total / per-request latency, models served,
   ``max_model_len``, the reason when unhealthy) and the time of the check. API keys and header
   values are scrubbed from every text, and a password in a URL is masked. ``fit_warnings``
   adds a warning for a route whose context window cannot hold the config's
   ``params.max_tokens`` plus a typical prompt (``TYPICAL_PROMPT_TOKENS``): its calls would be
   refused, which /health cannot show. Warnings do not change the exit status.
3. **Output** (pure: ``render_human``, ``render_json``, ``exit_code``). Human output is one
   block per route and a ``N/M routes healthy`` line, in colour only when stdout is a terminal
   and ``NO_COLOR`` is not set. ``--json`` prints one JSON document and nothing else on stdout.
4. **Watch.** ``--watch S`` runs a round every S seconds until Ctrl-C: human output gets a
   separator line per round, ``--json`` prints one compact document per line (JSON Lines).

Exit codes: 0 every route healthy, 1 some route unhealthy, 2 bad flags or config error,
130 interrupted (Ctrl-C; the normal end of ``--watch``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TextIO

from ..config import LLMConfig, load_config
from ..config.redact import Redactor
from ..errors import ConfigError
from ..factory import LLMFactory
from ..probes.check import RouteCheck

__all__ = [
    "Report",
    "build_parser",
    "exit_code",
    "fit_warnings",
    "main",
    "render_human",
    "render_json",
    "run_checks",
]

DEFAULT_TIMEOUT = 5.0
EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130
TYPICAL_PROMPT_TOKENS = 1024  # a chat prompt with a system message and a few turns

_ENV_OVERRIDES = ("VLLM_BASE_URL", "VLLM_MODEL", "VLLM_API_KEY")


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True, slots=True)
class Report:
    """One round of checks: what was checked (config summary) and what was found."""

    source: str | None
    default_route: str
    fallback_route: str | None
    lb_policy: str
    checks: tuple[RouteCheck, ...]
    checked_at: datetime
    timeout: float = DEFAULT_TIMEOUT
    env: tuple[str, ...] = ()  # names (never values) of the env variables that shaped the config
    warnings: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    @property
    def healthy(self) -> int:
        return sum(1 for check in self.checks if check.healthy)

    @property
    def total(self) -> int:
        return len(self.checks)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fit_warnings(config: LLMConfig, checks: Sequence[RouteCheck]) -> dict[str, tuple[str, ...]]:
    """Per route, what its context window (the config's ``max_model_len``, else what the
    check learned) says about the config's ``params.max_tokens``: a window no larger than
    ``max_tokens`` refuses every call; one that leaves less than ``TYPICAL_PROMPT_TOKENS`` for
    the prompt refuses the calls with longer prompts."""
    asked = config.params.get("max_tokens", config.params.get("max_completion_tokens"))
    if not isinstance(asked, int) or isinstance(asked, bool) or asked <= 0:
        return {}
    key = "max_tokens" if "max_tokens" in config.params else "max_completion_tokens"
    found: dict[str, tuple[str, ...]] = {}
    for check in checks:
        route = config.routes.get(check.route)
        window = route.max_model_len if route is not None else None
        window = window if window is not None else check.max_model_len
        if window is None:
            continue
        if asked >= window:
            found[check.route] = (
                f"params.{key} {asked} >= max_model_len {window}: the server refuses every "
                f"call (lower params.{key}, or start the server with a larger --max-model-len)",
            )
        elif asked + TYPICAL_PROMPT_TOKENS > window:
            found[check.route] = (
                f"params.{key} {asked} leaves {window - asked} tokens of max_model_len "
                f"{window} for the prompt: a call with a longer prompt is refused",
            )
    return found


def run_checks(
    config: LLMConfig, timeout: float = DEFAULT_TIMEOUT, *, env: Sequence[str] = ()
) -> Report:
    """Check every route of ``config`` once (concurrently) and return the report.

    ``timeout`` bounds each request of a check (``GET /health``, ``GET /v1/models``). ``env``
    is the names of the environment variables that shaped the config (shown, never valued).
    A route that fails never raises: its check says why.
    """
    quiet = dataclasses.replace(
        config, health=dataclasses.replace(config.health, check_interval=0.0)
    )
    checked_at = datetime.now(timezone.utc)
    provider = LLMFactory.create_provider(config=quiet)
    try:
        checks = provider.health_checks(timeout)
    finally:
        provider.close()
    redact = Redactor(config.routes.values())  # the provider's checks are masked already
    clean = tuple(
        dataclasses.replace(
            check,
            base_url=redact.text(check.base_url),
            error=None if check.error is None else redact.text(check.error),
        )
        for check in checks
    )
    return Report(
        source=os.path.abspath(config.source) if config.source else None,
        default_route=config.default_route,
        fallback_route=config.fallback_route,
        lb_policy=config.lb_policy,
        checks=clean,
        checked_at=checked_at,
        timeout=timeout,
        env=tuple(env),
        warnings=fit_warnings(config, clean),
    )


def exit_code(report: Report) -> int:
    """0 when every route is healthy, else 1."""
    return EXIT_HEALTHY if report.healthy == report.total else EXIT_UNHEALTHY


# --------------------------------------------------------------------------- rendering


def report_dict(report: Report) -> dict[str, Any]:
    """The JSON shape of a report (see ``render_json``)."""
    return {
        "config": {
            "source": report.source,
            "default_route": report.default_route,
            "fallback_route": report.fallback_route,
            "lb_policy": report.lb_policy,
        },
        "routes": [
            {
                "name": check.route,
                "base_url": check.base_url,
                "model": check.model,
                "healthy": check.healthy,
                "latency_ms": check.latency_ms,
                "health_ms": check.health_ms,
                "models_ms": check.models_ms,
                "models": list(check.models),
                "max_model_len": check.max_model_len,
                "error": check.error,
                "warnings": list(report.warnings.get(check.route, ())),
            }
            for check in report.checks
        ],
        "summary": {"healthy": report.healthy, "total": report.total},
        "checked_at": _iso(report.checked_at),
    }


def render_json(report: Report, *, indent: int | None = 2) -> str:
    """The report as one JSON document (``indent=None``: one line, for JSON Lines)."""
    return json.dumps(report_dict(report), indent=indent)


class _Style:
    """ANSI styling that is the identity when colour is off."""

    def __init__(self, color: bool) -> None:
        self.color = color

    def _wrap(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def green(self, text: str) -> str:
        return self._wrap("32", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)

    def yellow(self, text: str) -> str:
        return self._wrap("33", text)


def _printable(text: str) -> str:
    """Text from the network made safe for a terminal (no escape sequences, one line)."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _route_block(check: RouteCheck, report: Report, style: _Style) -> list[str]:
    role = ""
    if check.route == report.default_route:
        role = " (default)"
    elif check.route == report.fallback_route:
        role = " (fallback)"
    if check.healthy:
        head = f"✅ {style.green(style.bold(check.route))}{role}  {check.base_url}"
    else:
        head = f"❌ {style.red(style.bold(check.route))}{role}  {check.base_url}"
    lines = [head]

    def row(label: str, value: str) -> None:
        lines.append(f"   {style.dim(f'{label:<9}')}{value}")

    model = check.model
    if check.max_model_len is not None:
        model += f" (max_model_len {check.max_model_len})"
    row("model", model)
    if check.health_ms is not None or check.latency_ms is not None:
        parts = [f"/health {_ms(check.health_ms)}"]
        if check.models_ms is not None:
            parts.append(f"/v1/models {_ms(check.models_ms)}")
        row("latency", f"{_ms(check.latency_ms)} ({', '.join(parts)})")
    if check.models:
        row("serves", _printable(", ".join(check.models)))
    if check.error:
        row("error", style.red(_printable(check.error)))
    for warning in report.warnings.get(check.route, ()):
        row("warning", style.yellow(warning))
    return lines


def render_human(report: Report, color: bool) -> str:
    """The report for a person: a header, one block per route, ``N/M routes healthy``."""
    style = _Style(color)
    settings = [f"default {report.default_route}"]
    if report.fallback_route is not None:
        settings.append(f"fallback {report.fallback_route}")
    settings.append(f"policy {report.lb_policy}")
    settings.append(f"{report.total} route{'s' if report.total != 1 else ''}")
    settings.append(f"timeout {report.timeout:g}s")
    lines = [
        style.bold("llm-routes healthcheck") + style.dim(f"  {_iso(report.checked_at)}"),
        f"{style.dim('config   ')}{report.source or '(in memory)'}",
        f"{style.dim('routing  ')}{', '.join(settings)}",
    ]
    if report.env:
        lines.append(f"{style.dim('env      ')}{', '.join(report.env)}")
    lines.append("")
    for check in report.checks:
        lines.extend(_route_block(check, report, style))
    lines.append("")
    summary = f"{report.healthy}/{report.total} routes healthy"
    all_ok = report.healthy == report.total
    lines.append(style.bold(style.green(summary) if all_ok else style.red(summary)))
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line

_EPILOG = """\
The config is --config PATH, else $LLM_CONFIG, else ./config.yaml; VLLM_BASE_URL and
VLLM_MODEL override the default route, VLLM_API_KEY is the key of routes that set none.
Each route gets GET /health, then GET /v1/models (which must list the route's model); all
routes are checked at once. A route whose context window (max_model_len) cannot hold
params.max_tokens plus a typical prompt (1024 tokens) gets a warning; warnings do not change
the exit status.

--json prints one JSON document on stdout and nothing else:
  {"config": {source, default_route, fallback_route, lb_policy},
   "routes": [{name, base_url, model, healthy, latency_ms, health_ms, models_ms,
               models, max_model_len, error, warnings}],
   "summary": {healthy, total}, "checked_at": ISO-8601 UTC}
With --watch, --json prints one such document per round, one per line (JSON Lines).

exit status: 0 all routes healthy, 1 some route unhealthy, 2 bad flags or config error,
130 interrupted (Ctrl-C, also how --watch ends).
Colour only when stdout is a terminal and NO_COLOR is not set."""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number), got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Check every route of the llm-routes config (GET /health and\n"
        "GET /v1/models) and report which are healthy.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $LLM_CONFIG, else ./config.yaml)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--timeout",
        metavar="S",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        help=f"seconds each request of a check may take (> 0, default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--watch",
        metavar="S",
        type=_seconds,
        help="check again every S seconds until Ctrl-C (with --json: JSON Lines)",
    )
    return parser


def _env_in_effect(config_arg: str | None, environ: Mapping[str, str]) -> tuple[str, ...]:
    names = [] if config_arg is not None or not environ.get("LLM_CONFIG") else ["LLM_CONFIG"]
    names.extend(name for name in _ENV_OVERRIDES if environ.get(name))
    return tuple(names)


def _use_color(stream: TextIO, environ: Mapping[str, str]) -> bool:
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _emit(text: str, stream: TextIO) -> None:
    stream.write(text + "\n")
    stream.flush()


def _watch(
    config: LLMConfig,
    args: argparse.Namespace,
    env: tuple[str, ...],
    color: bool,
    out: TextIO,
) -> int:
    style = _Style(color)
    round_number = 0
    while True:  # ends with Ctrl-C (KeyboardInterrupt, handled by main)
        started = time.monotonic()
        round_number += 1
        report = run_checks(config, args.timeout, env=env)
        if args.json:
            _emit(render_json(report, indent=None), out)
        else:
            rule = f"──── round {round_number} · {_iso(report.checked_at)} "
            _emit(style.dim(rule.ljust(72, "─")) + "\n" + render_human(report, color) + "\n", out)
        time.sleep(max(0.0, started + args.watch - time.monotonic()))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (bad flags exit 2 through argparse)."""
    args = build_parser().parse_args(argv)
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper):  # ✅/❌ on a non-UTF-8 terminal: '?', not a crash
        out.reconfigure(errors="replace")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    env = _env_in_effect(args.config, os.environ)
    color = not args.json and _use_color(out, os.environ)
    previous_sigint: Any = None
    if args.watch is not None and threading.current_thread() is threading.main_thread():
        # A parent shell may start background jobs with SIGINT ignored; --watch ends on it.
        previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if args.watch is not None:
            return _watch(config, args, env, color, out)
        report = run_checks(config, args.timeout, env=env)
        _emit(render_json(report) if args.json else render_human(report, color), out)
        return exit_code(report)
    except ConfigError as exc:  # e.g. llm.provider names no known provider
        print(f"healthcheck: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        return EXIT_UNHEALTHY
    finally:
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)


if __name__ == "__main__":
    raise SystemExit(main())
