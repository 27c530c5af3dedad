#!/usr/bin/env python3
"""The configuration reference of the documentation site, written from the config schema.

    python scripts/config_reference.py       # print the reference (Markdown)

As an MkDocs hook (``hooks:`` in mkdocs.yml) it replaces the line ``<!-- config-reference -->``
of docs/configuration.md with that Markdown on every build. What comes from where:

- **the keys**: ``llm/config/sections.py``: ``LLM_KEYS``, and for a key ``k`` that is a
  section the tuple ``K_KEYS`` of its keys (``ROUTE_KEYS`` for ``routes``, ``DISCOVER_KEYS``
  under a route's ``discover``, ``PARAMS_KEYS`` for ``params``, whose request-body keys are
  ``body_keys.BODY_KEYS``);
- **the defaults**: what ``llm.config.parse_config`` makes of a config that sets nothing but
  one route (``NAME``): the values the library really uses, with ``required`` for a key whose
  absence is refused; a default that follows from another key is said in ``Doc.rule``;
- **what a key accepts**: the config's own error message for a value no key accepts
  ("expected a number in (0, 1]");
- **what a key means**: ``MEANINGS`` below, the only text written by hand.

A key of the schema without an entry in ``MEANINGS``, an entry for a key the schema lacks, or a
key whose value cannot be found on the parsed config raises ``ReferenceProblem``: the MkDocs
build fails, and so does ``tests/test_docs_reference.py``. The request-body keys are the
server's (vLLM's sampling and output options): they are listed with what the config accepts,
and their meanings are the server's documentation.
"""

from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass
from typing import Any

from llm.config import parse_config, sections
from llm.config.body_keys import BODY_KEYS
from llm.errors import ConfigError

MARKER = "<!-- config-reference -->"
PAGE = "configuration.md"  # the page holding MARKER, relative to docs/


@dataclass(frozen=True)
class Doc:
    """What a key means; ``rule``: how its default follows from other keys, when it does."""

    meaning: str
    rule: str | None = None


# Links are relative to docs/configuration.md, and MkDocs checks them (anchors included).
ROUTING = "routing.md"
FAILURES = "failure-handling.md"

