"""The request-body keys the library knows, as data: one table for the config and for calls.

How this works
--------------
``BODY_KEYS`` maps each body key (``temperature``, ``max_tokens``, ``stop``, ...) to a
``BodyKey``: its *kind* and, for numbers, the bounds the config enforces. Two users derive
what they need from it and from nothing else:

- the config (``sections``): ``llm.params.<key>`` is read by the reader of its kind with its
  bounds, and the message says them (``max_tokens``: "a positive integer", ``top_p``: "a
  number in (0, 1]");
- a call (``llm.call.validate``): a keyword's kind says its type check, and only counts keep
  a bound; other ranges are left to the server, whose 400 names them.

=====================  ============================  ===================================
kind                   config reads                  a call checks
=====================  ============================  ===================================
``count``              an integer > 0                an integer > 0
``count0``             an integer >= 0               an integer >= 0
``integer``            an integer within the bounds  an integer
``number``             a number within the bounds    a finite number
``bool``               true / false                  a JSON value
``string``             a string                      a JSON value
``stop``               a string or list of strings   a JSON value
``mapping``            a mapping of JSON values      a JSON value
``list``               a list of JSON values         a JSON value
``string_or_mapping``  a string or a mapping         a JSON value
``string_list``        a list of non-empty strings   a JSON value
=====================  ============================  ===================================

``SERVER_KEYS`` are body keys of vLLM, OpenAI and other OpenAI-compatible servers that the
library does not check but must never take for a typo of a known key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

Kind = Literal[
    "count",
    "count0",
    "integer",
    "number",
    "bool",
    "string",
    "stop",
    "mapping",
    "list",
    "string_or_mapping",
    "string_list",
]


@dataclass(frozen=True, slots=True)
class BodyKey:
    """How one body key is read: its kind, and for numbers the config's bounds (``exclusive``
    makes ``minimum`` a strict bound)."""

    kind: Kind
    minimum: float | None = None
    exclusive: bool = False
    maximum: float | None = None


_COUNT = BodyKey("count", minimum=0, exclusive=True)
_COUNT0 = BodyKey("count0", minimum=0)
_BOOL = BodyKey("bool")
_STRING = BodyKey("string")
_MAPPING = BodyKey("mapping")
_PENALTY = BodyKey("number", minimum=-2, maximum=2)

# The order is kept as it was: on a did-you-mean tie, the key listed first wins.
BODY_KEYS: Mapping[str, BodyKey] = MappingProxyType(
    {
        "temperature": BodyKey("number", minimum=0),
        "top_p": BodyKey("number", minimum=0, exclusive=True, maximum=1),
        "top_k": BodyKey("integer", minimum=-1),
        "min_p": BodyKey("number", minimum=0, maximum=1),
        "max_tokens": _COUNT,
        "max_completion_tokens": _COUNT,
        "n": _COUNT,
        "stop": BodyKey("stop"),
        "seed": BodyKey("integer"),
        "presence_penalty": _PENALTY,
        "frequency_penalty": _PENALTY,
        "repetition_penalty": BodyKey("number", minimum=0, exclusive=True),
        "length_penalty": BodyKey("number"),
        "logprobs": _BOOL,
        "top_logprobs": _COUNT0,
        "logit_bias": _MAPPING,
        "response_format": _MAPPING,
        "tools": BodyKey("list"),
        "tool_choice": BodyKey("string_or_mapping"),
        "parallel_tool_calls": _BOOL,
        "user": _STRING,
        "stream_options": _MAPPING,
        "ignore_eos": _BOOL,
        "min_tokens": _COUNT0,
        "skip_special_tokens": _BOOL,
        "spaces_between_special_tokens": _BOOL,
        "chat_template_kwargs": _MAPPING,
        "structured_outputs": _MAPPING,
        "guided_json": BodyKey("string_or_mapping"),
        "guided_regex": _STRING,
        "guided_choice": BodyKey("string_list"),
        "guided_grammar": _STRING,
        "reasoning_effort": _STRING,
        "include_reasoning": _BOOL,
        "truncate_prompt_tokens": BodyKey("integer", minimum=-1),
        "priority": BodyKey("integer"),
        "best_of": _COUNT,
        "use_beam_search": _BOOL,
    }
)

# Body keys of vLLM, OpenAI and other OpenAI-compatible servers that are not checked but must
# never be taken for a typo of a known key (the others pass through unchecked as well).
SERVER_KEYS: tuple[str, ...] = (
    "add_generation_prompt",
    "add_special_tokens",
    "allowed_token_ids",
    "bad_words",
    "cache_salt",
    "chat_template",
    "continue_final_message",
    "documents",
    "echo",
    "function_call",
    "functions",
    "include_stop_str_in_output",
    "kv_transfer_params",
    "logits_processors",
    "metadata",
    "mm_processor_kwargs",
    "prompt_logprobs",
    "repeat_penalty",
    "request_id",
    "return_token_ids",
    "return_tokens_as_token_ids",
    "stop_token_ids",
    "store",
    "suffix",
    "vllm_xargs",
)
