"""Reading a configuration: the YAML file, ``${VAR}`` references, the ``VLLM_*`` overrides.

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
5. **Validate and build** (``sections.build``). An error names its key path, and here also
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
from .sections import build

if TYPE_CHECKING:
    import yaml

DEFAULT_PATH = "config.yaml"

_TOP_KEYS = ("llm",)


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
            if isinstance(route, dict) and "api_key" not in route:
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
        raw = _interpolate(_unwrap(data, source), "llm", env)
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
