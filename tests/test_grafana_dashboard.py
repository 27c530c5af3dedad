"""The Grafana dashboard (deploy/grafana/llm-routes.json): what scripts/grafana_dashboard.py
writes, showing every metric of llm.observe.prometheus and no other, with sound panels."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import promql_parser
from prometheus_client import CollectorRegistry

from llm.observe.prometheus import METRICS, PrometheusHook

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "llm-routes.json"
SCRIPT = ROOT / "scripts" / "grafana_dashboard.py"


def test_the_committed_dashboard_is_what_the_script_writes():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_every_metric_is_shown_and_only_real_ones():
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    used = set(re.findall(r"llm_routes_[a-z_]+", " ".join(exprs)))
    base = {re.sub(r"_(bucket|count|sum)$", "", name) for name in used}
    assert base == set(METRICS)


def test_panels_are_laid_out_without_overlap_and_ids_are_unique():
    board = json.loads(DASHBOARD.read_text())
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def label_names() -> dict[str, set[str]]:
    """Each metric's labels, from a real hook's metrics (the gauges' label is ``route``)."""
    hook = PrometheusHook(CollectorRegistry())
    names = {name: {"route"} for name in METRICS}
    for metric in vars(hook).values():
        labels = getattr(metric, "_labelnames", None)
        if labels is not None:
            base = metric._name  # a counter's name without _total
            for name in METRICS:
                if name.removesuffix("_total") == base:
                    names[name] = set(labels)
    return names


def test_every_query_parses_and_uses_only_real_labels():
    board = json.loads(DASHBOARD.read_text())
    known = label_names()
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            # Grafana's variables, as Grafana substitutes them
            query = expr.replace("$__rate_interval", "1m").replace("$model", ".*")
            promql_parser.parse(query.replace("$route", ".*"))  # raises on a syntax error
            used: set[str] = set()
            for metric, matchers in re.findall(r"(llm_routes_[a-z_]+)\{([^}]*)\}", expr):
                base = re.sub(r"_(bucket|count|sum)$", "", metric)
                base = base if base in METRICS else base + "_total"
                allowed = known[base] | ({"le"} if metric.endswith("_bucket") else set())
                labels = set(re.findall(r"(\w+)\s*[=!]~?", matchers))
                assert labels <= allowed, (panel["title"], metric, labels - allowed)
                used |= allowed
            for grouping in re.findall(r"by \(([^)]*)\)", expr):
                grouped = {label.strip() for label in grouping.split(",")}
                assert grouped <= used, (panel["title"], grouped - used)
    assert known["llm_routes_attempts_total"] == {"route", "outcome", "status"}


def test_a_broken_query_is_caught():
    try:
        promql_parser.parse("sum(rate(llm_routes_calls_total[1m])")
    except ValueError as error:
        assert "parenthesis" in str(error)
    else:
        raise AssertionError("an unclosed parenthesis parsed")
