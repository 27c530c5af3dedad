"""vLLM 0.32 OpenAI-compatible payloads: request validation and response bodies.

How this works
--------------
This module is pure (no I/O, no clock of its own): the HTTP layer hands it a
parsed request body and gets back either an :class:`HttpError` (status +
ready-to-send JSON bytes) or a :class:`Plan` describing what to generate.
``render_*`` functions then turn a plan into the exact bytes a real vLLM 0.32
server sends (see ``/work/shared/vllm-protocol-samples.txt``): compact JSON with
the same keys in the same order, SSE events ``data: <json>\\n\\n``.

Generated text is deterministic gibberish: a fixed pool of short lowercase
pieces ("er", " mdpzot", ...) is walked from an offset/stride derived from a
CRC32 of the prompt, one piece per token, so the same prompt always yields the
same text (streamed or not). Hot paths (stream chunks) are built with string
templates rather than ``json.dumps`` of nested dicts, so the fake stays cheap
under CPU benchmarks.
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

from ._structured import document_pieces

VLLM_VERSION = "0.32.0"
SYSTEM_FINGERPRINT = "vllm-0.32.0-d194b792"

ErrorStyle = Literal["nested", "flat"]

JSON = "application/json"

# --------------------------------------------------------------------------- json helpers


# (cached_tokens, created_cache_tokens) of a prompt, as vLLM reports them with
# --enable-prompt-tokens-details; None = the details are off (null).
PromptDetails = tuple[int, int]


def _final_usage(
    prompt_tokens: int, completion_tokens: int, details: PromptDetails | None = None
) -> dict[str, Any]:
    """The usage block of a non-streamed answer, keys in vLLM's order."""
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None
        if details is None
        else {
            "cached_tokens": details[0],
            "created_cache_tokens": details[1],
            "multimodal_tokens": None,
        },
        "completion_tokens_details": None,
    }


def dumps(obj: Any) -> str:
    """Compact JSON exactly like Starlette's JSONResponse / pydantic's model_dump_json."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def dumpb(obj: Any) -> bytes:
    return dumps(obj).encode("utf-8")


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class HttpError:
    """A ready-to-send error response."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


_ERROR_TYPES: dict[int, str] = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "TimeoutError",
    409: "ConflictError",
    413: "PayloadTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    501: "NotImplementedError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}

_DEFAULT_MESSAGES: dict[int, str] = {
    429: "Too many requests (fake)",
    500: "Internal server error (fake)",
    502: "Bad gateway (fake)",
    503: "Service temporarily unavailable (fake)",
    504: "Gateway timeout (fake)",
}


def error_type_for(status: int) -> str:
    known = _ERROR_TYPES.get(status)
    if known is not None:
        return known
    from http import HTTPStatus

    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "Error"
    return "".join(w.capitalize() for w in phrase.replace("-", " ").split()) + "Error"


def default_error_message(status: int) -> str:
    msg = _DEFAULT_MESSAGES.get(status)
    if msg is not None:
        return msg
    from http import HTTPStatus

    try:
        return f"{HTTPStatus(status).phrase} (fake)"
    except ValueError:
        return f"Error {status} (fake)"


def error_body(style: ErrorStyle, message: str, type_: str, param: str | None, code: int) -> bytes:
    if style == "flat":
        return dumpb(
            {"object": "error", "message": message, "type": type_, "param": param, "code": code}
        )
    return dumpb({"error": {"message": message, "type": type_, "param": param, "code": code}})


def api_error(style: ErrorStyle, status: int, message: str, param: str | None = None) -> HttpError:
    return HttpError(status, error_body(style, message, error_type_for(status), param, status))


def validation_error(style: ErrorStyle, detail: str, param: str | None) -> HttpError:
    """FastAPI RequestValidationError as reformatted by vLLM ("1 validation error:\\n  ...")."""
    return HttpError(
        400, error_body(style, f"1 validation error:\n  {detail}", "Bad Request", param, 400)
    )


