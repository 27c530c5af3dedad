"""The quickstart's demo: runs on a fresh machine and loses no call when an instance dies."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from llm import demo


def test_demo_loses_no_call_and_reports_every_route():
    report = asyncio.run(demo.run(requests=120, concurrency=8))
    assert report["succeeded"] == 120 and report["lost"] == 0
    assert set(report["share"]) == {"fast", "slow", "flaky", "fallback"}
    assert report["ejections"]["fast"] >= 1  # it was killed halfway
    assert sum(report["share"].values()) == 120


def test_demo_command_exits_zero():
    completed = subprocess.run(
        [sys.executable, "-m", "llm.demo", "--requests", "80"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert "lost 0" in completed.stdout and "succeeded 80/80" in completed.stdout
