"""The Grafana dashboard (deploy/grafana/llm-routes.json): what scripts/grafana_dashboard.py
writes, showing every metric of llm.observe.prometheus and no other, with sound panels."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from llm.observe.prometheus import METRICS

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
    for panel in panels:
        for target in panel.get("targets", []):
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