def pyd_error(style: ErrorStyle, type_: str, loc: str, msg: str, input_: Any) -> HttpError:
    return validation_error(
        style, repr({"type": type_, "loc": loc, "msg": msg, "input": input_}), loc
    )


def param_error(style: ErrorStyle, message: str, param: str | None, value: Any) -> HttpError:
    """vLLM's SamplingParams-style error: 'msg (parameter=p, value=v)'."""
    return api_error(style, 400, f"{message} (parameter={param}, value={value})", param)


def unsupported_media_type(style: ErrorStyle) -> HttpError:
    return validation_error(
        style, "Unsupported Media Type: Only 'application/json' is allowed", None
    )


def parse_json_body(style: ErrorStyle, body: bytes) -> tuple[Any, HttpError | None]:
    if not body:
        return None, pyd_error(style, "missing", "body", "Field required", None)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None, pyd_error(style, "json_invalid", "body.0", "JSON decode error", "<bytes>")
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        detail = repr(
            {
                "type": "json_invalid",
                "loc": f"body.{exc.pos}",
                "msg": "JSON decode error",
                "input": "<dict of 0 items>",
                "ctx": {"error": exc.msg},
            }
        )
        return None, validation_error(style, detail, f"body.{exc.pos}")


# --------------------------------------------------------------------------- gibberish

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _make_pool(size: int = 512) -> tuple[str, ...]:
    rng = random.Random(20261121)
    out: list[str] = []
    for _ in range(size):
        n = rng.choice((1, 2, 2, 2, 3, 3, 4, 4, 5, 6))
        piece = "".join(rng.choice(_LETTERS) for _ in range(n))
        if rng.random() < 0.25:
            piece = " " + piece
        out.append(piece)
    return tuple(out)


POOL: tuple[str, ...] = _make_pool()
POOL_JSON: tuple[str, ...] = tuple(dumps(p) for p in POOL)
_POOL_MASK = len(POOL) - 1  # len(POOL) is a power of two


def piece_indices(key: str, count: int, salt: int = 0) -> list[int]:
    """Deterministic walk through POOL: same (key, salt) -> same pieces."""
    h = zlib.crc32(key.encode("utf-8", "surrogatepass")) ^ ((salt * 0x9E3779B1) & 0xFFFFFFFF)
    start = h & _POOL_MASK
    step = ((h >> 9) & _POOL_MASK) | 1  # odd stride: a full cycle through the pool
    return [(start + i * step) & _POOL_MASK for i in range(count)]


def join_pieces(idx: list[int]) -> str:
    return "".join([POOL[i] for i in idx])


# --------------------------------------------------------------------------- tool calls

TOOL_ARGUMENTS = '{"city": "Paris"}'
TOOL_FRAGMENTS: tuple[str, ...] = ('{"city": ', '"Paris', '"}')
TOOL_COMPLETION_TOKENS = 8


# --------------------------------------------------------------------------- plan


@dataclass(slots=True)
class Choice:
    key: str
    prompt_tokens: int
    content: list[int]
    reasoning: list[int]
    finish_reason: str
    pieces: list[str] | None = None  # the content's tokens as text (structured output)

    @property
    def content_tokens(self) -> int:
        return len(self.content) if self.pieces is None else len(self.pieces)

    def content_text(self) -> str:
        return join_pieces(self.content) if self.pieces is None else "".join(self.pieces)


@dataclass(slots=True)
class Plan:
    kind: Literal["chat", "completion"]
    stream: bool
    include_usage: bool
    continuous_usage: bool
    prompt_tokens: int
    choices: list[Choice]
    tool_name: str | None = None
    top_logprobs: int | None = None  # None = logprobs off
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def completion_tokens_per_choice(self) -> list[int]:
        out = []
        for c in self.choices:
            n = len(c.reasoning) + (
                TOOL_COMPLETION_TOKENS if self.tool_name is not None else c.content_tokens
            )
            out.append(n)
        return out

    @property
    def completion_tokens(self) -> int:
        return sum(self.completion_tokens_per_choice)


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """The static part of the server config needed to validate and render."""

    model: str
    max_model_len: int
    tokens: int
    reasoning: bool
    error_style: ErrorStyle


