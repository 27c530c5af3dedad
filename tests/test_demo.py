"""The quickstart's demo: runs on a fresh machine and loses no call when an instance dies."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from llm.cli import demo

ROOT = Path(__file__).resolve().parent.parent


def test_demo_loses_no_call_and_reports_every_route():
    threads_before = set(threading.enumerate())
    report = asyncio.run(demo.run(requests=120, concurrency=8))
    assert set(threading.enumerate()) - threads_before == set()  # every server stopped
    summary = report["summary"]
    assert summary["successful_requests"] == 120 and report["lost"] == 0
    assert set(report["routes"]) == {"fast", "slow", "flaky", "fallback"}
    assert sum(entry["requests"] for entry in report["routes"].values()) == 120
    assert report["killed_after"] == 60
    assert report["ejections"]["fast"] >= 1  # it was killed halfway
    assert report["retries"]["failed_attempts"]["fast"]["connect_error"] >= 1
    assert report["routes"]["fast"]["requests"] >= 1  # it served before it died
    text = demo.render(report)
    for name in ("fast", "slow", "flaky", "fallback"):
        assert name in text
    assert "120/120 calls succeeded, 0 lost." in text


def run_demo(*command: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as folder:  # the demo must write nothing in its cwd
        completed = subprocess.run(
            [*command, "--requests", "80"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=folder,
        )
        assert list(Path(folder).iterdir()) == []
    return completed


def test_quickstart_demo_command_exits_zero_and_loses_nothing():
    completed = run_demo(sys.executable, str(ROOT / "scripts" / "bench_vllm.py"), "--demo")
    assert completed.returncode == 0, completed.stderr
    assert "80/80 calls succeeded, 0 lost." in completed.stdout
    assert "'fast' is killed after 40 calls" in completed.stdout


def test_demo_console_command_is_installed():
    command = Path(sys.executable).parent / "llm-demo"
    assert command.exists(), "pip install -e . installs the llm-demo command"
    completed = run_demo(str(command))
    assert completed.returncode == 0, completed.stderr
    assert "0 lost." in completed.stdout
