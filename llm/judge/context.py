"""What a server's 400 says about its context window: vLLM's two "does not fit" messages.

vLLM refuses a call that cannot fit its ``--max-model-len`` with a 400 whose message names
the limit (byte-exact in vllm-protocol-samples.txt)::

    max_tokens=4096 cannot be greater than max_model_len=512. Please request fewer output ...
    This model's maximum context length is 512 tokens. However, your prompt contains at least
    513 input tokens, ...

``context_limit`` reads the limit and, from the second form, the prompt's size as the server
counted it (at least that many tokens); anything else is not a context error (None).
"""

from __future__ import annotations

import re
from typing import NamedTuple

_MAX_TOKENS = re.compile(r"cannot be greater than max_model_len=(\d{1,9})\b")
_CONTEXT = re.compile(r"maximum context length is (\d{1,9}) tokens")
_PROMPT = re.compile(r"prompt contains at least (\d{1,9}) input tokens")


class ContextLimit(NamedTuple):
    max_model_len: int
    prompt_tokens: int | None  # the server's count of the prompt, when it gave one


def context_limit(message: str | None) -> ContextLimit | None:
    """The limit a context-length 400's message names, or None when it is not one."""
    if not message:
        return None
    head = message[:2000]
    found = _MAX_TOKENS.search(head) or _CONTEXT.search(head)
    if found is None:
        return None
    limit = int(found.group(1))
    if limit < 1:
        return None
    prompt = _PROMPT.search(head)
    return ContextLimit(limit, int(prompt.group(1)) if prompt else None)