MEANINGS: dict[str, Doc] = {
    "llm.provider": Doc("provider name (`LLMFactory.known()` lists them)"),
    "llm.routes": Doc(
        "The servers, by route name (`NAME` below): each a mapping of the keys below. Routes"
        " that serve the same `model` form a pool."
    ),
    "llm.routes.NAME.base_url": Doc(
        "`http(s)://host:port/v1`; `/health` is looked for beside `/v1`. A `user:password@` in"
        " it (as is, even with an `@` or `/` in it, or percent-encoded) is taken out at load and"
        " sent as an `Authorization: Basic …` header (see `headers`); refused beside an"
        " `api_key` or an Authorization in `headers`, and when its `@` could as well be part of"
        " the path (write that `@` as `%40`)"
    ),
    "llm.routes.NAME.model": Doc(
        "model name the server serves; routes with the same model form a pool"
    ),
    "llm.routes.NAME.timeout": Doc(
        "seconds one attempt may wait for the server", rule="`llm.params.timeout`"
    ),
    "llm.routes.NAME.api_key": Doc("sent as `Authorization: Bearer …` to this route only"),
    "llm.routes.NAME.weight": Doc(
        f"share under round_robin (earliest deadline first, interleaved; see"
        f" [Routing policies]({ROUTING}#the-policies))"
    ),
    "llm.routes.NAME.headers": Doc(
        "extra headers for this route, their values treated as secrets; an `Authorization`"
        " here is sent instead of the `api_key`'s; a `user:password@` of `base_url` becomes one"
    ),
    "llm.routes.NAME.send_model": Doc("`false` omits `model` from the body"),
    "llm.routes.NAME.verify": Doc("TLS verification, or a CA bundle path"),
    "llm.routes.NAME.max_model_len": Doc(
        "the route's context window in tokens, when you would rather say it than have it"
        f" learned from `/v1/models` (see [Context-window fit]({ROUTING}#context-window-fit))"
    ),
    "llm.routes.NAME.discover": Doc(
        "the route stands for the instances found by DNS or in a file"
        f" (see [Discovered instances]({ROUTING}#discovered-instances)): `dns`, short for"
        " `{dns: true}`, or a mapping of the `discover.*` keys below"
    ),
    "llm.routes.NAME.discover.dns": Doc(
        "the A/AAAA records of `base_url`'s host are the instances (a Kubernetes headless"
        " Service resolves to its ready pods)"
    ),
    "llm.routes.NAME.discover.file": Doc(
        "a file whose lines are the instances (`host`, `host:port`, `[v6]:port` or a URL;"
        " `#` comments), read again when it changes"
    ),
    "llm.routes.NAME.discover.interval": Doc(
        "seconds between two lookups (DNS) or two looks at the file"
    ),
    "llm.default_route": Doc(
        "its model is the default pool (the pool of a call that names no model)",
        rule="the first route",
    ),
    "llm.fallback_route": Doc(
        "tried when the pool is exhausted (its own model replaces the request's); one server,"
        f" not a discovering route (see [Failure handling]({FAILURES}))"
    ),
    "llm.context_fallback": Doc(
        "a route, or a model's pool, for the calls that fit no route of their pool"
        f" (see [Context-window fit]({ROUTING}#context-window-fit))"
    ),
    "llm.lb_policy": Doc(
        f"how a call's route is picked in its pool (see [Routing policies]({ROUTING}#the-policies))"
    ),
    "llm.load": Doc(
        "Where routing learns each route's load: vLLM's `/metrics` and ORCA load reports"
        f" (see [least_load]({ROUTING}#the-policies))."
    ),
    "llm.load.poll_interval": Doc(
        "seconds between two reads of `/metrics` of each route in use (a call in the last"
        " minute), jittered ±20 %",
        rule="`1` under `least_load`, else `0` (off)",
    ),
    "llm.load.orca": Doc(
        "ask for vLLM's ORCA load report (`endpoint-load-metrics-format: TEXT`) on every call"
        " and read it from non-streamed answers",
        rule="`true` under `least_load`, else `false`",
    ),
    "llm.load.max_age": Doc(
        "seconds after which a load report is ignored (old load information herds)"
    ),
    "llm.hooks": Doc(
        "objects that see every call's events (metrics, traces): `prometheus`,"
        " `opentelemetry`, or `package.module:attribute` (see [Observability](observability.md))"
    ),
    "llm.affinity": Doc(
        "Prefix affinity: calls that share a prefix go to the same few routes, where it is"
        f" cached (see [Prefix affinity]({ROUTING}#prefix-affinity))."
    ),
    "llm.affinity.by_prefix": Doc(
        "give every call an affinity key from its prompt's head (a call's `session=` gives"
        f" one anyway; see [Prefix affinity]({ROUTING}#prefix-affinity))"
    ),
    "llm.affinity.homes": Doc("home routes per key"),
    "llm.affinity.load_bound": Doc(
        "a home takes calls while its occupancy (load over capacity) is at most this many"
        " times the pool's"
    ),
    "llm.affinity.spill_ratio": Doc(
        "a call with a prompt of 1,024 tokens or more leaves home when home's expected time is"
        " more than this many times the policy's choice's (shorter prompts: proportionally"
        " less)"
    ),
    "llm.affinity.prefix_chars": Doc("characters of a prompt's head that make its key, at most"),
    "llm.params": Doc(
        "The calls' timeouts and retries (the keys below), and the request-body defaults"
        " ([listed below](#request-body-keys)); an unknown key is an error (a server-specific"
        " key goes under `extra_body`)."
    ),
    "llm.params.timeout": Doc("default per-attempt timeout, seconds"),
    "llm.params.connect_timeout": Doc(
        "seconds to establish a connection", rule="min(10, `llm.params.timeout`)"
    ),
    "llm.params.deadline": Doc(
        "seconds for all attempts of one call", rule="2 × `llm.params.timeout`"
    ),
    "llm.params.max_retries": Doc("attempts after the first"),
    "llm.params.max_response_bytes": Doc(
        "a larger answer, or a larger single stream event, is refused (`InvalidResponseError`)"
        " rather than held in memory"
    ),
    "llm.params.extra_body": Doc("merged into every request body verbatim (server-specific keys)"),
    "llm.retry": Doc(
        "How a route is tried again once the pool and the fallback have failed: after an"
        f" exponential backoff with jitter (see [Failure handling]({FAILURES}#a-calls-attempts))."
    ),
    "llm.retry.backoff_initial": Doc("first backoff before repeating a route, seconds"),
    "llm.retry.backoff_max": Doc("backoff cap, seconds"),
    "llm.retry.retry_after_max": Doc("cap on an honoured `Retry-After`, seconds"),
    "llm.health": Doc(
        "Ejections, background checks and latency smoothing"
        f" (see [Failure handling]({FAILURES}#a-routes-health))."
    ),
    "llm.health.cooldown": Doc("first ejection, seconds; doubles with each consecutive ejection"),
    "llm.health.max_cooldown": Doc("cap on the cooldown, seconds"),
    "llm.health.check_interval": Doc(
        "seconds between background checks (`/health`, `/v1/models`) of every route (`0`:"
        " off): a failing route is ejected before traffic finds it; a passing ejected route"
        " gets its trial at once"
    ),
    "llm.health.reprobe_interval": Doc(
        "least_latency: re-probe a route not measured for this long (within a 10 % latency budget)"
    ),
    "llm.health.ewma_alpha": Doc("weight of a new latency sample"),
    "llm.health.stall_factor": Doc(
        "a route with calls in flight and none ended for this many times its average latency"
        " (and at least `stall_min`) gets no new calls while another route can take them;"
        " `0` turns this off"
    ),
    "llm.health.stall_min": Doc("the shortest such quiet spell, seconds"),
    "llm.hedge": Doc(
        "Hedged attempts: a call still without its answer (a stream: its first token) after"
        " what its route usually takes gets a second attempt on another route; the first"
        f" answer wins (see [Hedging]({FAILURES}#hedging))."
    ),
    "llm.hedge.enabled": Doc(
        "every call hedges unless it says `hedge=False` (else only calls saying `hedge=True`)"
    ),
    "llm.hedge.quantile": Doc(
        "hedge after this quantile of the route's recent latencies (streams: times to first"
        " token); its pool's when the route has too few"
    ),
    "llm.hedge.min_delay": Doc("the shortest wait before a hedge, seconds"),
    "llm.hedge.max_delay": Doc(
        "the longest wait before a hedge, seconds; also the wait before enough is measured"
    ),
    "llm.hedge.budget": Doc(
        "fraction of calls that may hedge, over time; none hedges while the route it would"
        " go to reports a queue (or is at its reported capacity)"
    ),
    "llm.hedge.burst": Doc("hedges held in reserve beyond `budget`, for a sudden fault"),
}

