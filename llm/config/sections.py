"""Building each section of ``llm:`` from raw data: params, routes, retry, health, the whole.

How this works
--------------
``build`` takes the ``llm`` mapping (already unwrapped, interpolated and overridden by
``load``) and walks it section by section with the typed readers of ``readers``: the known
keys of each section (``LLM_KEYS``, ``ROUTE_KEYS``, ...; an unknown key is an error with a
hint), the values checked and converted, the cross-checks (``backoff_max >=
backoff_initial``, ``max_cooldown >= cooldown``, a fallback route other than the default),
then the frozen dataclasses of ``model``. A route's ``base_url`` with a ``user:password@``
gives it up as an ``Authorization: Basic`` header in the route's ``headers``, refused when
the route also has an ``api_key`` (other than ``EMPTY``) or an Authorization header: both
would be sent as Authorization. ``llm.params`` holds the control keys
(``CONTROL_PARAMS``: timeouts, retries, the response cap) and the request-body defaults, each
body key read by the reader of its kind, with its bounds, from the table of ``body_keys``
(``BODY_READERS``); ``extra_body`` is merged into the body as it is. The first problem raises
one ``ConfigError`` naming its key path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeAlias

from .body_keys import BODY_KEYS, BodyKey
from .model import (
    AFFINITY_BLOCK,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_PROVIDER,
    DEFAULT_TIMEOUT,
    KNOWN_POLICIES,
    AffinityConfig,
    Discovery,
    HealthConfig,
    HedgeConfig,
    LLMConfig,
    LoadConfig,
    RetryConfig,
    RouteConfig,
)
from .readers import (
    check_keys,
    fail,
    fail_expected,
    fmt_number,
    join,
    read_base_url,
    read_bool,
    read_choice,
    read_integer,
    read_json,
    read_mapping,
    read_number,
    read_stop,
    read_string,
    read_string_list,
    read_string_or_mapping,
    read_typed_list,
    read_typed_mapping,
    read_typed_string,
)

# --------------------------------------------------------------------------- schema

LLM_KEYS = (
    "affinity",
    "context_fallback",
    "default_route",
    "fallback_route",
    "health",
    "hedge",
    "hooks",
    "lb_policy",
    "load",
    "params",
    "provider",
    "retry",
    "routes",
)
ROUTE_KEYS = (
    "api_key",
    "base_url",
    "discover",
    "headers",
    "max_model_len",
    "model",
    "send_model",
    "timeout",
    "verify",
    "weight",
)
RETRY_KEYS = ("backoff_initial", "backoff_max", "retry_after_max")
HEALTH_KEYS = (
    "check_interval",
    "cooldown",
    "ewma_alpha",
    "max_cooldown",
    "reprobe_interval",
    "stall_factor",
    "stall_min",
)
LOAD_KEYS = ("max_age", "orca", "poll_interval")
HEDGE_KEYS = ("budget", "burst", "enabled", "max_delay", "min_delay", "quantile")
AFFINITY_KEYS = ("by_prefix", "homes", "load_bound", "prefix_chars", "spill_ratio")
DISCOVER_KEYS = ("dns", "file", "interval")
CONTROL_PARAMS = ("connect_timeout", "deadline", "max_response_bytes", "max_retries", "timeout")
PARAMS_KEYS = (*CONTROL_PARAMS, "extra_body", *BODY_KEYS)

# Extra words for unknown keys that are plausible mistakes.
_PARAMS_NOTES = {
    "model": "the model is set per route",
    "messages": "messages are given per call",
    "stream": "streaming is chosen per call (stream() / astream())",
    "api_key": "api_key is set per route",
}
_RETRY_NOTES = {"max_retries": "max_retries is set in llm.params"}
_ROUTE_NOTES = {"url": "did you mean 'base_url'?"}

_MISSING: Any = object()

# How the config reads each body key: its kind's reader, with its bounds (body_keys.py).
Reader: TypeAlias = Callable[[str, Any], Any]
_READERS_BY_KIND: Mapping[str, Reader] = {
    "bool": read_bool,
    "string": read_typed_string,
    "stop": read_stop,
    "mapping": read_typed_mapping,
    "list": read_typed_list,
    "string_or_mapping": read_string_or_mapping,
    "string_list": read_string_list,
}


def body_reader(key: BodyKey) -> Reader:
    """The reader of ``llm.params.<name>`` for a body key of this kind and bounds."""
    low, exclusive, high = key.minimum, key.exclusive, key.maximum
    if key.kind in ("count", "count0", "integer"):
        return lambda path, value: read_integer(
            path, value, minimum=low, exclusive=exclusive, maximum=high
        )
    if key.kind == "number":
        return lambda path, value: read_number(
            path, value, minimum=low, exclusive=exclusive, maximum=high
        )
    return _READERS_BY_KIND[key.kind]


BODY_READERS: Mapping[str, Reader] = {name: body_reader(key) for name, key in BODY_KEYS.items()}


# --------------------------------------------------------------------------- sections


def _params(path: str, raw: Mapping[Any, Any]) -> dict[str, Any]:
    """Request-body defaults: the body keys, checked, plus ``extra_body`` merged verbatim."""
    check_keys(path, raw, PARAMS_KEYS, _PARAMS_NOTES, "; put server-specific keys under extra_body")
    params: dict[str, Any] = {}
    for key, value in raw.items():
        if key in CONTROL_PARAMS or key == "extra_body":
            continue
        params[key] = BODY_READERS[key](join(path, key), value)
    extra_path = join(path, "extra_body")
    extra = read_mapping(extra_path, raw.get("extra_body"), optional=True)
    for key, value in extra.items():
        key_path = join(extra_path, key)
        if not isinstance(key, str) or not key:
            fail_expected(key_path, "a non-empty string key", key)
        if key in params:
            fail(key_path, f"also set as {join(path, key)}; set it in one place")
        params[key] = read_json(key_path, value)
    return params


def _headers(path: str, value: object) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, item in read_mapping(path, value, optional=True).items():
        if not isinstance(name, str) or not name.strip():
            fail_expected(join(path, name), "a non-empty header name", name)
        if not isinstance(item, str):
            fail_expected(join(path, name), "a string (quote it in YAML)", item, secret=True)
        headers[name] = _header_value(join(path, name), item)
    return headers


def _header_value(path: str, value: str) -> str:
    """A value sent as is in an HTTP header: no control character (a line break would end the
    header), no leading or trailing whitespace. Shown by type only, never by value."""
    if value != value.strip() or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        fail(
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
    fail_expected(path, "true, false or the path of a CA bundle", value)


def _check_one_authorization(path: str, api_key: str, headers: Mapping[str, str]) -> None:
    """A base_url's ``user:password@`` is sent as ``Authorization: Basic``; an ``api_key`` or
    an Authorization of ``headers`` would be sent as Authorization too. Refuse, naming each by
    type only."""
    other = ""
    if api_key != "EMPTY":
        other = "an api_key (sent as 'Authorization: Bearer ...')"
    elif any(header.lower() == "authorization" for header in headers):
        other = "an Authorization header in headers"
    if other:
        fail(
            path,
            "found a URL with a user name and password (sent as 'Authorization: Basic ...') "
            f"and the route also has {other}: both would be sent as Authorization; keep one",
        )


def _route(path: str, name: str, value: object, default_timeout: float) -> RouteConfig:
    raw = read_mapping(path, value)
    check_keys(path, raw, ROUTE_KEYS, _ROUTE_NOTES)
    for key, expected in (("base_url", "an http:// or https:// URL"), ("model", "a model name")):
        if key not in raw:
            fail(join(path, key), f"missing required key (expected {expected})")
    url_path = join(path, "base_url")
    base_url, authorization = read_base_url(url_path, raw["base_url"])
    model = read_string(join(path, "model"), raw["model"])
    timeout = read_number(
        join(path, "timeout"), raw.get("timeout", default_timeout), minimum=0, exclusive=True
    )
    api_key = _header_value(
        join(path, "api_key"),
        read_string(join(path, "api_key"), raw.get("api_key", "EMPTY"), secret=True),
    )
    weight = read_number(join(path, "weight"), raw.get("weight", 1.0), minimum=0, exclusive=True)
    headers = _headers(join(path, "headers"), raw.get("headers"))
    if authorization is not None:
        _check_one_authorization(url_path, api_key, headers)
        headers["Authorization"] = authorization
    return RouteConfig(
        name=name,
        base_url=base_url,
        model=model,
        timeout=timeout,
        api_key=api_key,
        weight=weight,
        headers=MappingProxyType(headers),
        send_model=read_bool(join(path, "send_model"), raw.get("send_model", True)),
        verify=_verify(join(path, "verify"), raw.get("verify", True)),
        max_model_len=None
        if raw.get("max_model_len") is None
        else read_integer(join(path, "max_model_len"), raw["max_model_len"], minimum=1),
        discover=_discover(join(path, "discover"), raw.get("discover")),
    )


def _discover(path: str, value: object) -> Discovery | None:
    """``dns``, or a mapping ``{dns: true}`` / ``{file: path}`` with an ``interval``."""
    if value is None:
        return None
    if value == "dns":
        return Discovery(dns=True)
    if not isinstance(value, Mapping):
        fail_expected(path, "'dns' or a mapping {dns: true} or {file: <path>}", value)
    check_keys(path, value, DISCOVER_KEYS)
    dns = read_bool(join(path, "dns"), value.get("dns", False))
    file = value.get("file")
    if file is not None:
        file = read_string(join(path, "file"), file)
    if dns == (file is not None):
        fail(path, "expected exactly one of dns: true or file: <path>")
    interval = read_number(
        join(path, "interval"),
        value.get("interval", 10.0 if dns else 2.0),
        minimum=0,
        exclusive=True,
    )
    return Discovery(dns=dns, file=file, interval=interval)


def _routes(path: str, value: object, default_timeout: float) -> dict[str, RouteConfig]:
    expected = "a non-empty mapping of route name -> {base_url, model, ...}"
    if value is _MISSING:
        fail(path, f"missing required key (expected {expected})")
    if not isinstance(value, Mapping) or not value:
        fail_expected(path, expected, value)
    routes: dict[str, RouteConfig] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name.strip():
            fail_expected(join(path, name), "a non-empty string as the route name", name)
        routes[name] = _route(join(path, name), name, item, default_timeout)
    return routes


def _route_name(path: str, value: object, routes: Mapping[str, RouteConfig]) -> str:
    return read_choice(path, value, list(routes), "a route name")


def _retry(path: str, value: object, max_retries: int) -> RetryConfig:
    raw = read_mapping(path, value, optional=True)
    check_keys(path, raw, RETRY_KEYS, _RETRY_NOTES)
    defaults = RetryConfig()
    initial = read_number(
        join(path, "backoff_initial"),
        raw.get("backoff_initial", defaults.backoff_initial),
        minimum=0,
        exclusive=True,
    )
    backoff_max = read_number(
        join(path, "backoff_max"),
        raw.get("backoff_max", max(defaults.backoff_max, initial)),
        minimum=initial,
        expected=f"a number >= backoff_initial ({fmt_number(initial)})",
    )
    retry_after_max = read_number(
        join(path, "retry_after_max"),
        raw.get("retry_after_max", defaults.retry_after_max),
        minimum=0,
    )
    return RetryConfig(max_retries, initial, backoff_max, retry_after_max)


def _health(path: str, value: object) -> HealthConfig:
    raw = read_mapping(path, value, optional=True)
    check_keys(path, raw, HEALTH_KEYS)
    defaults = HealthConfig()

    def read(key: str, default: float, **bounds: Any) -> float:
        return read_number(join(path, key), raw.get(key, default), **bounds)

    cooldown = read("cooldown", defaults.cooldown, minimum=0, exclusive=True)
    return HealthConfig(
        cooldown=cooldown,
        max_cooldown=read(
            "max_cooldown",
            max(defaults.max_cooldown, cooldown),
            minimum=cooldown,
            expected=f"a number >= cooldown ({fmt_number(cooldown)})",
        ),
        check_interval=read("check_interval", defaults.check_interval, minimum=0),
        reprobe_interval=read(
            "reprobe_interval", defaults.reprobe_interval, minimum=0, exclusive=True
        ),
        ewma_alpha=read("ewma_alpha", defaults.ewma_alpha, minimum=0, exclusive=True, maximum=1),
        stall_factor=read("stall_factor", defaults.stall_factor, minimum=0),
        stall_min=read("stall_min", defaults.stall_min, minimum=0),
    )


def _load(path: str, value: object) -> LoadConfig:
    raw = read_mapping(path, value, optional=True)
    check_keys(path, raw, LOAD_KEYS)
    defaults = LoadConfig()
    poll = raw.get("poll_interval")
    orca = raw.get("orca")
    return LoadConfig(
        poll_interval=None
        if poll is None
        else read_number(join(path, "poll_interval"), poll, minimum=0),
        orca=None if orca is None else read_bool(join(path, "orca"), orca),
        max_age=read_number(
            join(path, "max_age"), raw.get("max_age", defaults.max_age), minimum=0, exclusive=True
        ),
    )


def _hedge(path: str, value: object) -> HedgeConfig:
    raw = read_mapping(path, value, optional=True)
    check_keys(path, raw, HEDGE_KEYS)
    defaults = HedgeConfig()

    def read(key: str, default: float, **bounds: Any) -> float:
        return read_number(join(path, key), raw.get(key, default), **bounds)

    min_delay = read("min_delay", defaults.min_delay, minimum=0)
    return HedgeConfig(
        enabled=read_bool(join(path, "enabled"), raw.get("enabled", defaults.enabled)),
        quantile=read("quantile", defaults.quantile, minimum=0, exclusive=True, maximum=1),
        min_delay=min_delay,
        max_delay=read(
            "max_delay",
            max(defaults.max_delay, min_delay),
            minimum=min_delay,
            expected=f"a number >= min_delay ({fmt_number(min_delay)})",
        ),
        budget=read("budget", defaults.budget, minimum=0, maximum=1),
        burst=read_integer(join(path, "burst"), raw.get("burst", defaults.burst), minimum=0),
    )


def _affinity(path: str, value: object) -> AffinityConfig:
    raw = read_mapping(path, value, optional=True)
    check_keys(path, raw, AFFINITY_KEYS)
    defaults = AffinityConfig()
    return AffinityConfig(
        by_prefix=read_bool(join(path, "by_prefix"), raw.get("by_prefix", defaults.by_prefix)),
        homes=read_integer(join(path, "homes"), raw.get("homes", defaults.homes), minimum=1),
        load_bound=read_number(
            join(path, "load_bound"), raw.get("load_bound", defaults.load_bound), minimum=1
        ),
        spill_ratio=read_number(
            join(path, "spill_ratio"), raw.get("spill_ratio", defaults.spill_ratio), minimum=1
        ),
        prefix_chars=read_integer(
            join(path, "prefix_chars"),
            raw.get("prefix_chars", defaults.prefix_chars),
            minimum=AFFINITY_BLOCK,
        ),
    )


def _context_fallback(path: str, value: object, routes: Mapping[str, RouteConfig]) -> str:
    """A route name, or a model some route serves: where a call that fits no route of its
    pool goes (see ``routing/fit.py``)."""
    name = read_string(path, value)
    if name in routes or any(route.model == name for route in routes.values()):
        return name
    models = sorted({route.model for route in routes.values()})
    fail(
        path,
        f"expected a route name ({', '.join(routes)}) or a served model "
        f"({', '.join(models)}), found {name!r}",
    )


BUILTIN_HOOKS = {
    "prometheus": "llm.observe.prometheus:PrometheusHook",
    "opentelemetry": "llm.observe.otel:OpenTelemetryHook",
}
_HOOK_REF = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


def _hooks(path: str, value: object) -> tuple[str, ...]:
    """Hook references: a built-in name (``prometheus``, ``opentelemetry``) or
    ``module:attribute`` (imported when the provider is made, ``providers/hooks.py``)."""
    if value is None:
        return ()
    names = read_string_list(path, value)
    for i, name in enumerate(names):
        if name not in BUILTIN_HOOKS and not _HOOK_REF.fullmatch(name):
            fail(
                f"{path}[{i}]",
                f"expected {' or '.join(repr(b) for b in BUILTIN_HOOKS)}, or "
                f"'package.module:attribute', found {name!r}",
            )
    return tuple(names)


def _check_fallback(path: str, routes: Mapping[str, RouteConfig], name: str | None) -> None:
    """The fallback route is one server: it may not discover instances."""
    if name is not None and routes[name].discover is not None:
        fail(path, f"route {name!r} discovers its instances; the fallback must be one server")


def build(raw: Mapping[Any, Any], source: str | None) -> LLMConfig:
    """The ``LLMConfig`` of the ``llm`` mapping ``raw``; ``source`` is recorded on it."""
    path = "llm"
    check_keys(path, raw, LLM_KEYS)
    provider = read_string(join(path, "provider"), raw.get("provider", DEFAULT_PROVIDER))

    params_path = join(path, "params")
    params_raw = read_mapping(params_path, raw.get("params"), optional=True)
    params = _params(params_path, params_raw)

    def control(key: str, default: float) -> float:
        value = params_raw.get(key, default)
        return read_number(join(params_path, key), value, minimum=0, exclusive=True)

    timeout = control("timeout", DEFAULT_TIMEOUT)
    connect_timeout = control("connect_timeout", min(10.0, timeout))
    deadline = control("deadline", 2 * timeout)
    max_retries = read_integer(
        join(params_path, "max_retries"), params_raw.get("max_retries", 3), minimum=0
    )
    max_response_bytes = read_integer(
        join(params_path, "max_response_bytes"),
        params_raw.get("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES),
        minimum=1024,
    )

    routes = _routes(join(path, "routes"), raw.get("routes", _MISSING), timeout)
    default_route = next(iter(routes))
    if raw.get("default_route") is not None:
        default_route = _route_name(join(path, "default_route"), raw["default_route"], routes)
    fallback_route = None
    if raw.get("fallback_route") is not None:
        fallback_path = join(path, "fallback_route")
        fallback_route = _route_name(fallback_path, raw["fallback_route"], routes)
        if fallback_route == default_route:
            fail(
                fallback_path,
                f"expected a route other than default_route, found {fallback_route!r} "
                "(the default route)",
            )
    lb_policy = read_choice(
        join(path, "lb_policy"), raw.get("lb_policy", "round_robin"), KNOWN_POLICIES, "a policy"
    )
    _check_fallback(join(path, "fallback_route"), routes, fallback_route)
    context_fallback = None
    if raw.get("context_fallback") is not None:
        context_fallback = _context_fallback(
            join(path, "context_fallback"), raw["context_fallback"], routes
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
        retry=_retry(join(path, "retry"), raw.get("retry"), max_retries),
        health=_health(join(path, "health"), raw.get("health")),
        source=source,
        load=_load(join(path, "load"), raw.get("load")),
        affinity=_affinity(join(path, "affinity"), raw.get("affinity")),
        context_fallback=context_fallback,
        hooks=_hooks(join(path, "hooks"), raw.get("hooks")),
        hedge=_hedge(join(path, "hedge"), raw.get("hedge")),
    )
