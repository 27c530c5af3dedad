"""Showing configuration values without their secrets: the one place that knows how.

- ``redact_url``: a ``base_url`` with its ``user:password@`` masked (``RouteConfig.shown_url``,
  config error messages).
"""

from __future__ import annotations

import re


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced, for messages."""
    return re.sub(r"(?<=://)[^/@]*@", "***@", url)
