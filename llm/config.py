"""config.yaml -> validated, frozen dataclasses.

How this works
--------------
1. **Read** (``load_config``). The path is the argument, else ``$LLM_CONFIG``, else
   ``./config.yaml``. The file is parsed with a safe YAML loader that also rejects duplicate
   keys. A missing or unreadable file, a YAML syntax error (with line and column), an empty
   file or a top level that is not a mapping each become one ``ConfigError``.
2. **Unwrap** (``parse_config``). The data is ``{"llm": {...}}``, or the inner mapping itself
   (it has ``routes`` and no ``llm``).
3. **Interpolate**. Every string value, at any depth, has ``${VAR}`` and ``${VAR:-default}``
   replaced from ``environ`` (default ``os.environ``); ``:-`` uses the default when VAR is unset
   or empty, as in the shell. ``$${`` stands for a literal ``${``. This works on a copy: the
   caller's data is never changed.
4. **Override**. ``VLLM_BASE_URL`` / ``VLLM_MODEL`` replace the default route's ``base_url`` /
   ``model``; ``VLLM_API_KEY`` gives an ``api_key`` to every route that has none. Empty values
   count as unset.
5. **Validate and build**. A handful of typed readers (``_string``, ``_number``, ``_integer``,
   ``_bool``, ``_mapping``, ``_check_keys``) walk the data. The first problem raises one
   ``ConfigError`` whose message starts with the key path (``llm.routes.a.timeout``), says what
   was expected and what was found, and whose ``key_path`` is that path. Secrets (``api_key``,
   ``headers``) are described by type only, never by value. The result is made of frozen
   dataclasses whose mappings are read-only (``types.MappingProxyType``).

Numbers may be given as strings (``"30"``, as ``${VAR}`` produces) and booleans as
``"true"``/``"false"``; booleans are never numbers.

Import cost: PyYAML (and the YAML loader class), difflib and the ``${VAR}`` pattern are loaded
or built the first time they are needed (a file read, a did-you-mean hint, a string with
``${``), not when this module is imported.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias
from urllib.parse import urlsplit

from .errors import ConfigError

if TYPE_CHECKING:
    import yaml

__all__ = [
    "KNOWN_POLICIES",
    "HealthConfig",
    "LLMConfig",
    "RetryConfig",
    "RouteConfig",
    "load_config",
    "parse_config",
]

KNOWN_POLICIES: tuple[str, ...] = ("round_robin", "least_latency")

DEFAULT_PATH = "config.yaml"
DEFAULT_PROVIDER = "vllm_openai"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024


# --------------------------------------------------------------------------- dataclasses


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy of ``value`` (kept as is when it already is read-only)."""
    if isinstance(value, MappingProxyType):
        return value
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One inference server instance: where it is and which model it serves."""

    name: str
    base_url: str
    model: str
    timeout: float = DEFAULT_TIMEOUT
    api_key: str = field(default="EMPTY", repr=False)
    weight: float = 1.0
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)
    send_model: bool = True
    verify: bool | str = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _frozen_mapping(self.headers))

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType does not pickle; rebuild from a plain dict.
        return (
            type(self),
            (
                self.name,
                self.base_url,
                self.model,
                self.timeout,
                self.api_key,
                self.weight,
                dict(self.headers),
                self.send_model,
                self.verify,
            ),
        )

    def __repr__(self) -> str:
        return (
            f"RouteConfig(name={self.name!r}, base_url={self.shown_url!r}, model={self.model!r}, "
            f"timeout={self.timeout!r}, weight={self.weight!r}, send_model={self.send_model!r}, "
            f"verify={self.verify!r})"
        )

    @property
    def shown_url(self) -> str:
        """``base_url`` fit to show (logs, stats, reports): a ``user:password@`` is masked."""
        return _redact_url(self.base_url)

    @property
    def server_url(self) -> str:
        """``base_url`` without a trailing ``/v1``: where ``/health`` and ``/metrics`` live."""
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """How often and how patiently a call is retried."""

    max_retries: int = 3
    backoff_initial: float = 0.1
    backoff_max: float = 2.0
    retry_after_max: float = 10.0


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Ejection cooldowns, active checks and latency smoothing."""

    cooldown: float = 5.0
    max_cooldown: float = 60.0
    check_interval: float = 0.0
    reprobe_interval: float = 10.0
    ewma_alpha: float = 0.3
    stall_factor: float = 4.0
    stall_min: float = 1.0


