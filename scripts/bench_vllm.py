#!/usr/bin/env python3
"""Load test through the llm-routes provider; ``--demo`` runs the built-in demo.

A thin entry point: the logic is ``llm.cli.bench`` (also installed as the ``llm-bench`` command).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llm.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
