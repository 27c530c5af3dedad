"""The sync twins are generated from the async code (scripts/unasync.py) and cannot drift."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_unasync() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync", ROOT / "scripts" / "unasync.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["unasync"] = module
    spec.loader.exec_module(module)
    return module


unasync = _load_unasync()


def test_every_sync_twin_in_the_tree_is_what_its_async_code_makes() -> None:
    assert unasync.check() == []
    pairs = unasync.twins()
    # the engine, its stream, the bounded read, the active check, the provider's methods
    names = {source.relative_to(ROOT).as_posix() for source, _ in pairs}
    assert {
        "llm/send/_async/engine.py",
        "llm/send/_async/stream.py",
        "llm/send/_async/read.py",
        "llm/probes/_async/look.py",
        "llm/providers/_async/api.py",
    } <= names
    for source, target in pairs:
        assert target.parent.name == "_sync" and target.name == source.name


def test_the_rules_turn_async_code_into_its_sync_twin() -> None:
    source = (
        "from collections.abc import AsyncGenerator, AsyncIterator, Callable\n"
        "from .._async.stream import AsyncStream\n"
        "\n"
        "class AsyncAPI(ProviderBase):\n"
        "    async def achat(self) -> str:\n"
        "        return await self._aengine.request(x)\n"
        "    async def batches(self) -> AsyncGenerator[list[dict[str, Any]], None]:\n"
        "        async for chunk in self.aiter_bytes():\n"
        "            yield chunk\n"
        "        try:\n"
        "            await raw.__anext__()\n"
        "        except StopAsyncIteration:\n"
        "            await self.aclose()\n"
        "    async def __aenter__(self) -> AsyncAPI:\n"
        "        async with lock:\n"
        "            return await ais_available()\n"
    )
    text = unasync.unasync_text(source, "x/_async/api.py")
    assert text.splitlines()[0] == (
        "# Generated from x/_async/api.py by scripts/unasync.py: do not edit."
    )
    body = text.split("\n", 2)[2]
    assert body == (
        "from collections.abc import Callable, Generator, Iterator\n"  # sorted again
        "from .._sync.stream import SyncStream\n"
        "\n"
        "class SyncAPI(ProviderBase):\n"
        "    def chat(self) -> str:\n"
        "        return self._engine.request(x)\n"
        "    def batches(self) -> Generator[list[dict[str, Any]], None, None]:\n"
        "        for chunk in self.iter_bytes():\n"
        "            yield chunk\n"
        "        try:\n"
        "            raw.__next__()\n"
        "        except StopIteration:\n"
        "            self.close()\n"
        "    def __enter__(self) -> SyncAPI:\n"
        "        with lock:\n"
        "            return is_available()\n"
    )


def test_a_sync_twin_edited_by_hand_is_reported_with_a_diff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "llm" / "_async" / "thing.py"
    source.parent.mkdir(parents=True)
    source.write_text('"""A twin."""\n\n\nasync def run() -> None:\n    await go()\n')
    target = tmp_path / "llm" / "_sync" / "thing.py"
    monkeypatch.setattr(unasync, "ROOT", tmp_path)
    monkeypatch.setattr(unasync, "PACKAGE", tmp_path / "llm")
    assert unasync.write() == [target]
    assert unasync.check() == []
    assert "def run() -> None:\n    go()\n" in target.read_text()
    target.write_text(target.read_text().replace("go()", "go(retries=2)"))  # drift
    (problem,) = unasync.check()
    assert "-    go(retries=2)" in problem and "+    go()" in problem
