"""The configuration reference of the docs site (scripts/config_reference.py) against the real
config schema: every key of llm/config/sections.py listed, with the default the library really
applies, and a key without documentation (or documentation without a key) is an error."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llm.config import model, parse_config, sections
from llm.config.body_keys import BODY_KEYS

ROOT = Path(__file__).resolve().parent.parent


def _load_reference() -> Any:
    spec = importlib.util.spec_from_file_location(
        "config_reference", ROOT / "scripts" / "config_reference.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


reference = _load_reference()
TEXT = reference.reference()
ROWS = {
    match.group(1): [cell.strip() for cell in match.group(2).split(" | ")]
    for match in re.finditer(r"^\| `(llm\.[\w.]+)` \| (.*) \|$", TEXT, re.MULTILINE)
}
HEADINGS = set(re.findall(r"^#+ `(llm\.[\w.]+)`$", TEXT, re.MULTILINE))

# The sections of the schema this test knows; a new one must be taught to it (and shows here).
SECTIONS = {
    "retry": ("RETRY_KEYS", "retry"),
    "health": ("HEALTH_KEYS", "health"),
    "load": ("LOAD_KEYS", "load"),
    "affinity": ("AFFINITY_KEYS", "affinity"),
    "hedge": ("HEDGE_KEYS", "hedge"),
}
KNOWN_TUPLES = {
    "LLM_KEYS",
    "ROUTE_KEYS",
    "DISCOVER_KEYS",
    "PARAMS_KEYS",
    "BODY_KEYS",  # imported from body_keys: the request-body keys of PARAMS_KEYS
    *(name for name, _ in SECTIONS.values()),
}
DATACLASSES = {
    "retry": model.RetryConfig,
    "health": model.HealthConfig,
    "load": model.LoadConfig,
    "affinity": model.AffinityConfig,
    "hedge": model.HedgeConfig,
}
MINIMAL = {"llm": {"routes": {"r": {"base_url": "http://127.0.0.1:8000/v1", "model": "m"}}}}


def real_keys() -> set[str]:
    """Every key path of the config schema, from llm/config/sections.py."""
    keys = {f"llm.{key}" for key in sections.LLM_KEYS}
    keys |= {f"llm.routes.NAME.{key}" for key in sections.ROUTE_KEYS}
    keys |= {f"llm.routes.NAME.discover.{key}" for key in sections.DISCOVER_KEYS}
    keys |= {f"llm.params.{key}" for key in sections.PARAMS_KEYS}
    for section, (name, _) in SECTIONS.items():
        keys |= {f"llm.{section}.{key}" for key in getattr(sections, name)}
    return keys


# a plain value as the reference shows it (the values themselves are found here, independently)
shown = reference.show


def real_defaults() -> dict[str, Any]:
    """What the library applies to a config that sets only one route, key by key."""
    config = parse_config(MINIMAL, environ={})
    route = config.routes["r"]
    found: dict[str, Any] = {
        "llm.provider": config.provider,
        "llm.lb_policy": config.lb_policy,
        "llm.fallback_route": config.fallback_route,
        "llm.context_fallback": config.context_fallback,
        "llm.params.timeout": config.timeout,
        "llm.params.connect_timeout": config.connect_timeout,
        "llm.params.deadline": config.deadline,
        "llm.params.max_response_bytes": config.max_response_bytes,
        "llm.params.max_retries": config.retry.max_retries,
        "llm.params.extra_body": dict(config.params),
    }
    for key in sections.ROUTE_KEYS:
        if key not in ("base_url", "model"):
            found[f"llm.routes.NAME.{key}"] = getattr(route, key)
    for section, (name, attribute) in SECTIONS.items():
        for key in getattr(sections, name):
            found[f"llm.{section}.{key}"] = getattr(getattr(config, attribute), key)
    for key in sections.LLM_KEYS:  # top-level keys added later (hooks, ...): the same name
        path = f"llm.{key}"
        if path not in found and key not in (*SECTIONS, "routes", "params", "default_route"):
            found[path] = getattr(config, key)
    return found


def test_this_test_knows_every_section_of_the_schema():
    tuples = {name for name in dir(sections) if re.fullmatch(r"[A-Z_]+_KEYS", name)}
    assert tuples == KNOWN_TUPLES, "a new section of the schema: teach this test its keys"


def test_the_reference_lists_every_key_of_the_schema_and_no_other():
    listed = set(ROWS) | HEADINGS
    real = real_keys()
    assert listed == real, f"missing: {sorted(real - listed)}; extra: {sorted(listed - real)}"
    for key in BODY_KEYS:
        assert f"llm.params.{key}" in ROWS, key


def test_each_key_is_shown_with_its_real_default():
    for path, value in real_defaults().items():
        cell = ROWS[path][0]
        if value is None:
            assert cell == "none" or "`" in cell, (path, cell)  # none, or the rule for it
        else:
            assert cell.startswith(shown(value)), (path, cell, shown(value))


def test_defaults_agree_with_the_dataclasses_of_the_schema():
    for section, cls in DATACLASSES.items():
        keys = getattr(sections, SECTIONS[section][0])
        for field in dataclasses.fields(cls):
            if field.name in keys and field.default is not None:
                assert ROWS[f"llm.{section}.{field.name}"][0].startswith(shown(field.default))
    route_fields = {field.name: field for field in dataclasses.fields(model.RouteConfig)}
    for key in ("api_key", "weight", "send_model", "verify"):
        assert ROWS[f"llm.routes.NAME.{key}"][0] == shown(route_fields[key].default)


def test_required_keys_policy_dependent_and_derived_defaults_say_so():
    assert ROWS["llm.routes.NAME.base_url"][0] == "required"
    assert ROWS["llm.routes.NAME.model"][0] == "required"
    assert ROWS["llm.default_route"][0] == "the first route"
    assert ROWS["llm.params.deadline"][0] == "`120`: 2 × `llm.params.timeout`"
    assert "under `least_load`" in ROWS["llm.load.poll_interval"][0]
    assert ROWS["llm.routes.NAME.discover.interval"][0] == "`10` with `dns`, `2` with `file`"
    assert ROWS["llm.routes.NAME.discover.dns"][0] == "`false`"


def test_accepts_is_the_configs_own_words():
    assert ROWS["llm.params.top_p"] == ["a number in (0, 1]"]
    assert ROWS["llm.health.ewma_alpha"][1] == "a number in (0, 1]"
    assert ROWS["llm.lb_policy"][1].startswith("a policy (one of: round_robin")
    assert ROWS["llm.default_route"][1] == "a route name"


def test_a_key_without_meaning_fails(monkeypatch: pytest.MonkeyPatch):
    meanings = dict(reference.MEANINGS)
    del meanings["llm.health.cooldown"]
    monkeypatch.setattr(reference, "MEANINGS", meanings)
    with pytest.raises(reference.ReferenceProblem, match=r"no meaning: llm\.health\.cooldown"):
        reference.reference()


def test_a_meaning_without_key_fails(monkeypatch: pytest.MonkeyPatch):
    meanings = dict(reference.MEANINGS)
    meanings["llm.health.colldown"] = reference.Doc("a typo")
    monkeypatch.setattr(reference, "MEANINGS", meanings)
    with pytest.raises(reference.ReferenceProblem, match=r"lacks: llm\.health\.colldown"):
        reference.reference()


def test_the_hook_writes_the_reference_into_the_configuration_page():
    from mkdocs.exceptions import PluginError

    source = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert source.count(reference.MARKER) == 1

    def page(name: str) -> Any:
        return SimpleNamespace(file=SimpleNamespace(src_uri=name))

    built = reference.on_page_markdown(source, page("configuration.md"), None, None)
    assert reference.MARKER not in built and TEXT in built
    other = reference.on_page_markdown("# Other", page("routing.md"), None, None)
    assert other == "# Other"
    with pytest.raises(PluginError, match="config-reference"):
        reference.on_page_markdown("# No marker", page("configuration.md"), None, None)
