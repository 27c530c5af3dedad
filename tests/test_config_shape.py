"""Config data measured as the tree it expands to: YAML "billion laughs", cycles, deep nesting.

A file of a few hundred bytes can, through nested anchors and aliases, stand for a tree of
millions of values; a value can contain itself (``a: &a [*a]``, a dict put inside itself).
Both are refused with one ConfigError before anything walks the data as a tree, while
ordinary anchors and merge keys keep working.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from llm.config import load_config, parse_config
from llm.errors import ConfigError

BOUND = 100_000

ROUTES = """\
  routes:
    a: {base_url: "http://127.0.0.1:8001/v1", model: m}
"""


def billion_laughs(levels: int = 9, width: int = 7) -> str:
    """``llm:`` holding ``levels`` lists, each of ``width`` aliases of the one before."""
    names = "abcdefghijklmnopqrstuvwxyz"[:levels]
    lines = ["llm:", "  a: &a [" + ", ".join(['"x"'] * width) + "]"]
    for previous, name in pairwise(names):
        lines.append(f"  {name}: &{name} [" + ", ".join([f"*{previous}"] * width) + "]")
    return "\n".join(lines) + "\n"


def load_text(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ={})


def refused(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return info.value


def test_the_bound_is_the_documented_one() -> None:
    from llm.config.load import MAX_VALUES

    assert MAX_VALUES == BOUND


def test_billion_laughs_file_is_refused(tmp_path: Path) -> None:
    text = billion_laughs()
    assert len(text) < 600  # a few hundred bytes that stand for 7**9 (40 million) strings
    error = refused(tmp_path, text)
    # a: 8 values, b: 57, c: 400, d: 2801, e: 19608, f: 137257: the first past the bound
    assert error.key_path == "llm.f"
    message = str(error)
    assert message.startswith(f"llm.f: expands to more than {BOUND} values (YAML aliases?)")
    assert str(tmp_path / "config.yaml") in message


def test_billion_laughs_given_as_data_is_refused() -> None:
    level: list[Any] = ["x"] * 7
    for _ in range(8):
        level = [level] * 7  # seven references to one list
    data = {"llm": {"routes": {"a": {"base_url": "http://h:1/v1", "model": "m"}}}}
    data["llm"]["params"] = {"extra_body": {"bomb": level}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ={})
    assert info.value.key_path is not None
    assert info.value.key_path.startswith("llm.params.extra_body.bomb")
    assert f"expands to more than {BOUND} values (YAML aliases?)" in str(info.value)


def test_sibling_subtrees_each_under_the_bound_are_refused_at_their_parent() -> None:
    half = ["x"] * (BOUND // 2)
    data = {
        "routes": {"a": {"base_url": "http://h:1/v1", "model": "m"}},
        "params": {"extra_body": {"one": half, "two": half, "three": half}},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ={})
    assert info.value.key_path == "llm.params.extra_body"
    assert f"expands to more than {BOUND} values" in str(info.value)


@pytest.mark.parametrize(
    ("text", "key_path"),
    [
        pytest.param("llm:\n" + ROUTES + "  a: &a [*a]\n", "llm.a[0]", id="list"),
        pytest.param("llm:\n" + ROUTES + "  a: &a {b: *a}\n", "llm.a.b", id="mapping"),
        pytest.param(
            "llm:\n" + ROUTES + "  params:\n    extra_body: &e {x: [1, {y: *e}]}\n",
            "llm.params.extra_body.x[1].y",
            id="deeper",
        ),
    ],
)
def test_self_referencing_alias_is_refused(tmp_path: Path, text: str, key_path: str) -> None:
    error = refused(tmp_path, text)
    assert error.key_path == key_path
    assert "refers to itself" in str(error)


def test_cyclic_mapping_given_to_parse_config_is_refused() -> None:
    data: dict[str, Any] = {"routes": {"a": {"base_url": "http://h:1/v1", "model": "m"}}}
    data["params"] = {"extra_body": {"loop": data}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ={})
    assert info.value.key_path == "llm.params.extra_body.loop"
    assert "refers to itself" in str(info.value)
    assert "llm, which contains it" in str(info.value)


def test_cyclic_list_given_to_parse_config_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    data = {"llm": {"routes": {"a": {"base_url": "http://h:1/v1", "model": "m"}}, "x": loop}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ={})
    assert info.value.key_path == "llm.x[0]"
    assert "refers to itself" in str(info.value)


def test_deep_nesting_is_refused_as_data_and_as_a_file(tmp_path: Path) -> None:
    nested: list[Any] = []
    for _ in range(5000):
        nested = [nested]
    data = {"routes": {"a": {"base_url": "http://h:1/v1", "model": "m"}}, "x": nested}
    with pytest.raises(ConfigError, match="nested more than 100 levels deep"):
        parse_config(data, environ={})
    for depth in (150, 600):  # caught by the measure, then already by the YAML reader
        error = refused(tmp_path, "llm:\n" + ROUTES + "  x: " + "[" * depth + "]" * depth + "\n")
        assert "nested" in str(error)


def test_anchors_and_merge_keys_of_a_normal_config_work(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """\
llm:
  routes:
    gpu_a: &defaults
      base_url: http://127.0.0.1:8001/v1
      model: qwen
      timeout: 7
      weight: 2
      headers: {X-Team: search}
    gpu_b:
      <<: *defaults
      base_url: http://127.0.0.1:8002/v1
      weight: 3
  params:
    extra_body: {a: &schema {type: object, required: [x]}, b: *schema}
""",
    )
    a, b = config.route("gpu_a"), config.route("gpu_b")
    assert (a.base_url, b.base_url) == ("http://127.0.0.1:8001/v1", "http://127.0.0.1:8002/v1")
    assert a.model == b.model == "qwen"
    assert a.timeout == b.timeout == 7
    assert (a.weight, b.weight) == (2, 3)
    assert dict(a.headers) == dict(b.headers) == {"X-Team": "search"}
    assert config.pool("qwen") == ("gpu_a", "gpu_b")
    schema = {"type": "object", "required": ["x"]}
    assert config.params["a"] == config.params["b"] == schema


def test_a_large_fleet_is_well_under_the_bound() -> None:
    shared_headers = {"X-Team": "search"}
    routes = {
        f"r{i}": {
            "base_url": f"http://10.0.{i // 250}.{i % 250}:8000/v1",
            "model": f"m{i % 7}",
            "timeout": 30,
            "api_key": "EMPTY",
            "weight": 1,
            "headers": shared_headers,  # one object in every route: counted once per route
            "send_model": True,
            "verify": True,
        }
        for i in range(1000)
    }
    config = parse_config({"llm": {"routes": routes}}, environ={})
    assert len(config.routes) == 1000
    assert dict(config.route("r999").headers) == shared_headers


def test_shared_scalars_and_data_are_left_unchanged() -> None:
    shared = {"base_url": "http://h:1/v1", "model": "${M:-m}"}
    data = {"routes": {"a": shared, "b": shared}}
    config = parse_config(data, environ={"M": "tiny"})
    assert config.route("a").model == config.route("b").model == "tiny"
    assert shared["model"] == "${M:-m}"
