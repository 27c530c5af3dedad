"""config.yaml -> validated, frozen dataclasses.

``load_config`` reads a file, ``parse_config`` takes data already loaded; both return an
``LLMConfig`` or raise one ``ConfigError`` whose message starts with the key path of the first
problem. Importing this package imports neither PyYAML nor difflib.

Which module does what:

- ``model``: the frozen dataclasses (``LLMConfig``, ``RouteConfig``, ``RetryConfig``,
  ``HealthConfig``), their defaults, ``KNOWN_POLICIES``, and ``serving``: which routes serve a
  model (the pool rule of the config and of the balancer).
- ``load``: the YAML file, the ``llm:`` unwrapping, ``${VAR}`` interpolation, the ``VLLM_*``
  environment overrides, ``parse_config`` and ``load_config``.
- ``sections``: building each section (``params``, ``routes``, ``retry``, ``health``, the
  whole ``llm:``) from raw data, and the keys each section allows.
- ``body_keys``: the request-body keys as data (kind, bounds), read by the config and by the
  call checks (``llm.call.validate``).
- ``readers``: the typed readers (string, number, integer, bool, URL, ...) and the error
  messages they raise.
- ``redact``: showing a value without its secrets: a URL's ``user:password@`` (and query),
  every quoted form of a route's ``api_key`` and header values; where a URL's
  ``user:password@`` ends (``split_userinfo``).
"""

from __future__ import annotations

from .load import DEFAULT_PATH as DEFAULT_PATH
from .load import load_config, parse_config
from .model import DEFAULT_MAX_RESPONSE_BYTES as DEFAULT_MAX_RESPONSE_BYTES
from .model import DEFAULT_PROVIDER as DEFAULT_PROVIDER
from .model import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from .model import (
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

__all__ = [
    "KNOWN_POLICIES",
    "AffinityConfig",
    "Discovery",
    "HealthConfig",
    "HedgeConfig",
    "LLMConfig",
    "LoadConfig",
    "RetryConfig",
    "RouteConfig",
    "load_config",
    "parse_config",
]
