#!/usr/bin/env python3
"""Check every route of the llm-routes config; see ``--help`` and ``llm/cli/healthcheck.py``."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # run from a checkout: use this checkout's llm package
    sys.path.insert(0, ROOT)

from llm.cli.healthcheck import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