# Where each key's value lands on the parsed config, when not at the same path
# (llm.health.cooldown -> config.health.cooldown, llm.routes.NAME.X -> config.routes["NAME"].X).
ATTRIBUTES = {
    "llm.params.timeout": "timeout",
    "llm.params.connect_timeout": "connect_timeout",
    "llm.params.deadline": "deadline",
    "llm.params.max_response_bytes": "max_response_bytes",
    "llm.params.max_retries": "retry.max_retries",
    "llm.params.extra_body": "params",  # merged into the body defaults
}

_ROUTE = "NAME"
_MINIMAL: dict[str, Any] = {
    "llm": {"routes": {_ROUTE: {"base_url": "http://127.0.0.1:8000/v1", "model": "MODEL"}}}
}
# A section that only exists with one of its keys set: the ways to set it, by name. A key of
# such a section has the default it has in the ways that do not set that key itself; when they
# differ, the reference says each ("`10` with dns").
_ENABLING: dict[str, dict[str, dict[str, Any]]] = {
    "llm.routes.NAME.discover": {"dns": {"dns": True}, "file": {"file": "instances.txt"}},
}


class ReferenceProblem(Exception):
    """The reference cannot be written: the schema and MEANINGS disagree, or a default or
    what a key accepts cannot be found."""


# --------------------------------------------------------------------------- the schema