def _as_int(
    style: ErrorStyle, body: dict[str, Any], name: str
) -> tuple[int | None, HttpError | None]:
    if name not in body or body[name] is None:
        return None, None
    v = body[name]
    if isinstance(v, bool):
        return int(v), None
    if isinstance(v, int):
        return v, None
    if isinstance(v, float) and v.is_integer():
        return int(v), None
    if isinstance(v, float):
        return None, pyd_error(
            style,
            "int_from_float",
            f"body.{name}",
            "Input should be a valid integer, got a number with a fractional part",
            v,
        )
    if isinstance(v, str):
        try:
            return int(v.strip()), None
        except ValueError:
            return None, pyd_error(
                style,
                "int_parsing",
                f"body.{name}",
                "Input should be a valid integer, unable to parse string as an integer",
                v,
            )
    return None, pyd_error(style, "int_type", f"body.{name}", "Input should be a valid integer", v)


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict):
                t = part.get("text")
                if isinstance(t, str):
                    parts.append(t)
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return ""


def _common_checks(
    spec: ServerSpec, body: dict[str, Any], default_max_tokens: int | None
) -> tuple[dict[str, Any], HttpError | None]:
    """model / max_tokens / temperature / n. Returns parsed values."""
    style = spec.error_style
    out: dict[str, Any] = {}
    mct, err = _as_int(style, body, "max_completion_tokens")
    if err:
        return out, err
    mt, err = _as_int(style, body, "max_tokens")
    if err:
        return out, err
    max_tokens = mct if mct is not None else mt
    if max_tokens is not None:
        if max_tokens < 1:
            return out, param_error(
                style, f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens", max_tokens
            )
        if max_tokens > spec.max_model_len:
            return out, param_error(
                style,
                f"max_tokens={max_tokens} cannot be greater than "
                f"max_model_len={spec.max_model_len}. Please request fewer output tokens.",
                "max_tokens",
                max_tokens,
            )
    out["max_tokens"] = max_tokens if max_tokens is not None else default_max_tokens
    n, err = _as_int(style, body, "n")
    if err:
        return out, err
    if n is None:
        n = 1
    if n < 1:
        return out, param_error(style, f"n must be at least 1, got {n}.", "n", n)
    out["n"] = n
    temp = body.get("temperature")
    if temp is not None:
        if isinstance(temp, bool) or not isinstance(temp, (int, float)):
            if isinstance(temp, str):
                try:
                    temp = float(temp)
                except ValueError:
                    temp = None
            else:
                temp = None
            if temp is None:
                return out, pyd_error(
                    style,
                    "float_type",
                    "body.temperature",
                    "Input should be a valid number",
                    body.get("temperature"),
                )
        if temp < 0:
            t = float(temp)
            return out, param_error(
                style, f"temperature must be non-negative, got {t}.", "temperature", t
            )
        if temp < 1e-5 and n > 1:  # vLLM's SamplingParams: greedy sampling has one answer
            return out, api_error(style, 400, f"n must be 1 when using greedy sampling, got {n}.")
    stream = bool(body.get("stream") or False)
    out["stream"] = stream
    so = body.get("stream_options")
    include_usage = False
    continuous = False
    if stream and isinstance(so, dict):
        include_usage = bool(so.get("include_usage") or False)
        continuous = include_usage and bool(so.get("continuous_usage_stats") or False)
    out["include_usage"] = include_usage
    out["continuous"] = continuous
    lp = body.get("logprobs")
    top: int | None = None
    if lp is True:
        tl = body.get("top_logprobs")
        top = tl if isinstance(tl, int) and not isinstance(tl, bool) and tl > 0 else 0
    out["top_logprobs"] = top
    return out, None


def _check_model(spec: ServerSpec, body: dict[str, Any]) -> HttpError | None:
    model = body.get("model")
    if model is None or model == spec.model:
        return None
    return api_error(
        spec.error_style,
        404,
        f"The model `{model}` does not exist. Valid aliases: {spec.model}.",
        "model",
    )