@dataclass(frozen=True, slots=True)
class LLMConfig:
    """The whole ``llm:`` section, validated."""

    provider: str
    routes: Mapping[str, RouteConfig] = field(hash=False)
    default_route: str
    fallback_route: str | None = None
    lb_policy: str = "round_robin"
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = 10.0
    deadline: float = 2 * DEFAULT_TIMEOUT
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    retry: RetryConfig = field(default_factory=RetryConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    source: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "routes", _frozen_mapping(self.routes))
        object.__setattr__(self, "params", _frozen_mapping(self.params))

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (
                self.provider,
                dict(self.routes),
                self.default_route,
                self.fallback_route,
                self.lb_policy,
                dict(self.params),
                self.timeout,
                self.connect_timeout,
                self.deadline,
                self.max_response_bytes,
                self.retry,
                self.health,
                self.source,
            ),
        )

    def route(self, name: str) -> RouteConfig:
        """The route called ``name`` (``KeyError`` if there is none)."""
        return self.routes[name]

    @property
    def default_model(self) -> str:
        """The model of the default route: what a call serves when it names no model."""
        return self.routes[self.default_route].model

    def pool(self, model: str | None = None) -> tuple[str, ...]:
        """Names of the routes serving ``model`` (default: ``default_model``), in file order,
        without the fallback route."""
        wanted = self.default_model if model is None else model
        return tuple(
            name
            for name, route in self.routes.items()
            if route.model == wanted and name != self.fallback_route
        )


# --------------------------------------------------------------------------- schema

_TOP_KEYS = ("llm",)
_LLM_KEYS = (
    "default_route",
    "fallback_route",
    "health",
    "lb_policy",
    "params",
    "provider",
    "retry",
    "routes",
)
_ROUTE_KEYS = (
    "api_key",
    "base_url",
    "headers",
    "model",
    "send_model",
    "timeout",
    "verify",
    "weight",
)
_RETRY_KEYS = ("backoff_initial", "backoff_max", "retry_after_max")
_HEALTH_KEYS = (
    "check_interval",
    "cooldown",
    "ewma_alpha",
    "max_cooldown",
    "reprobe_interval",
    "stall_factor",
    "stall_min",
)
_CONTROL_KEYS = ("connect_timeout", "deadline", "max_response_bytes", "max_retries", "timeout")
_BODY_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "length_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "stream_options",
    "ignore_eos",
    "min_tokens",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "chat_template_kwargs",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "reasoning_effort",
    "include_reasoning",
    "truncate_prompt_tokens",
    "priority",
    "best_of",
    "use_beam_search",
)
_PARAMS_KEYS = (*_CONTROL_KEYS, "extra_body", *_BODY_KEYS)

# Extra words for unknown keys that are plausible mistakes.
_PARAMS_NOTES = {
    "model": "the model is set per route",
    "messages": "messages are given per call",
    "stream": "streaming is chosen per call (stream() / astream())",
    "api_key": "api_key is set per route",
}
_RETRY_NOTES = {"max_retries": "max_retries is set in llm.params"}
_ROUTE_NOTES = {"url": "did you mean 'base_url'?"}

_SECRET_KEYS = frozenset({"api_key", "headers"})
_MISSING: Any = object()


# --------------------------------------------------------------------------- error helpers


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _fail(path: str, message: str) -> NoReturn:
    raise ConfigError(f"{path}: {message}", path)