def _section_keys(key: str) -> tuple[str, ...] | None:
    """The keys of the section ``key`` (``HEALTH_KEYS`` for ``health``), or None for a leaf."""
    name = "ROUTE_KEYS" if key == "routes" else f"{key.upper()}_KEYS"
    found = getattr(sections, name, None)
    return tuple(found) if isinstance(found, tuple) else None


def schema_keys() -> list[str]:
    """Every key path of the schema, sections included, in the order of the reference;
    request-body keys excluded (``body_keys()``)."""
    paths: list[str] = []

    def walk(prefix: str, keys: tuple[str, ...]) -> None:
        for key in keys:
            if prefix == "llm.params" and key in BODY_KEYS:
                continue
            path = f"{prefix}.{key}"
            paths.append(path)
            inner = _section_keys(key)
            if inner is not None:
                walk(f"{path}.{_ROUTE}" if key == "routes" else path, inner)

    walk("llm", tuple(sections.LLM_KEYS))
    return paths


def body_keys() -> list[str]:
    return [f"llm.params.{key}" for key in BODY_KEYS]


def check_meanings() -> None:
    """Every key of the schema documented, and nothing else."""
    real = set(schema_keys())
    missing = [key for key in schema_keys() if key not in MEANINGS]
    extra = sorted(set(MEANINGS) - real)
    problems = []
    if missing:
        problems.append(f"keys of the config schema with no meaning: {', '.join(missing)}")
    if extra:
        problems.append(f"meanings of keys the config schema lacks: {', '.join(extra)}")
    if problems:
        raise ReferenceProblem(
            "; ".join(problems) + " (llm/config/sections.py is the schema; the meanings are "
            "MEANINGS in scripts/config_reference.py)"
        )


# --------------------------------------------------------------------------- the values


def _parts(path: str) -> list[str]:
    return path.split(".")[1:]  # without "llm"


def _put(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``data`` with ``path`` set to ``value``; a section on the way that does not
    exist yet is made, set the first way ``_ENABLING`` says."""
    data = copy.deepcopy(data)
    node = data["llm"]
    walked = "llm"
    for part in _parts(path)[:-1]:
        walked = f"{walked}.{part}"
        if not isinstance(node.get(part), dict):
            ways = list(_ENABLING.get(walked, {}).values())
            node[part] = dict(ways[0]) if ways else {}
        node = node[part]
    node[_parts(path)[-1]] = value
    return data


def _remove(data: dict[str, Any], path: str) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node = data["llm"]
    for part in _parts(path)[:-1]:
        node = node[part]
    del node[_parts(path)[-1]]
    return data


def _has(data: dict[str, Any], path: str) -> bool:
    node: Any = data["llm"]
    for part in _parts(path):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class ByWay:
    """A default that depends on how its section is set: ``(way, value)`` pairs."""

    values: tuple[tuple[str, Any], ...]


def _value_on(data: dict[str, Any], path: str) -> Any:
    """The value of ``path`` on the config ``data`` parses to."""
    value: Any = parse_config(data, environ={})
    attribute = ATTRIBUTES.get(path)
    for part in attribute.split(".") if attribute else _parts(path):
        if hasattr(value, "keys"):
            value = value[part]
        elif hasattr(value, part):
            value = getattr(value, part)
        else:
            raise ReferenceProblem(
                f"{path}: the parsed config has no {part!r} here; say where its value lands"
                " in ATTRIBUTES (scripts/config_reference.py)"
            )
    return value


def default(path: str) -> Any:
    """The default of ``path``: its value on the config that sets only one route (inside a
    section that exists only when set, such as ``discover``, each way of setting it that does
    not set ``path`` itself: a ``ByWay`` when they differ), or ``REQUIRED`` when the config
    refuses its absence."""
    if _has(_MINIMAL, path):
        try:
            parse_config(_remove(_MINIMAL, path), environ={})
        except ConfigError as error:
            if "missing required key" in str(error):
                return REQUIRED
            raise
    for section, ways in _ENABLING.items():
        if path.startswith(f"{section}."):
            key = path[len(section) + 1 :]
            found = tuple(
                (way, _value_on(_put(_MINIMAL, section, dict(keys)), path))
                for way, keys in ways.items()
                if key not in keys
            )
            if len({repr(value) for _, value in found}) == 1:
                return found[0][1]
            return ByWay(found)
    return _value_on(_MINIMAL, path)


class _Unacceptable:
    """A value that no key accepts: the config's message for it says what the key takes."""

    def __repr__(self) -> str:
        return "<probe>"


def accepts(path: str) -> str:
    """What the config accepts at ``path``, in its own words ("a positive number")."""
    try:
        parse_config(_put(_MINIMAL, path, _Unacceptable()), environ={})
    except ConfigError as error:
        match = re.match(r"(\S+): expected (.*), found ", str(error))
        if match and match.group(1) == path:
            return match.group(2).replace(f" (one of: {_ROUTE})", "")
    raise ReferenceProblem(f"{path}: the config's message does not say what it accepts")


# --------------------------------------------------------------------------- Markdown


def show(value: Any) -> str:
    """A value as the YAML that would set it."""
    if isinstance(value, ByWay):
        return ", ".join(f"{show(item)} with `{way}`" for way, item in value.values)
    if value is REQUIRED:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (tuple, list)):
        return f"`[{', '.join(map(str, value))}]`"
    if hasattr(value, "keys"):
        return f"`{dict(value) or '{}'}`"
    return f"`{value}`"