def _budget(
    spec: ServerSpec, prompt_tokens: int, max_tokens: int | None
) -> tuple[int, str] | HttpError:
    if prompt_tokens >= spec.max_model_len:
        shown = min(prompt_tokens, spec.max_model_len + 1)
        return param_error(
            spec.error_style,
            f"This model's maximum context length is {spec.max_model_len} tokens. However, "
            f"your prompt contains at least {shown} input tokens, which exceeds this limit "
            "even without any output tokens. Please reduce the length of the input prompt.",
            "input_tokens",
            shown,
        )
    count = spec.tokens
    finish = "stop"
    if max_tokens is not None and max_tokens <= count:
        count = max_tokens
        finish = "length"
    room = spec.max_model_len - prompt_tokens
    if count > room:
        count = room
        finish = "length"
    return count, finish


def _split_reasoning(spec: ServerSpec, count: int) -> tuple[int, int]:
    """(reasoning tokens, content tokens) out of a token budget."""
    if not spec.reasoning:
        return 0, count
    r = min(3, count // 2)
    return r, count - r


def plan_chat(spec: ServerSpec, body: Any) -> Plan | HttpError:
    style = spec.error_style
    if not isinstance(body, dict):
        return pyd_error(
            style,
            "model_attributes_type",
            "body",
            "Input should be a valid dictionary or object to extract fields from",
            body,
        )
    if "messages" not in body:
        return pyd_error(
            style, "missing", "body.messages", "Field required", f"<dict of {len(body)} items>"
        )
    messages = body["messages"]
    if not isinstance(messages, list):
        return pyd_error(
            style, "list_type", "body.messages", "Input should be a valid list", messages
        )
    err = _check_model(spec, body)
    if err:
        return err
    if not messages:
        return api_error(
            style,
            400,
            "Cannot apply chat template to an empty conversation. Provide at least one message.",
        )
    key_parts: list[str] = []
    prompt_tokens = 10
    for m in messages:
        if isinstance(m, dict):
            text = _message_text(m.get("content"))
            key_parts.append(f"{m.get('role')}:{text}")
        else:
            text = ""
        prompt_tokens += 4 + len(text) // 4
    opts, err = _common_checks(spec, body, None)
    if err:
        return err
    budget = _budget(spec, prompt_tokens, opts["max_tokens"])
    if isinstance(budget, HttpError):
        return budget
    count, finish = budget
    tools = body.get("tools")
    tool_choice = body.get("tool_choice", "auto")
    tool_name: str | None = None
    if isinstance(tools, list) and tools and tool_choice != "none":
        tool_name = _tool_name(tools, tool_choice)
        finish = "tool_calls"
    key = "\n".join(key_parts)
    r, c = _split_reasoning(spec, count)
    document = None if tool_name is not None else document_pieces(body.get("response_format"))
    if document is not None:
        # A grammar ends the answer with the document: only max_tokens or the context window
        # cut it short (the server's default answer length does not apply).
        asked = opts["max_tokens"]
        room = spec.max_model_len - prompt_tokens - r
        c = min(len(document), room if asked is None else min(asked - r, room))
        finish = "stop" if len(document) <= c else "length"
    choices = []
    for i in range(opts["n"]):
        choices.append(
            Choice(
                key=key,
                prompt_tokens=prompt_tokens,
                content=[] if tool_name is not None or document else piece_indices(key, c, i),
                reasoning=piece_indices(key, r, 1000 + i) if r else [],
                finish_reason=finish,
                pieces=None if document is None else document[:c],
            )
        )
    return Plan(
        kind="chat",
        stream=opts["stream"],
        include_usage=opts["include_usage"],
        continuous_usage=opts["continuous"],
        prompt_tokens=prompt_tokens,
        choices=choices,
        tool_name=tool_name,
        top_logprobs=opts["top_logprobs"],
    )


def _tool_name(tools: list[Any], tool_choice: Any) -> str:
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return str(fn["name"])
    first = tools[0]
    if isinstance(first, dict):
        fn = first.get("function")
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return str(fn["name"])
        if isinstance(first.get("name"), str):
            return str(first["name"])
    return "tool"


def plan_completion(spec: ServerSpec, body: Any) -> Plan | HttpError:
    style = spec.error_style
    if not isinstance(body, dict):
        return pyd_error(
            style,
            "model_attributes_type",
            "body",
            "Input should be a valid dictionary or object to extract fields from",
            body,
        )
    err = _check_model(spec, body)
    if err:
        return err
    prompt = body.get("prompt")
    prompts: list[tuple[str, int]] = []  # (key, prompt tokens)
    if isinstance(prompt, str):
        prompts.append((prompt, len(prompt) // 4 + 1))
    elif isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            prompts.append((",".join(str(p) for p in prompt), len(prompt)))
        else:
            for p in prompt:
                if isinstance(p, str):
                    prompts.append((p, len(p) // 4 + 1))
                elif isinstance(p, list):
                    prompts.append((",".join(str(x) for x in p), len(p)))
                else:
                    prompts = []
                    break
    if not prompts:
        return api_error(
            style, 400, "Either prompt or prompt_embeds must be provided and non-empty."
        )
    opts, err = _common_checks(spec, body, 16)
    if err:
        return err
    choices: list[Choice] = []
    total_prompt = 0
    for key, pt in prompts:
        budget = _budget(spec, pt, opts["max_tokens"])
        if isinstance(budget, HttpError):
            return budget
        count, finish = budget
        total_prompt += pt
        for i in range(opts["n"]):
            choices.append(
                Choice(
                    key=key,
                    prompt_tokens=pt,
                    content=piece_indices("\x00completion\x00" + key, count, i),
                    reasoning=[],
                    finish_reason=finish,
                )
            )
    return Plan(
        kind="completion",
        stream=opts["stream"],
        include_usage=opts["include_usage"],
        continuous_usage=opts["continuous"],
        prompt_tokens=total_prompt,
        choices=choices,
    )


# --------------------------------------------------------------------------- rendering


def _logprob_entry(idx: int, top: int) -> dict[str, Any]:
    tok = POOL[idx]
    lp = -(5.0 + (idx % 97) / 31.0)
    entry: dict[str, Any] = {"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8"))}
    tops: list[dict[str, Any]] = []
    for j in range(top):
        k = idx if j == 0 else (idx * 31 + j * 17) & _POOL_MASK
        t = POOL[k]
        tops.append(
            {
                "token": t,
                "logprob": lp if j == 0 else lp + 0.25 * j,
                "bytes": list(t.encode("utf-8")),
            }
        )
    entry["top_logprobs"] = tops
    return entry


def render_chat(
    plan: Plan,
    spec: ServerSpec,
    rid: str,
    created: int,
    tool_id: str,
    details: PromptDetails | None = None,
) -> bytes:
    choices: list[dict[str, Any]] = []
    for i, c in enumerate(plan.choices):
        reasoning = join_pieces(c.reasoning) if c.reasoning else None
        message: dict[str, Any] = {"role": "assistant"}
        if plan.tool_name is not None:
            message["content"] = None
        else:
            message["content"] = c.content_text()
        message["refusal"] = None
        message["annotations"] = None
        message["audio"] = None
        message["function_call"] = None
        if plan.tool_name is not None:
            message["tool_calls"] = [
                {
                    "id": tool_id,
                    "type": "function",
                    "function": {"name": plan.tool_name, "arguments": TOOL_ARGUMENTS},
                }
            ]
        message["reasoning"] = reasoning
        logprobs: Any = None
        if plan.top_logprobs is not None and plan.tool_name is None:
            logprobs = {"content": [_logprob_entry(x, plan.top_logprobs) for x in c.content]}
        choices.append(
            {
                "index": i,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": c.finish_reason,
                "stop_reason": None,
                "token_ids": None,
                "routed_experts": None,
            }
        )
    ct = plan.completion_tokens
    return dumpb(
        {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": spec.model,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": _final_usage(plan.prompt_tokens, ct, details),
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


def render_completion(
    plan: Plan, spec: ServerSpec, rid: str, created: int, details: PromptDetails | None = None
) -> bytes:
    choices = [
        {
            "index": i,
            "text": join_pieces(c.content),
            "logprobs": None,
            "finish_reason": c.finish_reason,
            "stop_reason": None,
            "token_ids": None,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "routed_experts": None,
        }
        for i, c in enumerate(plan.choices)
    ]
    ct = plan.completion_tokens
    return dumpb(
        {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": spec.model,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": _final_usage(plan.prompt_tokens, ct, details),
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


# A stream is a list of (event payload without the "data: " framing, paced) pairs;
# "paced" events are preceded by token_delay.
StreamEvents = list[tuple[str, bool]]
DONE = "[DONE]"


def _usage_min(prompt: int, completion: int, details: PromptDetails | None = None) -> str:
    # A stream's last usage carries the prompt's cache details without multimodal_tokens.
    shown = (
        ""
        if details is None
        else f',"prompt_tokens_details":{{"cached_tokens":{details[0]},'
        f'"created_cache_tokens":{details[1]}}}'
    )
    return (
        f'{{"prompt_tokens":{prompt},"total_tokens":{prompt + completion},'
        f'"completion_tokens":{completion}{shown}}}'
    )


def _usage_cont(prompt: int, completion: int) -> str:
    return (
        f'{{"prompt_tokens":{prompt},"total_tokens":{prompt + completion},'
        f'"completion_tokens":{completion},"completion_tokens_details":null}}'
    )


def render_chat_stream(
    plan: Plan,
    spec: ServerSpec,
    rid: str,
    created: int,
    tool_id: str,
    details: PromptDetails | None = None,
) -> StreamEvents:
    head = (
        f'{{"id":"{rid}","object":"chat.completion.chunk","created":{created},'
        f'"model":{dumps(spec.model)},"choices":['
    )
    # per choice: list of (delta json, logprobs json)
    per_choice: list[list[tuple[str, str]]] = []
    for c in plan.choices:
        deltas: list[tuple[str, str]] = [
            (f'{{"reasoning":{POOL_JSON[x]}}}', "null") for x in c.reasoning
        ]
        if plan.tool_name is not None:
            # as vLLM's hermes parser streams them: the name, the arguments in pieces, then
            # an empty delta with the finish reason
            deltas.append(
                (
                    f'{{"content":null,"tool_calls":[{{"id":"{tool_id}","type":"function",'
                    f'"index":0,"function":{{"name":{dumps(plan.tool_name)}}}}}]}}',
                    "null",
                )
            )
            for frag in TOOL_FRAGMENTS:
                deltas.append(
                    (
                        f'{{"content":null,"tool_calls":[{{"index":0,'
                        f'"function":{{"arguments":{dumps(frag)}}}}}]}}',
                        "null",
                    )
                )
            deltas.append(("{}", "null"))
        else:
            top = plan.top_logprobs
            if c.pieces is not None:
                deltas.extend((f'{{"content":{dumps(piece)}}}', "null") for piece in c.pieces)
            for x in c.content:
                lp = "null" if top is None else dumps({"content": [_logprob_entry(x, top)]})
                deltas.append((f'{{"content":{POOL_JSON[x]}}}', lp))
        if not deltas:
            deltas.append(('{"content":""}', "null"))
        per_choice.append(deltas)

    events: StreamEvents = []
    pt = plan.prompt_tokens
    cont = plan.continuous_usage
    for i in range(len(plan.choices)):
        usage = f',"usage":{_usage_cont(pt, 0)}' if cont else ""
        events.append(
            (
                f'{head}{{"index":{i},"delta":{{"role":"assistant","content":""}},'
                f'"logprobs":null,"finish_reason":null}}]{usage},'
                '"prompt_token_ids":null,"prompt_text":null}',
                False,
            )
        )
    steps = max(len(d) for d in per_choice)
    emitted = 0
    for step in range(steps):
        for i, deltas in enumerate(per_choice):
            if step >= len(deltas):
                continue
            delta, lp = deltas[step]
            emitted += 1
            if step == len(deltas) - 1:
                fr = plan.choices[i].finish_reason
                choice = (
                    f'{{"index":{i},"delta":{delta},"logprobs":{lp},'
                    f'"finish_reason":"{fr}","stop_reason":null,"token_ids":null}}'
                )
            else:
                choice = (
                    f'{{"index":{i},"delta":{delta},"logprobs":{lp},'
                    '"finish_reason":null,"token_ids":null}'
                )
            usage = f',"usage":{_usage_cont(pt, emitted)}' if cont else ""
            events.append((f"{head}{choice}]{usage}}}", step > 0 and i == 0))
    _finish_stream(events, plan, head, details)
    return events


def _finish_stream(
    events: StreamEvents, plan: Plan, head: str, details: PromptDetails | None = None
) -> None:
    if plan.include_usage:
        usage = _usage_min(plan.prompt_tokens, plan.completion_tokens, details)
        events.append(
            (
                f'{head}],"usage":{usage},'
                f'"system_fingerprint":"{SYSTEM_FINGERPRINT}"}}',
                False,
            )
        )
    elif events:
        last, paced = events[-1]
        events[-1] = (f'{last[:-1]},"system_fingerprint":"{SYSTEM_FINGERPRINT}"}}', paced)
    events.append((DONE, False))


def render_completion_stream(
    plan: Plan, spec: ServerSpec, rid: str, created: int, details: PromptDetails | None = None
) -> StreamEvents:
    head = (
        f'{{"id":"{rid}","object":"text_completion","created":{created},'
        f'"model":{dumps(spec.model)},"choices":['
    )
    events: StreamEvents = []
    pt = plan.prompt_tokens
    cont = plan.continuous_usage
    steps = max((len(c.content) for c in plan.choices), default=0)
    emitted = 0
    for step in range(max(steps, 1)):
        for i, c in enumerate(plan.choices):
            if step >= max(len(c.content), 1):
                continue
            text = POOL_JSON[c.content[step]] if c.content else '""'
            emitted += 1
            last = step >= len(c.content) - 1
            fr = f'"{c.finish_reason}"' if last else "null"
            choice = (
                f'{{"index":{i},"text":{text},"logprobs":null,"finish_reason":{fr},'
                '"stop_reason":null,"prompt_token_ids":null,"token_ids":null}'
            )
            usage = f',"usage":{_usage_cont(pt, emitted)}' if cont else ""
            events.append((f"{head}{choice}]{usage}}}", step > 0 and i == 0))
    _finish_stream(events, plan, head, details)
    return events


# --------------------------------------------------------------------------- other endpoints


def render_models(spec: ServerSpec, created: int, perm_id: str) -> bytes:
    return dumpb(
        {
            "object": "list",
            "data": [
                {
                    "id": spec.model,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": spec.model,
                    "parent": None,
                    "max_model_len": spec.max_model_len,
                    "permission": [
                        {
                            "id": perm_id,
                            "object": "model_permission",
                            "created": created,
                            "allow_create_engine": False,
                            "allow_sampling": True,
                            "allow_logprobs": True,
                            "allow_search_indices": False,
                            "allow_view": True,
                            "allow_fine_tuning": False,
                            "organization": "*",
                            "group": None,
                            "is_blocking": False,
                        }
                    ],
                }
            ],
        }
    )


def render_tokenize(spec: ServerSpec, body: Any) -> bytes | HttpError:
    if not isinstance(body, dict):
        return pyd_error(
            spec.error_style,
            "model_attributes_type",
            "body",
            "Input should be a valid dictionary or object to extract fields from",
            body,
        )
    err = _check_model(spec, body)
    if err:
        return err
    if isinstance(body.get("prompt"), str):
        text = body["prompt"]
        count = len(text) // 4 + 1
    elif isinstance(body.get("messages"), list):
        text = "\n".join(
            _message_text(m.get("content")) for m in body["messages"] if isinstance(m, dict)
        )
        count = 10 + sum(
            4 + len(_message_text(m.get("content"))) // 4
            for m in body["messages"]
            if isinstance(m, dict)
        )
    else:
        return api_error(spec.error_style, 400, "Either prompt or messages must be provided.")
    h = zlib.crc32(text.encode("utf-8", "surrogatepass"))
    ids = [(h + i * 7919) % 2048 for i in range(count)]
    return dumpb(
        {"count": count, "max_model_len": spec.max_model_len, "tokens": ids, "token_strs": None}
    )


def inflight_kv_usage(running: int) -> float:
    """The KV-cache usage the fake reports without batching: a fixed share per call in flight."""
    return running * 0.0001220703125


def render_metrics(
    model: str,
    running: int,
    waiting: int,
    success: int,
    prompt_tokens: int,
    generation_tokens: int,
    *,
    kv_usage: float | None = None,
    prefix_cache: tuple[int, int] | None = None,
) -> bytes:
    """The /metrics text. ``kv_usage`` overrides the in-flight estimate; ``prefix_cache`` =
    (queried tokens, hit tokens) adds vLLM's two prefix-cache counters (batching mode)."""
    lbl = f'engine="0",model_name="{model}"'
    kv = inflight_kv_usage(running) if kv_usage is None else float(kv_usage)
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{lbl}}} {float(running)!r}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{lbl}}} {float(waiting)!r}",
        "# HELP vllm:num_requests_waiting_by_reason Number of waiting requests by reason. "
        "Reason labels: 'capacity' = waiting for scheduling capacity; 'deferred' = deferred by "
        "transient constraints (LoRA budget, KV transfer, blocked status). Sum of all reasons "
        "equals vllm:num_requests_waiting.",
        "# TYPE vllm:num_requests_waiting_by_reason gauge",
        f'vllm:num_requests_waiting_by_reason{{{lbl},reason="capacity"}} {float(waiting)!r}',
        f'vllm:num_requests_waiting_by_reason{{{lbl},reason="deferred"}} 0.0',
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{{{lbl}}} {kv!r}",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{{lbl},finished_reason="stop"}} {float(success)!r}',
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{lbl}}} {float(prompt_tokens)!r}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{lbl}}} {float(generation_tokens)!r}",
    ]
    if prefix_cache is not None:
        queries, hits = prefix_cache
        lines += [
            "# HELP vllm:prefix_cache_queries_total "
            "Prefix cache queries, in terms of number of queried tokens.",
            "# TYPE vllm:prefix_cache_queries_total counter",
            f"vllm:prefix_cache_queries_total{{{lbl}}} {float(queries)!r}",
            "# HELP vllm:prefix_cache_hits_total "
            "Prefix cache hits, in terms of number of cached tokens.",
            "# TYPE vllm:prefix_cache_hits_total counter",
            f"vllm:prefix_cache_hits_total{{{lbl}}} {float(hits)!r}",
        ]
    return ("\n".join(lines) + "\n").encode("utf-8")


ORCA_FORMAT_HEADER = "endpoint-load-metrics-format"


def orca_headers(fmt: str | None, waiting: float, kv_usage: float) -> tuple[tuple[str, str], ...]:
    """The ORCA load report vLLM adds to a non-streamed answer when the request carries
    ``endpoint-load-metrics-format: JSON|TEXT`` (case-insensitive, like vLLM); () otherwise."""
    if not fmt:
        return ()
    kind = fmt.lower()
    w, kv = float(waiting), float(kv_usage)
    if kind == "json":
        value = (
            f'JSON {{"named_metrics": {{"num_requests_waiting": {w!r}, '
            f'"kv_cache_usage_perc": {kv!r}}}}}'
        )
    elif kind == "text":
        value = (
            f"TEXT named_metrics.num_requests_waiting={w!r}, "
            f"named_metrics.kv_cache_usage_perc={kv!r}"
        )
    else:
        return ()
    return (("endpoint-load-metrics", value),)


NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
