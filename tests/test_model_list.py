"""The model list the routing transport answers: pure parts, without sockets."""

from __future__ import annotations

import json

import pytest

from llm.call.spec import CallSpec
from llm.config import parse_config
from llm.errors import APIStatusError, NoRouteError, ServerError
from llm.results import Reply
from llm.send.model_list import listing_of, merged_listing

CONFIG = parse_config(
    {
        "llm": {
            "routes": {
                "a": {"base_url": "http://a/v1", "model": "big"},
                "b": {"base_url": "http://b/v1", "model": "big"},
                "c": {"base_url": "http://c/v1", "model": "small"},
            },
            "fallback_route": "c",
        }
    }
)


def reply(data: object) -> Reply:
    return Reply("a", 200, {}, json.dumps(data).encode(), data, [], 0.01)


def test_a_list_asks_each_model_once_and_never_the_fallback():
    asked = listing_of(CONFIG, CallSpec("/models", method="GET", expect=None))
    assert asked is not None and asked.wanted is None
    assert [(c.model, c.path, c.fallback) for c in asked.calls] == [
        ("big", "/models", False),
        ("small", "/models", False),
    ]


@pytest.mark.parametrize(
    "spec",
    [
        CallSpec("/chat/completions"),
        CallSpec("/models", method="POST"),
        CallSpec("/models", method="GET", route="a"),  # pinned: that route's own list
    ],
)
def test_other_requests_are_not_listings(spec):
    assert listing_of(CONFIG, spec) is None


def test_retrieve_asks_the_pool_of_its_model():
    asked = listing_of(CONFIG, CallSpec("/models/small", method="GET"))
    assert asked is not None and asked.wanted == "small"
    assert [(c.model, c.path) for c in asked.calls] == [("small", "/models")]
    with pytest.raises(NoRouteError, match="no route serves model 'gpt-x'"):
        listing_of(CONFIG, CallSpec("/models/gpt-x", method="GET"))


def test_lists_are_joined_first_entry_kept_garbage_skipped():
    first = {"id": "big", "object": "model", "owned_by": "vllm", "max_model_len": 8192}
    answers = [
        reply({"object": "list", "data": [first, "junk", {"id": 7}]}),
        reply({"object": "list", "data": [{"id": "big", "owned_by": "other"}, {"id": "small"}]}),
        reply({"object": "list", "data": {"id": "not-a-list"}}),
        ServerError("boom", status_code=503),
    ]
    merged = merged_listing(answers)
    assert isinstance(merged, tuple)
    body = json.loads(merged[0])
    assert body == {"object": "list", "data": [first, {"id": "small"}]}


def test_no_list_at_all_is_the_first_error_and_a_missing_id_is_vllms_404():
    first, second = ServerError("a", status_code=503), ServerError("b", status_code=502)
    assert merged_listing([first, second]) is first
    missing = merged_listing([reply({"object": "list", "data": [{"id": "big"}]})], "small")
    assert isinstance(missing, APIStatusError) and missing.status_code == 404
    assert json.loads(missing.body or "")["error"]["message"] == "The model `small` does not exist."
    found = merged_listing([reply({"object": "list", "data": [{"id": "big"}]})], "big")
    assert isinstance(found, tuple) and json.loads(found[0]) == {"id": "big"}
