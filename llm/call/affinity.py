"""A call's affinity key: its ``session=``, or a hash of its prompt's head.

How this works
--------------
The key decides a call's home routes (``routing/affinity.py``); calls that share a key share
homes, and so share the prefix cache of those instances. Two sources:

- ``session="..."`` on the call: the key is a hash of that string. Every turn of a
  conversation passed with its session id lands where the earlier turns are cached.
- ``llm.affinity.by_prefix``: the key is a hash of the prompt's *head*, no tokenizer needed.
  For a chat, the head is its leading ``system`` (or ``developer``) messages; when those are
  shorter than ``MIN_HEAD`` characters (or absent), the head runs on through the first other
  message (the conversation's opening, the same in every later turn of it). For a completion,
  the head is the prompt's start. The head is cut to ``prefix_chars`` characters and then
  down to whole blocks of ``AFFINITY_BLOCK`` (64) characters, about 16 tokens, the size of a
  vLLM cache block: a head shorter than one block gives no key (nothing worth caching), and
  text past the last whole block (a prompt's tail, which differs call to call) never moves a
  key. Each message counts as its role, a separator, its text (a list of parts: their
  ``text``), and an end mark, so "a" + "bc" and "ab" + "c" differ.

Keys are 8-byte BLAKE2b digests: stable across processes and machines, so every app replica
gives the same call the same key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from ..config.model import AFFINITY_BLOCK

MIN_HEAD = 4 * AFFINITY_BLOCK  # system messages shorter than this take the first turn along
_SYSTEM_ROLES = ("system", "developer")


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def session_key(session: str) -> bytes:
    """The key of an explicit ``session=``."""
    return _digest("session\x00" + session)


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def _block_key(head: str, prefix_chars: int) -> bytes | None:
    cut = min(len(head), prefix_chars)
    cut -= cut % AFFINITY_BLOCK
    return _digest(head[:cut]) if cut else None


def chat_key(messages: Sequence[Mapping[str, Any]], prefix_chars: int) -> bytes | None:
    """The key of a chat's head (see the module's doc), or None when it is too short."""
    parts: list[str] = []
    size = 0
    for message in messages:
        role = message.get("role")
        text = f"{role}\x1f{_text(message.get('content'))}\x1e"
        if role not in _SYSTEM_ROLES and size >= MIN_HEAD:
            break
        parts.append(text)
        size += len(text)
        if role not in _SYSTEM_ROLES or size >= prefix_chars:
            break
    return _block_key("".join(parts), prefix_chars)


def prompt_key(prompt: object, prefix_chars: int) -> bytes | None:
    """The key of a completion prompt's start (a list of strings: its first one)."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        return None  # token ids: no text to hash
    return _block_key(prompt, prefix_chars)


def affinity_key(
    session: str | None, body: Mapping[str, Any] | None, by_prefix: bool, prefix_chars: int
) -> bytes | None:
    """The key of a call: its session's, else (with ``by_prefix``) its prompt head's."""
    if session is not None:
        return session_key(session)
    if not by_prefix or not body:
        return None
    messages = body.get("messages")
    if isinstance(messages, list):
        return chat_key(messages, prefix_chars)
    return prompt_key(body.get("prompt"), prefix_chars)