def default_cell(path: str) -> str:
    """A key's default as the reference shows it: the value, and how it follows from other
    keys when it does (alone when the value depends on the policy or names the example's
    route)."""
    rule = MEANINGS[path].rule
    value = default(path)
    if rule is None:
        return show(value)
    if value is None or path == "llm.default_route":
        return rule
    return f"{show(value)}: {rule}"


def _group(path: str) -> str:
    """The heading a key is listed under: its section of ``llm``, or ``llm`` itself."""
    parts = path.split(".")
    if len(parts) > 2:
        return ".".join(parts[:2])
    return path if _section_keys(parts[1]) is not None else "llm"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def reference() -> str:
    """The reference's Markdown: the top-level keys, then each section of ``llm`` in the
    order of MEANINGS, the request-body keys under ``llm.params``."""
    check_meanings()
    groups: dict[str, list[str]] = {"llm": []}
    for path in MEANINGS:
        group = _group(path)
        groups.setdefault(group, [])
        if group != path:
            groups[group].append(path)
    lines: list[str] = []
    for group, paths in groups.items():
        if group == "llm":
            lines += ["### Top-level keys", ""]
        else:
            need = "Required" if default(group) is REQUIRED else "Optional"
            lines += [
                f"### `{group}`",
                "",
                f"{need}: {accepts(group)}. {_sentence(MEANINGS[group].meaning)}",
                "",
            ]
        lines += ["| key | default | accepts | meaning |", "|---|---|---|---|"]
        lines += [
            f"| `{path}` | {_cell(default_cell(path))} | {_cell(accepts(path))} "
            f"| {_cell(MEANINGS[path].meaning)} |"
            for path in paths
        ]
        lines.append("")
        if group == "llm.params":
            lines += [
                "#### Request-body keys",
                "",
                "Defaults for every call's request body, under `llm.params`, and keywords of a"
                " call. None has a default of its own: a key left out is left to the server."
                " Their meanings are the server's (vLLM's sampling and output options); the"
                " config checks each value as said here.",
                "",
                "| key | accepts |",
                "|---|---|",
                *(f"| `{path}` | {_cell(accepts(path))} |" for path in body_keys()),
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- MkDocs hook


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: the reference in place of MARKER on docs/configuration.md."""
    if page.file.src_uri != PAGE:
        return markdown
    from mkdocs.exceptions import PluginError

    if markdown.count(MARKER) != 1:
        raise PluginError(f"docs/{PAGE} must hold the line {MARKER} exactly once")
    try:
        text = reference()
    except (ReferenceProblem, ConfigError) as error:
        raise PluginError(f"configuration reference: {error}") from error
    return markdown.replace(MARKER, text)


if __name__ == "__main__":
    try:
        print(reference())
    except ReferenceProblem as error:
        sys.exit(f"config_reference: {error}")
