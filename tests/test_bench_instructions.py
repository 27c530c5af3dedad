"""scripts/bench_instructions.py: reading callgrind's total (the runs need valgrind; not here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_instructions.py"


def load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_instructions", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_total_is_read_from_callgrind_s_summary_line() -> None:
    script = load_script()
    log = "==30914== Collected : 3085401415\n==30914== \n==30914== I   refs:      3,085,401,415\n"
    assert script.instructions(log) == 3_085_401_415
    with pytest.raises(ValueError, match="I refs"):
        script.instructions("==1== nothing counted\n")

