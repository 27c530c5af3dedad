"""How many tokens a call's prompt is, estimated without a tokenizer.

The estimate is its text's UTF-8 bytes divided by 4, rounded up (English prose runs about 4
bytes a token with the common tokenizers; code and JSON nearer 3, so this errs short for
them, and CJK text about 3 bytes a token, nearer 1 token each), plus what a chat template adds:
``MESSAGE_TOKENS`` per message and ``CHAT_TOKENS`` per chat. Text is what a message's
``content`` holds (a string, or the ``text`` of its parts; other parts count nothing), plus the
arguments of its tool calls. A completion's prompt of token ids counts one per id. It decides
only which routes a call is sent to (``routing/fit.py``); the server's own count, when it
refuses a call, replaces it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MESSAGE_TOKENS = 4  # a role header and an end mark, as chat templates write them
CHAT_TOKENS = 3  # the assistant header the template opens at the end


def _bytes(text: object) -> int:
    return len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else 0


def _content_bytes(content: object) -> int:
    if isinstance(content, str):
        return _bytes(content)
    if isinstance(content, list):
        return sum(_bytes(part.get("text")) for part in content if isinstance(part, Mapping))
    return 0


def _calls_bytes(calls: object) -> int:
    if not isinstance(calls, list):
        return 0
    size = 0
    for call in calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            size += _bytes(function.get("name")) + _bytes(function.get("arguments"))
    return size


def prompt_tokens(body: Mapping[str, Any] | None) -> int:
    """The estimated prompt tokens of a request body (see the module's doc); 0 for none."""
    if not body:
        return 0
    messages = body.get("messages")
    if isinstance(messages, list):
        size = 0
        for message in messages:
            if isinstance(message, Mapping):
                size += _content_bytes(message.get("content"))
                size += _calls_bytes(message.get("tool_calls"))
        return (size + 3) // 4 + MESSAGE_TOKENS * len(messages) + CHAT_TOKENS
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if prompt and all(isinstance(item, int) for item in prompt):
            return len(prompt)
        prompt = prompt[0] if prompt else None  # a batch: its first prompt
    return (_bytes(prompt) + 3) // 4
