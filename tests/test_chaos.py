"""Chaos at load: each fault on one instance of three, 64 async calls in flight or 16 threads.

The fake servers run in child processes (``llm.testing.chaos.Fleet``), so a fault can be a
real kill and restart, and what the client process leaves behind is the library's alone. For
every fault: the calls that succeeded plus those that raised a typed ``LLMError`` are all the
calls made (nothing lost, nothing hung); a fault before the first token costs no call at all;
a stream cut after its first token fails only the calls it cut, with ``StreamInterruptedError``;
every call ends within its deadline (plus a small margin); the faulty route is ejected and,
when it comes back, gets traffic again; and no asyncio task, thread or socket is left behind.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm.testing.chaos import (
    DEADLINE,
    FAULTS,
    MARGIN,
    Fault,
    Fleet,
    problems,
    run_async,
    run_sync,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with Fleet() as running:
        yield running


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.key for fault in FAULTS])
@pytest.mark.parametrize("api", ["async", "sync"])
def test_a_faulty_instance_costs_no_call_it_could_not(fleet: Fleet, fault: Fault, api: str):
    result = run_async(fleet, fault) if api == "async" else run_sync(fleet, fault)

    assert problems(result) == []
    # The same, spelled out, so that a failure reads on its own:
    assert not result.hung and not result.untyped
    assert result.succeeded + result.failed_total == result.calls
    assert result.calls >= (192 if api == "async" else 96)
    if fault.before_first_token:
        assert result.failed_total == 0
    else:
        assert set(result.failed) == {"StreamInterruptedError"} and result.succeeded > 0
        assert result.failed_elsewhere == 0
    assert result.longest_call_s <= DEADLINE + MARGIN
    assert result.ejected
    if fault.recovers:
        assert result.recovered
    assert result.leftover_tasks == 0 and result.leftover_threads == 0
    assert result.resource_warnings == []


def test_the_verdict_catches_what_goes_wrong(fleet: Fleet):
    """``problems`` is what the test above relies on: it must object to a bad run."""
    result = run_sync(fleet, FAULTS[0], calls=8, concurrency=2)
    assert problems(result) == []
    result.failed["AllRoutesFailedError"] += 1
    result.calls += 1
    result.longest_call_s = DEADLINE + MARGIN + 1
    result.resource_warnings.append("unclosed <socket>")
    found = " | ".join(problems(result))
    for expected in ("1 calls failed", "took", "ResourceWarnings"):
        assert expected in found


def test_the_reliability_report_script_writes_the_table(tmp_path):
    script = Path(__file__).resolve().parent.parent / "scripts" / "reliability_report.py"
    out = tmp_path / "reliability.md"
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--faults", "killed", "html"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "| yes |" in line]
    assert len(rows) == 4  # two faults, async and sync, each holding
    assert "| process killed mid-run | async | 192 | 192 | 0 |" in text
    assert "| answers an HTML error page | sync | 96 | 96 | 0 |" in text