def _describe(value: object, *, secret: bool = False) -> str:
    """How a found value is shown in a message: the value itself, or only its type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a bool" if secret else f"a bool ({str(value).lower()})"
    if isinstance(value, str):
        if value == "":
            return "an empty string"
        if secret:
            return "a string"
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "...'"
    if isinstance(value, (int, float)):
        if secret:
            return "an integer" if isinstance(value, int) else "a number"
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, (list, tuple)):
        return "a list" if value else "an empty list"
    return f"a {type(value).__name__}"


def _is_secret(path: str) -> bool:
    return any(part in _SECRET_KEYS for part in path.split("."))


def _expected(path: str, expected: str, value: object, *, secret: bool = False) -> NoReturn:
    secret = secret or _is_secret(path)
    _fail(path, f"expected {expected}, found {_describe(value, secret=secret)}")


def _hint(word: str, choices: Collection[str]) -> str:
    """ "; did you mean 'x'?" for the closest choice (the first listed on a tie), or ""."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=len(choices))
    if not close:
        return ""

    def score(choice: str) -> float:
        return difflib.SequenceMatcher(None, word, choice).ratio()

    best = score(close[0])
    first = next(choice for choice in choices if choice in close and score(choice) == best)
    return f"; did you mean {first!r}?"


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else repr(number)


# --------------------------------------------------------------------------- typed readers


def _check_keys(
    path: str,
    mapping: Mapping[Any, Any],
    allowed: Collection[str],
    notes: Mapping[str, str] | None = None,
    advice: str = "",
) -> None:
    """Every key of ``mapping`` is one of ``allowed``; else an unknown-key error with a hint.

    ``notes`` replace the did-you-mean hint for particular keys; ``advice`` ends the message.
    """
    for key in mapping:
        if not isinstance(key, str):
            _expected(_join(path, key), "a string key", key)
        if key in allowed:
            continue
        note = (notes or {}).get(key)
        extra = f"; {note}" if note else _hint(key, allowed)
        allowed_text = ", ".join(sorted(allowed))
        _fail(_join(path, key), f"unknown key{extra} (allowed: {allowed_text}){advice}")


def _mapping(path: str, value: object, *, optional: bool = False) -> Mapping[Any, Any]:
    """A mapping; with ``optional``, null reads as an empty mapping."""
    if value is None and optional:
        return {}
    if not isinstance(value, Mapping):
        _expected(path, "a mapping", value)
    return value


def _string(path: str, value: object, *, secret: bool = False) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        _expected(path, "a non-empty string", value, secret=secret)
    return value


