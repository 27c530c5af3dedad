"""One source for each rule that used to be written twice: the request-body keys (how the config
reads them, how a call checks them), which routes serve a model (the config's pool and the
balancer's), and the masking of secrets in what is shown."""

from __future__ import annotations

from typing import Any

import pytest

from llm.call.validate import KEYWORD_CHECKS
from llm.config import RouteConfig, parse_config
from llm.config.body_keys import BODY_KEYS, SERVER_KEYS
from llm.config.model import serving
from llm.config.redact import scrub, secret_forms, without_credentials
from llm.config.sections import BODY_READERS, PARAMS_KEYS, body_reader
from llm.errors import ConfigError
from llm.routing.balancer import Balancer


def params(**values: Any) -> dict[str, Any]:
    route = {"base_url": "http://h/v1", "model": "m"}
    return {"llm": {"routes": {"a": route}, "params": values}}


def test_the_call_time_checks_follow_the_kinds() -> None:
    checks = {key: check.__name__ for key, check in KEYWORD_CHECKS.items()}
    assert checks == {
        **dict.fromkeys(("max_tokens", "max_completion_tokens", "n", "best_of"), "_positive_int"),
        **dict.fromkeys(("min_tokens", "top_logprobs"), "_non_negative_int"),
        **dict.fromkeys(("top_k", "seed", "priority", "truncate_prompt_tokens"), "_any_int"),
        **dict.fromkeys(
            (
                "temperature",
                "top_p",
                "min_p",
                "presence_penalty",
                "frequency_penalty",
                "repetition_penalty",
                "length_penalty",
            ),
            "_finite_number",
        ),
    }


def test_counts_have_the_bound_a_call_checks() -> None:
    # a call refuses max_tokens=0 and top_logprobs=-1: the config must refuse them too
    for key, spec in BODY_KEYS.items():
        if spec.kind == "count":
            assert (spec.minimum, spec.exclusive, spec.maximum) == (0, True, None), key
        if spec.kind == "count0":
            assert (spec.minimum, spec.exclusive, spec.maximum) == (0, False, None), key


def test_every_body_key_has_a_config_reader() -> None:
    assert list(BODY_READERS) == list(BODY_KEYS)
    assert PARAMS_KEYS[-len(BODY_KEYS) :] == tuple(BODY_KEYS)
    for spec in BODY_KEYS.values():
        assert callable(body_reader(spec))
    assert not set(BODY_KEYS) & set(SERVER_KEYS)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("max_tokens", "a positive integer"),
        ("max_completion_tokens", "a positive integer"),
        ("n", "a positive integer"),
        ("best_of", "a positive integer"),
        ("min_tokens", "an integer >= 0"),
        ("top_logprobs", "an integer >= 0"),
        ("top_k", "an integer >= -1"),
        ("truncate_prompt_tokens", "an integer >= -1"),
        ("seed", "an integer"),
        ("priority", "an integer"),
        ("temperature", "a number >= 0"),
        ("top_p", "a number in (0, 1]"),
        ("min_p", "a number in [0, 1]"),
        ("presence_penalty", "a number in [-2, 2]"),
        ("frequency_penalty", "a number in [-2, 2]"),
        ("repetition_penalty", "a positive number"),
        ("length_penalty", "a number"),
        ("stop", "a string or a list of strings"),
        ("logprobs", "true or false"),
        ("logit_bias", "a mapping"),
        ("tools", "a list"),
        ("tool_choice", "a string or a mapping"),
        ("guided_choice", "a list of strings"),
        ("user", "a string"),
    ],
)
def test_the_config_reader_says_the_bounds(key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(params(**{key: float("nan")}), environ={})
    assert str(caught.value) == f"llm.params.{key}: expected {expected}, found nan"
    assert caught.value.key_path == f"llm.params.{key}"


ROUTES = [
    RouteConfig("a", "http://a/v1", "big"),
    RouteConfig("b", "http://b/v1", "big"),
    RouteConfig("small", "http://s/v1", "tiny"),
    RouteConfig("spare", "http://f/v1", "big"),
]


def names(routes: list[RouteConfig]) -> list[str]:
    return [route.name for route in routes]


def test_serving_keeps_the_fallback_out_of_a_pool_it_shares() -> None:
    assert names(serving(ROUTES, "big", "spare")) == ["a", "b"]
    assert names(serving(ROUTES, "big", None)) == ["a", "b", "spare"]


def test_serving_finds_the_fallback_when_only_it_serves_the_model() -> None:
    assert names(serving(ROUTES, "tiny", "small")) == ["small"]
    assert names(serving(ROUTES, "tiny", "spare")) == ["small"]


def test_serving_an_unknown_model_is_empty() -> None:
    assert serving(ROUTES, "nope", "spare") == []
    assert serving([], "big", None) == []


@pytest.mark.parametrize("fallback", ["small", "spare"])
def test_the_config_and_the_balancer_pool_alike(fallback: str) -> None:
    routes = {route.name: {"base_url": route.base_url, "model": route.model} for route in ROUTES}
    config = parse_config({"llm": {"routes": routes, "fallback_route": fallback}}, environ={})
    balancer = Balancer(config.routes.values(), fallback_route=fallback)
    for model in ("big", "tiny"):
        pool = balancer.pool(model)
        assert pool is not None
        assert tuple(route.name for route in pool.routes) == config.pool(model)
    assert config.pool("nope") == () and balancer.pool("nope") is None


def test_without_credentials_keeps_only_where_a_url_points() -> None:
    url = "https://user:pw@other.example:8443/v1/chat?token=abc#frag"
    assert without_credentials(url) == "https://other.example:8443/v1/chat"
    assert without_credentials("http://[::1]:8000/v1?k=s") == "http://[::1]:8000/v1"
    assert without_credentials("/v1/elsewhere?k=s") == "/v1/elsewhere"
    for garbage in ("http://[::1", "http://h:port/", "http://h/\r\nSet-Cookie: x"):
        assert without_credentials(garbage) == "an invalid location"


def test_secret_forms_mask_a_key_however_it_is_quoted() -> None:
    key = "sk-\\ünïcode-key "  # a backslash, non-ASCII characters and a trailing space
    route = RouteConfig("a", "http://h/v1", "m", api_key=key, headers={"X-Token": "hdr-secret"})
    quoted = (
        f"as is <{key}>, stripped <{key.strip()}>, str repr {key!r}, "
        f"bytes repr {key.encode()!r}, header {'hdr-secret'!r}"
    )
    assert len({key, key.strip(), repr(key)[1:-1], repr(key.encode())[2:-1]}) == 4
    forms = secret_forms([route])
    assert len(forms) == 5 and forms == sorted(forms, key=len, reverse=True)
    assert scrub(quoted, forms) == (
        "as is <***>, stripped <***>, str repr '***', bytes repr b'***', header '***'"
    )
    assert secret_forms([RouteConfig("b", "http://h/v1", "m")]) == []  # "EMPTY" is no secret
    assert secret_forms([RouteConfig("c", "http://h/v1", "m", api_key="abc")]) == []  # too short
