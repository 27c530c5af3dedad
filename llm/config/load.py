"""Reading a configuration: the YAML file, ``${VAR}`` references, the ``VLLM_*`` overrides.

How this works
--------------
1. **Read** (``load_config``). The path is the argument, else ``$LLM_CONFIG``, else
   ``./config.yaml``. The file is parsed with a safe YAML loader that also rejects duplicate
   keys. A missing or unreadable file, a YAML syntax error (with line and column), an empty
   file or a top level that is not a mapping each become one ``ConfigError``.
2. **Unwrap** (``parse_config``). The data is ``{"llm": {...}}``, or the inner mapping itself
   (it has ``routes`` and no ``llm``).
3. **Measure** (``_check_shape``). The data is measured as the tree it expands to: a value
   reached twice (a YAML alias, a merge key, an object shared in a mapping given to
   ``parse_config``) counts once per place it appears, each distinct object being measured once
   (memoized by ``id``), so the measure is linear in the size of the file or data, not of its
   expansion. More than ``MAX_VALUES`` (100,000) values in the expanded tree (every mapping,
   list and scalar counts one; a fleet of 1,000 routes of 10 keys is about 10,000), nesting
   deeper than ``MAX_DEPTH`` (100) levels, or a value that contains itself (``a: &a [*a]``, a
   dict put inside itself) is one ``ConfigError`` naming the deepest key path found, before
   anything walks the data as a tree: without it, a "billion laughs" file of a few hundred
   bytes would take seconds and gigabytes to interpolate, and a cycle would recurse until
   Python's ``RecursionError``. Files and data take this same path; a file nested too deeply
   for PyYAML's own recursion is refused as well.
4. **Interpolate**. Every string value, at any depth, has ``${VAR}`` and ``${VAR:-default}``
   replaced from ``environ`` (default ``os.environ``); ``:-`` uses the default when VAR is unset
   or empty, as in the shell. ``$${`` stands for a literal ``${``. This works on a copy: the
   caller's data is never changed.
5. **Override**. ``VLLM_BASE_URL`` / ``VLLM_MODEL`` replace the default route's ``base_url`` /
   ``model`` (a ``user:password@`` in ``VLLM_BASE_URL`` is read as in the file: it becomes an
   ``Authorization: Basic`` header); ``VLLM_API_KEY`` gives an ``api_key`` to every route that
   has none and no ``user:password@`` in its ``base_url``. Empty values count as unset.
6. **Validate and build** (``sections.build``). An error names its key path, and here also
   the variable a value came from and the file.

Import cost: PyYAML (and the YAML loader class) and the ``${VAR}`` pattern are loaded or built
the first time they are needed (a file read, a string with ``${``), not when this module is
imported: a configuration given as a mapping never imports PyYAML.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .model import LLMConfig
from .readers import check_keys, describe, fail, join, read_mapping
from .redact import split_userinfo
from .sections import build

if TYPE_CHECKING:
    import yaml

DEFAULT_PATH = "config.yaml"

_TOP_KEYS = ("llm",)

MAX_VALUES = 100_000
"""The most values (mappings, lists, scalars) the ``llm`` section may expand to."""
MAX_DEPTH = 100
"""The deepest nesting of mappings and lists the ``llm`` section may have."""


# --------------------------------------------------------------------------- shape


def _check_shape(data: Any, path: str) -> None:
    """Refuse ``data`` when, expanded as a tree, it has more than ``MAX_VALUES`` values, is
    nested deeper than ``MAX_DEPTH``, or contains itself. Linear in the distinct objects and
    their items, however many times each is referred to."""
    _measure(data, path, 0, {}, {})


def _measure(
    value: Any, path: str, depth: int, sizes: dict[int, int], open_paths: dict[int, str]
) -> int:
    """The number of values in ``value`` expanded as a tree. ``sizes`` memoizes finished
    containers by id (all stay alive in the data, so no id is reused); ``open_paths`` holds
    the containers being measured, the ancestors of ``value``, by id."""
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return 1
    ident = id(value)
    known = sizes.get(ident)
    if known is not None:
        return known
    if ident in open_paths:
        fail(
            path,
            f"refers to itself: it is the value of {open_paths[ident]}, which contains it "
            "(a YAML alias inside its own anchor?)",
        )
    if depth >= MAX_DEPTH:
        fail(path, f"nested more than {MAX_DEPTH} levels deep")
    is_mapping = isinstance(value, Mapping)
    open_paths[ident] = path
    total = 1
    for key, item in items:
        if isinstance(item, (Mapping, list, tuple)):
            child = join(path, key) if is_mapping else f"{path}[{key}]"
            total += _measure(item, child, depth + 1, sizes, open_paths)
        else:
            total += 1
        if total > MAX_VALUES:
            fail(path, f"expands to more than {MAX_VALUES} values (YAML aliases?)")
    del open_paths[ident]
    sizes[ident] = total
    return total


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
                fail(
                    path,
                    "expected ${NAME} or ${NAME:-default} (or $${ for a literal '${'), "
                    "found a malformed '${' reference",
                )
            found = environ.get(name)
            if default is not None:
                return found if found else default
            if found is None:
                fail(
                    path,
                    f"environment variable {name!r} is not set "
                    f"(write ${{{name}:-default}} to give a default)",
                )
            return found

        return re.sub(_REFERENCE_PATTERN, substitute, value)  # compiled once, by re's cache
    if isinstance(value, Mapping):
        return {key: _interpolate(item, join(path, key), environ) for key, item in value.items()}
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
            if not isinstance(route, dict) or "api_key" in route:
                continue
            url = route.get("base_url")
            if isinstance(url, str) and split_userinfo(url.strip()):
                continue  # the URL's user:password@ is its Authorization
            route["api_key"] = api_key
            origins[f"llm.routes.{name}.api_key"] = "VLLM_API_KEY"
    return origins


def _unwrap(data: Any, source: str | None) -> Mapping[Any, Any]:
    """The ``llm`` section of the whole document (or ``data`` itself when it is that section)."""
    where = source or "config"
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping with an 'llm' key at the top level, "
            f"found {describe(data)}"
        )
    if "llm" not in data and "routes" in data:
        return data
    check_keys("", data, _TOP_KEYS)
    if "llm" not in data:
        fail("llm", "missing required key (the whole configuration goes under 'llm:')")
    return read_mapping("llm", data["llm"])


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
        section = _unwrap(data, source)
        _check_shape(section, "llm")
        raw = _interpolate(section, "llm", env)
        origins = _apply_env_overrides(raw, env)
        return build(raw, source)
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
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise ConfigError(
            f"{path}: invalid YAML: nested too deeply (at most {MAX_DEPTH} levels)"
        ) from None


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
