"""The report of a load test (pure): what was run, the counts, latency, routes, retries, errors.

The shape is the seed benchmark's JSON (``benchmark_config``, ``summary``, ``latency_ms``) plus
time to first token, tokens per second, each route's share, retries and failovers, and the
failed calls by kind of error.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import LLMConfig
from .loadtest import BenchSettings, CallRecord


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of sorted values, linearly interpolated."""
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution_ms(seconds: Sequence[float]) -> dict[str, float] | None:
    """min, max, mean, median, p95, p99 in milliseconds; None for no values."""
    if not seconds:
        return None
    ordered = sorted(value * 1000.0 for value in seconds)
    return {
        "min": round(ordered[0], 2),
        "max": round(ordered[-1], 2),
        "mean": round(sum(ordered) / len(ordered), 2),
        "median": round(percentile(ordered, 50), 2),
        "p95": round(percentile(ordered, 95), 2),
        "p99": round(percentile(ordered, 99), 2),
    }


def summarize(
    records: Sequence[CallRecord],
    elapsed_s: float,
    settings: BenchSettings,
    config: LLMConfig,
) -> dict[str, Any]:
    """The report of a run (pure): what was run, the counts, latency, routes, retries, errors."""
    total = len(records)
    succeeded = [r for r in records if r.ok]
    elapsed = max(elapsed_s, 1e-9)
    pool = list(config.pool())
    if config.fallback_route is not None:
        pool.append(config.fallback_route)
    shares: Counter[str] = Counter(r.route for r in succeeded if r.route is not None)
    tokens = [r.completion_tokens for r in succeeded if r.completion_tokens is not None]
    first_routes = Counter(r.attempts[0].route for r in records if r.attempts)
    failed_attempts: dict[str, Counter[str]] = {}
    for record in records:
        for attempt in record.attempts:
            if attempt.outcome != "ok":
                status = f" {attempt.status_code}" if attempt.status_code else ""
                outcome = attempt.outcome + status
                failed_attempts.setdefault(attempt.route, Counter())[outcome] += 1
    answered_elsewhere = sum(
        1 for r in succeeded if r.attempts and r.attempts[0].route != r.route
    )
    target: dict[str, Any] = (
        {"routes": {name: config.route(name).shown_url for name in pool}}
        if settings.config_path is not None
        else {"base_url": config.route(pool[0]).shown_url}
    )
    return {
        "benchmark_config": {
            **target,
            "model": config.default_model,
            "concurrency": settings.concurrency,
            "num_requests": settings.requests,
            "stream": settings.stream,
            "max_tokens": settings.max_tokens,
            "api": settings.api,
            "lb_policy": config.lb_policy,
        },
        "summary": {
            "total_requests": total,
            "successful_requests": len(succeeded),
            "failed_requests": total - len(succeeded),
            "success_rate": round(len(succeeded) / total, 4) if total else 0.0,
            "total_time_seconds": round(elapsed_s, 3),
            "requests_per_second": round(total / elapsed, 2),
            "successful_rps": round(len(succeeded) / elapsed, 2),
        },
        "latency_ms": distribution_ms([r.latency_s for r in succeeded]),
        "ttft_ms": distribution_ms([r.ttft_s for r in succeeded if r.ttft_s is not None])
        if settings.stream
        else None,
        "tokens": {
            "completion_tokens": sum(tokens),
            "tokens_per_second": round(sum(tokens) / elapsed, 1),
            "per_call_tokens_per_second": round(
                sum(tokens) / max(sum(r.latency_s for r in succeeded), 1e-9), 1
            )
            if tokens
            else None,
        },
        "routes": {
            name: {
                "requests": shares.get(name, 0),
                "share": round(shares.get(name, 0) / len(succeeded), 4) if succeeded else 0.0,
                "first_attempts": first_routes.get(name, 0),
            }
            for name in (*pool, *sorted(set(shares) - set(pool), key=str))
        },
        "retries": {
            "extra_attempts": sum(max(0, len(r.attempts) - 1) for r in records),
            "calls_retried": sum(1 for r in records if len(r.attempts) > 1),
            "failovers": answered_elsewhere,
            "answered_by_fallback": shares.get(config.fallback_route, 0)
            if config.fallback_route
            else 0,
            "failed_attempts": {
                route: dict(outcomes.most_common()) for route, outcomes in failed_attempts.items()
            },
        },
        "errors": dict(Counter(r.error_kind for r in records if r.error_kind).most_common()),
    }


def exit_code(report: Mapping[str, Any]) -> int:
    return 0 if report["summary"]["failed_requests"] == 0 else 1
