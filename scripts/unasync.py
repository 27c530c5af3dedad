#!/usr/bin/env python3
"""Write the sync twins from the async code, or check that they match (``--check``, in CI).

    python scripts/unasync.py            # rewrite every llm/**/_sync/*.py from its _async twin
    python scripts/unasync.py --check    # exit 1, with a diff, when a _sync file differs

The async code is the only hand-written copy of each twin (the engine, its stream, the bounded
read, the active check, the provider's call methods). Each ``_async/NAME.py`` becomes
``_sync/NAME.py`` by the word-level substitutions in ``RULES``: ``async``/``await`` removed,
``Async*`` names made ``Sync*``, the async iteration protocol made the sync one, and the
provider's ``a``-prefixed methods given their sync names. So the twins cannot drift: CI fails
when a sync file is not what this script writes (as httpcore does with its own unasync).
"""

from __future__ import annotations

import argparse
import difflib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "llm"

# (pattern, replacement), applied in this order to every line.
RULES: list[tuple[str, str]] = [
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bAsyncGenerator\[(.+?), None\]", r"Generator[\1, None, None]"),
    (r"\bAsyncGenerator\b", "Generator"),
    (r"\bStopAsyncIteration\b", "StopIteration"),
    (r"\bAsync(?=[A-Z])", "Sync"),
    (r"\basync (def|for|with)\b", r"\1"),
    (r"\bawait ", ""),
    (r"\b__aiter__\b", "__iter__"),
    (r"\b__anext__\b", "__next__"),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\baiter_(bytes|raw)\b", r"iter_\1"),
    (r"\b_async\b", "_sync"),
    (r"\b_aengine\b", "_engine"),
    # the provider's methods and the probes' functions: achat -> chat, acheck_route -> ...
    (
        r"\ba(chat_completion|chat|stream_events|stream|complete|list_models|health_checks"
        r"|health|check_routes|check_route)\b",
        r"\1",
    ),
    (r"\bais_available\b", "is_available"),
]
_COMPILED = [(re.compile(pattern), replacement) for pattern, replacement in RULES]


_FROM_IMPORT = re.compile(r"^(from \S+ import )(?:\(\n(.*?)\)|([^(\n]+))$", re.M | re.S)


def _import_order(name: str) -> tuple[int, str]:
    """isort's (and ruff's) order by type: CONSTANTS, then Classes, then functions."""
    bare = name.split(" as ")[0]
    kind = 0 if bare.isupper() and len(bare) > 1 else 1 if bare[:1].isupper() else 2
    return kind, bare.lower()


def _sort_import(match: re.Match[str]) -> str:
    """A ``from x import a, b`` statement with its names sorted again (renaming can unsort
    them: ``AsyncGenerator, Callable`` becomes ``Generator, Callable``)."""
    head, block, line = match.group(1), match.group(2), match.group(3)
    if block is not None:
        names = [n.strip().rstrip(",") for n in block.splitlines() if n.strip()]
        body = "".join(f"    {name},\n" for name in sorted(names, key=_import_order))
        return f"{head}(\n{body})"
    names = [n.strip() for n in line.split(",")]
    return head + ", ".join(sorted(names, key=_import_order))


def unasync_text(text: str, source: str) -> str:
    """The sync twin of an async module's text."""
    lines = []
    for line in text.splitlines(keepends=True):
        for pattern, replacement in _COMPILED:
            line = pattern.sub(replacement, line)
        lines.append(line)
    body = _FROM_IMPORT.sub(_sort_import, "".join(lines))
    header = (
        f"# Generated from {source} by scripts/unasync.py: do not edit.\n"
        "# Edit the async file, then run `python scripts/unasync.py` (CI runs it with --check).\n"
    )
    return header + body


def twins() -> list[tuple[Path, Path]]:
    """(async file, sync file) for every module of every ``_async`` folder."""
    pairs = []
    for folder in sorted(PACKAGE.rglob("_async")):
        for source in sorted(folder.glob("*.py")):
            pairs.append((source, folder.parent / "_sync" / source.name))
    return pairs


def expected(source: Path) -> str:
    if source.name == "__init__.py":
        return '"""The sync twins, written by scripts/unasync.py from the async ones."""\n'
    return unasync_text(source.read_text(), source.relative_to(ROOT).as_posix())


def check() -> list[str]:
    """A diff for each sync file that is not what ``write`` would make (empty: all match)."""
    problems = []
    for source, target in twins():
        want = expected(source)
        have = target.read_text() if target.exists() else ""
        if have != want:
            name = target.relative_to(ROOT).as_posix()
            diff = difflib.unified_diff(
                have.splitlines(keepends=True),
                want.splitlines(keepends=True),
                fromfile=f"{name} (in the tree)",
                tofile=f"{name} (from its async twin)",
            )
            problems.append("".join(diff))
    return problems


def write() -> list[Path]:
    written = []
    for source, target in twins():
        target.parent.mkdir(exist_ok=True)
        want = expected(source)
        if not target.exists() or target.read_text() != want:
            target.write_text(want)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 on a difference")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(problem)
        if problems:
            print(f"{len(problems)} sync twin(s) differ: run python scripts/unasync.py")
            return 1
        print(f"{len(twins())} sync twins match their async code")
        return 0
    for path in write():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
