#!/usr/bin/env python3
"""Write the Grafana dashboard of llm-routes' Prometheus metrics (deploy/grafana/llm-routes.json).

    python scripts/grafana_dashboard.py            # write it
    python scripts/grafana_dashboard.py --check    # exit 1 if the file is not what this writes

The dashboard is made here rather than by hand so that it shows exactly the metrics of
``llm.observe.prometheus.METRICS`` (tests/test_grafana_dashboard.py checks both ways). It has a
``datasource`` variable (any Prometheus) and ``model`` / ``route`` variables from the labels;
import it in Grafana (Dashboards, New, Import) and pick the data source.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, "deploy", "grafana", "llm-routes.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"

# (title, unit, [(expr, legend)], width): one row of panels after another, 24 columns wide
PANELS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]], int]]]] = [
    (
        "Calls",
        [
            (
                "Calls per second by outcome",
                "reqps",
                [
                    (
                        "sum by (outcome) (rate(llm_routes_calls_total"
                        f'{{model=~"$model"}}[{RATE}]))',
                        "{{outcome}}",
                    )
                ],
                8,
            ),
            (
                "Call latency (p50, p95, p99)",
                "s",
                [
                    (
                        f"histogram_quantile({q}, sum by (le) (rate("
                        f'llm_routes_call_duration_seconds_bucket{{model=~"$model",outcome="ok"}}'
                        f"[{RATE}])))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95, 0.99)
                ],
                8,
            ),
            (
                "Failovers, fallbacks and retries per second",
                "reqps",
                [
                    (
                        f'sum(rate(llm_routes_failovers_total{{model=~"$model"}}[{RATE}]))',
                        "failovers",
                    ),
                    (
                        f'sum(rate(llm_routes_fallbacks_total{{model=~"$model"}}[{RATE}]))',
                        "fallbacks",
                    ),
                    (
                        f"sum by (reason) (rate(llm_routes_retries_total"
                        f'{{route=~"$route"}}[{RATE}]))',
                        "retry: {{reason}}",
                    ),
                ],
                8,
            ),
        ],
    ),
    (
        "Routes",
        [
            (
                "Attempts per second by route and outcome",
                "reqps",
                [
                    (
                        f"sum by (route, outcome, status) (rate(llm_routes_attempts_total"
                        f'{{route=~"$route"}}[{RATE}]))',
                        "{{route}} {{outcome}} {{status}}",
                    )
                ],
                8,
            ),
            (
                "Attempt latency p95 by route",
                "s",
                [
                    (
                        f"histogram_quantile(0.95, sum by (route, le) (rate("
                        f'llm_routes_attempt_duration_seconds_bucket{{route=~"$route",'
                        f'outcome="ok"}}[{RATE}])))',
                        "{{route}}",
                    )
                ],
                8,
            ),
            (
                "Time to first token p95 by route",
                "s",
                [
                    (
                        f"histogram_quantile(0.95, sum by (route, le) (rate("
                        f'llm_routes_time_to_first_token_seconds_bucket{{route=~"$route"}}'
                        f"[{RATE}])))",
                        "{{route}}",
                    )
                ],
                8,
            ),
            (
                "Routes healthy (1) or ejected (0)",
                "none",
                [('min by (route) (llm_routes_route_healthy{route=~"$route"})', "{{route}}")],
                8,
            ),
            (
                "Health changes",
                "none",
                [
                    (
                        f"sum by (route, change) (increase(llm_routes_health_changes_total"
                        f'{{route=~"$route"}}[{RATE}]))',
                        "{{route}} {{change}}",
                    )
                ],
                8,
            ),
            (
                "Calls in flight by route (this app's replicas)",
                "none",
                [('sum by (route) (llm_routes_in_flight{route=~"$route"})', "{{route}}")],
                8,
            ),
        ],
    ),
    (
        "Hedging",
        [
            (
                "Hedges per second by route and result",
                "reqps",
                [
                    (
                        f"sum by (route, result) (rate(llm_routes_hedges_total"
                        f'{{route=~"$route"}}[{RATE}]))',
                        "{{route}} {{result}}",
                    )
                ],
                12,
            ),
            (
                "Hedged calls (hedges sent / calls)",
                "percentunit",
                [
                    (
                        f'sum(rate(llm_routes_hedges_total{{result="started"}}[{RATE}]))'
                        f' / sum(rate(llm_routes_calls_total{{model=~"$model"}}[{RATE}]))',
                        "hedged",
                    )
                ],
                12,
            ),
        ],
    ),
    (
        "Load reported by vLLM and tokens",
        [
            (
                "Requests running and waiting (as each route reports)",
                "none",
                [
                    (
                        'max by (route) (llm_routes_load_running{route=~"$route"})',
                        "{{route}} running",
                    ),
                    (
                        'max by (route) (llm_routes_load_waiting{route=~"$route"})',
                        "{{route}} waiting",
                    ),
                ],
                8,
            ),
            (
                "KV-cache usage",
                "percentunit",
                [
                    (
                        'max by (route) (llm_routes_load_kv_cache_usage_ratio{route=~"$route"})',
                        "{{route}}",
                    )
                ],
                8,
            ),
            (
                "Age of the last load report",
                "s",
                [
                    (
                        'max by (route) (llm_routes_load_report_age_seconds{route=~"$route"})',
                        "{{route}}",
                    )
                ],
                8,
            ),
            (
                "Tokens per second by kind",
                "short",
                [
                    (
                        f'sum by (kind) (rate(llm_routes_tokens_total{{route=~"$route"}}[{RATE}]))',
                        "{{kind}}",
                    )
                ],
                12,
            ),
            (
                "Prefix-cache hit rate (cached / prompt tokens)",
                "percentunit",
                [
                    (
                        f'sum(rate(llm_routes_tokens_total{{route=~"$route",kind="cached"}}[{RATE}]))'
                        f' / sum(rate(llm_routes_tokens_total{{route=~"$route",kind="prompt"}}'
                        f"[{RATE}]))",
                        "hit rate",
                    )
                ],
                12,
            ),
        ],
    ),
]


def _variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    panel_id = 1
    for row_title, row in PANELS:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id += 1
        y += 1
        x = 0
        for title, unit, targets, width in row:
            if x + width > 24:
                x, y = 0, y + 8
            panels.append(
                {
                    "id": panel_id,
                    "type": "timeseries",
                    "title": title,
                    "datasource": DS,
                    "gridPos": {"h": 8, "w": width, "x": x, "y": y},
                    "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                    "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                    "targets": [
                        {
                            "refId": chr(ord("A") + i),
                            "datasource": DS,
                            "expr": expr,
                            "legendFormat": legend,
                        }
                        for i, (expr, legend) in enumerate(targets)
                    ],
                }
            )
            panel_id += 1
            x += width
        y += 8
    return {
        "title": "llm-routes",
        "uid": "llm-routes",
        "description": "Calls, attempts, routes and vLLM load as llm-routes sees them "
        "(llm.observe.prometheus).",
        "tags": ["llm-routes", "vllm"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "label": "Data source",
                },
                _variable("model", "label_values(llm_routes_calls_total, model)"),
                _variable("route", "label_values(llm_routes_attempts_total, route)"),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        try:
            with open(PATH, encoding="utf-8") as stream:
                same = stream.read() == text
        except FileNotFoundError:
            same = False
        if not same:
            print(
                f"{PATH} is not what scripts/grafana_dashboard.py writes: run it", file=sys.stderr
            )
        return 0 if same else 1
    os.makedirs(os.path.dirname(PATH), exist_ok=True)
    with open(PATH, "w", encoding="utf-8") as stream:
        stream.write(text)
    print(PATH)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