def _as_number(value: object) -> int | float | None:
    """``value`` as an int or float (numeric strings too); None when it is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip()
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                pass
    return None


def _range_phrase(kind: str, minimum: float | None, exclusive: bool, maximum: float | None) -> str:
    if minimum is None and maximum is None:
        return _a(kind)
    if maximum is None:
        assert minimum is not None
        if minimum == 0 and exclusive:
            return f"a positive {kind}"
        return f"{_a(kind)} {'>' if exclusive else '>='} {_fmt(minimum)}"
    if minimum is None:
        return f"{_a(kind)} <= {_fmt(maximum)}"
    return f"{_a(kind)} in {'(' if exclusive else '['}{_fmt(minimum)}, {_fmt(maximum)}]"


def _check_range(
    path: str,
    number: float,
    value: object,
    expected: str,
    minimum: float | None,
    exclusive: bool,
    maximum: float | None,
) -> None:
    too_low = minimum is not None and (number <= minimum if exclusive else number < minimum)
    too_high = maximum is not None and number > maximum
    if not math.isfinite(number) or too_low or too_high:
        _expected(path, expected, value)


def _number(
    path: str,
    value: object,
    *,
    minimum: float | None = None,
    exclusive: bool = False,
    maximum: float | None = None,
    expected: str | None = None,
) -> float:
    """A finite number in range; ``exclusive`` makes ``minimum`` a strict bound."""
    expected = expected or _range_phrase("number", minimum, exclusive, maximum)
    number = _as_number(value)
    if number is None:
        _expected(path, expected, value)
    _check_range(path, number, value, expected, minimum, exclusive, maximum)
    return float(number)


def _integer(
    path: str,
    value: object,
    *,
    minimum: int | None = None,
    exclusive: bool = False,
    maximum: int | None = None,
) -> int:
    """An integer in range (floats such as 1.5 or 2.0 are rejected)."""
    expected = _range_phrase("integer", minimum, exclusive, maximum)
    number = _as_number(value)
    if not isinstance(number, int):
        _expected(path, expected, value)
    _check_range(path, number, value, expected, minimum, exclusive, maximum)
    return number


def _bool(path: str, value: object) -> bool:
    """true/false, or the strings "true"/"false" (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    _expected(path, "true or false", value)


def _choice(path: str, value: object, choices: Collection[str], what: str) -> str:
    """One of ``choices``; the message lists them and suggests the closest."""
    listed = ", ".join(choices)
    if not isinstance(value, str) or value not in choices:
        hint = _hint(value, choices) if isinstance(value, str) else ""
        _fail(path, f"expected {what} (one of: {listed}), found {_describe(value)}{hint}")
    return value


def _url(path: str, value: object) -> str:
    """An http(s) URL with a host; trailing slashes removed."""
    expected = "an http:// or https:// URL with a host"
    text = _string(path, value).strip()
    if "://" not in text:
        shown = _redact_url(text)
        # Suggest a scheme only where adding one could give a URL (not for 'not a url').
        hint = "" if any(c.isspace() for c in text) else f"; did you mean 'http://{shown}'?"
        _fail(path, f"expected {expected}, found {_describe(shown)} (no scheme{hint})")
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        _expected(path, expected, _redact_url(text))
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        _expected(path, f"{expected} and a valid port", _redact_url(text))
    if not parts.hostname or any(c.isspace() for c in text):
        _expected(path, expected, _redact_url(text))
    return text.rstrip("/")


def _redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced, for messages."""
    return re.sub(r"(?<=://)[^/@]*@", "***@", url)


def _json_value(path: str, value: object) -> Any:
    """A deep copy of a JSON-compatible value (what a request body can carry)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            _expected(path, "a finite number", value)
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(f"{path}[{i}]", item) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                _expected(_join(path, key), "a string key", key)
            out[key] = _json_value(_join(path, key), item)
        return out
    _expected(path, "a JSON value (string, number, bool, null, list or mapping)", value)


def _string_list(path: str, value: object) -> list[str]:
    if not isinstance(value, (list, tuple)):
        _expected(path, "a list of strings", value)
    return [_string(f"{path}[{i}]", item) for i, item in enumerate(value)]


def _stop(path: str, value: object) -> str | list[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                _expected(f"{path}[{i}]", "a string", item)
        return list(value)
    _expected(path, "a string or a list of strings", value)


def _str_or_mapping(path: str, value: object) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return _json_value(path, value)
    _expected(path, "a string or a mapping", value)


def _typed_mapping(path: str, value: object) -> Any:
    return _json_value(path, _mapping(path, value))


def _typed_list(path: str, value: object) -> Any:
    if not isinstance(value, (list, tuple)):
        _expected(path, "a list", value)
    return _json_value(path, value)


def _typed_string(path: str, value: object) -> str:
    if not isinstance(value, str):
        _expected(path, "a string", value)
    return value


# Request-body keys whose type is checked; the others must only be JSON values.
_ParamReader: TypeAlias = Callable[[str, Any], Any]
_PARAM_READERS: dict[str, _ParamReader] = {
    "temperature": lambda p, v: _number(p, v, minimum=0),
    "top_p": lambda p, v: _number(p, v, minimum=0, exclusive=True, maximum=1),
    "top_k": lambda p, v: _integer(p, v, minimum=-1),
    "min_p": lambda p, v: _number(p, v, minimum=0, maximum=1),
    "max_tokens": lambda p, v: _integer(p, v, minimum=0, exclusive=True),
    "max_completion_tokens": lambda p, v: _integer(p, v, minimum=0, exclusive=True),
    "min_tokens": lambda p, v: _integer(p, v, minimum=0),
    "n": lambda p, v: _integer(p, v, minimum=0, exclusive=True),
    "best_of": lambda p, v: _integer(p, v, minimum=0, exclusive=True),
    "seed": lambda p, v: _integer(p, v),
    "priority": lambda p, v: _integer(p, v),
    "top_logprobs": lambda p, v: _integer(p, v, minimum=0),
    "truncate_prompt_tokens": lambda p, v: _integer(p, v, minimum=-1),
    "presence_penalty": lambda p, v: _number(p, v, minimum=-2, maximum=2),
    "frequency_penalty": lambda p, v: _number(p, v, minimum=-2, maximum=2),
    "repetition_penalty": lambda p, v: _number(p, v, minimum=0, exclusive=True),
    "length_penalty": lambda p, v: _number(p, v),
    "stop": _stop,
    "logprobs": _bool,
    "parallel_tool_calls": _bool,
    "ignore_eos": _bool,
    "skip_special_tokens": _bool,
    "spaces_between_special_tokens": _bool,
    "include_reasoning": _bool,
    "use_beam_search": _bool,
    "logit_bias": _typed_mapping,
    "response_format": _typed_mapping,
    "stream_options": _typed_mapping,
    "chat_template_kwargs": _typed_mapping,
    "structured_outputs": _typed_mapping,
    "tools": _typed_list,
    "tool_choice": _str_or_mapping,
    "guided_json": _str_or_mapping,
    "guided_choice": _string_list,
    "guided_regex": _typed_string,
    "guided_grammar": _typed_string,
    "reasoning_effort": _typed_string,
    "user": _typed_string,
}


# --------------------------------------------------------------------------- interpolation

_REFERENCE_PATTERN = r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{"


def _interpolate(value: Any, path: str, environ: Mapping[str, str]) -> Any:
    """A copy of ``value`` with ``${VAR}`` references in every string replaced."""
    if isinstance(value, str):
        if "${" not in value:
            return value

        def substitute(match: re.Match[str]) -> str:
            token, name, default = match.group(0), match.group(1), match.group(2)
            if token == "$${":
                return "${"
            if name is None:
                _fail(
                    path,
                    "expected ${NAME} or ${NAME:-default} (or $${ for a literal '${'), "
                    "found a malformed '${' reference",
                )
            found = environ.get(name)
            if default is not None:
                return found if found else default
            if found is None:
                _fail(
                    path,
                    f"environment variable {name!r} is not set "
                    f"(write ${{{name}:-default}} to give a default)",
                )
            return found

        return re.sub(_REFERENCE_PATTERN, substitute, value)  # compiled once, by re's cache
    if isinstance(value, Mapping):
        return {key: _interpolate(item, _join(path, key), environ) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_interpolate(item, f"{path}[{i}]", environ) for i, item in enumerate(value)]
    return value


def _apply_env_overrides(raw: dict[Any, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Apply VLLM_BASE_URL / VLLM_MODEL / VLLM_API_KEY in place; return {key path: variable}."""
    origins: dict[str, str] = {}
    routes = raw.get("routes")
    if not isinstance(routes, dict) or not routes:
        return origins
    default = raw.get("default_route")
    if not isinstance(default, str) or default not in routes:
        default = next(iter(routes))
    for variable, key in (("VLLM_BASE_URL", "base_url"), ("VLLM_MODEL", "model")):
        override = environ.get(variable)
        if override and isinstance(routes[default], dict):
            routes[default][key] = override
            origins[f"llm.routes.{default}.{key}"] = variable
    api_key = environ.get("VLLM_API_KEY")
    if api_key:
        for name, route in routes.items():
            if isinstance(route, dict) and "api_key" not in route:
                route["api_key"] = api_key
                origins[f"llm.routes.{name}.api_key"] = "VLLM_API_KEY"
    return origins


# --------------------------------------------------------------------------- sections


def _unwrap(data: Any, source: str | None) -> Mapping[Any, Any]:
    """The ``llm`` section of the whole document (or ``data`` itself when it is that section)."""
    where = source or "config"
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping with an 'llm' key at the top level, "
            f"found {_describe(data)}"
        )
    if "llm" not in data and "routes" in data:
        return data
    _check_keys("", data, _TOP_KEYS)
    if "llm" not in data:
        _fail("llm", "missing required key (the whole configuration goes under 'llm:')")
    return _mapping("llm", data["llm"])


def _params(path: str, raw: Mapping[Any, Any]) -> dict[str, Any]:
    """Request-body defaults: the body keys, checked, plus ``extra_body`` merged verbatim."""
    _check_keys(
        path, raw, _PARAMS_KEYS, _PARAMS_NOTES, "; put server-specific keys under extra_body"
    )
    params: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _CONTROL_KEYS or key == "extra_body":
            continue
        reader: _ParamReader = _PARAM_READERS.get(key, _json_value)
        params[key] = reader(_join(path, key), value)
    extra_path = _join(path, "extra_body")
    extra = _mapping(extra_path, raw.get("extra_body"), optional=True)
    for key, value in extra.items():
        key_path = _join(extra_path, key)
        if not isinstance(key, str) or not key:
            _expected(key_path, "a non-empty string key", key)
        if key in params:
            _fail(key_path, f"also set as {_join(path, key)}; set it in one place")
        params[key] = _json_value(key_path, value)
    return params


def _headers(path: str, value: object) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, item in _mapping(path, value, optional=True).items():
        if not isinstance(name, str) or not name.strip():
            _expected(_join(path, name), "a non-empty header name", name)
        if not isinstance(item, str):
            _expected(_join(path, name), "a string (quote it in YAML)", item, secret=True)
        headers[name] = _header_value(_join(path, name), item)
    return headers


def _header_value(path: str, value: str) -> str:
    """A value sent as is in an HTTP header: no control character (a line break would end the
    header), no leading or trailing whitespace. Shown by type only, never by value."""
    if value != value.strip() or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        _fail(
            path,
            "expected a string usable as an HTTP header value (no line breaks or other "
            "control characters, no leading or trailing whitespace), found a string that is not",
        )
    return value


def _verify(path: str, value: object) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip():
        lowered = value.strip().lower()
        return lowered == "true" if lowered in ("true", "false") else value
    _expected(path, "true, false or the path of a CA bundle", value)


def _route(path: str, name: str, value: object, default_timeout: float) -> RouteConfig:
    raw = _mapping(path, value)
    _check_keys(path, raw, _ROUTE_KEYS, _ROUTE_NOTES)
    for key, expected in (("base_url", "an http:// or https:// URL"), ("model", "a model name")):
        if key not in raw:
            _fail(_join(path, key), f"missing required key (expected {expected})")
    return RouteConfig(
        name=name,
        base_url=_url(_join(path, "base_url"), raw["base_url"]),
        model=_string(_join(path, "model"), raw["model"]),
        timeout=_number(
            _join(path, "timeout"), raw.get("timeout", default_timeout), minimum=0, exclusive=True
        ),
        api_key=_header_value(
            _join(path, "api_key"),
            _string(_join(path, "api_key"), raw.get("api_key", "EMPTY"), secret=True),
        ),
        weight=_number(_join(path, "weight"), raw.get("weight", 1.0), minimum=0, exclusive=True),
        headers=MappingProxyType(_headers(_join(path, "headers"), raw.get("headers"))),
        send_model=_bool(_join(path, "send_model"), raw.get("send_model", True)),
        verify=_verify(_join(path, "verify"), raw.get("verify", True)),
    )


def _routes(path: str, value: object, default_timeout: float) -> dict[str, RouteConfig]:
    expected = "a non-empty mapping of route name -> {base_url, model, ...}"
    if value is _MISSING:
        _fail(path, f"missing required key (expected {expected})")
    if not isinstance(value, Mapping) or not value:
        _expected(path, expected, value)
    routes: dict[str, RouteConfig] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name.strip():
            _expected(_join(path, name), "a non-empty string as the route name", name)
        routes[name] = _route(_join(path, name), name, item, default_timeout)
    return routes


def _route_name(path: str, value: object, routes: Mapping[str, RouteConfig]) -> str:
    return _choice(path, value, list(routes), "a route name")


def _retry(path: str, value: object, max_retries: int) -> RetryConfig:
    raw = _mapping(path, value, optional=True)
    _check_keys(path, raw, _RETRY_KEYS, _RETRY_NOTES)
    defaults = RetryConfig()
    initial = _number(
        _join(path, "backoff_initial"),
        raw.get("backoff_initial", defaults.backoff_initial),
        minimum=0,
        exclusive=True,
    )
    backoff_max = _number(
        _join(path, "backoff_max"),
        raw.get("backoff_max", max(defaults.backoff_max, initial)),
        minimum=initial,
        expected=f"a number >= backoff_initial ({_fmt(initial)})",
    )
    retry_after_max = _number(
        _join(path, "retry_after_max"),
        raw.get("retry_after_max", defaults.retry_after_max),
        minimum=0,
    )
    return RetryConfig(max_retries, initial, backoff_max, retry_after_max)


def _health(path: str, value: object) -> HealthConfig:
    raw = _mapping(path, value, optional=True)
    _check_keys(path, raw, _HEALTH_KEYS)
    defaults = HealthConfig()

    def read(key: str, default: float, **bounds: Any) -> float:
        return _number(_join(path, key), raw.get(key, default), **bounds)

    cooldown = read("cooldown", defaults.cooldown, minimum=0, exclusive=True)
    return HealthConfig(
        cooldown=cooldown,
        max_cooldown=read(
            "max_cooldown",
            max(defaults.max_cooldown, cooldown),
            minimum=cooldown,
            expected=f"a number >= cooldown ({_fmt(cooldown)})",
        ),
        check_interval=read("check_interval", defaults.check_interval, minimum=0),
        reprobe_interval=read(
            "reprobe_interval", defaults.reprobe_interval, minimum=0, exclusive=True
        ),
        ewma_alpha=read("ewma_alpha", defaults.ewma_alpha, minimum=0, exclusive=True, maximum=1),
        stall_factor=read("stall_factor", defaults.stall_factor, minimum=0),
        stall_min=read("stall_min", defaults.stall_min, minimum=0),
    )


def _build(raw: Mapping[Any, Any], source: str | None) -> LLMConfig:
    path = "llm"
    _check_keys(path, raw, _LLM_KEYS)
    provider = _string(_join(path, "provider"), raw.get("provider", DEFAULT_PROVIDER))

    params_path = _join(path, "params")
    params_raw = _mapping(params_path, raw.get("params"), optional=True)
    params = _params(params_path, params_raw)

    def control(key: str, default: float) -> float:
        value = params_raw.get(key, default)
        return _number(_join(params_path, key), value, minimum=0, exclusive=True)

    timeout = control("timeout", DEFAULT_TIMEOUT)
    connect_timeout = control("connect_timeout", min(10.0, timeout))
    deadline = control("deadline", 2 * timeout)
    max_retries = _integer(
        _join(params_path, "max_retries"), params_raw.get("max_retries", 3), minimum=0
    )
    max_response_bytes = _integer(
        _join(params_path, "max_response_bytes"),
        params_raw.get("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES),
        minimum=1024,
    )

    routes = _routes(_join(path, "routes"), raw.get("routes", _MISSING), timeout)
    default_route = next(iter(routes))
    if raw.get("default_route") is not None:
        default_route = _route_name(_join(path, "default_route"), raw["default_route"], routes)
    fallback_route = None
    if raw.get("fallback_route") is not None:
        fallback_path = _join(path, "fallback_route")
        fallback_route = _route_name(fallback_path, raw["fallback_route"], routes)
        if fallback_route == default_route:
            _fail(
                fallback_path,
                f"expected a route other than default_route, found {fallback_route!r} "
                "(the default route)",
            )
    lb_policy = _choice(
        _join(path, "lb_policy"), raw.get("lb_policy", "round_robin"), KNOWN_POLICIES, "a policy"
    )
    return LLMConfig(
        provider=provider,
        routes=MappingProxyType(routes),
        default_route=default_route,
        fallback_route=fallback_route,
        lb_policy=lb_policy,
        params=MappingProxyType(params),
        timeout=timeout,
        connect_timeout=connect_timeout,
        deadline=deadline,
        max_response_bytes=max_response_bytes,
        retry=_retry(_join(path, "retry"), raw.get("retry"), max_retries),
        health=_health(_join(path, "health"), raw.get("health")),
        source=source,
    )


# --------------------------------------------------------------------------- public API


def parse_config(
    data: Any,
    *,
    environ: Mapping[str, str] | None = None,
    source: str | None = None,
) -> LLMConfig:
    """Validate already-loaded config data (``{"llm": {...}}`` or the inner mapping).

    ``environ`` feeds ``${VAR}`` interpolation and the ``VLLM_*`` overrides (default
    ``os.environ``); ``source`` is recorded on the result and named in error messages.
    ``data`` itself is never modified.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    origins: dict[str, str] = {}
    try:
        raw = _interpolate(_unwrap(data, source), "llm", env)
        origins = _apply_env_overrides(raw, env)
        return _build(raw, source)
    except ConfigError as exc:
        if exc.key_path is None:  # already names the source
            raise
        notes = []
        if exc.key_path in origins:
            notes.append(f"set from ${origins[exc.key_path]}")
        if source:
            notes.append(f"in {source}")
        if not notes:
            raise
        raise ConfigError(f"{exc} ({'; '.join(notes)})", exc.key_path) from None


_unique_key_loader: type[yaml.SafeLoader] | None = None


def _loader() -> type[yaml.SafeLoader]:
    """``_UniqueKeyLoader``, the class defined (and PyYAML imported) on first use."""
    global _unique_key_loader
    if _unique_key_loader is None:
        import yaml
        from yaml.constructor import ConstructorError

        class _UniqueKeyLoader(yaml.SafeLoader):
            """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last)."""

            def construct_mapping(
                self, node: yaml.MappingNode, deep: bool = False
            ) -> dict[Any, Any]:
                seen: dict[tuple[str, str], yaml.Mark] = {}
                for key_node, _ in node.value:
                    if (
                        not isinstance(key_node, yaml.ScalarNode)
                        or key_node.tag == "tag:yaml.org,2002:merge"
                    ):
                        continue
                    ident = (key_node.tag, key_node.value)
                    if ident in seen:
                        raise ConstructorError(
                            f"while constructing a mapping (first {key_node.value!r} "
                            f"at line {seen[ident].line + 1})",
                            node.start_mark,
                            f"found duplicate key {key_node.value!r}",
                            key_node.start_mark,
                        )
                    seen[ident] = key_node.start_mark
                return super().construct_mapping(node, deep)

        _unique_key_loader = _UniqueKeyLoader
    return _unique_key_loader


def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (looked for {os.path.abspath(path)}; "
            "pass a path or set LLM_CONFIG to load another file)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read config file: {reason}") from None
    loader = _loader()
    import yaml

    try:
        return yaml.load(text, Loader=loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}{context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> LLMConfig:
    """Load and validate a config file.

    ``path`` defaults to ``$LLM_CONFIG`` when set (and not empty), else ``./config.yaml``.
    Every problem raises one ``ConfigError``.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    if path is None:
        path = env.get("LLM_CONFIG") or DEFAULT_PATH
    source = os.fspath(path)
    data = _read_yaml(source)
    if data is None:
        raise ConfigError(f"{source}: config file is empty; expected a mapping with an 'llm' key")
    return parse_config(data, environ=env, source=source)
