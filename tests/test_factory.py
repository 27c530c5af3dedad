"""LLMFactory: provider names, config sources, env overrides reaching a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm import ConfigError, UnknownProviderError, VLLMOpenAIProvider
from llm.factory import LLMFactory
from llm.testing import FakeVLLM

YAML = """
llm:
  provider: vllm_openai
  routes:
    main: {{base_url: {url}, model: {model}, timeout: 2}}
  default_route: main
  params: {{max_tokens: 4, timeout: 2}}
"""


def test_unknown_provider_lists_the_known_ones():
    with pytest.raises(UnknownProviderError, match=r"'openai_magic'.*known providers: vllm_openai"):
        LLMFactory.create_provider("openai_magic", config={"llm": {"routes": {}}})


def test_unknown_provider_in_the_config_names_the_key():
    config = {"llm": {"provider": "nope", "routes": {"a": {"base_url": "http://h/v1",
                                                            "model": "m"}}}}
    with pytest.raises(UnknownProviderError) as caught:
        LLMFactory.create_provider(config=config)
    assert caught.value.key_path == "llm.provider"


def test_config_path_and_llm_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with FakeVLLM("tiny") as server:
        path = tmp_path / "fleet.yaml"
        path.write_text(YAML.format(url=server.base_url, model="tiny"))
        with LLMFactory.create_provider("vllm_openai", config_path=path) as provider:
            assert isinstance(provider, VLLMOpenAIProvider)
            assert provider.chat([{"role": "user", "content": "hi"}])
        monkeypatch.setenv("LLM_CONFIG", str(path))
        with LLMFactory.create_provider("vllm_openai") as provider:
            assert provider.config.source == str(path)
            assert provider.chat_completion([{"role": "user", "content": "hi"}]).route == "main"


def test_env_overrides_point_the_default_route_at_another_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    with FakeVLLM("other-model") as server:
        path = tmp_path / "config.yaml"
        path.write_text(YAML.format(url="http://127.0.0.1:9/v1", model="tiny"))
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        monkeypatch.setenv("VLLM_MODEL", "other-model")
        with LLMFactory.create_provider("vllm_openai", config_path=path) as provider:
            result = provider.chat_completion([{"role": "user", "content": "hi"}])
        assert result.route == "main"
        assert server.requests[-1].json["model"] == "other-model"


def test_missing_config_file_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLM_CONFIG", raising=False)
    with pytest.raises(ConfigError, match=r"config\.yaml"):
        LLMFactory.create_provider("vllm_openai")
